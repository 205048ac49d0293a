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
#include "portability/instr_time.h"
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
#include "parallel.h"
#include "progress.h"
#include "source.h"
#include "tensor.h"

PG_FUNCTION_INFO_V1(floral_predict);
PG_FUNCTION_INFO_V1(floral_predict_proba);
PG_FUNCTION_INFO_V1(floral_mixture);
PG_FUNCTION_INFO_V1(floral_evaluate_internal);

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
 * floral_mixture(model, tenant) returns real[]: the mixture the tenant's
 * predictions use (floral_tenant_mixture), read with the caller's rights
 * under the statement's snapshot; empty for a model without adaptors, and
 * uniform for a tenant that has no row (or is NULL).
 */
Datum
floral_mixture(PG_FUNCTION_ARGS)
{
	char	   *model;
	FloralSpec	spec;
	FloralTenantState state;
	float		pi[FLORAL_MAX_ADAPTORS];

	/* as for any name that is not a model's; a NULL tenant is an unknown one */
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"<NULL>\" does not exist"),
				 errhint("Create it with floral_create_model().")));
	model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	memset(&state, 0, sizeof(state));
	SPI_connect();
	floral_load_spec(model, FLORAL_LOCK_NONE, &spec);
	if (spec.nadaptors > 0 && !PG_ARGISNULL(1))
		floral_load_tenant(&spec, text_to_cstring(PG_GETARG_TEXT_PP(1)),
						   CurrentMemoryContext, &state, false);
	SPI_finish();
	if (spec.nadaptors == 0)
		return floral_real_array(pi, 0);
	floral_tenant_mixture(&spec, state.pinned ? state.pinned_pi : NULL,
						  state.found ? state.logits : NULL, pi);
	return floral_real_array(pi, spec.nadaptors);
}

/*
 * A serial evaluation of a model with private adaptors reads each tenant
 * when it runs it, in one read: its bank, logits and pinned mixture.
 */
/* task t evaluates the tenant with its mixture: its logits or pinned one */
static void
task_from_state(FloralParallelCall *par, int t, const FloralTenantState *state)
{
	FloralTenantTask *task = &par->tasks[t];
	int			C = par->spec->nadaptors;

	task->found = state->found;
	task->pinned = state->pinned;
	task->has_bank = (state->bank != NULL);
	if (state->found)
		memcpy(par->logits + (int64) t * C, state->logits, sizeof(float) * C);
	if (state->pinned)
		memcpy(par->pinned_pi + (int64) t * C, state->pinned_pi, sizeof(float) * C);
}

typedef struct BankLoader
{
	FloralParallelCall *par;
	MemoryContext cxt;
} BankLoader;

static const float *
load_private_bank(void *arg, int t)
{
	BankLoader *bl = arg;
	FloralParallelCall *par = bl->par;
	FloralTenantTask *task = &par->tasks[t];
	FloralTenantState state;

	MemoryContextReset(bl->cxt);
	floral_load_tenant(par->spec, par->rows->tenants[task->tenant]->name, bl->cxt,
					   &state, false);
	task_from_state(par, t, &state);
	return state.bank;
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
	FloralParallelCall par;
	FloralSavedUser saved;
	MemoryContext tenant_cxt;
	BankLoader	bank_loader;
	instr_time	start;
	int			nworkers;
	int			C;

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
	INSTR_TIME_SET_CURRENT(start);
	cxt = AllocSetContextCreate(CurrentMemoryContext, "floral evaluate",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	spec = palloc(sizeof(FloralSpec));
	SPI_connect();
	MemoryContextSwitchTo(cxt);

	floral_load_spec(model, FLORAL_LOCK_NONE, spec);
	params = floral_load_round(spec, spec->round, cxt);
	rows = floral_read_source(source, spec, floral_parallel_share_after());
	/* the source has run, as the caller; history is written by floral alone */
	floral_become_owner(&saved);
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

	/*
	 * Every tenant's mixture (and private bank) is read first; then the
	 * tenants are evaluated, one after another or in parallel workers
	 * (parallel.h), and their results written in order.
	 */
	C = spec->nadaptors;
	memset(&par, 0, sizeof(par));
	par.work = FLORAL_WORK_EVALUATE;
	par.spec = spec;
	par.global = params;
	par.rows = rows;
	par.ntasks = rows->ntenants;
	par.tasks = palloc_extended(sizeof(FloralTenantTask) * rows->ntenants, MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	par.logits = palloc_extended(sizeof(float) * Max(C, 1) * rows->ntenants, MCXT_ALLOC_HUGE);
	par.pinned_pi = palloc_extended(sizeof(float) * Max(C, 1) * rows->ntenants, MCXT_ALLOC_HUGE);
	nworkers = floral_parallel_workers(spec, rows, par.ntasks);
	/*
	 * Private banks: all in shared memory for workers; without workers (or
	 * without a segment for them) each tenant is read when it runs.
	 */
	if (nworkers > 0)
	{
		par.banks = floral_parallel_banks(spec, rows->ntenants, &par.banks_seg);
		if (spec->private_adaptors && par.banks == NULL)
			nworkers = 0;
	}
	if (nworkers == 0 && spec->private_adaptors)
	{
		par.load_bank = load_private_bank;
		par.arg = &bank_loader;
		bank_loader.par = &par;
		bank_loader.cxt = AllocSetContextCreate(cxt, "floral private bank",
												ALLOCSET_DEFAULT_SIZES);
	}
	tenant_cxt = AllocSetContextCreate(cxt, "floral tenant", ALLOCSET_DEFAULT_SIZES);
	for (int k = 0; k < rows->ntenants && !par.load_bank; k++)
	{
		FloralTenantState state;
		FloralTenantTask *task = &par.tasks[k];

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(tenant_cxt);
		floral_load_tenant(spec, rows->tenants[k]->name, tenant_cxt, &state, false);
		task_from_state(&par, k, &state);
		if (task->has_bank)
			memcpy(par.banks + (int64) k * spec->adaptor_size, state.bank,
				   sizeof(float) * spec->adaptor_size);
	}
	for (int k = 0; k < rows->ntenants; k++)
		par.tasks[k].tenant = k;
	MemoryContextDelete(tenant_cxt);

	floral_parallel_run(&par, nworkers);

	for (int k = 0; k < rows->ntenants; k++)
	{
		FloralTenantRows *trows = rows->tenants[k];
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		CHECK_FOR_INTERRUPTS();
		values[0] = CStringGetTextDatum(trows->name);
		values[1] = Int64GetDatum(trows->nrows);
		values[2] = Float8GetDatum(par.loss[k]);
		if (spec->task == FLORAL_CLASSIFICATION)
			values[3] = Float8GetDatum((double) par.correct[k] / trows->nrows);
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
	}
	floral_parallel_banks_free(par.banks_seg);
	floral_timing_notice("evaluate", rows, start, par.workers_launched);

	floral_restore_user(&saved);
	floral_progress_end();
	floral_rows_free(rows);
	SPI_finish();
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	return (Datum) 0;
}
