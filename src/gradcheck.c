/*
 * gradcheck.c
 *	  Test aid: analytic gradients against central finite differences.
 *
 * The regression tests call this to show that the backward pass is the
 * derivative of the forward pass, for the base, the adaptors and the mixture
 * logits, with either loss.  Parameters are drawn at random (seeded) so that
 * every path is exercised: at initialisation V = 0 would hide the gradients
 * of U and of the logits.
 *
 * It also compares the fused SGD step (floral_sgd_step) with the plain one
 * it replaces: backward, preconditioning and an axpy over all parameters.
 */
#include "postgres.h"

#include <math.h>
#include <cblas.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "catalog.h"
#include "nn.h"
#include "rng.h"

PG_FUNCTION_INFO_V1(floral_gradient_check);
PG_FUNCTION_INFO_V1(floral_step_check);

#define GRADCHECK_MAX_PARAMS 20000

static double
loss_at(FloralNet *net, const float *params, const float *z, const float *Y, int B)
{
	const FloralSpec *spec = net->spec;

	if (spec->nadaptors > 0)
		floral_router(net, z, NULL);
	floral_forward(net, params, params + spec->adaptor_offset, B);
	return floral_loss(net, Y, B, false, NULL);
}

static void
put_row(ReturnSetInfo *rsinfo, const char *part, int n, const float *analytic,
		const double *numeric)
{
	double		norm = 0.0,
				diff = 0.0,
				maxabs = 0.0,
				nnorm = 0.0;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	for (int i = 0; i < n; i++)
	{
		double		d = analytic[i] - numeric[i];

		norm += (double) analytic[i] * analytic[i];
		nnorm += numeric[i] * numeric[i];
		diff += d * d;
		maxabs = Max(maxabs, fabs(d));
	}
	values[0] = CStringGetTextDatum(part);
	values[1] = Int32GetDatum(n);
	values[2] = Float8GetDatum(sqrt(norm));
	values[3] = Float8GetDatum(maxabs);
	values[4] = Float8GetDatum(sqrt(diff) / Max(Max(sqrt(norm), sqrt(nnorm)), 1e-12));
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * The preconditioned gradients must solve the systems they come from:
 * (V^T V + eps I) gU' = gU and gV' (U U^T + eps I) = gV.  Reports the
 * residual of those equations, relative to the gradients' norm.
 */
static void
put_precondition_row(ReturnSetInfo *rsinfo, FloralNet *net, const float *bank,
					 const float *gbank)
{
	const FloralSpec *spec = net->spec;
	float	   *pre = palloc(sizeof(float) * spec->adaptor_size);
	float	   *zero = palloc0(sizeof(float) * spec->adaptor_size);
	double	   *resid = palloc0(sizeof(double) * spec->adaptor_size);
	double		eps = spec->precondition_eps;

	memcpy(pre, gbank, sizeof(float) * spec->adaptor_size);
	floral_precondition(net, bank, pre);
	for (int l = 0; l < spec->nlayers; l++)
	{
		const FloralLayer *layer = &spec->layers[l];
		int			r = layer->rank,
					in = layer->in,
					out = layer->out;

		for (int c = 0; c < spec->nadaptors; c++)
		{
			int64		u0 = layer->U + (int64) c * r * in;
			int64		v0 = layer->V + (int64) c * out * r;
			const float *U = bank + u0;
			const float *V = bank + v0;

			/* (V^T V + eps I) pre_U, row i, column k */
			for (int i = 0; i < r; i++)
				for (int k = 0; k < in; k++)
				{
					double		s = eps * pre[u0 + (int64) i * in + k];

					for (int j = 0; j < r; j++)
					{
						double		g = 0.0;

						for (int o = 0; o < out; o++)
							g += (double) V[o * r + i] * V[o * r + j];
						s += g * pre[u0 + (int64) j * in + k];
					}
					resid[u0 + (int64) i * in + k] = s;
				}
			/* pre_V (U U^T + eps I), row o, column i */
			for (int o = 0; o < out; o++)
				for (int i = 0; i < r; i++)
				{
					double		s = eps * pre[v0 + o * r + i];

					for (int j = 0; j < r; j++)
					{
						double		g = 0.0;

						for (int k = 0; k < in; k++)
							g += (double) U[(int64) j * in + k] * U[(int64) i * in + k];
						s += pre[v0 + o * r + j] * g;
					}
					resid[v0 + o * r + i] = s;
				}
			/* beta is not preconditioned */
			for (int k = 0; k < out; k++)
				resid[layer->beta + (int64) c * out + k] = pre[layer->beta + (int64) c * out + k];
		}
	}
	put_row(rsinfo, "precondition", (int) spec->adaptor_size, gbank, resid);
	pfree(pre);
	pfree(zero);
	pfree(resid);
}

/*
 * Check a test batch (features B x in, labels, logits) against the model
 * and read the logits into z; returns B.
 */
static int
check_batch(const FloralSpec *spec, ArrayType *xa, ArrayType *ya,
			ArrayType *za, float *z)
{
	int			B;
	int			C = spec->nadaptors;

	if (ARR_ELEMTYPE(xa) != FLOAT4OID || ARR_NDIM(xa) != 2 ||
		ARR_DIMS(xa)[1] != SPEC_INPUTS(spec) || array_contains_nulls(xa))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("features must be a B x %d real[][] without NULLs", SPEC_INPUTS(spec))));
	B = ARR_DIMS(xa)[0];
	if (ARR_ELEMTYPE(ya) != FLOAT4OID || array_contains_nulls(ya) ||
		ArrayGetNItems(ARR_NDIM(ya), ARR_DIMS(ya)) !=
		B * (spec->task == FLORAL_CLASSIFICATION ? 1 : SPEC_OUTPUTS(spec)))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("labels do not match the batch")));
	if (spec->task == FLORAL_CLASSIFICATION)
		for (int i = 0; i < B; i++)
		{
			float		y = ((float *) ARR_DATA_PTR(ya))[i];

			if (y != floorf(y) || y < 0 || y >= SPEC_OUTPUTS(spec))
				ereport(ERROR,
						(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
						 errmsg("label %g is not a class of this model", y)));
		}
	if (ARR_ELEMTYPE(za) != FLOAT4OID || ARR_NDIM(za) > 1 ||
		ArrayGetNItems(ARR_NDIM(za), ARR_DIMS(za)) != C || array_contains_nulls(za))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("logits must be a real[] of %d values", C)));
	floral_read_real_array(PointerGetDatum(za), z, C, "logits");
	return B;
}

Datum
floral_gradient_check(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ArrayType  *xa = PG_GETARG_ARRAYTYPE_P(1);
	ArrayType  *ya = PG_GETARG_ARRAYTYPE_P(2);
	ArrayType  *za = PG_GETARG_ARRAYTYPE_P(3);
	int64		seed = PG_GETARG_INT64(4);
	double		eps = PG_GETARG_FLOAT8(5);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt = CurrentMemoryContext;
	FloralSpec *spec = palloc(sizeof(FloralSpec));
	FloralNet  *net;
	float	   *params,
			   *grad;
	double	   *numeric;
	float		z[FLORAL_MAX_ADAPTORS] = {0};
	float		dz[FLORAL_MAX_ADAPTORS] = {0};
	int			B,
				C;
	pg_prng_state rng;

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	floral_load_spec(model, FLORAL_LOCK_NONE, spec);
	SPI_finish();
	MemoryContextSwitchTo(cxt);
	C = spec->nadaptors;

	if (spec->nparams > GRADCHECK_MAX_PARAMS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("gradient check is for small models (at most %d parameters)",
						GRADCHECK_MAX_PARAMS)));
	B = check_batch(spec, xa, ya, za, z);

	net = floral_net_create(spec, B);
	params = palloc(sizeof(float) * spec->nparams);
	grad = palloc0(sizeof(float) * spec->nparams);
	numeric = palloc0(sizeof(double) * spec->nparams);
	floral_rng_seed(&rng, (uint64) seed, 0, "gradient check");
	for (int64 i = 0; i < spec->nparams; i++)
		params[i] = floral_rng_uniform(&rng, -0.5f, 0.5f);
	memcpy(net->X, ARR_DATA_PTR(xa), sizeof(float) * B * SPEC_INPUTS(spec));

	/* analytic */
	if (C > 0)
		floral_router(net, z, NULL);
	floral_forward(net, params, params + spec->adaptor_offset, B);
	floral_loss(net, (float *) ARR_DATA_PTR(ya), B, true, NULL);
	floral_backward(net, params, params + spec->adaptor_offset, B,
					grad, grad + spec->adaptor_offset);
	if (C > 0)
		floral_router_backward(net, dz);

	/* numeric, in double around float parameters */
	for (int64 i = 0; i < spec->nparams; i++)
	{
		float		saved = params[i];
		double		up,
					down;

		params[i] = saved + (float) eps;
		up = loss_at(net, params, z, (float *) ARR_DATA_PTR(ya), B);
		params[i] = saved - (float) eps;
		down = loss_at(net, params, z, (float *) ARR_DATA_PTR(ya), B);
		params[i] = saved;
		numeric[i] = (up - down) / (2 * eps);
	}
	put_row(rsinfo, "base", (int) spec->base_size, grad, numeric);
	if (C > 0)
	{
		double		nz[FLORAL_MAX_ADAPTORS];

		put_row(rsinfo, "adaptors", (int) spec->adaptor_size,
				grad + spec->adaptor_offset, numeric + spec->adaptor_offset);
		for (int c = 0; c < C; c++)
		{
			float		saved = z[c];
			double		up,
						down;

			z[c] = saved + (float) eps;
			up = loss_at(net, params, z, (float *) ARR_DATA_PTR(ya), B);
			z[c] = saved - (float) eps;
			down = loss_at(net, params, z, (float *) ARR_DATA_PTR(ya), B);
			z[c] = saved;
			nz[c] = (up - down) / (2 * eps);
		}
		put_row(rsinfo, "logits", C, dz, nz);
		/* an Ensemble has no factors to precondition */
		if (!spec->ensemble)
			put_precondition_row(rsinfo, net, params + spec->adaptor_offset,
								 grad + spec->adaptor_offset);
	}
	return (Datum) 0;
}

/*
 * One row of the step comparison: the step the plain path took
 * (ref - start), and how far the fused path's result is from it, absolutely
 * and relative to the size of that step (so that a small learning rate
 * cannot hide a wrong update behind the parameters' own size).
 */
static void
put_step_row(ReturnSetInfo *rsinfo, const char *part, int64 n,
			 const float *start, const float *ref, const float *fused)
{
	double		step = 0.0,
				diff = 0.0,
				maxabs = 0.0;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	for (int64 i = 0; i < n; i++)
	{
		double		s = (double) ref[i] - (start ? start[i] : 0.0);
		double		d = (double) fused[i] - ref[i];

		step += s * s;
		diff += d * d;
		maxabs = Max(maxabs, fabs(d));
	}
	values[0] = CStringGetTextDatum(part);
	values[1] = Int32GetDatum((int32) n);
	values[2] = Float8GetDatum(sqrt(step));
	values[3] = Float8GetDatum(maxabs);
	values[4] = Float8GetDatum(sqrt(diff) / Max(sqrt(step), 1e-30));
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * floral._step_check(model, features, labels, logits, seed, lr): one SGD
 * step from random parameters, by floral_sgd_step and by the plain path
 * train.c used before it (floral_backward, floral_precondition when the
 * model asks for it, then params -= lr * grad).  Rows: base, and with
 * adaptors also adaptors and logits (the router gradient, from net->dm).
 */
Datum
floral_step_check(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ArrayType  *xa = PG_GETARG_ARRAYTYPE_P(1);
	ArrayType  *ya = PG_GETARG_ARRAYTYPE_P(2);
	ArrayType  *za = PG_GETARG_ARRAYTYPE_P(3);
	int64		seed = PG_GETARG_INT64(4);
	float		lr = PG_GETARG_FLOAT4(5);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt = CurrentMemoryContext;
	FloralSpec *spec = palloc(sizeof(FloralSpec));
	const float *Y = (const float *) ARR_DATA_PTR(ya);
	FloralNet  *net;
	float	   *start,
			   *ref,
			   *fused,
			   *grad;
	int64		off;
	float		z[FLORAL_MAX_ADAPTORS] = {0};
	float		dz_ref[FLORAL_MAX_ADAPTORS] = {0};
	float		dz_fused[FLORAL_MAX_ADAPTORS] = {0};
	int			B,
				C;
	pg_prng_state rng;

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	floral_load_spec(model, FLORAL_LOCK_NONE, spec);
	SPI_finish();
	MemoryContextSwitchTo(cxt);
	C = spec->nadaptors;
	off = spec->adaptor_offset;
	B = check_batch(spec, xa, ya, za, z);

	net = floral_net_create(spec, B);
	start = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
	ref = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
	fused = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
	grad = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
	floral_rng_seed(&rng, (uint64) seed, 0, "step check");
	for (int64 i = 0; i < spec->nparams; i++)
		start[i] = floral_rng_uniform(&rng, -0.5f, 0.5f);
	memcpy(ref, start, sizeof(float) * spec->nparams);
	memcpy(fused, start, sizeof(float) * spec->nparams);

	/* the plain path */
	memcpy(net->X, ARR_DATA_PTR(xa), sizeof(float) * B * SPEC_INPUTS(spec));
	if (C > 0)
		floral_router(net, z, NULL);
	floral_forward(net, ref, ref + off, B);
	floral_loss(net, Y, B, true, NULL);
	floral_backward(net, ref, ref + off, B, grad, grad + off);
	if (C > 0)
		floral_router_backward(net, dz_ref);
	if (C > 0 && spec->precondition)
		floral_precondition(net, ref + off, grad + off);
	cblas_saxpy(spec->nparams, -lr, grad, 1, ref, 1);

	/* the fused step, from the same parameters and the same forward pass */
	floral_forward(net, fused, fused + off, B);
	floral_loss(net, Y, B, true, NULL);
	floral_sgd_step(net, fused, fused + off, B, lr);
	if (C > 0)
		floral_router_backward(net, dz_fused);

	put_step_row(rsinfo, "base", spec->base_size, start, ref, fused);
	if (C > 0)
	{
		put_step_row(rsinfo, "adaptors", spec->adaptor_size,
					 start + off, ref + off, fused + off);
		/* the router gradient is compared as it is, not as a step */
		put_step_row(rsinfo, "logits", C, NULL, dz_ref, dz_fused);
	}
	return (Datum) 0;
}
