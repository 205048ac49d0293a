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
 *
 * The same sums serve federation: a branch database sends the sums of its
 * own tenants (floral._branch_update), the coordinator adds the branches'
 * sums and divides (floral._merge_updates).  An update therefore carries
 * N_B, M_B and one vector laid out like the parameters, holding
 * sum n_k base_k in the base part and sum n_k pi_kc adaptor_kc in the part
 * of adaptor c; nothing about a single tenant.
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
#include "floral.h"

PG_FUNCTION_INFO_V1(floral_aggregate);
PG_FUNCTION_INFO_V1(floral_branch_update);
PG_FUNCTION_INFO_V1(floral_merge_updates);
PG_FUNCTION_INFO_V1(floral_update_norm);

typedef struct FloralSums
{
	const FloralSpec *spec;
	double		N;
	double		M[FLORAL_MAX_ADAPTORS];
	double	   *base;			/* base_size */
	double	   *bank;			/* adaptor_size */
	int			contributors;	/* tenants */
	double		loss_sum;		/* sum n_k loss_k, for the round's history */
	double		n_max;			/* largest n_k, the sensitivity's scale */
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
	s->n_max = Max(s->n_max, n);
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

/* add the sums another database computed over its own tenants */
static void
sums_add_partial(FloralSums *s, double N, const float *M, const float *sums,
				 double loss_sum, int tenants)
{
	const FloralSpec *spec = s->spec;

	s->N += N;
	s->contributors += tenants;
	s->loss_sum += loss_sum;
	for (int64 i = 0; i < spec->base_size; i++)
		s->base[i] += sums[i];
	if (spec->private_adaptors)
		return;
	for (int c = 0; c < spec->nadaptors; c++)
		s->M[c] += M[c];
	for (int64 i = 0; i < spec->adaptor_size; i++)
		s->bank[i] += sums[spec->adaptor_offset + i];
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
 * Run a read-only query through a cursor, a few rows at a time, and call fn
 * on each row: rows are large (a whole model each), so only a handful are
 * in memory at once.
 */
typedef void (*RowFn) (HeapTuple tup, TupleDesc desc, void *arg);

static void
for_each_row(const char *query, int nargs, Oid *types, Datum *args, RowFn fn, void *arg)
{
	/*
	 * Not read-only: a fresh snapshot, taken after the model's lock, sees
	 * every contribution of the training calls the lock waited for.  The
	 * statement's snapshot would miss them, and the DELETE that follows
	 * would then drop contributions nobody merged.
	 */
	Portal		portal = SPI_cursor_open_with_args(NULL, query, nargs, types, args,
												   NULL, false, 0);

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, 4);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
			fn(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, arg);
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
}

typedef struct RowSums
{
	FloralSums *sums;
	float		weights[FLORAL_MAX_ADAPTORS];
} RowSums;

/* the parameter-shaped tensor in column col, checked; always a copy, to pfree */
static FloralTensor *
row_tensor(HeapTuple tup, TupleDesc desc, int col, const FloralSpec *spec, const char *what)
{
	bool		isnull;
	Datum		raw = SPI_getbinval(tup, desc, col, &isnull);
	FloralTensor *t;

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("%s of model \"%s\" has no parameters", what, spec->name)));
	t = (FloralTensor *) PG_DETOAST_DATUM_COPY(raw);
	if (tensor_numel(t) != spec->nparams)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("%s of model \"%s\" has the wrong size", what, spec->name)));
	return t;
}

/* contribution row: (tenant, examples, mixture, params, loss) */
static void
add_contribution_row(HeapTuple tup, TupleDesc desc, void *arg)
{
	RowSums    *rs = arg;
	const FloralSpec *spec = rs->sums->spec;
	bool		isnull;
	FloralTensor *t = row_tensor(tup, desc, 4, spec, "a contribution");
	Datum		loss = SPI_getbinval(tup, desc, 5, &isnull);

	floral_read_real_array(SPI_getbinval(tup, desc, 3, &isnull), rs->weights,
						   spec->nadaptors, "contribution mixture");
	sums_add(rs->sums, (double) DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull)),
			 rs->weights, TENSOR_DATA(t), isnull ? 0.0 : DatumGetFloat8(loss));
	pfree(t);
}

/* update row: (branch, examples, weights, sums, loss_sum, tenants) */
static void
add_update_row(HeapTuple tup, TupleDesc desc, void *arg)
{
	RowSums    *rs = arg;
	const FloralSpec *spec = rs->sums->spec;
	bool		isnull;
	FloralTensor *t = row_tensor(tup, desc, 4, spec, "an accepted update");

	floral_read_real_array(SPI_getbinval(tup, desc, 3, &isnull), rs->weights,
						   spec->nadaptors, "update weights");
	sums_add_partial(rs->sums, DatumGetFloat8(SPI_getbinval(tup, desc, 2, &isnull)),
					 rs->weights, TENSOR_DATA(t),
					 DatumGetFloat8(SPI_getbinval(tup, desc, 5, &isnull)),
					 DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull)));
	pfree(t);
}

/* add every contribution of a round */
static void
sums_from_contributions(FloralSums *sums, const FloralSpec *spec, int32 round)
{
	Oid			types[2] = {TEXTOID, INT4OID};
	Datum		args[2] = {CStringGetTextDatum(spec->name), Int32GetDatum(round)};
	RowSums		rs = {sums};

	for_each_row("SELECT tenant, examples, mixture, params, loss "
				 "FROM floral.contributions "
				 "WHERE model = $1 AND round = $2 ORDER BY tenant",
				 2, types, args, add_contribution_row, &rs);
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
	sums_finish(sums, prev, next);
	if (!tensor_all_finite(next, spec->nparams))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("aggregation of model \"%s\" produced a non-finite parameter",
						spec->name),
				 errdetail("The model was left at round %d.", spec->round)));

	a[0] = CStringGetTextDatum(spec->name);
	a[1] = Int32GetDatum(new_round);
	a[2] = floral_tensor_datum(next, spec->nparams);
	a[3] = Int32GetDatum(sums->contributors);
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
 * Merge a round: under the model's exclusive lock, add up the rows a query
 * returns for (model, round), store the next round, then run a statement
 * with (model, round, new round) to retire what was merged.
 */
static int32
merge_round(const char *model, const char *rows_query, RowFn add_row,
			const char *retire, int retire_result)
{
	MemoryContext cxt;
	MemoryContext old;
	FloralSpec *spec;
	float	   *prev;
	FloralSums	sums;
	RowSums		rs = {&sums};
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
	floral_load_spec(model, FLORAL_LOCK_UPDATE, spec);
	prev = floral_load_round(spec, spec->round, cxt);
	sums_init(&sums, spec);
	args[0] = CStringGetTextDatum(spec->name);
	args[1] = Int32GetDatum(spec->round);
	for_each_row(rows_query, 2, types, args, add_row, &rs);
	new_round = store_next_round(spec, &sums, prev);

	args[2] = Int32GetDatum(new_round);
	if (SPI_execute_with_args(retire, 3, types, args, NULL, false, 0) != retire_result)
		elog(ERROR, "could not retire the merged rows of model \"%s\"", model);

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
	PG_RETURN_INT32(merge_round(text_to_cstring(PG_GETARG_TEXT_PP(0)),
								"SELECT tenant, examples, mixture, params, loss "
								"FROM floral.contributions "
								"WHERE model = $1 AND round = $2 ORDER BY tenant",
								add_contribution_row,
								"DELETE FROM floral.contributions WHERE model = $1 AND round = $2",
								SPI_OK_DELETE));
}

/*
 * Differential privacy, second half: Gaussian noise on what the branch
 * sends.  Each tenant's clipped update moves a weighted sum by at most
 * n_k * dp_clip (its weights n_k and n_k pi_kc are at most n_k), so noise of
 * standard deviation dp_noise * dp_clip * max_k n_k on every coordinate is
 * the Gaussian mechanism with noise multiplier dp_noise for one tenant per
 * round.  The weights N and M are sent as they are.  The noise comes from
 * the operating system's strong random source, never from a seed.
 */
static void
add_dp_noise(const FloralSpec *spec, FloralSums *sums)
{
	double		sigma = (double) spec->dp_noise * spec->dp_clip * sums->n_max;
	pg_prng_state rng;
	uint64		seed;
	int64		n_bank = spec->private_adaptors ? 0 : spec->adaptor_size;

	if (!pg_strong_random(&seed, sizeof(seed)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random numbers for differential privacy")));
	pg_prng_seed(&rng, seed);
	for (int64 i = 0; i < spec->base_size + n_bank; i++)
	{
		double		*x = (i < spec->base_size) ? &sums->base[i] : &sums->bank[i - spec->base_size];
		double		u1 = pg_prng_double(&rng),
					u2 = pg_prng_double(&rng);

		/* Box-Muller; 1 - u1 is in (0, 1], so the log is finite */
		*x += sigma * sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
	}
}

/*
 * floral._branch_update(model, round) returns (examples, weights, sums,
 * loss_sum, tenants): this database's contributions to a round, summed in
 * the hierarchical form.  The weighted sums are rounded to float4 once.
 */
Datum
floral_branch_update(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int32		round = PG_GETARG_INT32(1);
	MemoryContext cxt = CurrentMemoryContext;
	FloralSpec *spec = palloc(sizeof(FloralSpec));
	FloralSums	sums;
	TupleDesc	desc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	FloralTensor *t;
	float	   *data;
	float		M[FLORAL_MAX_ADAPTORS];

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "floral._branch_update must return a record");

	SPI_connect();
	MemoryContextSwitchTo(cxt);
	floral_load_spec(model, FLORAL_LOCK_SHARE, spec);
	sums_init(&sums, spec);
	sums_from_contributions(&sums, spec, round);
	SPI_finish();
	MemoryContextSwitchTo(cxt);

	if (sums.contributors == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("round %d of model \"%s\" has no contributions here", round, model)));

	if (spec->dp_noise > 0)
		add_dp_noise(spec, &sums);

	t = tensor_new_1d(spec->nparams);
	data = TENSOR_DATA(t);
	for (int64 i = 0; i < spec->base_size; i++)
		data[i] = (float) sums.base[i];
	for (int64 i = 0; i < spec->adaptor_size; i++)
		data[spec->adaptor_offset + i] = (float) sums.bank[i];
	for (int c = 0; c < spec->nadaptors; c++)
		M[c] = (float) sums.M[c];

	values[0] = Float8GetDatum(sums.N);
	values[1] = floral_real_array(M, spec->nadaptors);
	values[2] = PointerGetDatum(t);
	values[3] = Float8GetDatum(sums.loss_sum);
	values[4] = Int32GetDatum(sums.contributors);
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
	PG_RETURN_INT32(merge_round(text_to_cstring(PG_GETARG_TEXT_PP(0)),
								"SELECT branch, examples, weights, sums, loss_sum, tenants "
								"FROM floral.updates WHERE model = $1 AND round = $2 "
								"AND status = 'accepted' ORDER BY branch",
								add_update_row,
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

	if (tensor_numel(t) != spec->nparams || N <= 0)
		PG_RETURN_FLOAT8(INFINITY);
	floral_read_real_array(PointerGetDatum(wa), M, spec->nadaptors, "weights");
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
