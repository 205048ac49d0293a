/*
 * sums.h
 *	  The hierarchical sums of FloralAvg (FLORAL.md, "Aggregation").
 *
 * Over a set of tenants k with n_k examples and mixtures pi_k:
 *
 *	  N = sum n_k,	S_base = sum n_k base_k,
 *	  M_c = sum n_k pi_kc,	S_c = sum n_k pi_kc adaptor_kc
 *
 * The next round is base = S_base / N and adaptor_c = S_c / M_c.  Sums over
 * disjoint sets of tenants simply add, so a training call, a branch and the
 * coordinator all keep the same structure: a call adds its tenants, the
 * catalog keeps one row of sums per call, aggregation adds the calls (or
 * the branches' updates) and divides.  Everything is in double precision so
 * that the order of the additions hardly matters.
 *
 * The vector of sums is laid out like the parameters (model.h), but holds
 * only what is federated: with private adaptors (the Local Adaptor
 * baseline) just the base.
 */
#ifndef FLORAL_SUMS_H
#define FLORAL_SUMS_H

#include "model.h"

/*
 * Tenants trained one after another are summed a few at a time: one pass
 * over the double-precision sums for several tenants' parameters, so that
 * a call over many small tenants reads and writes the sums (twice the
 * model's size) a fraction of the times it trains.
 */
#define FLORAL_SUMS_DEFER 8

typedef struct FloralSums
{
	const FloralSpec *spec;
	int64		nsums;			/* base_size, plus adaptor_size if shared */
	double		N;
	double		M[FLORAL_MAX_ADAPTORS];
	double	   *v;				/* nsums: S_base, then S_c laid out as the bank */
	int			tenants;
	double		loss_sum;		/* sum n_k loss_k */
	double		n_max;			/* largest n_k: the scale of one tenant's influence */

	/* tenants added but not yet summed (floral_sums_defer_tenant) */
	int			npending;
	double		pending_n[FLORAL_SUMS_DEFER];
	float		pending_pi[FLORAL_SUMS_DEFER][FLORAL_MAX_ADAPTORS];
	float	   *pending_params[FLORAL_SUMS_DEFER];
	const char *pending_name[FLORAL_SUMS_DEFER];
} FloralSums;

/* values of the sums vector kept in one catalog row (64 MB of doubles) */
#define FLORAL_SUMS_CHUNK ((int64) 8 * 1024 * 1024)

extern void floral_sums_init(FloralSums *s, const FloralSpec *spec);

/*
 * Queue one tenant's trained parameters (the vector must stay untouched
 * until the next floral_sums_flush); the counts are added at once.  Returns
 * true when the queue is full and must be flushed.
 */
extern bool floral_sums_defer_tenant(FloralSums *s, double n, const float *pi,
									 float *params, double loss, const char *name);

/*
 * Sum the queued tenants in one pass, resetting each queued vector to
 * reset_to on the way.  Returns the name of the first queued tenant with a
 * parameter that is not finite, or NULL.
 */
extern const char *floral_sums_flush(FloralSums *s, const float *reset_to);

/* add sums another call or database computed over other tenants */
extern void floral_sums_add_partial(FloralSums *s, double N, const double *M,
									double loss_sum, int tenants, double n_max);
extern void floral_sums_add_floats(FloralSums *s, int64 offset,
								   const float *values, int64 n);

/*
 * The next round from the sums and the previous round, with the server step
 * server_lr (1 is plain averaging).  Turns s->v into averages on the way.
 */
extern void floral_sums_finish(FloralSums *s, const float *prev, float *next,
							   double server_lr);

#endif
