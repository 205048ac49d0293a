/*
 * aggregate.c
 *	  FloralAvg: merge the contributions of a round into the next round's
 *	  shared parameters (FLORAL.md, "Aggregation").
 *
 * A round's training calls each left one row of hierarchical sums in
 * floral.contributions (sums.h, contributions.c); aggregation adds them and
 * divides: base = S_base / N, adaptor_c = S_c / M_c.  This equals the flat
 * formula with p(k) = n_k / N and p(k|c) = p(k) pi_kc / sum_j p(j) pi_jc.
 *
 * The same sums serve federation: a branch database sends the sums of its
 * own calls (floral._branch_update), the coordinator adds the branches'
 * sums and divides (floral._merge_updates).  An update therefore carries
 * N_B, M_B and one vector laid out like the shared parameters, holding
 * sum n_k base_k in the base part and sum n_k pi_kc adaptor_kc in the part
 * of adaptor c (no part at all for private adaptors); nothing about a
 * single tenant.
 */
#include "postgres.h"

#include <float.h>
#include <math.h>

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "access/htup_details.h"
#include "utils/array.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "catalog.h"
#include "contributions.h"
#include "floral.h"
#include "router.h"
#include "sums.h"

PG_FUNCTION_INFO_V1(floral_aggregate);
PG_FUNCTION_INFO_V1(floral_branch_update);
PG_FUNCTION_INFO_V1(floral_merge_updates);
PG_FUNCTION_INFO_V1(floral_update_norm);
PG_FUNCTION_INFO_V1(floral_call_average);

/*
 * Add the accepted branch updates of a round, through a cursor, one row at
 * a time (each row holds a parameter-sized vector), with the newest snapshot
 * after the model's lock (see floral_add_round_sums).
 */
static void
add_round_updates(const FloralSpec *spec, int32 round, FloralSums *sums)
{
	Oid			types[2] = {TEXTOID, INT4OID};
	Datum		args[2] = {CStringGetTextDatum(spec->name), Int32GetDatum(round)};
	Portal		portal;

	portal = floral_cursor_latest("SELECT examples, weights, sums, loss_sum, tenants "
								  "FROM floral.updates WHERE model = $1 AND round = $2 "
								  "AND status = 'accepted' ORDER BY branch",
								  2, types, args);
	for (;;)
	{
		HeapTuple	tup;
		TupleDesc	desc;
		bool		isnull;
		float		w[FLORAL_MAX_ADAPTORS];
		double		M[FLORAL_MAX_ADAPTORS];
		Datum		raw;
		FloralTensor *t;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, 1);
		if (SPI_processed == 0)
			break;
		tup = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		/* fed_submit accepts no NULL; never read one as a value */
		for (int col = 1; col <= 5; col++)
		{
			(void) SPI_getbinval(tup, desc, col, &isnull);
			if (isnull)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg("an accepted update of model \"%s\" has a NULL %s",
								spec->name, SPI_fname(desc, col))));
		}
		raw = SPI_getbinval(tup, desc, 3, &isnull);
		t = DatumGetTensorP(raw);
		if (floral_tensor_numel(t) != SPEC_SHARED_SIZE(spec))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("an accepted update of model \"%s\" has the wrong size", spec->name)));
		floral_read_real_array(SPI_getbinval(tup, desc, 2, &isnull), w,
							   SPEC_SHARED_ADAPTORS(spec), "update weights");
		for (int c = 0; c < SPEC_SHARED_ADAPTORS(spec); c++)
			M[c] = w[c];
		floral_sums_add_partial(sums, DatumGetFloat8(SPI_getbinval(tup, desc, 1, &isnull)), M,
								DatumGetFloat8(SPI_getbinval(tup, desc, 4, &isnull)),
								DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull)), 0.0);
		/* the update is laid out like the sums: what is federated, nothing else */
		floral_sums_add_floats(sums, 0, TENSOR_DATA(t), sums->nsums);
		if ((Pointer) t != DatumGetPointer(raw))
			pfree(t);
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
}

/*
 * Finish the sums into the next round's parameters and store them: a new
 * row in floral.rounds and the model's round moved on.  Returns the round.
 */
static int32
store_next_round(const FloralSpec *spec, FloralSums *sums, const float *prev)
{
	float	   *next;
	int32		new_round = spec->round + 1;
	Oid			t6[6] = {TEXTOID, INT4OID, floral_tensor_type(), INT4OID, INT8OID, FLOAT8OID};
	Oid			t2[2] = {TEXTOID, INT4OID};
	Datum		a[6];
	int			ret;

	if (sums->N <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("round %d of model \"%s\" has no contributions",
						spec->round, spec->name),
				 errhint("Train some tenants with floral_train() first.")));

	next = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
	floral_sums_finish(sums, prev, next, spec->server_lr);
	/* option reseed: only a new round re-seeds, never an inspection aid */
	if (spec->reseed && !spec->ensemble && !spec->private_adaptors)
		(void) floral_reseed_unused(spec, sums->M, next + spec->adaptor_offset);
	if (!tensor_all_finite(next, spec->nparams))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("aggregation of model \"%s\" produced a non-finite parameter",
						spec->name),
				 errdetail("The model was left at round %d.", spec->round)));

	a[0] = CStringGetTextDatum(spec->name);
	a[1] = Int32GetDatum(new_round);
	/* only what is federated: a private bank is not part of a round */
	a[2] = floral_tensor_datum(next, SPEC_SHARED_SIZE(spec));
	a[3] = Int32GetDatum(sums->tenants);
	a[4] = Int64GetDatum((int64) rint(sums->N));
	a[5] = Float8GetDatum(sums->loss_sum / sums->N);
	ret = SPI_execute_with_args("INSERT INTO floral.rounds "
								"(model, round, params, tenants, examples, loss) "
								"VALUES ($1, $2, $3, $4, $5, $6)",
								6, t6, a, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not write floral.rounds: %s", SPI_result_code_string(ret));
	ret = SPI_execute_with_args("UPDATE floral.models SET round = $2 WHERE name = $1",
								2, t2, a, NULL, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not update floral.models: %s", SPI_result_code_string(ret));
	return new_round;
}

/*
 * Merge a round: under the model's exclusive lock, add up what was left
 * for (model, round) (the training calls' sums, or the branches' updates at
 * a coordinator), store the next round, then run a statement with (model,
 * round, new round) to retire what was merged.  Runs as floral's owner:
 * only floral writes the rounds (catalog.c, floral_become_owner).
 */
static int32
merge_round(const char *model, bool updates, const char *retire, int retire_result)
{
	MemoryContext cxt;
	MemoryContext old;
	FloralSpec *spec;
	float	   *prev;
	FloralSums	sums;
	FloralSavedUser saved;
	int32		new_round;
	Oid			types[3] = {TEXTOID, INT4OID, INT4OID};
	Datum		args[3];

	cxt = AllocSetContextCreate(CurrentMemoryContext, "floral merge",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	spec = palloc(sizeof(FloralSpec));
	SPI_connect();
	MemoryContextSwitchTo(cxt);

	/* waits for running training calls and submissions, blocks new ones */
	floral_become_owner(&saved);
	floral_load_spec(model, FLORAL_LOCK_UPDATE, spec);
	prev = floral_load_round(spec, spec->round, cxt);
	floral_sums_init(&sums, spec);
	if (updates)
		add_round_updates(spec, spec->round, &sums);
	else
		(void) floral_add_round_sums(spec, spec->round, &sums);
	new_round = store_next_round(spec, &sums, prev);

	args[0] = CStringGetTextDatum(spec->name);
	args[1] = Int32GetDatum(spec->round);
	args[2] = Int32GetDatum(new_round);
	if (floral_execute_latest(retire, 3, types, args) != retire_result)
		elog(ERROR, "could not retire the merged rows of model \"%s\"", model);
	floral_restore_user(&saved);

	SPI_finish();
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	return new_round;
}

/*
 * floral_aggregate(model text) returns int: merge the current round's
 * contributions, store the result as the next round, return its number.
 */
Datum
floral_aggregate(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(merge_round(text_to_cstring(PG_GETARG_TEXT_PP(0)), false,
								"DELETE FROM floral.contributions WHERE model = $1 AND round = $2",
								SPI_OK_DELETE));
}

/*
 * Differential privacy, second half: the Gaussian mechanism on what a
 * branch sends.  One tenant k, with weight w_k <= W = dp_max_examples
 * (train.c caps it) and its update Delta_k clipped to norm dp_clip = C
 * around the round's parameters g, moves
 *
 *	  N by w_k,	 M by w_k pi_k (norm <= w_k),
 *	  D = S - (N g_base, M_c g_c) by w_k (Delta_base, pi_kc Delta_c) (norm <= w_k C)
 *
 * so (N, M, D) has L2 sensitivity at most W sqrt(2 + C^2) when a tenant is
 * added or removed.  Noise of standard deviation dp_noise times that goes
 * on every coordinate of N, M and D; the branch then sends
 * S' = (N' g_base + D', M'_c g_c + D'_c), N' = max(round(N + noise), 1) and
 * M'_c = clamp(M_c + noise, 0, N'): only post-processing of the noisy
 * (N, M, D), so the round is exactly the Gaussian mechanism with noise
 * multiplier dp_noise, which floral.privacy_ledger accounts for.  (Noise
 * on S itself would not do: S contains N g, and g is public.)  The loss
 * and the tenant count would need noise of their own; a noisy branch
 * sends neither (loss 0, one tenant).  The noise comes from the operating
 * system's strong random source, never from a seed.
 */
static double
gaussian(pg_prng_state *rng)
{
	double		u1 = pg_prng_double(rng),
				u2 = pg_prng_double(rng);

	/* Box-Muller; 1 - u1 is in (0, 1], so the log is finite */
	return sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
}

static void
add_dp_noise(const FloralSpec *spec, FloralSums *sums, const float *g)
{
	double		sigma = (double) spec->dp_noise * spec->dp_max_examples *
		sqrt(2.0 + (double) spec->dp_clip * spec->dp_clip);
	int			C = spec->private_adaptors ? 0 : spec->nadaptors;
	double	   *bank = sums->v + spec->base_size;
	double		N2;
	double		M2[FLORAL_MAX_ADAPTORS];
	double	   *gbank;
	pg_prng_state rng;
	uint64		seed;

	if (!pg_strong_random(&seed, sizeof(seed)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random numbers for differential privacy")));
	pg_prng_seed(&rng, seed);

	/*
	 * A whole count: a weight clamped to it stays below it as a float4.
	 * (One draw per value: Min and Max evaluate their arguments twice.)
	 */
	N2 = rint(sums->N + sigma * gaussian(&rng));
	N2 = Max(N2, 1.0);
	for (int c = 0; c < C; c++)
	{
		double		m = sums->M[c] + sigma * gaussian(&rng);

		M2[c] = Min(Max(m, 0.0), N2);
	}

	/* base: S' = S + (N' - N) g + noise */
	for (int64 i = 0; i < spec->base_size; i++)
		sums->v[i] += (N2 - sums->N) * g[i] + sigma * gaussian(&rng);
	if (C > 0)
	{
		/* adaptor c: S'_c = S_c + (M'_c - M_c) g_c + noise, in the bank's layout */
		gbank = palloc0(sizeof(double) * Max(spec->adaptor_size, 1));
		for (int c = 0; c < C; c++)
			floral_adaptor_axpy(spec, c, M2[c] - sums->M[c], g + spec->adaptor_offset, gbank);
		for (int64 i = 0; i < spec->adaptor_size; i++)
			bank[i] += gbank[i] + sigma * gaussian(&rng);
		pfree(gbank);
	}
	sums->N = N2;
	for (int c = 0; c < C; c++)
		sums->M[c] = M2[c];
	sums->loss_sum = 0.0;
	sums->tenants = 1;
}

/*
 * floral._branch_update(model, round, calls bigint[] DEFAULT NULL) returns
 * (examples, weights, sums, loss_sum, tenants): this database's
 * contributions to a round (or those of the given calls), summed in the
 * hierarchical form.  The weighted sums are rounded to float4 once.
 */
Datum
floral_branch_update(PG_FUNCTION_ARGS)
{
	char	   *model;
	int32		round;
	MemoryContext cxt = CurrentMemoryContext;
	FloralSpec *spec = palloc(sizeof(FloralSpec));
	FloralSums	sums;
	TupleDesc	desc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	FloralTensor *t;
	float	   *data;
	float		M[FLORAL_MAX_ADAPTORS];
	float	   *global = NULL;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "floral._branch_update must return a record");
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model and round must not be NULL")));
	model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	round = PG_GETARG_INT32(1);

	SPI_connect();
	MemoryContextSwitchTo(cxt);
	floral_load_spec(model, FLORAL_LOCK_SHARE, spec);
	floral_sums_init(&sums, spec);
	/* with calls, only those: what the caller is about to retire */
	if (PG_NARGS() > 2 && !PG_ARGISNULL(2))
		(void) floral_add_calls_sums(spec, round, PG_GETARG_DATUM(2), &sums);
	else
		(void) floral_add_round_sums(spec, round, &sums);
	/* the round's parameters, around which the noise is added */
	if (spec->dp_noise > 0 && sums.tenants > 0)
		global = floral_load_round(spec, round, cxt);
	SPI_finish();
	MemoryContextSwitchTo(cxt);

	if (sums.tenants == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("round %d of model \"%s\" has no contributions here", round, model)));

	if (spec->dp_noise > 0)
	{
		if (!(spec->dp_max_examples > 0 && spec->dp_clip > 0))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("model \"%s\" adds noise without \"dp_clip\" and \"dp_max_examples\"", model)));
		add_dp_noise(spec, &sums, global);
	}

	/* laid out like the shared parameters: private adaptors do not travel */
	t = floral_tensor_new_1d(sums.nsums);
	data = TENSOR_DATA(t);
	for (int64 i = 0; i < sums.nsums; i++)
		data[i] = (float) sums.v[i];
	for (int c = 0; c < SPEC_SHARED_ADAPTORS(spec); c++)
		M[c] = (float) sums.M[c];

	values[0] = Float8GetDatum(sums.N);
	values[1] = floral_real_array(M, SPEC_SHARED_ADAPTORS(spec));
	values[2] = PointerGetDatum(t);
	values[3] = Float8GetDatum(sums.loss_sum);
	values[4] = Int32GetDatum(sums.tenants);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/*
 * floral._merge_updates(model) returns int: the coordinator's FloralAvg over
 * the accepted branch updates of the current round.  Marks them merged and
 * returns the new round.
 */
Datum
floral_merge_updates(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(merge_round(text_to_cstring(PG_GETARG_TEXT_PP(0)), true,
								"UPDATE floral.updates SET status = 'merged', merged_into = $3 "
								"WHERE model = $1 AND round = $2 AND status = 'accepted'",
								SPI_OK_UPDATE));
}

/*
 * floral._update_norm(model, examples, weights, sums) returns float8: how
 * far the model a branch's update averages to lies from the current round,
 * in Euclidean norm over base and used adaptors.  The coordinator rejects
 * updates beyond its bound.
 */
Datum
floral_update_norm(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	double		N = PG_GETARG_FLOAT8(1);
	ArrayType  *wa = PG_GETARG_ARRAYTYPE_P(2);
	FloralTensor *t = PG_GETARG_TENSOR_P(3);
	MemoryContext cxt = CurrentMemoryContext;
	FloralSpec *spec = palloc(sizeof(FloralSpec));
	float	   *prev;
	const float *sums = TENSOR_DATA(t);
	float		M[FLORAL_MAX_ADAPTORS];
	double		norm = 0.0;

	SPI_connect();
	floral_load_spec(model, FLORAL_LOCK_NONE, spec);
	prev = floral_load_round(spec, spec->round, cxt);
	SPI_finish();
	MemoryContextSwitchTo(cxt);

	if (floral_tensor_numel(t) != SPEC_SHARED_SIZE(spec) || N <= 0)
		PG_RETURN_FLOAT8(INFINITY);
	floral_read_real_array(PointerGetDatum(wa), M, SPEC_SHARED_ADAPTORS(spec), "weights");
	/*
	 * The averages become float4 parameters: one that overflows float4
	 * would poison every merge it takes part in, so it makes the norm
	 * infinite and the update is rejected.
	 */
	for (int64 i = 0; i < spec->base_size; i++)
	{
		double		avg = sums[i] / N;
		double		d = avg - prev[i];

		if (!(fabs(avg) <= FLT_MAX))
			PG_RETURN_FLOAT8(INFINITY);
		norm += d * d;
	}
	if (!spec->private_adaptors)
	{
		double	   *avg = palloc0(sizeof(double) * Max(spec->adaptor_size, 1));
		const float *prev_bank = prev + spec->adaptor_offset;

		for (int c = 0; c < spec->nadaptors; c++)
			if (M[c] > 0)
				floral_adaptor_axpy(spec, c, 1.0 / M[c], sums + spec->adaptor_offset, avg);
			else
				floral_adaptor_axpy(spec, c, 1.0, prev_bank, avg);
		for (int64 i = 0; i < spec->adaptor_size; i++)
		{
			double		d = avg[i] - prev_bank[i];

			if (!(fabs(avg[i]) <= FLT_MAX))
				PG_RETURN_FLOAT8(INFINITY);
			norm += d * d;
		}
	}
	PG_RETURN_FLOAT8(sqrt(norm));
}

/*
 * floral._call_average(model, call) returns floral.tensor: the parameters
 * one training call's sums average to (base = S_base / N, adaptor c =
 * S_c / M_c; an adaptor the call did not use, and private adaptors, as in
 * the current round).  For a call over one tenant that is the tenant's own
 * trained model: a test and inspection aid.
 */
Datum
floral_call_average(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int64		call = PG_GETARG_INT64(1);
	MemoryContext cxt = CurrentMemoryContext;
	FloralSpec *spec = palloc(sizeof(FloralSpec));
	FloralSums	sums;
	float	   *prev;
	FloralTensor *t;

	SPI_connect();
	floral_load_spec(model, FLORAL_LOCK_NONE, spec);
	prev = floral_load_round(spec, spec->round, cxt);
	MemoryContextSwitchTo(cxt);
	floral_sums_init(&sums, spec);
	if (floral_add_call_sums(spec, spec->round, call, &sums) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("call " INT64_FORMAT " has no pending contribution to round %d of model \"%s\"",
						call, spec->round, spec->name)));
	SPI_finish();
	MemoryContextSwitchTo(cxt);
	t = floral_tensor_new_1d(spec->nparams);
	floral_sums_finish(&sums, prev, TENSOR_DATA(t), 1.0);
	PG_RETURN_POINTER(t);
}
