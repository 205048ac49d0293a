/*
 * privacy.c
 *	  The privacy accountant: cumulative (epsilon, delta) of rounds of the
 *	  Gaussian mechanism, by Renyi differential privacy.
 *
 * A round in which a tenant takes part is the Gaussian mechanism with noise
 * multiplier sigma (aggregate.c, add_dp_noise).  If each round includes a
 * tenant with probability q independently (Poisson sampling), the round is
 * the sampled Gaussian mechanism, whose RDP at an integer order alpha >= 2
 * is exactly (Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of
 * the Sampled Gaussian Mechanism", section 3.3):
 *
 *	  RDP(alpha) = log A_alpha / (alpha - 1),
 *	  A_alpha = sum_{k=0}^{alpha} C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 sigma^2))
 *
 * With q = 1 this is alpha / (2 sigma^2), the Gaussian mechanism's.  RDP
 * adds up over rounds, and converts to (epsilon, delta) by
 * epsilon = min_alpha T RDP(alpha) + log(1/delta) / (alpha - 1)
 * (Mironov 2017, proposition 3), over the orders 2..FLORAL_DP_MAX_ORDER.
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "funcapi.h"
#include "utils/builtins.h"

#define FLORAL_DP_MAX_ORDER 256

PG_FUNCTION_INFO_V1(floral_dp_epsilon);

/* log(exp(a) + exp(b)), without overflow */
static double
log_add(double a, double b)
{
	double		hi = Max(a, b),
				lo = Min(a, b);

	if (hi == -INFINITY)
		return -INFINITY;
	return hi + log1p(exp(lo - hi));
}

/* RDP of one round of the sampled Gaussian mechanism at integer order alpha */
static double
rdp_sampled_gaussian(double q, double sigma, int alpha)
{
	double		log_a = -INFINITY;

	if (q >= 1.0)
		return alpha / (2.0 * sigma * sigma);
	for (int k = 0; k <= alpha; k++)
	{
		double		log_binom = lgamma(alpha + 1.0) - lgamma(k + 1.0) - lgamma(alpha - k + 1.0);
		double		term = log_binom + (alpha - k) * log1p(-q) + k * log(q) +
			((double) k * k - k) / (2.0 * sigma * sigma);

		log_a = log_add(log_a, term);
	}
	return log_a / (alpha - 1);
}

/*
 * floral_dp_epsilon(noise float8, sampling float8, rounds int, delta float8)
 * returns (epsilon float8, best_order int): the cumulative privacy of
 * rounds rounds of the Gaussian mechanism with noise multiplier noise, each
 * including a tenant with probability sampling.  Infinite without noise.
 */
Datum
floral_dp_epsilon(PG_FUNCTION_ARGS)
{
	double		sigma = PG_GETARG_FLOAT8(0);
	double		q = PG_GETARG_FLOAT8(1);
	int32		rounds = PG_GETARG_INT32(2);
	double		delta = PG_GETARG_FLOAT8(3);
	double		best = INFINITY;
	int			best_order = 0;
	TupleDesc	desc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "floral_dp_epsilon must return a record");
	if (!(sigma >= 0) || isinf(sigma))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("noise must be a finite number >= 0")));
	if (!(q > 0 && q <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("sampling must be in (0, 1]")));
	if (rounds < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rounds must be >= 0")));
	if (!(delta > 0 && delta < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("delta must be in (0, 1)")));

	if (rounds == 0)
		best = 0.0;
	else if (sigma > 0)
		for (int alpha = 2; alpha <= FLORAL_DP_MAX_ORDER; alpha++)
		{
			double		eps = rounds * rdp_sampled_gaussian(q, sigma, alpha) +
				log(1.0 / delta) / (alpha - 1);

			if (eps < best)
			{
				best = eps;
				best_order = alpha;
			}
		}
	values[0] = Float8GetDatum(best);
	values[1] = Int32GetDatum(best_order);
	if (best_order == 0)
		nulls[1] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
