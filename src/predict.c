/*
 * predict.c
 *	  Personalised prediction of single rows and evaluation over a source.
 *
 * floral_predict and floral_predict_proba run once per row: they find the
 * model and the tenant in the backend's cache (remembering the last ones in
 * fn_extra, so consecutive rows skip even the hash lookups), copy the
 * features into preallocated scratch and run the forward pass.  What depends
 * only on the tenant (its mixture weights and mixed biases) was worked out
 * when the tenant was cached.  Nothing is read from the tables and nothing
 * is allocated per row except the result.  To score a whole table, the
 * batch path (predict_batch.c) runs the same layers as GEMMs instead.
 */
#include "postgres.h"

#include <math.h>

#include "access/parallel.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/timestamp.h"
#include "utils/memutils.h"

#include "cache.h"
#include "catalog.h"
#include "floral.h"
#include "nn.h"
#include "progress.h"
#include "source.h"
#include "tensor.h"

PG_FUNCTION_INFO_V1(floral_predict);
PG_FUNCTION_INFO_V1(floral_predict_proba);
PG_FUNCTION_INFO_V1(floral_evaluate_internal);

#define EVAL_BATCH 256

/* what a call site remembers between rows */
typedef struct PredictCallCache
{
	uint64		generation;
	TimestampTz statement;		/* the statement that last checked for invalidations */
	char		model[NAMEDATALEN * 2];
	FloralCachedModel *entry;
	char		tenant[FLORAL_MAX_TENANT_LEN + 1];
	int			tenant_len;
	FloralCachedTenant *tenant_entry;
} PredictCallCache;

/* run the forward pass for one row; returns the model's raw outputs */
static const float *
predict_row(FunctionCallInfo fcinfo, const FloralSpec **spec_out)
{
	text	   *model = PG_GETARG_TEXT_PP(0);
	text	   *tenant = PG_GETARG_TEXT_PP(1);
	ArrayType  *features = PG_GETARG_ARRAYTYPE_P(2);
	PredictCallCache *cc = (PredictCallCache *) fcinfo->flinfo->fn_extra;
	int			model_len = VARSIZE_ANY_EXHDR(model);
	int			tenant_len = VARSIZE_ANY_EXHDR(tenant);
	FloralCachedModel *m;
	FloralCachedTenant *t;
	const FloralSpec *spec;
	const float *fv;
	int			nf;

	if (cc == NULL)
	{
		cc = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(PredictCallCache));
		fcinfo->flinfo->fn_extra = cc;
	}

	/*
	 * A statement that opens no relation would never read the invalidation
	 * queue, and a transaction's later statements would keep predicting
	 * with a round another session replaced: read it once per statement
	 * (cheap when it is empty).  Not in a parallel worker, whose leader
	 * does it.
	 */
	if (cc->statement != GetCurrentStatementStartTimestamp() && !IsParallelWorker())
	{
		AcceptInvalidationMessages();
		cc->statement = GetCurrentStatementStartTimestamp();
	}

	/* fast path: same model and generation as the previous row */
	if (cc->entry == NULL || cc->generation != floral_cache_generation ||
		model_len >= (int) sizeof(cc->model) ||
		strncmp(cc->model, VARDATA_ANY(model), model_len) != 0 ||
		cc->model[model_len] != '\0')
	{
		char	   *name = text_to_cstring(model);

		cc->entry = NULL;
		cc->tenant_entry = NULL;
		m = floral_cache_get(name);
		strlcpy(cc->model, name, sizeof(cc->model));
		pfree(name);
		cc->entry = m;
		/* an entry already known to be stale is used for this row only */
		cc->generation = m->valid ? floral_cache_generation : 0;
	}
	m = cc->entry;
	spec = &m->spec;

	if (cc->tenant_entry && tenant_len == cc->tenant_len &&
		memcmp(cc->tenant, VARDATA_ANY(tenant), tenant_len) == 0)
		t = cc->tenant_entry;
	else
	{
		t = floral_cache_tenant(m, VARDATA_ANY(tenant), tenant_len);
		memcpy(cc->tenant, VARDATA_ANY(tenant), tenant_len);
		cc->tenant_len = tenant_len;
		cc->tenant_entry = t;
	}

	nf = (ARR_NDIM(features) == 1) ? ARR_DIMS(features)[0] : 0;
	if (ARR_ELEMTYPE(features) != FLOAT4OID || ARR_NDIM(features) > 1 ||
		nf != SPEC_INPUTS(spec))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("features have %d values, model \"%s\" expects %d",
						nf, spec->name, SPEC_INPUTS(spec))));
	if (ARR_HASNULL(features) && array_contains_nulls(features))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("features must not contain NULLs")));
	fv = (const float *) ARR_DATA_PTR(features);
	for (int k = 0; !tensor_all_finite(fv, nf) && k < nf; k++)
		if (!isfinite(fv[k]))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("features contain a non-finite value"),
					 errdetail("Feature %d is %g.", k + 1, fv[k])));

	*spec_out = spec;
	return floral_forward_row(m->net, m->params, &t->mix, fv);
}

/* floral_predict(model, tenant, features) returns real */
Datum
floral_predict(PG_FUNCTION_ARGS)
{
	const FloralSpec *spec;
	const float *out = predict_row(fcinfo, &spec);

	PG_RETURN_FLOAT4(floral_output_prediction(spec, out));
}

/* floral_predict_proba(model, tenant, features) returns real[] */
Datum
floral_predict_proba(PG_FUNCTION_ARGS)
{
	const FloralSpec *spec;
	const float *out = predict_row(fcinfo, &spec);
	int			K = SPEC_OUTPUTS(spec);
	float		probs[1024];
	float	   *p = (K <= 1024) ? probs : palloc(sizeof(float) * K);

	floral_output_proba(spec, out, p);
	PG_RETURN_DATUM(floral_real_array(p, K));
}

/*
 * floral._evaluate(model, source) returns setof (tenant, examples, loss,
 * accuracy): each tenant with its own mixture, no router noise.
 */
Datum
floral_evaluate_internal(PG_FUNCTION_ARGS)
{
	char	   *model;
	char	   *source;
	char	   *record = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	SPIPlanPtr	put_history = NULL;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt;
	MemoryContext old;
	FloralSpec *spec;
	float	   *params;
	FloralRows *rows;
	FloralNet  *net;
	float	   *Y;
	FloralSavedUser saved;
	MemoryContext tenant_cxt;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model and source must not be NULL")));
	model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	source = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (record)
	{
		Oid			trainer = get_role_oid("floral_trainer", true);

		/* recording writes history: what training may do, not reading */
		if (!OidIsValid(trainer) || !has_privs_of_role(GetUserId(), trainer))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to record evaluations"),
					 errdetail("floral_evaluate(..., record) writes floral.history."),
					 errhint("Only members of floral_trainer may record evaluations.")));
		if (strcmp(record, "train") == 0 || record[0] == '\0' || strlen(record) > 63)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("record must name a split of 1 to 63 bytes other than \"train\""),
					 errdetail("The \"train\" history is what floral_train records.")));
	}
	InitMaterializedSRF(fcinfo, 0);
	floral_blas_prepare();
	cxt = AllocSetContextCreate(CurrentMemoryContext, "floral evaluate",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	spec = palloc(sizeof(FloralSpec));
	SPI_connect();
	MemoryContextSwitchTo(cxt);

	floral_load_spec(model, FLORAL_LOCK_NONE, spec);
	params = floral_load_round(spec, spec->round, cxt);
	rows = floral_read_source(source, spec);
	/* the source has run, as the caller; history is written by floral alone */
	floral_become_owner(&saved);
	tenant_cxt = AllocSetContextCreate(cxt, "floral tenant", ALLOCSET_DEFAULT_SIZES);
	net = floral_net_create(spec, EVAL_BATCH);
	Y = palloc(sizeof(float) * EVAL_BATCH * rows->ylen);
	floral_progress_start("evaluate", spec->name, rows->ntenants, 1);
	if (record)
	{
		Oid			t7[7] = {TEXTOID, INT4OID, TEXTOID, TEXTOID, INT8OID, FLOAT8OID, FLOAT8OID};

		put_history = SPI_prepare("INSERT INTO floral.history AS h "
								  "(model, round, split, tenant, examples, loss, accuracy) "
								  "VALUES ($1, $2, $3, $4, $5, $6, $7) "
								  "ON CONFLICT (model, round, split, tenant) DO UPDATE SET "
								  "examples = excluded.examples, loss = excluded.loss, "
								  "accuracy = excluded.accuracy, recorded_at = now()", 7, t7);
		if (!put_history)
			elog(ERROR, "could not prepare floral.history insert");
	}

	for (int k = 0; k < rows->ntenants; k++)
	{
		FloralTenantRows *trows = rows->tenants[k];
		FloralTenantState state;
		double		loss = 0.0;
		int64		correct = 0;
		int			C = spec->nadaptors;
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(tenant_cxt);
		MemoryContextSwitchTo(tenant_cxt);
		floral_progress_tenant(k + 1, trows->name, trows->nrows);
		floral_load_tenant(spec, trows->name, tenant_cxt, &state, false);
		if (state.pinned)
			floral_router_fixed(net, state.pinned_pi);
		else if (state.found && C > 0)
			floral_router(net, state.logits, NULL);
		else if (C > 0)
		{
			float		uniform[FLORAL_MAX_ADAPTORS];

			for (int c = 0; c < C; c++)
				uniform[c] = 1.0f / C;
			floral_router_fixed(net, uniform);
		}

		for (int64 s = 0; s < trows->nrows; s += EVAL_BATCH)
		{
			int			B = (int) Min((int64) EVAL_BATCH, trows->nrows - s);

			CHECK_FOR_INTERRUPTS();
			floral_rows_gather(rows, trows->rows + s, B, net->X, Y);
			floral_forward(net, params,
						   state.bank ? state.bank : params + spec->adaptor_offset, B);
			loss += floral_loss(net, Y, B, false, &correct) * B;
			floral_progress_batch(1, s + B, loss / (s + B));
		}

		values[0] = CStringGetTextDatum(trows->name);
		values[1] = Int64GetDatum(trows->nrows);
		values[2] = Float8GetDatum(loss / trows->nrows);
		if (spec->task == FLORAL_CLASSIFICATION)
			values[3] = Float8GetDatum((double) correct / trows->nrows);
		else
			nulls[3] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		if (put_history)
		{
			Datum		h[7] = {CStringGetTextDatum(spec->name), Int32GetDatum(spec->round),
			CStringGetTextDatum(record), values[0], values[1], values[2], values[3]};
			char		hn[7] = {' ', ' ', ' ', ' ', ' ', ' ', nulls[3] ? 'n' : ' '};

			if (SPI_execute_plan(put_history, h, hn, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "could not write floral.history");
		}
		MemoryContextSwitchTo(cxt);
	}

	floral_restore_user(&saved);
	floral_progress_end();
	floral_rows_free(rows);
	SPI_finish();
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	return (Datum) 0;
}
