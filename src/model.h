/*
 * model.h
 *	  A model's specification and the layout of its parameter vector.
 *
 * All shared parameters of a model (the base and the adaptor bank) live in
 * one flat float vector, so that a round is one tensor, an update is one
 * tensor and aggregation is a weighted sum of vectors.  The layout is:
 *
 *	base:	  for each layer l:  W_l (out x in), b_l (out)
 *	adaptors: for each layer l:  U_l (C x r_l x in), V_l (C x out x r_l),
 *								 beta_l (C x out)
 *
 * Adaptor offsets are relative to the start of the bank, so that a private
 * bank (the Local Adaptor baseline) can stand in for the shared one.
 *
 * The Ensemble baseline (C full models mixed at the output) has no base and
 * no factors: its bank is C members, each laid out like a base, one after
 * the other (member c at c * member_size), and the layers' W and b are
 * offsets inside a member.  A member is then "adaptor c" for everything
 * that weighs or averages adaptors (aggregation, the router).
 *
 * Keeping the C adaptors of one layer next to each other lets the forward
 * pass project a batch on all of them with a single GEMM.
 */
#ifndef FLORAL_MODEL_H
#define FLORAL_MODEL_H


#define FLORAL_MAX_LAYERS 16
#define FLORAL_MAX_ADAPTORS 64

typedef enum FloralTask
{
	FLORAL_CLASSIFICATION,
	FLORAL_REGRESSION
} FloralTask;

typedef enum FloralActivation
{
	FLORAL_RELU,
	FLORAL_TANH,
	FLORAL_IDENTITY
} FloralActivation;

/* how a tenant's mixture is found (option "router") */
typedef enum FloralRouterKind
{
	FLORAL_ROUTER_PAPER,		/* the paper's: logits learned by SGD, with noise */
	FLORAL_ROUTER_PROBE			/* one-hot probe before each training (router.c) */
} FloralRouterKind;

typedef struct FloralLayer
{
	int			in;
	int			out;
	int			rank;			/* r_l; 0 when the model has no adaptors */
	int64		W;				/* offsets into the parameter vector */
	int64		b;
	/* offsets into the adaptor bank (which starts at base_size) */
	int64		U;				/* U of adaptor c at U + c * rank * in */
	int64		V;				/* V of adaptor c at V + c * out * rank */
	int64		beta;			/* beta of adaptor c at beta + c * out */
} FloralLayer;

typedef struct FloralSpec
{
	char		name[NAMEDATALEN * 2];
	int32		round;			/* current round (when loaded) */

	/*
	 * Loaded under a lock: everything read after it must use a fresh
	 * snapshot, since the statement's own snapshot predates the lock and
	 * would miss what was committed while we waited for it.
	 */
	bool		locked;
	FloralTask	task;
	FloralActivation activation;
	int			nlayers;
	int			nadaptors;		/* C; 0 is plain FedAvg */
	bool		private_adaptors;	/* Local Adaptor baseline */
	bool		ensemble;		/* Ensemble baseline: the bank is C full models */
	FloralRouterKind router;
	bool		random_v;		/* option adaptor_init "random": V drawn, not 0 */
	bool		reseed;			/* option reseed: unused adaptors re-seeded (router.c) */
	float		alpha;
	float		min_prob;
	float		noise;
	bool		precondition;
	float		precondition_eps;
	float		server_lr;
	float		dp_clip;		/* bound on a tenant's update norm; 0: none */
	float		dp_noise;		/* Gaussian noise multiplier of a branch's sums */
	float		dp_max_examples;	/* cap on a tenant's aggregation weight; 0: none */
	int64		seed;
	FloralLayer layers[FLORAL_MAX_LAYERS];

	int64		base_size;		/* floats in the base part */
	int64		adaptor_offset; /* == base_size */
	int64		adaptor_size;	/* floats in the whole adaptor bank */
	int64		nparams;		/* base_size + adaptor_size */
	int64		member_size;	/* Ensemble: floats of one member; else 0 */
} FloralSpec;

/*
 * What is federated: the base, plus the bank unless it is private.  Rounds,
 * contributions and branch updates hold exactly this many values; a private
 * bank lives only on its tenant's row.
 */
#define SPEC_SHARED_SIZE(s) ((s)->private_adaptors ? (s)->base_size : (s)->nparams)
/* adaptors whose weights M_c are federated: none when they are private */
#define SPEC_SHARED_ADAPTORS(s) ((s)->private_adaptors ? 0 : (s)->nadaptors)

#define SPEC_INPUTS(s)	((s)->layers[0].in)
#define SPEC_OUTPUTS(s) ((s)->layers[(s)->nlayers - 1].out)
#define SPEC_WIDEST(s)	floral_spec_widest(s)

extern void floral_spec_layout(FloralSpec *spec, const int *widths,
							   const int *ranks);
extern int	floral_spec_widest(const FloralSpec *spec);
extern int	floral_rank_for(float rho, int in, int out);
extern void floral_init_params(const FloralSpec *spec, float *params);
extern void floral_init_private_bank(const FloralSpec *spec, float *bank);
extern void floral_adaptor_axpy(const FloralSpec *spec, int c, double w,
								const float *bank, double *acc);
extern void floral_adaptor_scale(const FloralSpec *spec, int c, double w,
								 double *acc);
extern FloralTask floral_task_from_name(const char *name);
extern FloralActivation floral_activation_from_name(const char *name);
extern FloralRouterKind floral_router_from_name(const char *name);
extern bool floral_adaptor_init_from_name(const char *name);

#endif
