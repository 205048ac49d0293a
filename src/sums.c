/*
 * sums.c
 *	  The hierarchical sums of FloralAvg: adding tenants, adding partial
 *	  sums, and turning the sums into the next round.
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "sums.h"

/* what is federated: the base, and the bank unless it is private */
static int64
sums_length(const FloralSpec *spec)
{
	return SPEC_SHARED_SIZE(spec);
}

void
floral_sums_init(FloralSums *s, const FloralSpec *spec)
{
	memset(s, 0, sizeof(*s));
	s->spec = spec;
	s->nsums = sums_length(spec);
	s->v = palloc_extended(sizeof(double) * Max(s->nsums, 1),
						   MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
}

/*
 * Is any of n floats infinite or NaN?  On the bits (all exponent bits set),
 * so that the compiler can vectorise it: a floating-point reduction it
 * could not reorder.
 */
static bool
any_not_finite(const float *x, int64 n)
{
	uint32		bad = 0;

	for (int64 i = 0; i < n; i++)
	{
		uint32		u;

		memcpy(&u, &x[i], sizeof(u));
		bad |= ((u & 0x7f800000) == 0x7f800000);
	}
	return bad != 0;
}

/*
 * A tenant adds its base with weight n and each shared adaptor with weight
 * n * pi_c; private adaptors are never aggregated (but are checked).
 */
bool
floral_sums_defer_tenant(FloralSums *s, double n, const float *pi,
						 float *params, double loss, const char *name)
{
	int			k = s->npending;

	Assert(k < FLORAL_SUMS_DEFER);
	s->N += n;
	s->n_max = Max(s->n_max, n);
	s->tenants++;
	s->loss_sum += n * loss;
	s->pending_n[k] = n;
	if (s->spec->nadaptors > 0)
		memcpy(s->pending_pi[k], pi, sizeof(float) * s->spec->nadaptors);
	s->pending_params[k] = params;
	s->pending_name[k] = name;
	s->npending++;
	return s->npending == FLORAL_SUMS_DEFER;
}

/* values of the base summed per block, so that the block of sums stays in cache */
#define SUMS_BLOCK 2048

const char *
floral_sums_flush(FloralSums *s, const float *reset_to)
{
	const FloralSpec *spec = s->spec;
	int			K = s->npending;
	uint32		bad[FLORAL_SUMS_DEFER] = {0};
	const char *first_bad = NULL;

	for (int64 b0 = 0; b0 < spec->base_size; b0 += SUMS_BLOCK)
	{
		int64		b1 = Min(b0 + SUMS_BLOCK, spec->base_size);
		double	   *v = s->v;

		for (int k = 0; k < K; k++)
		{
			float	   *p = s->pending_params[k];
			double		n = s->pending_n[k];
			uint32		b = 0;

			/* the sums, the finiteness check and the reset in one pass */
			for (int64 i = b0; i < b1; i++)
			{
				uint32		u;

				memcpy(&u, &p[i], sizeof(u));
				b |= ((u & 0x7f800000) == 0x7f800000);
				v[i] += n * p[i];
				p[i] = reset_to[i];
			}
			bad[k] |= b;
		}
	}
	for (int k = 0; k < K; k++)
	{
		float	   *bank = s->pending_params[k] + spec->adaptor_offset;

		if (!spec->private_adaptors)
			for (int c = 0; c < spec->nadaptors; c++)
			{
				double		w = s->pending_n[k] * s->pending_pi[k][c];

				s->M[c] += w;
				if (w != 0.0)
					floral_adaptor_axpy(spec, c, w, bank, s->v + spec->base_size);
			}
		/* the adaptors are checked also when private: the tenant keeps those */
		if (any_not_finite(bank, spec->adaptor_size))
			bad[k] = 1;
		memcpy(bank, reset_to + spec->adaptor_offset, sizeof(float) * spec->adaptor_size);
		if (bad[k] && first_bad == NULL)
			first_bad = s->pending_name[k];
	}
	s->npending = 0;
	return first_bad;
}

void
floral_sums_add_partial(FloralSums *s, double N, const double *M,
						double loss_sum, int tenants, double n_max)
{
	s->N += N;
	s->loss_sum += loss_sum;
	s->tenants += tenants;
	s->n_max = Max(s->n_max, n_max);
	if (s->spec->private_adaptors)
		return;
	for (int c = 0; c < s->spec->nadaptors; c++)
		s->M[c] += M[c];
}

void
floral_sums_add_floats(FloralSums *s, int64 offset, const float *values, int64 n)
{
	Assert(offset >= 0 && offset + n <= s->nsums);
	for (int64 i = 0; i < n; i++)
		s->v[offset + i] += values[i];
}

/*
 * theta <- theta_prev - server_lr * (theta_prev - theta_avg), where an
 * adaptor that nobody used (M_c = 0) keeps its previous value, and private
 * adaptors keep the round's (they are never shared).
 */
void
floral_sums_finish(FloralSums *s, const float *prev, float *next, double server_lr)
{
	const FloralSpec *spec = s->spec;
	const float *prev_bank = prev + spec->adaptor_offset;
	float	   *next_bank = next + spec->adaptor_offset;
	double	   *bank = s->v + spec->base_size;
	double		lr = server_lr;

	Assert(s->N > 0);
	for (int64 i = 0; i < spec->base_size; i++)
	{
		double		avg = s->v[i] / s->N;

		next[i] = (float) (prev[i] - lr * (prev[i] - avg));
	}
	if (spec->private_adaptors)
	{
		memcpy(next_bank, prev_bank, sizeof(float) * spec->adaptor_size);
		return;
	}
	/* turn the sums into averages; an unused adaptor "averages" to itself */
	for (int c = 0; c < spec->nadaptors; c++)
	{
		if (s->M[c] > 0.0)
			floral_adaptor_scale(spec, c, 1.0 / s->M[c], bank);
		else
			floral_adaptor_axpy(spec, c, 1.0, prev_bank, bank);
	}
	for (int64 i = 0; i < spec->adaptor_size; i++)
		next_bank[i] = (float) (prev_bank[i] - lr * (prev_bank[i] - bank[i]));
}
