/*
 * contributions.c
 *	  Storing and reading the per-call sums of floral.contributions.
 *
 * A training call adds every tenant it trains into one FloralSums and
 * stores it as one row (or one row per FLORAL_SUMS_CHUNK values, so that
 * no single value grows past what a row can hold and reading a row needs
 * bounded memory).  What a round's calls leave therefore grows with the
 * number of calls, never with the number of tenants.
 *
 * The sums are kept as float8 values in a bytea, in network byte order
 * (as float8send writes them): the exact doubles the call accumulated, with
 * no text conversion, and the same bytes on every platform, so a dump or a
 * replica on another architecture reads them right.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "catalog.h"
#include "contributions.h"

int64
floral_new_call_id(void)
{
	int			ret = SPI_execute("SELECT pg_catalog.nextval('floral.call_seq')", false, 1);
	bool		isnull;

	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not draw a floral call id: %s", SPI_result_code_string(ret));
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

static Datum
double_array(const double *v, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	ArrayType  *arr;

	for (int i = 0; i < n; i++)
		elems[i] = Float8GetDatum(v[i]);
	arr = construct_array(elems, n, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	pfree(elems);
	return PointerGetDatum(arr);
}

/* doubles to bytes in network order; the bytes need not be aligned */
static void
put_doubles(char *out, const double *v, int64 n)
{
	for (int64 i = 0; i < n; i++)
	{
		uint64		u;

		memcpy(&u, &v[i], sizeof(u));
		u = pg_hton64(u);
		memcpy(out + i * sizeof(u), &u, sizeof(u));
	}
}

/* acc += the doubles stored by put_doubles */
static void
add_doubles(double *acc, const char *in, int64 n)
{
	for (int64 i = 0; i < n; i++)
	{
		uint64		u;
		double		x;

		memcpy(&u, in + i * sizeof(u), sizeof(u));
		u = pg_ntoh64(u);
		memcpy(&x, &u, sizeof(x));
		acc[i] += x;
	}
}

/* store a call's sums as its rows of floral.contributions */
void
floral_store_call_sums(const FloralSpec *spec, int32 round, int64 call,
					   const FloralSums *sums)
{
	Oid			types[10] = {TEXTOID, INT4OID, INT8OID, INT4OID, INT4OID,
	FLOAT8OID, FLOAT8ARRAYOID, FLOAT8OID, FLOAT8OID, BYTEAOID};
	Datum		args[10];
	SPIPlanPtr	plan;
	int			C = spec->private_adaptors ? 0 : spec->nadaptors;

	plan = SPI_prepare("INSERT INTO floral.contributions "
					   "(model, round, call, chunk, tenants, examples, weights, "
					   " max_examples, loss_sum, sums) "
					   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", 10, types);
	if (plan == NULL)
		elog(ERROR, "could not prepare the floral.contributions insert");
	args[0] = CStringGetTextDatum(spec->name);
	args[1] = Int32GetDatum(round);
	args[2] = Int64GetDatum(call);
	args[4] = Int32GetDatum(sums->tenants);
	args[5] = Float8GetDatum(sums->N);
	args[6] = double_array(sums->M, C);
	args[7] = Float8GetDatum(sums->n_max);
	args[8] = Float8GetDatum(sums->loss_sum);

	for (int64 off = 0, chunk = 0; off < Max(sums->nsums, 1); off += FLORAL_SUMS_CHUNK, chunk++)
	{
		int64		n = Min(FLORAL_SUMS_CHUNK, sums->nsums - off);
		bytea	   *b = palloc(VARHDRSZ + sizeof(double) * n);
		int			ret;

		CHECK_FOR_INTERRUPTS();
		SET_VARSIZE(b, VARHDRSZ + sizeof(double) * n);
		put_doubles(VARDATA(b), sums->v + off, n);
		args[3] = Int32GetDatum((int32) chunk);
		args[9] = PointerGetDatum(b);
		ret = SPI_execute_plan(plan, args, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "could not write floral.contributions: %s", SPI_result_code_string(ret));
		pfree(b);
	}
	SPI_freeplan(plan);
}

pg_attribute_noreturn()
static void
report_corrupt(const FloralSpec *spec, int32 round, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("a contribution to round %d of model \"%s\" %s", round, spec->name, what)));
}

/*
 * Add every call's sums of a round (or of the calls in only_calls),
 * reading the rows through a cursor one at a time, so that memory holds one
 * chunk however many calls there are.  Returns the number of calls.
 *
 * With the newest snapshot (floral_cursor_latest): taken after the model's
 * lock, it sees every call the lock waited for, in every isolation level;
 * the DELETE that retires the merged calls uses one as well, so nothing is
 * deleted that was not added.
 */
static int
add_sums(const FloralSpec *spec, int32 round, Datum only_calls, FloralSums *sums)
{
	Oid			types[3] = {TEXTOID, INT4OID, INT8ARRAYOID};
	Datum		args[3] = {CStringGetTextDatum(spec->name), Int32GetDatum(round), only_calls};
	int			C = spec->private_adaptors ? 0 : spec->nadaptors;
	int			calls = 0;
	Portal		portal;

	portal = floral_cursor_latest(only_calls == (Datum) 0 ?
								  "SELECT call, chunk, tenants, examples, weights, max_examples, "
								  "loss_sum, sums FROM floral.contributions "
								  "WHERE model = $1 AND round = $2 ORDER BY call, chunk" :
								  "SELECT call, chunk, tenants, examples, weights, max_examples, "
								  "loss_sum, sums FROM floral.contributions "
								  "WHERE model = $1 AND round = $2 AND call = ANY ($3) ORDER BY call, chunk",
								  only_calls == (Datum) 0 ? 2 : 3, types, args);
	for (;;)
	{
		HeapTuple	tup;
		TupleDesc	desc;
		bool		isnull[8];
		int32		chunk;
		bytea	   *b;
		int64		off,
					n;
		Datum		raw;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, 1);
		if (SPI_processed == 0)
			break;
		tup = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		for (int i = 0; i < 8; i++)
			(void) SPI_getbinval(tup, desc, i + 1, &isnull[i]);
		for (int i = 0; i < 8; i++)
			if (isnull[i])
				report_corrupt(spec, round, "has a NULL");

		chunk = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull[0]));
		off = (int64) chunk * FLORAL_SUMS_CHUNK;
		if (chunk < 0 || off >= Max(sums->nsums, 1))
			report_corrupt(spec, round, "has a chunk beyond the model's size");
		if (chunk == 0)
		{
			double		M[FLORAL_MAX_ADAPTORS] = {0};
			ArrayType  *wa = DatumGetArrayTypeP(SPI_getbinval(tup, desc, 5, &isnull[0]));
			double		N = DatumGetFloat8(SPI_getbinval(tup, desc, 4, &isnull[0]));

			if (ARR_ELEMTYPE(wa) != FLOAT8OID || ARR_NDIM(wa) > 1 ||
				ArrayGetNItems(ARR_NDIM(wa), ARR_DIMS(wa)) != C ||
				array_contains_nulls(wa))
				report_corrupt(spec, round, "has weights of the wrong size");
			if (C > 0)
				memcpy(M, ARR_DATA_PTR(wa), sizeof(double) * C);
			if (!(N > 0))
				report_corrupt(spec, round, "has no examples");
			floral_sums_add_partial(sums, N, M,
									DatumGetFloat8(SPI_getbinval(tup, desc, 7, &isnull[0])),
									DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull[0])),
									DatumGetFloat8(SPI_getbinval(tup, desc, 6, &isnull[0])));
			calls++;
		}
		raw = SPI_getbinval(tup, desc, 8, &isnull[0]);
		b = DatumGetByteaPP(raw);
		n = Min(FLORAL_SUMS_CHUNK, sums->nsums - off);
		if (VARSIZE_ANY_EXHDR(b) != sizeof(double) * n)
			report_corrupt(spec, round, "has sums of the wrong size");
		add_doubles(sums->v + off, VARDATA_ANY(b), n);
		/* a detoasted copy lives in SPI's context until SPI_finish: free it */
		if ((Pointer) b != DatumGetPointer(raw))
			pfree(b);
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	return calls;
}

int
floral_add_round_sums(const FloralSpec *spec, int32 round, FloralSums *sums)
{
	return add_sums(spec, round, (Datum) 0, sums);
}

/* the sums of the given calls (a bigint[]) only */
int
floral_add_calls_sums(const FloralSpec *spec, int32 round, Datum calls, FloralSums *sums)
{
	return add_sums(spec, round, calls, sums);
}

/* the sums of one call; returns 0 if it has none pending */
int
floral_add_call_sums(const FloralSpec *spec, int32 round, int64 call, FloralSums *sums)
{
	Datum		one = Int64GetDatum(call);

	if (call < 0)
		return 0;
	return add_sums(spec, round,
					PointerGetDatum(construct_array(&one, 1, INT8OID, sizeof(int64),
													FLOAT8PASSBYVAL, TYPALIGN_DOUBLE)),
					sums);
}

/* are the sums of this call still waiting for aggregation? */
bool
floral_call_pending(const FloralSpec *spec, int32 round, int64 call)
{
	Oid			types[3] = {TEXTOID, INT4OID, INT8OID};
	Datum		args[3] = {CStringGetTextDatum(spec->name), Int32GetDatum(round), Int64GetDatum(call)};
	int			ret;
	bool		pending;

	ret = SPI_execute_with_args("SELECT 1 FROM floral.contributions "
								"WHERE model = $1 AND round = $2 AND call = $3 AND chunk = 0",
								3, types, args, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read floral.contributions: %s", SPI_result_code_string(ret));
	pending = (SPI_processed > 0);
	SPI_freetuptable(SPI_tuptable);
	return pending;
}
