/*
 * nn.h
 *	  Forward and backward passes of a FLoRAL MLP on a batch of rows, and
 *	  the SGD step.
 *
 * A FloralNet is the scratch space for one model and one largest batch
 * size.  It is allocated once per call (training) or once per cached model
 * (prediction), so the per-batch and per-row paths allocate nothing and
 * hand whole batches to BLAS.
 */
#ifndef FLORAL_NN_H
#define FLORAL_NN_H

#include "model.h"

typedef struct FloralNet
{
	const FloralSpec *spec;
	int			max_batch;

	float	   *X;				/* input batch, B x in */
	float	   *Z[FLORAL_MAX_LAYERS];	/* pre-activations, B x out */
	float	   *H[FLORAL_MAX_LAYERS];	/* activations (== Z for the last) */
	float	   *A[FLORAL_MAX_LAYERS];	/* input projected on U: B x C*r */
	float	   *As[FLORAL_MAX_LAYERS];	/* A scaled by alpha * m_c */
	float	   *G;				/* dZ V_c, B x C*r (largest layer) */
	float	   *Gp;				/* G preconditioned, B x C*r (SGD step) */
	float	   *T;				/* As_c preconditioned, B x r (SGD step) */
	float	   *dZ;				/* B x widest */
	float	   *dX;				/* B x widest */
	float	   *bias;			/* effective bias, widest */
	double	   *colsum;			/* widest */
	/* preconditioning scratch, for the largest r of any layer */
	float	   *ugram;			/* Gram matrices U_c U_c^T of one layer */
	float	   *vgram;			/* V_c^T V_c, r x r */
	float	   *inv;			/* (gram + eps I)^-1, r x r */
	double	   *chol;			/* its Cholesky factor and that one's inverse */
	float	   *pscratch;		/* a gradient block, r x widest */

	/*
	 * Ensemble (ensemble.h): one plain net per member, sharing X, over a
	 * spec that describes one member as a base without adaptors.
	 */
	FloralSpec *member_spec;
	struct FloralNet *member[FLORAL_MAX_ADAPTORS];

	/* the mixture used by the last forward pass */
	float		pi[FLORAL_MAX_ADAPTORS];
	float		m[FLORAL_MAX_ADAPTORS];
	double		dm[FLORAL_MAX_ADAPTORS];
} FloralNet;

/*
 * What a fixed mixture makes of a model's layers, worked out once per tenant
 * so that prediction repeats none of it per row: the bank the adaptors come
 * from, the weights alpha * max(pi_c, min_prob) of the adaptors' products,
 * and each layer's effective bias b_l + alpha * sum_c m_c beta_c.
 */
typedef struct FloralMixture
{
	const float *bank;			/* the shared bank or a private one */
	float		am[FLORAL_MAX_ADAPTORS];	/* alpha * m_c */
	float	   *bias[FLORAL_MAX_LAYERS];	/* one allocation, at bias[0] */
} FloralMixture;

extern FloralNet *floral_net_create(const FloralSpec *spec, int max_batch);

/* fill mix for mixture pi (C values) over base and bank; bias is palloc'd */
extern void floral_mixture_init(const FloralSpec *spec, const float *base,
								const float *bank, const float *pi,
								FloralMixture *mix);
/* a copy of src whose biases live in the current memory context */
extern void floral_mixture_copy(const FloralSpec *spec, const FloralMixture *src,
								FloralMixture *dst);
extern void floral_mixture_free(FloralMixture *mix);

/* mixture from logits z (and router noise u, or NULL), into net->pi/m */
/*
 * The one softmax: p = softmax(x) over n values, computed in double and
 * shifted by the maximum, so it never overflows.  Returns log(sum exp(x)),
 * which the cross-entropy needs.  p may be NULL.
 */
extern double floral_softmax(const float *x, int n, float *p);

/*
 * The mixture a tenant uses, everywhere: its pinned one when set
 * (floral_set_mixture), softmax(logits) when it has logits, else uniform
 * (a tenant nobody trained).
 */
extern void floral_tenant_mixture(const FloralSpec *spec, const float *pinned,
								  const float *logits, float *pi);

extern void floral_router(FloralNet *net, const float *z, const float *u);
/* a fixed mixture (pinned tenants, the uniform mixture for strangers) */
extern void floral_router_fixed(FloralNet *net, const float *pi);
/* gradient of the loss wrt z from net->dm and net->pi */
extern void floral_router_backward(FloralNet *net, float *dz);

/* forward pass of net->X (B rows); returns the output rows (B x K) */
/* base and bank point at the base part and an adaptor bank of the layout */
extern float *floral_forward(FloralNet *net, const float *base,
							 const float *bank, int B);

/*
 * Forward pass of net->X (B rows) for prediction, row i with mixture mix[i]:
 * GEMMs over the whole batch, whatever the tenants.  Only the effective bias
 * and the weights of the adaptors' projections depend on the tenant, so rows
 * of different tenants share every product except where their adaptor banks
 * differ (private adaptors): each run of rows with the same bank has its own.
 * Returns the output rows (B x K).
 */
extern float *floral_forward_mixed(FloralNet *net, const float *base,
								   const FloralMixture *const *mix, int B);

/*
 * Forward pass of one row x, for per-row prediction: matrix-vector
 * products, and the small adaptor terms as plain loops, so that a row costs
 * little more than its base layer's product.
 */
extern float *floral_forward_row(FloralNet *net, const float *base,
								 const FloralMixture *mix, const float *x);

/* what prediction returns from a row of outputs: the class or first output */
extern float floral_output_prediction(const FloralSpec *spec, const float *out);
/* class probabilities (softmax) or, for regression, the outputs, into p */
extern void floral_output_proba(const FloralSpec *spec, const float *out, float *p);

/*
 * Loss of the last forward pass against labels Y (B x ylen) and, when
 * want_grad, the output gradient into net->dZ.  Returns the mean loss;
 * counts correct predictions into *correct when not NULL.
 */
extern double floral_loss(FloralNet *net, const float *Y, int B,
						  bool want_grad, int64 *correct);

/* backward pass: fills grad (nparams floats) and net->dm */
extern void floral_backward(FloralNet *net, const float *base,
							const float *bank, int B,
							float *gbase, float *gbank);

/* FLORAL.md preconditioning of the adaptor factors' gradients, in place */
extern void floral_precondition(FloralNet *net, const float *bank,
								float *gbank);

/*
 * One SGD step with learning rate lr after floral_forward and floral_loss:
 * the same as floral_backward, floral_precondition (when the model asks for
 * it) and params -= lr * grad, but each update is applied by the GEMM that
 * computes its gradient, so no gradient vector is written or read back.
 * Fills net->dm like floral_backward.
 */
extern void floral_sgd_step(FloralNet *net, float *base, float *bank, int B,
							float lr);

#endif
