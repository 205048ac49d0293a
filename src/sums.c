/*
 * sums.c
 *	  The hierarchical sums of FloralAvg: adding tenants, adding partial
 *	  sums, and turning the sums into the next round.
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "sums.h"

int64
floral_sums_length(const FloralSpec *spec)
{
	return spec->private_adaptors ? spec->base_size : spec->nparams;
}

void
floral_sums_init(FloralSums *s, const FloralSpec *spec)
{
	memset(s, 0, sizeof(*s));
	s->spec = spec;
	s->nsums = floral_sums_length(spec);
	s->v = palloc_extended(sizeof(double) * Max(s->nsums, 1),
						   MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
}

void
floral_sums_reset(FloralSums *s)
{
	s->N = 0.0;
	memset(s->M, 0, sizeof(s->M));
	memset(s->v, 0, sizeof(double) * s->nsums);
	s->tenants = 0;
	s->loss_sum = 0.0;
	s->n_max = 0.0;
}

/*
 * One pass over the parameters: the base with weight n, each shared
 * adaptor with weight n * pi_c.  Private adaptors are never aggregated, but
 * are checked too.
 */
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

bool
floral_sums_add_tenant(FloralSums *s, double n, const float *pi,
					   float *params, double loss, const float *reset_to)
{
	const FloralSpec *spec = s->spec;
	double	   *v = s->v;
	uint32		bad = 0;

	s->N += n;
	s->n_max = Max(s->n_max, n);
	s->tenants++;
	s->loss_sum += n * loss;
	/* the base's sums and finiteness in one pass */
	if (reset_to)
		for (int64 i = 0; i < spec->base_size; i++)
		{
			uint32		u;

			memcpy(&u, &params[i], sizeof(u));
			bad |= ((u & 0x7f800000) == 0x7f800000);
			v[i] += n * params[i];
			params[i] = reset_to[i];
		}
	else
		for (int64 i = 0; i < spec->base_size; i++)
		{
			uint32		u;

			memcpy(&u, &params[i], sizeof(u));
			bad |= ((u & 0x7f800000) == 0x7f800000);
			v[i] += n * params[i];
		}
	if (!spec->private_adaptors)
	{
		const float *bank = params + spec->adaptor_offset;

		for (int c = 0; c < spec->nadaptors; c++)
		{
			double		w = n * pi[c];

			s->M[c] += w;
			if (w != 0.0)
				floral_adaptor_axpy(spec, c, w, bank, v + spec->base_size);
		}
	}
	/* the adaptors are checked also when private: the tenant keeps those */
	if (any_not_finite(params + spec->adaptor_offset, spec->adaptor_size))
		bad = 1;
	if (reset_to)
		memcpy(params + spec->adaptor_offset, reset_to + spec->adaptor_offset,
			   sizeof(float) * spec->adaptor_size);
	return bad == 0;
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
floral_sums_add_values(FloralSums *s, int64 offset, const double *values, int64 n)
{
	Assert(offset >= 0 && offset + n <= s->nsums);
	for (int64 i = 0; i < n; i++)
		s->v[offset + i] += values[i];
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
