/*
 * router.c
 *	  The one-hot probe router (model option "router": "probe") and the
 *	  re-seeding of unused adaptors (option "reseed").
 *
 * Why: with the paper's router every tenant starts from the uniform
 * mixture, and at initialisation (V = 0) every adaptor is the same function,
 * so the mixture gradient is zero and every adaptor is averaged over every
 * tenant alike.  Groups separate only as the router noise makes small
 * differences grow, and two groups often settle on one adaptor
 * (bench/results: 4 groups on 2-3 adaptors on rotate).
 *
 * The probe asks the data instead: before each local training the tenant
 * measures the loss of each adaptor alone over its rows (C forward passes,
 * nothing trained) and starts from the posterior log-odds of the C
 * adaptors, z_c = -(L_c - min L), L_c the summed cross-entropy (or squared
 * error) with mixture one-hot(c).  It is an E step of EM over the tenant's
 * whole data, as floral_personalize's one_hot method does for a newcomer;
 * the router's SGD then refines z during the epoch as usual.  The tenant's
 * state and what it sends are unchanged: C logits, and the same sums.
 */
#include "postgres.h"

#include <math.h>

#include "miscadmin.h"

#include "rng.h"
#include "router.h"

void
floral_router_probe(FloralNet *net, FloralRows *rows, const FloralTenantRows *trows,
					const float *base, const float *bank, int batch_size,
					float *Y, float *z)
{
	int			C = net->spec->nadaptors;
	double		L[FLORAL_MAX_ADAPTORS];
	double		best = INFINITY;

	for (int c = 0; c < C; c++)
	{
		float		onehot[FLORAL_MAX_ADAPTORS] = {0};

		onehot[c] = 1.0f;
		L[c] = 0.0;
		for (int64 s = 0; s < trows->nrows; s += batch_size)
		{
			int			B = (int) Min((int64) batch_size, trows->nrows - s);

			CHECK_FOR_INTERRUPTS();
			floral_rows_gather(rows, trows, NULL, s, B, net->X, Y);
			floral_router_fixed(net, onehot);
			floral_forward(net, base, bank, B);
			L[c] += floral_loss(net, Y, B, false, NULL) * B;
		}
		best = Min(best, L[c]);
	}
	/* a probe that diverged says nothing: keep the logits */
	if (!isfinite(best))
		return;
	for (int c = 0; c < C; c++)
		z[c] = (float) Max(-(L[c] - best), -FLORAL_PROBE_FLOOR);
}

/*
 * Re-seeding (option "reseed"), the server's half.  When two groups settle
 * on one adaptor, another adaptor is left over: nobody's mixture leans on
 * it, it is averaged from nothing and stays as it is.  As k-means does with
 * an empty cluster, it is made a copy of the busiest adaptor, each value
 * scaled by 1 + FLORAL_RESEED_JITTER * u, u uniform in [-1, 1) from the
 * model's seed and round.  The copy and its original then differ a little,
 * differently for the groups that share the original; the probe router
 * (above) turns that small difference into each tenant's choice, so the
 * merged groups can part.  The paper's router, whose logits remember the
 * old choice, would hardly try the copy.  At most one adaptor per round.
 * Returns the adaptor re-seeded (0-based), or -1.
 */
int
floral_reseed_unused(const FloralSpec *spec, const double *M, float *bank)
{
	int			C = spec->nadaptors;
	double		total = 0.0;
	int			low = 0,
				high = 0;
	pg_prng_state rng;

	for (int c = 0; c < C; c++)
	{
		total += M[c];
		if (M[c] < M[low])
			low = c;
		if (M[c] > M[high])
			high = c;
	}
	if (C < 2 || !(total > 0.0) || M[low] >= FLORAL_RESEED_SHARE / C * total)
		return -1;
	floral_rng_seed(&rng, (uint64) spec->seed, (uint64) spec->round, "reseed");
	for (int l = 0; l < spec->nlayers; l++)
	{
		const FloralLayer *layer = &spec->layers[l];
		int64		nU = (int64) layer->rank * layer->in;
		int64		nV = (int64) layer->out * layer->rank;
		int64		from[3] = {layer->U + high * nU, layer->V + high * nV, layer->beta + (int64) high * layer->out};
		int64		to[3] = {layer->U + low * nU, layer->V + low * nV, layer->beta + (int64) low * layer->out};
		int64		len[3] = {nU, nV, layer->out};

		for (int k = 0; k < 3; k++)
			for (int64 i = 0; i < len[k]; i++)
				bank[to[k] + i] = bank[from[k] + i] *
					(1.0f + FLORAL_RESEED_JITTER * floral_rng_uniform(&rng, -1.0f, 1.0f));
	}
	return low;
}
