/*
 * aggregate.c
 *	  FloralAvg: merge the contributions of a round into the next round's
 *	  shared parameters (FLORAL.md, "Aggregation").
 *
 * Contributions are streamed one at a time into weighted sums, the
 * hierarchical form of FloralAvg:
 *
 *	  N = sum n_k,  S_base = sum n_k base_k,
 *	  M_c = sum n_k pi_kc,  S_c = sum n_k pi_kc adaptor_kc
 *
 * and base = S_base / N, adaptor_c = S_c / M_c.  This equals the flat
 * formula with p(k) = n_k / N and p(k|c) = p(k) pi_kc / sum_j p(j) pi_jc, and
 * sums from several databases can simply be added before dividing.  The sums
 * are kept in double precision so that the order of the additions hardly
 * matters.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "catalog.h"
#include "floral.h"

PG_FUNCTION_INFO_V1(floral_aggregate);

typedef struct FloralSums
{
	const FloralSpec *spec;
	double		N;
	double		M[FLORAL_MAX_ADAPTORS];
	double	   *base;			/* base_size */
	double	   *bank;			/* adaptor_size */
	int			contributors;
	double		loss_sum;		/* sum n_k loss_k, for the round's history */
} FloralSums;

static void
sums_init(FloralSums *s, const FloralSpec *spec)
{
	memset(s, 0, sizeof(*s));
	s->spec = spec;
	s->base = palloc_extended(sizeof(double) * spec->base_size, MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	s->bank = palloc_extended(sizeof(double) * Max(spec->adaptor_size, 1), MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
}

static void
sums_add(FloralSums *s, double n, const float *pi, const float *params, double loss)
{
	const FloralSpec *spec = s->spec;

	s->N += n;
	s->contributors++;
	s->loss_sum += n * loss;
	for (int64 i = 0; i < spec->base_size; i++)
		s->base[i] += n * params[i];
	if (spec->private_adaptors)
		return;					/* private adaptors are never aggregated */
	for (int c = 0; c < spec->nadaptors; c++)
	{
		double		w = n * pi[c];

		s->M[c] += w;
		if (w != 0.0)
			floral_adaptor_axpy(spec, c, w, params + spec->adaptor_offset, s->bank);
	}
}

/*
 * theta <- theta_prev - server_lr * (theta_prev - theta_avg), where an
 * adaptor that nobody used (M_c = 0) keeps its previous value.
 */
static void
sums_finish(FloralSums *s, const float *prev, float *next)
{
	const FloralSpec *spec = s->spec;
	const float *prev_bank = prev + spec->adaptor_offset;
	float	   *next_bank = next + spec->adaptor_offset;
	double		lr = spec->server_lr;

	for (int64 i = 0; i < spec->base_size; i++)
	{
		double		avg = s->base[i] / s->N;

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
			floral_adaptor_scale(spec, c, 1.0 / s->M[c], s->bank);
		else
			floral_adaptor_axpy(spec, c, 1.0, prev_bank, s->bank);
	}
	for (int64 i = 0; i < spec->adaptor_size; i++)
		next_bank[i] = (float) (prev_bank[i] - lr * (prev_bank[i] - s->bank[i]));
}

/*
 * floral_aggregate(model text) returns int: merge the current round's
 * contributions, store the result as the next round, return its number.
 */
Datum
floral_aggregate(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	MemoryContext cxt;
	MemoryContext old;
	FloralSpec *spec;
	float	   *prev;
	float	   *next;
	FloralSums	sums;
	Portal		portal;
	Oid			argtypes[2] = {TEXTOID, INT4OID};
	Datum		args[2];
	int32		new_round;
	float	   *pi;

	cxt = AllocSetContextCreate(CurrentMemoryContext, "floral aggregate",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	spec = palloc(sizeof(FloralSpec));
	SPI_connect();
	MemoryContextSwitchTo(cxt);

	/* FOR UPDATE: waits for running training calls, blocks new ones */
	floral_load_spec(model, FLORAL_LOCK_UPDATE, spec);
	prev = floral_load_round(spec, spec->round, cxt);
	sums_init(&sums, spec);
	pi = palloc0(sizeof(float) * Max(spec->nadaptors, 1));

	args[0] = CStringGetTextDatum(spec->name);
	args[1] = Int32GetDatum(spec->round);
	portal = SPI_cursor_open_with_args(NULL,
									   "SELECT tenant, examples, mixture, params, loss "
									   "FROM floral.contributions "
									   "WHERE model = $1 AND round = $2 ORDER BY tenant",
									   2, argtypes, args, NULL, true, 0);
	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, 8);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int64		n;
			FloralTensor *t;
			double		loss;
			Datum		d;

			n = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			floral_read_real_array(SPI_getbinval(tup, desc, 3, &isnull), pi,
								   spec->nadaptors, "contribution mixture");
			t = DatumGetTensorP(SPI_getbinval(tup, desc, 4, &isnull));
			if (tensor_numel(t) != spec->nparams)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg("a contribution to model \"%s\" has the wrong size", model)));
			d = SPI_getbinval(tup, desc, 5, &isnull);
			loss = isnull ? 0.0 : DatumGetFloat8(d);
			sums_add(&sums, (double) n, pi, TENSOR_DATA(t), loss);
			if ((Pointer) t != DatumGetPointer(SPI_getbinval(tup, desc, 4, &isnull)))
				pfree(t);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);

	if (sums.contributors == 0 || sums.N <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("round %d of model \"%s\" has no contributions", spec->round, model),
				 errhint("Train some tenants with floral_train() first.")));

	next = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
	sums_finish(&sums, prev, next);
	for (int64 i = 0; i < spec->nparams; i++)
		if (!isfinite(next[i]))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("aggregation of model \"%s\" produced a non-finite parameter", model),
					 errdetail("The model was left at round %d.", spec->round)));

	new_round = spec->round + 1;
	{
		Oid			t6[6] = {TEXTOID, INT4OID, floral_tensor_type(), INT4OID, INT8OID, FLOAT8OID};
		Datum		a[6];
		int			ret;

		a[0] = args[0];
		a[1] = Int32GetDatum(new_round);
		a[2] = floral_tensor_datum(next, spec->nparams);
		a[3] = Int32GetDatum(sums.contributors);
		a[4] = Int64GetDatum((int64) sums.N);
		a[5] = Float8GetDatum(sums.loss_sum / sums.N);
		ret = SPI_execute_with_args("INSERT INTO floral.rounds "
									"(model, round, params, tenants, examples, loss) "
									"VALUES ($1, $2, $3, $4, $5, $6)",
									6, t6, a, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "could not write floral.rounds: %s", SPI_result_code_string(ret));
		ret = SPI_execute_with_args("UPDATE floral.models SET round = $2 WHERE name = $1",
									2, argtypes, a, NULL, false, 0);
		if (ret != SPI_OK_UPDATE)
			elog(ERROR, "could not update floral.models: %s", SPI_result_code_string(ret));
		ret = SPI_execute_with_args("DELETE FROM floral.contributions "
									"WHERE model = $1 AND round = $2",
									2, argtypes, args, NULL, false, 0);
		if (ret != SPI_OK_DELETE)
			elog(ERROR, "could not clear floral.contributions: %s", SPI_result_code_string(ret));
	}

	SPI_finish();
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	PG_RETURN_INT32(new_round);
}
