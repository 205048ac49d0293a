/*
 * model.c
 *	  Model layout, adaptor ranks and seeded initialisation.
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "model.h"
#include "rng.h"
#include "tensor.h"

PG_FUNCTION_INFO_V1(floral_rank);

/*
 * r_l = max(1, floor(rho * in*out / (in+out))) for a budget fraction rho < 1,
 * else round(rho): FLORAL.md, "Rank".
 */
int
floral_rank_for(float rho, int in, int out)
{
	if (rho < 1.0f)
	{
		double		r = floor((double) rho * in * out / (double) (in + out));

		return (int) Max(1.0, r);
	}
	return (int) rint(rho);
}

/* SQL-callable so that floral_create_model computes ranks the same way */
Datum
floral_rank(PG_FUNCTION_ARGS)
{
	float		rho = PG_GETARG_FLOAT4(0);
	int			in = PG_GETARG_INT32(1);
	int			out = PG_GETARG_INT32(2);

	PG_RETURN_INT32(floral_rank_for(rho, in, out));
}

/*
 * Ensemble: no base, C members each laid out like a base (model.h).  The
 * layers' W and b are offsets inside a member; there are no factors.
 */
static void
ensemble_layout(FloralSpec *spec, const int *widths)
{
	int64		off = 0;

	for (int l = 0; l < spec->nlayers; l++)
	{
		FloralLayer *layer = &spec->layers[l];

		layer->in = widths[l];
		layer->out = widths[l + 1];
		layer->rank = 0;
		layer->W = off;
		off += (int64) layer->out * layer->in;
		layer->b = off;
		off += layer->out;
		layer->U = layer->V = layer->beta = 0;
	}
	spec->member_size = off;
	spec->base_size = 0;
	spec->adaptor_offset = 0;
	spec->adaptor_size = (int64) spec->nadaptors * off;
	spec->nparams = spec->adaptor_size;
}

void
floral_spec_layout(FloralSpec *spec, const int *widths, const int *ranks)
{
	int64		off = 0;
	int			C = spec->nadaptors;

	if (spec->ensemble)
	{
		ensemble_layout(spec, widths);
		return;
	}
	spec->member_size = 0;
	for (int l = 0; l < spec->nlayers; l++)
	{
		FloralLayer *layer = &spec->layers[l];

		layer->in = widths[l];
		layer->out = widths[l + 1];
		layer->rank = C > 0 ? ranks[l] : 0;
		layer->W = off;
		off += (int64) layer->out * layer->in;
		layer->b = off;
		off += layer->out;
	}
	spec->base_size = off;
	spec->adaptor_offset = off;
	off = 0;
	for (int l = 0; l < spec->nlayers; l++)
	{
		FloralLayer *layer = &spec->layers[l];
		int64		r = layer->rank;

		layer->U = off;
		off += C * r * layer->in;
		layer->V = off;
		off += C * layer->out * r;
		layer->beta = off;
		off += (int64) C * layer->out;
	}
	spec->adaptor_size = off;
	spec->nparams = spec->base_size + spec->adaptor_size;
}

int
floral_spec_widest(const FloralSpec *spec)
{
	int			w = spec->layers[0].in;

	for (int l = 0; l < spec->nlayers; l++)
		w = Max(w, spec->layers[l].out);
	return w;
}

static void init_base(const FloralSpec *spec, pg_prng_state *rng, float *base);
static void init_random_v(const FloralSpec *spec, pg_prng_state *rng, float *bank);

/*
 * FLORAL.md, "Initialisation": base W and b uniform in +-1/sqrt(in),
 * U uniform in +-sqrt(6/in), V = 0, beta = 0.  One stream, drawn in layout
 * order, so that a model created with the same seed is bit-for-bit the same.
 */
void
floral_init_params(const FloralSpec *spec, float *params)
{
	pg_prng_state rng;

	floral_rng_seed(&rng, (uint64) spec->seed, 0, NULL);
	memset(params, 0, sizeof(float) * spec->nparams);

	if (spec->ensemble)
	{
		/* each member is a base of its own, drawn member after member */
		for (int c = 0; c < spec->nadaptors; c++)
			init_base(spec, &rng, params + (int64) c * spec->member_size);
		return;
	}
	init_base(spec, &rng, params);
	for (int l = 0; l < spec->nlayers; l++)
	{
		const FloralLayer *layer = &spec->layers[l];
		float		bound = sqrtf(6.0f / (float) layer->in);
		int64		nU = (int64) spec->nadaptors * layer->rank * layer->in;

		for (int64 i = 0; i < nU; i++)
			params[spec->adaptor_offset + layer->U + i] = floral_rng_uniform(&rng, -bound, bound);
		/* V and beta stay zero: a fresh adaptor changes nothing */
	}
	if (spec->random_v)
		init_random_v(spec, &rng, params + spec->adaptor_offset);
}

/*
 * adaptor_init "random": V drawn too, after everything else (so that the
 * paper's draws are the same either way), so that the C adaptors are
 * different functions from the start and a tenant's data can tell them
 * apart in the first round.  Each adaptor's initial term is small next to
 * the base's: with Var(U) = 2/in and Var(W) = 1/(3 in) as drawn,
 * Var(V U x) / Var(W x) = 6 r Var(V) = 2 r b^2 for V uniform in +-b, so
 * b = sqrt(kappa / (2 r)) makes it kappa = 0.1 (a third of the base's
 * standard deviation) whatever the rank.
 */
static void
init_random_v(const FloralSpec *spec, pg_prng_state *rng, float *bank)
{
	for (int l = 0; l < spec->nlayers; l++)
	{
		const FloralLayer *layer = &spec->layers[l];
		int64		nV = (int64) spec->nadaptors * layer->out * layer->rank;
		float		bound;

		if (layer->rank == 0)
			continue;
		bound = sqrtf(0.1f / (2.0f * layer->rank));
		for (int64 i = 0; i < nV; i++)
			bank[layer->V + i] = floral_rng_uniform(rng, -bound, bound);
	}
}

/*
 * The private bank a tenant of a Local Adaptor model starts from: the bank
 * floral_init_params draws.  It is never federated, so rounds do not carry
 * it; it is drawn again from the model's seed where it is needed.
 */
void
floral_init_private_bank(const FloralSpec *spec, float *bank)
{
	float	   *all = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);

	floral_init_params(spec, all);
	memcpy(bank, all + spec->adaptor_offset, sizeof(float) * spec->adaptor_size);
	pfree(all);
}

/* W and b of every layer, uniform in +-1/sqrt(in), at base */
static void
init_base(const FloralSpec *spec, pg_prng_state *rng, float *base)
{
	for (int l = 0; l < spec->nlayers; l++)
	{
		const FloralLayer *layer = &spec->layers[l];
		float		bound = 1.0f / sqrtf((float) layer->in);
		int64		nW = (int64) layer->out * layer->in;

		for (int64 i = 0; i < nW; i++)
			base[layer->W + i] = floral_rng_uniform(rng, -bound, bound);
		for (int i = 0; i < layer->out; i++)
			base[layer->b + i] = floral_rng_uniform(rng, -bound, bound);
	}
}

FloralTask
floral_task_from_name(const char *name)
{
	if (strcmp(name, "classification") == 0)
		return FLORAL_CLASSIFICATION;
	if (strcmp(name, "regression") == 0)
		return FLORAL_REGRESSION;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown task \"%s\"", name),
			 errhint("Use \"classification\" or \"regression\".")));
	pg_unreachable();
}

FloralRouterKind
floral_router_from_name(const char *name)
{
	if (strcmp(name, "paper") == 0)
		return FLORAL_ROUTER_PAPER;
	if (strcmp(name, "probe") == 0)
		return FLORAL_ROUTER_PROBE;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown router \"%s\"", name),
			 errhint("Use \"paper\" or \"probe\".")));
	pg_unreachable();
}

/* true for "random" (V drawn at initialisation), false for "paper" (V = 0) */
bool
floral_adaptor_init_from_name(const char *name)
{
	if (strcmp(name, "paper") == 0)
		return false;
	if (strcmp(name, "random") == 0)
		return true;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown adaptor_init \"%s\"", name),
			 errhint("Use \"paper\" or \"random\".")));
	pg_unreachable();
}

FloralActivation
floral_activation_from_name(const char *name)
{
	if (strcmp(name, "relu") == 0)
		return FLORAL_RELU;
	if (strcmp(name, "tanh") == 0)
		return FLORAL_TANH;
	if (strcmp(name, "identity") == 0)
		return FLORAL_IDENTITY;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown activation \"%s\"", name),
			 errhint("Use \"relu\", \"tanh\" or \"identity\".")));
	pg_unreachable();
}

/*
 * Adaptor c is spread over the bank: one U, V and beta segment per layer.
 * Calls fn(start, len) for each, so that code working on one adaptor never
 * repeats the layout.
 */
static inline void
for_adaptor_segments(const FloralSpec *spec, int c,
					 void (*fn) (int64 start, int64 len, void *arg), void *arg)
{
	/* an Ensemble member is one contiguous segment */
	if (spec->ensemble)
	{
		fn((int64) c * spec->member_size, spec->member_size, arg);
		return;
	}
	for (int l = 0; l < spec->nlayers; l++)
	{
		const FloralLayer *layer = &spec->layers[l];
		int64		nU = (int64) layer->rank * layer->in;
		int64		nV = (int64) layer->out * layer->rank;

		fn(layer->U + c * nU, nU, arg);
		fn(layer->V + c * nV, nV, arg);
		fn(layer->beta + (int64) c * layer->out, layer->out, arg);
	}
}

typedef struct SegmentOp
{
	double		w;
	const float *src;
	double	   *acc;
} SegmentOp;

static void
segment_axpy(int64 start, int64 len, void *arg)
{
	SegmentOp  *op = arg;

	for (int64 i = start; i < start + len; i++)
		op->acc[i] += op->w * op->src[i];
}

static void
segment_scale(int64 start, int64 len, void *arg)
{
	SegmentOp  *op = arg;

	for (int64 i = start; i < start + len; i++)
		op->acc[i] *= op->w;
}

/* acc += w * (adaptor c of bank); acc and bank are laid out as a bank */
void
floral_adaptor_axpy(const FloralSpec *spec, int c, double w,
					const float *bank, double *acc)
{
	SegmentOp	op = {w, bank, acc};

	for_adaptor_segments(spec, c, segment_axpy, &op);
}

/* acc *= w over adaptor c's segments */
void
floral_adaptor_scale(const FloralSpec *spec, int c, double w, double *acc)
{
	SegmentOp	op = {w, NULL, acc};

	for_adaptor_segments(spec, c, segment_scale, &op);
}
