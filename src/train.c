/*
 * train.c
 *	  Local training of every tenant of a source (FLORAL.md, "Local
 *	  training"), and fitting only the mixture of cold-start tenants.
 *
 * Every tenant starts from the shared parameters of the model's current
 * round, so tenants are independent and the order in which they are
 * trained does not matter.  A call adds what its tenants trained into one
 * set of hierarchical sums (sums.h) and stores them as one row of
 * floral.contributions (contributions.c); each tenant keeps only its
 * private state in floral.tenants, with the state it had at the start of
 * the round, so that training it again in the round (after a crash or
 * floral_discard) is exact.
 */
#include "postgres.h"

#include <math.h>
#include <cblas.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "catalog.h"
#include "contributions.h"
#include "floral.h"
#include "nn.h"
#include "parallel.h"
#include "rng.h"
#include "router.h"
#include "source.h"
#include "sums.h"
#include "train.h"
#include "progress.h"

PG_FUNCTION_INFO_V1(floral_train_internal);
PG_FUNCTION_INFO_V1(floral_personalize_internal);

struct FloralTrainer
{
	const FloralSpec *spec;
	FloralNet  *net;
	FloralRows *rows;
	int			batch_size;		/* the most rows a batch may have */
	float	   *params;			/* base, then the tenant's adaptor bank */
	float	   *own_params;		/* the trainer's own vector, when needed */
	float	   *grad;
	float	   *Y;
	int32	   *perm;
	int64		perm_capacity;
};

FloralTrainer *
floral_trainer_create(const FloralSpec *spec, FloralRows *rows, int batch_size)
{
	FloralTrainer    *tr = palloc0(sizeof(FloralTrainer));

	tr->spec = spec;
	tr->rows = rows;
	tr->batch_size = batch_size;
	tr->net = floral_net_create(spec, batch_size);
	/* own_params and grad only for personalisation (floral_personalize_one) */
	tr->Y = palloc(sizeof(float) * batch_size * rows->ylen);
	return tr;
}

static void
trainer_perm(FloralTrainer *tr, int64 n)
{
	if (n > PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a tenant may have at most %d rows per call", PG_INT32_MAX)));
	if (n > tr->perm_capacity)
	{
		if (tr->perm)
			pfree(tr->perm);
		tr->perm = palloc_extended(sizeof(int32) * n, MCXT_ALLOC_HUGE);
		tr->perm_capacity = n;
	}
	for (int64 i = 0; i < n; i++)
		tr->perm[i] = (int32) i;
}

pg_attribute_noreturn()
static void
report_divergence(const char *tenant, int epoch)
{
	ereport(ERROR,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("training diverged for tenant \"%s\" in epoch %d", tenant, epoch + 1),
			 errdetail("The loss or the parameters became infinite or NaN; nothing was stored."),
			 errhint("Lower the learning rate (lr, router_lr).")));
}

/*
 * Mini-batch SGD over one tenant's rows.  z is the tenant's mixture logits
 * (updated unless pinned or frozen); what is trained of the parameters is
 * chosen by train_params.  Returns the mean loss of the last epoch.
 */
static double
train_tenant(FloralTrainer *tr, const FloralTenantRows *trows, const FloralTrainOptions *opts,
			 float *z, const float *pinned, bool train_params, pg_prng_state *rng)
{
	const FloralSpec *spec = tr->spec;
	FloralNet  *net = tr->net;
	int			C = spec->nadaptors;
	float	   *base = tr->params;
	float	   *bank = tr->params + spec->adaptor_offset;
	float	   *gbase = tr->grad;
	float	   *gbank = tr->grad + spec->adaptor_offset;
	bool		train_router = (C >= 2 && pinned == NULL && opts->router_lr > 0);
	int64		n = trows->nrows;
	double		epoch_loss = 0.0;

	trainer_perm(tr, n);
	for (int epoch = 0; epoch < opts->epochs; epoch++)
	{
		floral_rng_shuffle(rng, tr->perm, n);
		epoch_loss = 0.0;
		for (int64 start = 0; start < n; start += opts->batch_size)
		{
			int			B = (int) Min((int64) opts->batch_size, n - start);
			double		loss;

			CHECK_FOR_INTERRUPTS();
			floral_rows_gather(tr->rows, trows, tr->perm + start, 0, B, net->X, tr->Y);

			if (pinned)
				floral_router_fixed(net, pinned);
			else if (C > 0)
			{
				float		u[FLORAL_MAX_ADAPTORS];

				/* router noise: training only (FLORAL.md, "Model") */
				for (int c = 0; c < C; c++)
					u[c] = (float) pg_prng_double(rng);
				floral_router(net, z, u);
			}

			floral_forward(net, base, bank, B);
			loss = floral_loss(net, tr->Y, B, true, NULL);
			if (!isfinite(loss))
				report_divergence(trows->name, epoch);
			/* the fused step also fills net->dm, which the router needs */
			if (train_params)
				floral_sgd_step(net, base, bank, B, opts->lr);
			else
				floral_backward(net, base, bank, B, gbase, gbank);

			if (train_router)
			{
				float		dz[FLORAL_MAX_ADAPTORS];

				floral_router_backward(net, dz);
				for (int c = 0; c < C; c++)
					z[c] -= opts->router_lr * dz[c];
			}
			epoch_loss += loss * B;
			floral_progress_batch(epoch + 1, start + B, epoch_loss / (start + B));
		}
	}

	/*
	 * The parameters' finiteness is checked by the caller on its one pass
	 * over them (floral_sums_flush), not by another pass here.
	 */
	for (int c = 0; c < C; c++)
		if (!isfinite(z[c]))
			report_divergence(trows->name, opts->epochs - 1);
	return epoch_loss / n;
}

/* sum the queued tenants; one with a non-finite parameter diverged */
static void
flush_sums(FloralSums *sums, const float *global, const FloralTrainOptions *opts)
{
	const char *bad = floral_sums_flush(sums, global);

	if (bad)
		report_divergence(bad, opts->epochs - 1);
}

/*
 * Differential privacy, first half: bound what one tenant can change.  The
 * part of the update that travels (the base, and the adaptors unless they
 * are private) is pulled back to norm dp_clip around the round's
 * parameters.  The tenant keeps its own private state unclipped.
 */
static void
clip_update(const FloralSpec *spec, const float *global, float *params)
{
	int64		n = spec->private_adaptors ? spec->base_size : spec->nparams;
	double		norm = 0.0;

	for (int64 i = 0; i < n; i++)
	{
		double		d = (double) params[i] - global[i];

		norm += d * d;
	}
	norm = sqrt(norm);
	if (norm > spec->dp_clip)
	{
		double		scale = spec->dp_clip / norm;

		for (int64 i = 0; i < n; i++)
			params[i] = (float) (global[i] + ((double) params[i] - global[i]) * scale);
	}
}

/*
 * The per-tenant work (train.h).  Each reads only its arguments and the
 * rows, so a tenant's result is the same in any process and any order.
 */
double
floral_train_one(FloralTrainer *tr, const FloralTenantRows *trows,
				 const FloralTrainOptions *opts, const float *global,
				 float *params, const float *start_bank,
				 float *z, const float *pinned, float *pi)
{
	const FloralSpec *spec = tr->spec;
	pg_prng_state rng;
	double		loss;

	tr->params = params;
	if (spec->private_adaptors && start_bank)
		memcpy(params + spec->adaptor_offset, start_bank, sizeof(float) * spec->adaptor_size);
	floral_rng_seed(&rng, (uint64) opts->seed, (uint64) spec->round, trows->name);
	/* option router "probe": start from the one-hot probe's posterior */
	if (spec->router == FLORAL_ROUTER_PROBE && pinned == NULL && spec->nadaptors >= 2)
		floral_router_probe(tr->net, tr->rows, trows, params,
							params + spec->adaptor_offset, opts->batch_size, tr->Y, z);
	loss = train_tenant(tr, trows, opts, z, pinned, true, &rng);
	floral_tenant_mixture(spec, pinned, z, pi);
	if (spec->dp_clip > 0)
		clip_update(spec, global, params);
	return loss;
}

double
floral_personalize_one(FloralTrainer *tr, const FloralTenantRows *trows,
					   const FloralTrainOptions *opts, const float *global,
					   bool one_hot, const float *logits, float *z, float *pi)
{
	const FloralSpec *spec = tr->spec;
	int			C = spec->nadaptors;
	double		loss;

	if (tr->own_params == NULL)
	{
		tr->own_params = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
		tr->grad = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
	}
	tr->params = tr->own_params;
	memcpy(tr->params, global, sizeof(float) * spec->nparams);
	memset(z, 0, sizeof(float) * C);
	if (one_hot)
	{
		/* try each adaptor alone, keep the one with the lowest loss */
		int			best = 0;
		double		best_loss = INFINITY;

		for (int c = 0; c < C; c++)
		{
			float		onehot[FLORAL_MAX_ADAPTORS] = {0};
			double		sum = 0.0;

			onehot[c] = 1.0f;
			for (int64 s = 0; s < trows->nrows; s += opts->batch_size)
			{
				int			B = (int) Min((int64) opts->batch_size, trows->nrows - s);

				CHECK_FOR_INTERRUPTS();
				floral_rows_gather(tr->rows, trows, NULL, s, B, tr->net->X, tr->Y);
				floral_router_fixed(tr->net, onehot);
				floral_forward(tr->net, tr->params, tr->params + spec->adaptor_offset, B);
				sum += floral_loss(tr->net, tr->Y, B, false, NULL) * B;
			}
			if (sum / trows->nrows < best_loss)
			{
				best_loss = sum / trows->nrows;
				best = c;
			}
		}
		/* logits whose softmax is (almost) the chosen one-hot */
		z[best] = 10.0f;
		loss = best_loss;
	}
	else
	{
		pg_prng_state rng;

		if (logits)
			memcpy(z, logits, sizeof(float) * C);
		floral_rng_seed(&rng, (uint64) opts->seed, (uint64) spec->round, trows->name);
		loss = train_tenant(tr, trows, opts, z, NULL, false, &rng);
	}
	floral_tenant_mixture(spec, NULL, z, pi);
	return loss;
}

double
floral_evaluate_one(FloralTrainer *tr, const FloralTenantRows *trows,
					const float *global, const float *bank,
					const float *pinned, const float *logits, int64 *correct)
{
	const FloralSpec *spec = tr->spec;
	FloralNet  *net = tr->net;
	int			C = spec->nadaptors;
	double		loss = 0.0;

	if (C > 0)
	{
		float		pi[FLORAL_MAX_ADAPTORS];

		floral_tenant_mixture(spec, pinned, logits, pi);
		floral_router_fixed(net, pi);
	}

	*correct = 0;
	for (int64 s = 0; s < trows->nrows; s += tr->batch_size)
	{
		int			B = (int) Min((int64) tr->batch_size, trows->nrows - s);

		CHECK_FOR_INTERRUPTS();
		floral_rows_gather(tr->rows, trows, NULL, s, B, net->X, tr->Y);
		floral_forward(net, global, bank ? bank : global + spec->adaptor_offset, B);
		loss += floral_loss(net, tr->Y, B, false, correct) * B;
		floral_progress_batch(1, s + B, loss / (s + B));
	}
	return loss / trows->nrows;
}

static void
options_from_args(FunctionCallInfo fcinfo, int first, FloralTrainOptions *opts)
{
	opts->epochs = PG_GETARG_INT32(first);
	opts->batch_size = PG_GETARG_INT32(first + 1);
	opts->lr = PG_GETARG_FLOAT4(first + 2);
	opts->router_lr = PG_GETARG_FLOAT4(first + 3);
	opts->seed = PG_GETARG_INT64(first + 4);

	/*
	 * floral_train() and floral_personalize() check their options, but the
	 * internal functions they call can be called directly too: check again
	 * here, at the boundary of the C code.
	 */
	if (opts->epochs < 1 || opts->epochs > 100000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("epochs must be between 1 and 100000")));
	if (opts->batch_size < 1 || opts->batch_size > 65536)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_size must be between 1 and 65536")));
	if (!(opts->lr >= 0 && opts->lr < 1e6) || !(opts->router_lr >= 0 && opts->router_lr < 1e6))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("learning rates must be finite numbers from 0 to 1e6")));
}

void
floral_timing_notice(const char *what, const FloralRows *rows, instr_time start, int workers)
{
	instr_time	elapsed;
	double		total;

	if (!floral_timing)
		return;
	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);
	total = INSTR_TIME_GET_DOUBLE(elapsed);
	ereport(NOTICE,
			(errmsg_plural("floral_%s: " INT64_FORMAT " rows of %d tenants; read %.3f s, computed %.3f s; %d parallel worker",
						   "floral_%s: " INT64_FORMAT " rows of %d tenants; read %.3f s, computed %.3f s; %d parallel workers",
						   workers,
						   what, rows->nrows, rows->ntenants, rows->read_seconds,
						   total - rows->read_seconds, workers)));
}

/* what a training or personalisation call sets up and tears down */
typedef struct TrainCall
{
	const char *what;			/* for progress and timing */
	ReturnSetInfo *rsinfo;
	FloralTrainOptions opts;
	MemoryContext cxt;
	MemoryContext old;
	FloralSpec *spec;
	float	   *global;			/* the current round's shared parameters */
	FloralRows *rows;
	FloralTrainer    *tr;
	instr_time	start;
	int			workers;		/* parallel workers launched */
} TrainCall;

/*
 * Load the model under the shared training lock, read the source and make
 * the scratch space.  For personalisation the model must have a shared
 * mixture to fit.
 */
static void
train_call_begin(FunctionCallInfo fcinfo, TrainCall *call, const char *what,
				 bool mixture_only)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *source = text_to_cstring(PG_GETARG_TEXT_PP(1));
	FloralSpec *spec;

	call->what = what;
	call->rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	options_from_args(fcinfo, 2, &call->opts);
	InitMaterializedSRF(fcinfo, 0);
	INSTR_TIME_SET_CURRENT(call->start);
	floral_blas_prepare();

	call->cxt = AllocSetContextCreate(CurrentMemoryContext, "floral training call",
									  ALLOCSET_DEFAULT_SIZES);
	call->old = MemoryContextSwitchTo(call->cxt);
	spec = call->spec = palloc(sizeof(FloralSpec));
	SPI_connect();
	MemoryContextSwitchTo(call->cxt);

	floral_load_spec(model, FLORAL_LOCK_SHARE, spec);
	if (mixture_only && (spec->nadaptors < 2 || spec->private_adaptors))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("model \"%s\" has no shared mixture to personalise", model),
				 errdetail("Personalisation fits the mixture over a shared bank of at least two adaptors.")));
	call->global = floral_load_round(spec, spec->round, call->cxt);
	call->rows = floral_read_source(source, spec, floral_parallel_share_after());
	call->tr = floral_trainer_create(spec, call->rows, call->opts.batch_size);
	call->workers = 0;
}

static void
train_call_end(TrainCall *call)
{
	floral_progress_end();
	floral_timing_notice(call->what, call->rows, call->start, call->workers);
	floral_rows_free(call->rows);
	SPI_finish();
	MemoryContextSwitchTo(call->old);
	MemoryContextDelete(call->cxt);
}

/* statements a training call runs for every tenant, prepared once */
typedef struct TenantStatements
{
	SPIPlanPtr	claim_tenant;	/* a tenant seen for the first time */
	SPIPlanPtr	update_tenant;	/* one whose row the call has locked */
	SPIPlanPtr	put_history;
} TenantStatements;

#define TENANT_NARGS 7

static void
prepare_tenant_statements(TenantStatements *st)
{
	Oid			tensor_type = floral_tensor_type();
	Oid			t[TENANT_NARGS] = {TEXTOID, TEXTOID, FLOAT4ARRAYOID, tensor_type,
	INT8OID, INT4OID, INT8OID};
	Oid			th[5] = {TEXTOID, INT4OID, TEXTOID, INT8OID, FLOAT8OID};
	Oid			tc[3] = {TEXTOID, TEXTOID, FLOAT4ARRAYOID};

	/*
	 * A tenant seen for the first time gets its row before it trains, so
	 * that the call holds the row's lock like any other tenant's; if another
	 * session created it meanwhile, nothing is inserted (claim_new_tenant).
	 */
	st->claim_tenant = SPI_prepare("INSERT INTO floral.tenants (model, tenant, logits, examples) "
								   "VALUES ($1, $2, $3, 0) ON CONFLICT (model, tenant) DO NOTHING",
								   3, tc);

	/*
	 * The state at the start of the round is the row's own: what it already
	 * kept for this round if it trained in it before (after floral_discard),
	 * else what it held until now, which is what the tenant trained from
	 * (begin_tenant).  SET reads the row as it was before the update.
	 */
	st->update_tenant = SPI_prepare("UPDATE floral.tenants SET "
									"logits = $3, adaptors = $4, examples = $5, last_round = $6, "
									"start_logits = CASE WHEN start_round = $6 "
									"THEN start_logits ELSE logits END, "
									"start_adaptors = CASE WHEN start_round = $6 "
									"THEN start_adaptors ELSE adaptors END, "
									"start_round = $6, contributed_call = $7, updated_at = now() "
									"WHERE model = $1 AND tenant = $2",
									TENANT_NARGS, t);
	st->put_history = SPI_prepare("INSERT INTO floral.history AS h "
								  "(model, round, split, tenant, examples, loss) "
								  "VALUES ($1, $2, 'train', $3, $4, $5) "
								  "ON CONFLICT (model, round, split, tenant) DO UPDATE SET "
								  "examples = excluded.examples, loss = excluded.loss, "
								  "recorded_at = now()", 5, th);
	if (!st->claim_tenant || !st->update_tenant || !st->put_history)
		elog(ERROR, "could not prepare floral catalog statements: %s",
			 SPI_result_code_string(SPI_result));
}

/*
 * Insert a new tenant's row (mixture logits at zero), locked by this call
 * until it ends.  Returns false if another session created the row first;
 * it has committed by then, and the caller reads it again.
 */
static bool
claim_new_tenant(TenantStatements *st, const FloralSpec *spec, const char *tenant)
{
	float		zeros[FLORAL_MAX_ADAPTORS] = {0};
	Datum		a[3];
	int			ret;

	a[0] = CStringGetTextDatum(spec->name);
	a[1] = CStringGetTextDatum(tenant);
	a[2] = floral_real_array(zeros, spec->nadaptors);
	ret = SPI_execute_plan(st->claim_tenant, a, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not write floral.tenants: %s", SPI_result_code_string(ret));
	return SPI_processed == 1;
}

/*
 * Has the tenant a contribution to this round in a committed call that
 * aggregation has not taken yet?  Its row is locked (floral_load_tenant
 * with for_update), so a call that trained it concurrently has committed or
 * rolled back by now, and the query below takes a fresh snapshot that sees
 * which.
 */
static bool
already_contributed(const FloralSpec *spec, const FloralTenantState *state)
{
	return state->found && state->start_round == spec->round &&
		state->contributed &&
		floral_call_pending(spec, spec->round, state->contributed_call);
}

static void
skipped_notice(const FloralSpec *spec, int skipped, const char *first)
{
	if (skipped == 0)
		return;
	ereport(NOTICE,
			(errmsg("skipped %d tenant(s) that already contributed to round %d of model \"%s\"",
					skipped, spec->round, spec->name),
			 errdetail("The first one is \"%s\". A tenant contributes once per round; its earlier contribution stands.",
					   first),
			 errhint("To train them again in this round, first drop the round's pending contributions with floral_discard().")));
}

/*
 * Lock (or claim) a tenant's row and find where it starts this round: its
 * logits and private bank, or what it kept from the round's start if it
 * trained in the round before.  Returns false if it already contributed.
 */
static bool
begin_tenant(TenantStatements *st, const FloralSpec *spec, const FloralTenantRows *trows,
			 MemoryContext cxt, FloralTenantState *state, float *start_z,
			 float **start_bank)
{
	int			C = spec->nadaptors;

	floral_load_tenant(spec, trows->name, cxt, state, true);
	if (!state->found && !claim_new_tenant(st, spec, trows->name))
	{
		/*
		 * Another session created the tenant meanwhile (training,
		 * personalising or pinning it): now that it committed, its row is
		 * what this call starts from, or skips.
		 */
		floral_load_tenant(spec, trows->name, cxt, state, true);
	}
	if (already_contributed(spec, state))
		return false;

	/* training again in the same round starts from the state before it */
	memset(start_z, 0, sizeof(float) * FLORAL_MAX_ADAPTORS);
	if (state->start_round == spec->round)
	{
		memcpy(start_z, state->start_logits, sizeof(float) * C);
		*start_bank = state->start_bank;
	}
	else
	{
		if (state->found)
			memcpy(start_z, state->logits, sizeof(float) * C);
		*start_bank = state->bank;
	}
	return true;
}

/* a trained tenant's new private state, history and result row */
static void
write_trained_tenant(TenantStatements *st, const FloralSpec *spec, int64 call_id,
					 const FloralTenantRows *trows, const float *z, const float *bank,
					 double loss, ReturnSetInfo *rsinfo)
{
	Datum		a[TENANT_NARGS];
	char		n[TENANT_NARGS + 1];
	int			ret;

	memset(n, ' ', TENANT_NARGS);
	n[TENANT_NARGS] = '\0';
	a[0] = CStringGetTextDatum(spec->name);
	a[1] = CStringGetTextDatum(trows->name);
	a[2] = floral_real_array(z, spec->nadaptors);
	a[3] = (Datum) 0;
	a[4] = Int64GetDatum(trows->nrows);
	a[5] = Int32GetDatum(spec->round);
	a[6] = Int64GetDatum(call_id);
	if (spec->private_adaptors)
		a[3] = floral_tensor_datum(bank, spec->adaptor_size);
	else
		n[3] = 'n';
	/* the row exists and this call holds its lock (see claim_new_tenant) */
	ret = SPI_execute_plan(st->update_tenant, a, n, false, 0);
	if (ret != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "could not write floral.tenants: %s", SPI_result_code_string(ret));
	{
		Datum		h[5] = {a[0], Int32GetDatum(spec->round), a[1], a[4], Float8GetDatum(loss)};

		if (SPI_execute_plan(st->put_history, h, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not write floral.history");
	}
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = a[1];
		values[1] = a[4];
		values[2] = Float8GetDatum(loss);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
}

/*
 * A tenant's weight in the sums, n_k.  Differential privacy bounds it
 * (dp_max_examples), so that one tenant moves N, M and the sums by a known
 * amount (aggregate.c, add_dp_noise).
 */
static double
tenant_weight(const FloralSpec *spec, const FloralTenantRows *trows)
{
	if (spec->dp_max_examples > 0)
		return Min((double) trows->nrows, (double) spec->dp_max_examples);
	return (double) trows->nrows;
}

/* what the serial and the parallel training paths share */
typedef struct TrainState
{
	TrainCall  *call;
	TenantStatements st;
	FloralSums	sums;
	int64		call_id;
	int			skipped;
	char		first_skipped[FLORAL_MAX_TENANT_LEN + 1];
	FloralParallelCall *par;	/* parallel path */
} TrainState;

static void
note_skipped(TrainState *ts, const FloralTenantRows *trows)
{
	floral_rows_check(ts->call->rows, trows);
	if (ts->skipped++ == 0)
		strlcpy(ts->first_skipped, trows->name, sizeof(ts->first_skipped));
}

/*
 * One tenant after another.  Tenants are summed a few at a time
 * (floral_sums_defer_tenant), so each queued tenant trains in a parameter
 * vector of its own; at rest every one holds the round's parameters, and
 * the sums' pass resets it.  At most 64 MB of them, at least one.
 */
static void
train_serial(TrainState *ts)
{
	TrainCall  *call = ts->call;
	FloralSpec *spec = call->spec;
	FloralRows *rows = call->rows;
	MemoryContext tenant_cxt;
	float	   *bufs[FLORAL_SUMS_DEFER];
	int			nbufs;

	tenant_cxt = AllocSetContextCreate(call->cxt, "floral tenant", ALLOCSET_DEFAULT_SIZES);
	nbufs = (int) Max(1, Min(FLORAL_SUMS_DEFER,
							 (int64) 64 * 1024 * 1024 / ((int64) sizeof(float) * spec->nparams)));
	for (int b = 0; b < nbufs; b++)
	{
		bufs[b] = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
		memcpy(bufs[b], call->global, sizeof(float) * spec->nparams);
	}
	Assert(call->tr->own_params == NULL);	/* training needs no vector of its own */

	floral_progress_start(call->what, spec->name, rows->ntenants, call->opts.epochs);
	for (int k = 0; k < rows->ntenants; k++)
	{
		FloralTenantRows *trows = rows->tenants[k];
		FloralTenantState state;
		float		z[FLORAL_MAX_ADAPTORS];
		float		pi[FLORAL_MAX_ADAPTORS];
		float	   *start_bank;
		float	   *params;
		double		loss;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(tenant_cxt);
		old = MemoryContextSwitchTo(tenant_cxt);
		floral_progress_tenant(k + 1, trows->name, trows->nrows);
		if (!begin_tenant(&ts->st, spec, trows, tenant_cxt, &state, z, &start_bank))
		{
			note_skipped(ts, trows);
			MemoryContextSwitchTo(old);
			continue;
		}

		/* the next free vector, which holds the round's parameters */
		params = bufs[ts->sums.npending];
		loss = floral_train_one(call->tr, trows, &call->opts, call->global, params,
								start_bank, z, state.pinned ? state.pinned_pi : NULL, pi);
		write_trained_tenant(&ts->st, spec, ts->call_id, trows, z,
							 params + spec->adaptor_offset, loss, call->rsinfo);
		if (floral_sums_defer_tenant(&ts->sums, tenant_weight(spec, trows), pi, params, loss,
									 trows->name) || ts->sums.npending == nbufs)
			flush_sums(&ts->sums, call->global, &call->opts);
		MemoryContextSwitchTo(old);
	}
	if (ts->sums.npending > 0)
		flush_sums(&ts->sums, call->global, &call->opts);
}

/* the parallel path hands the leader each trained vector in task order */
static void
consume_trained(void *arg, int task, float *params, const float *pi, double loss)
{
	TrainState *ts = arg;
	const FloralTenantRows *trows = ts->call->rows->tenants[ts->par->tasks[task].tenant];

	/* never more than FLORAL_SUMS_DEFER before a flush (parallel.c, sum_ready) */
	Assert(ts->sums.npending < FLORAL_SUMS_DEFER);
	floral_sums_defer_tenant(&ts->sums, tenant_weight(ts->call->spec, trows), pi, params,
							 loss, trows->name);
}

static void
flush_trained(void *arg)
{
	TrainState *ts = arg;

	flush_sums(&ts->sums, ts->call->global, &ts->call->opts);
}

/*
 * Lock and claim every tenant first (in the same order as the serial path,
 * so two calls never deadlock), train them in parallel workers while the
 * leader sums them in order, then write them.
 */
static void
train_parallel(TrainState *ts, int nworkers)
{
	TrainCall  *call = ts->call;
	FloralSpec *spec = call->spec;
	FloralRows *rows = call->rows;
	FloralParallelCall *par = palloc0(sizeof(FloralParallelCall));
	MemoryContext tenant_cxt;
	int			C = spec->nadaptors;

	par->work = FLORAL_WORK_TRAIN;
	par->spec = spec;
	par->opts = call->opts;
	par->global = call->global;
	par->rows = rows;
	par->tasks = palloc_extended(sizeof(FloralTenantTask) * rows->ntenants, MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	par->logits = palloc_extended(sizeof(float) * Max(C, 1) * rows->ntenants, MCXT_ALLOC_HUGE);
	par->pinned_pi = palloc_extended(sizeof(float) * Max(C, 1) * rows->ntenants, MCXT_ALLOC_HUGE);
	par->banks = floral_parallel_banks(spec, rows->ntenants, &par->banks_seg);
	if (spec->private_adaptors && par->banks == NULL)
	{
		/* no segment to spare: the leader trains alone, banks in its memory */
		par->banks = palloc_extended(sizeof(float) * spec->adaptor_size * rows->ntenants,
									 MCXT_ALLOC_HUGE);
		nworkers = 0;
	}
	par->tr = call->tr;
	par->consume = consume_trained;
	par->flush = flush_trained;
	par->arg = ts;
	ts->par = par;

	floral_progress_start(call->what, spec->name, rows->ntenants, call->opts.epochs);
	tenant_cxt = AllocSetContextCreate(call->cxt, "floral tenant", ALLOCSET_DEFAULT_SIZES);
	for (int k = 0; k < rows->ntenants; k++)
	{
		FloralTenantRows *trows = rows->tenants[k];
		FloralTenantState state;
		float		z[FLORAL_MAX_ADAPTORS];
		float	   *start_bank;
		FloralTenantTask *task = &par->tasks[par->ntasks];
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(tenant_cxt);
		old = MemoryContextSwitchTo(tenant_cxt);
		if (!begin_tenant(&ts->st, spec, trows, tenant_cxt, &state, z, &start_bank))
		{
			note_skipped(ts, trows);
			MemoryContextSwitchTo(old);
			continue;
		}
		task->tenant = k;
		task->found = state.found;
		task->pinned = state.pinned;
		task->has_bank = (par->banks != NULL && start_bank != NULL);
		memcpy(par->logits + (int64) par->ntasks * C, z, sizeof(float) * C);
		if (state.pinned)
			memcpy(par->pinned_pi + (int64) par->ntasks * C, state.pinned_pi, sizeof(float) * C);
		if (task->has_bank)
			memcpy(par->banks + (int64) par->ntasks * spec->adaptor_size, start_bank,
				   sizeof(float) * spec->adaptor_size);
		par->ntasks++;
		MemoryContextSwitchTo(old);
	}
	MemoryContextDelete(tenant_cxt);

	floral_parallel_run(par, nworkers);

	/* parallel mode is over: write every tenant, in order */
	for (int t = 0; t < par->ntasks; t++)
	{
		const FloralTenantRows *trows = rows->tenants[par->tasks[t].tenant];

		CHECK_FOR_INTERRUPTS();
		write_trained_tenant(&ts->st, spec, ts->call_id, trows,
							 par->out_logits + (int64) t * C,
							 par->banks ? par->banks + (int64) t * spec->adaptor_size : NULL,
							 par->loss[t], call->rsinfo);
	}
	floral_parallel_banks_free(par->banks_seg);
}

/*
 * floral._train(model, source, epochs, batch_size, lr, router_lr, seed)
 * returns setof (tenant, examples, loss); floral_train() validates the
 * options and calls this.
 *
 * Every tenant is trained from the round's shared parameters and added into
 * the call's sums (sums.h), which are stored as one row at the end: what
 * the call leaves for aggregation is O(model size), whatever the number of
 * tenants.  Per tenant, only its private state and its history row are
 * written.  A tenant contributes at most once per round (see
 * already_contributed), so a call that runs twice, or a job retried after
 * it committed, counts nothing twice; a call that fails stores nothing, and
 * running it again trains from the same start state with the same seeds,
 * bit for bit.
 */
Datum
floral_train_internal(PG_FUNCTION_ARGS)
{
	TrainCall	call;
	TrainState *ts;
	FloralSpec *spec;
	FloralSavedUser saved;
	int			nworkers;

	train_call_begin(fcinfo, &call, "train", false);
	spec = call.spec;
	ts = palloc0(sizeof(TrainState));
	ts->call = &call;

	/* the source has run, as the caller; from here on floral writes its own tables */
	floral_become_owner(&saved);
	prepare_tenant_statements(&ts->st);
	ts->call_id = floral_new_call_id();
	floral_sums_init(&ts->sums, spec);

	nworkers = floral_parallel_workers(spec, call.rows, call.rows->ntenants);
	if (nworkers > 0)
		train_parallel(ts, nworkers);
	else
		train_serial(ts);

	if (ts->sums.tenants > 0)
		floral_store_call_sums(spec, spec->round, ts->call_id, &ts->sums);
	floral_restore_user(&saved);
	skipped_notice(spec, ts->skipped, ts->first_skipped);
	call.workers = ts->par ? ts->par->workers_launched : 0;
	train_call_end(&call);
	return (Datum) 0;
}

/*
 * floral._personalize(model, source, epochs, batch_size, router_lr, seed,
 * one_hot) returns setof (tenant, examples, loss, mixture): fits only the
 * mixture logits of each tenant; the shared parameters stay frozen and no
 * contribution is recorded (FLORAL.md, "Cold start").
 */
Datum
floral_personalize_internal(PG_FUNCTION_ARGS)
{
	bool		one_hot = PG_GETARG_BOOL(7);
	TrainCall	call;
	FloralSpec *spec;
	FloralRows *rows;
	FloralParallelCall par;
	SPIPlanPtr	put_tenant;
	FloralSavedUser saved;
	MemoryContext tenant_cxt;
	int			C;
	int			nworkers;

	train_call_begin(fcinfo, &call, "personalize", true);
	spec = call.spec;
	rows = call.rows;
	C = spec->nadaptors;
	floral_become_owner(&saved);

	{
		Oid			t4[4] = {TEXTOID, TEXTOID, FLOAT4ARRAYOID, INT4OID};

		put_tenant = SPI_prepare("INSERT INTO floral.tenants AS t "
								 "(model, tenant, logits, examples, last_round, updated_at) "
								 "VALUES ($1, $2, $3, 0, $4, now()) "
								 "ON CONFLICT (model, tenant) DO UPDATE SET "
								 "logits = excluded.logits, updated_at = now()", 4, t4);
		if (!put_tenant)
			elog(ERROR, "could not prepare floral catalog statement");
	}

	/*
	 * Every tenant's row is read and locked first (a concurrent training of
	 * the tenant must not be overwritten), then the mixtures are fitted,
	 * one after another or in parallel workers, and written in order.
	 */
	memset(&par, 0, sizeof(par));
	par.work = FLORAL_WORK_PERSONALIZE;
	par.spec = spec;
	par.opts = call.opts;
	par.one_hot = one_hot;
	par.tr = call.tr;
	par.global = call.global;
	par.rows = rows;
	par.ntasks = rows->ntenants;
	par.tasks = palloc_extended(sizeof(FloralTenantTask) * rows->ntenants, MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	par.logits = palloc_extended(sizeof(float) * C * rows->ntenants, MCXT_ALLOC_HUGE);
	floral_progress_start(call.what, spec->name, rows->ntenants, call.opts.epochs);
	tenant_cxt = AllocSetContextCreate(call.cxt, "floral tenant", ALLOCSET_DEFAULT_SIZES);
	for (int k = 0; k < rows->ntenants; k++)
	{
		FloralTenantState state;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(tenant_cxt);
		floral_load_tenant(spec, rows->tenants[k]->name, tenant_cxt, &state, true);
		par.tasks[k].tenant = k;
		par.tasks[k].found = state.found;
		if (state.found)
			memcpy(par.logits + (int64) k * C, state.logits, sizeof(float) * C);
	}
	MemoryContextDelete(tenant_cxt);

	nworkers = floral_parallel_workers(spec, rows, par.ntasks);
	floral_parallel_run(&par, nworkers);

	for (int k = 0; k < rows->ntenants; k++)
	{
		FloralTenantRows *trows = rows->tenants[k];
		Datum		ta[4];
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		CHECK_FOR_INTERRUPTS();
		ta[0] = CStringGetTextDatum(spec->name);
		ta[1] = CStringGetTextDatum(trows->name);
		ta[2] = floral_real_array(par.out_logits + (int64) k * C, C);
		ta[3] = Int32GetDatum(spec->round);
		if (SPI_execute_plan(put_tenant, ta, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not write floral.tenants");
		values[0] = ta[1];
		values[1] = Int64GetDatum(trows->nrows);
		values[2] = Float8GetDatum(par.loss[k]);
		values[3] = floral_real_array(par.out_pi + (int64) k * C, C);
		tuplestore_putvalues(call.rsinfo->setResult, call.rsinfo->setDesc, values, nulls);
	}

	floral_restore_user(&saved);
	call.workers = par.workers_launched;
	train_call_end(&call);
	return (Datum) 0;
}
