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
#include "rng.h"
#include "source.h"
#include "sums.h"
#include "train.h"
#include "progress.h"

PG_FUNCTION_INFO_V1(floral_train_internal);
PG_FUNCTION_INFO_V1(floral_personalize_internal);

/* scratch for training one tenant after another */
typedef struct Trainer
{
	const FloralSpec *spec;
	FloralNet  *net;
	FloralRows *rows;
	float	   *params;			/* base, then the tenant's adaptor bank */
	float	   *grad;
	float	   *Y;
	int64	   *recnos;
	int32	   *perm;
	int64		perm_capacity;
} Trainer;

static Trainer *
trainer_create(const FloralSpec *spec, FloralRows *rows, int batch_size)
{
	Trainer    *tr = palloc0(sizeof(Trainer));

	tr->spec = spec;
	tr->rows = rows;
	tr->net = floral_net_create(spec, batch_size);
	tr->params = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
	tr->grad = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
	tr->Y = palloc(sizeof(float) * batch_size * rows->ylen);
	tr->recnos = palloc(sizeof(int64) * batch_size);
	return tr;
}

static void
trainer_perm(Trainer *tr, int64 n)
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
train_tenant(Trainer *tr, const FloralTenantRows *trows, const FloralTrainOptions *opts,
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
			for (int i = 0; i < B; i++)
				tr->recnos[i] = trows->rows[tr->perm[start + i]];
			floral_rows_gather(tr->rows, tr->recnos, B, net->X, tr->Y);

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

/* pi = softmax(z), or the pinned mixture */
static void
final_mixture(const FloralSpec *spec, FloralNet *net, const float *z,
			  const float *pinned, float *pi)
{
	if (pinned)
		floral_router_fixed(net, pinned);
	else
		floral_router(net, z, NULL);
	memcpy(pi, net->pi, sizeof(float) * spec->nadaptors);
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

static void
timing_notice(const char *what, FloralRows *rows, instr_time start)
{
	instr_time	elapsed;
	double		total;

	if (!floral_timing)
		return;
	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);
	total = INSTR_TIME_GET_DOUBLE(elapsed);
	ereport(NOTICE,
			(errmsg("floral_%s: " INT64_FORMAT " rows of %d tenants; read %.3f s, computed %.3f s",
					what, rows->nrows, rows->ntenants, rows->read_seconds,
					total - rows->read_seconds)));
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
	Trainer    *tr;
	instr_time	start;
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
	call->rows = floral_read_source(source, spec);
	call->tr = trainer_create(spec, call->rows, call->opts.batch_size);
	floral_progress_start(what, spec->name, call->rows->ntenants, call->opts.epochs);
}

static void
train_call_end(TrainCall *call)
{
	floral_progress_end();
	timing_notice(call->what, call->rows, call->start);
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

#define TENANT_NARGS 9

static void
prepare_tenant_statements(TenantStatements *st)
{
	Oid			tensor_type = floral_tensor_type();
	Oid			t[TENANT_NARGS] = {TEXTOID, TEXTOID, FLOAT4ARRAYOID, tensor_type,
	INT8OID, INT4OID, FLOAT4ARRAYOID, tensor_type, INT8OID};
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
	st->update_tenant = SPI_prepare("UPDATE floral.tenants SET "
									"logits = $3, adaptors = $4, examples = $5, last_round = $6, "
									"start_round = $6, start_logits = $7, start_adaptors = $8, "
									"contributed_call = $9, updated_at = now() "
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
	FloralSpec *spec;
	float	   *global;
	FloralRows *rows;
	Trainer    *tr;
	FloralTrainOptions opts;
	TenantStatements st;
	FloralSums	sums;
	FloralSavedUser saved;
	MemoryContext tenant_cxt;
	int64		call_id;
	float	   *bufs[FLORAL_SUMS_DEFER];
	int			nbufs;
	int			skipped = 0;
	char		first_skipped[FLORAL_MAX_TENANT_LEN + 1] = "";
	int			C;

	train_call_begin(fcinfo, &call, "train", false);
	spec = call.spec;
	global = call.global;
	rows = call.rows;
	tr = call.tr;
	opts = call.opts;
	C = spec->nadaptors;

	/* the source has run, as the caller; from here on floral writes its own tables */
	floral_become_owner(&saved);
	prepare_tenant_statements(&st);
	call_id = floral_new_call_id();
	floral_sums_init(&sums, spec);
	tenant_cxt = AllocSetContextCreate(call.cxt, "floral tenant", ALLOCSET_DEFAULT_SIZES);

	/*
	 * Tenants are summed a few at a time (floral_sums_defer_tenant), so each
	 * queued tenant trains in a parameter vector of its own; at rest every
	 * one holds the round's parameters, and the sums' pass resets it.  At
	 * most 64 MB of them, at least one.
	 */
	nbufs = (int) Max(1, Min(FLORAL_SUMS_DEFER,
							 (int64) 64 * 1024 * 1024 / ((int64) sizeof(float) * spec->nparams)));
	for (int b = 0; b < nbufs; b++)
	{
		bufs[b] = (b == 0) ? tr->params :
			palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
		memcpy(bufs[b], global, sizeof(float) * spec->nparams);
	}

	for (int k = 0; k < rows->ntenants; k++)
	{
		FloralTenantRows *trows = rows->tenants[k];
		FloralTenantState state;
		float		z[FLORAL_MAX_ADAPTORS] = {0};
		float		start_z[FLORAL_MAX_ADAPTORS] = {0};
		float		pi[FLORAL_MAX_ADAPTORS];
		float	   *start_bank;
		float	   *bank;
		const float *pinned;
		pg_prng_state rng;
		double		loss;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(tenant_cxt);
		old = MemoryContextSwitchTo(tenant_cxt);
		floral_progress_tenant(k + 1, trows->name, trows->nrows);
		floral_load_tenant(spec, trows->name, tenant_cxt, &state, true);
		if (!state.found && !claim_new_tenant(&st, spec, trows->name))
		{
			/*
			 * Another session created the tenant meanwhile (training,
			 * personalising or pinning it): now that it committed, its row
			 * is what this call starts from, or skips.
			 */
			floral_load_tenant(spec, trows->name, tenant_cxt, &state, true);
		}
		if (already_contributed(spec, &state))
		{
			if (skipped++ == 0)
				strlcpy(first_skipped, trows->name, sizeof(first_skipped));
			MemoryContextSwitchTo(old);
			continue;
		}

		/* training again in the same round starts from the state before it */
		if (state.start_round == spec->round)
		{
			memcpy(start_z, state.start_logits, sizeof(float) * C);
			start_bank = state.start_bank;
		}
		else
		{
			if (state.found)
				memcpy(start_z, state.logits, sizeof(float) * C);
			start_bank = state.bank;
		}

		/* the next free vector, which holds the round's parameters */
		tr->params = bufs[sums.npending];
		bank = tr->params + spec->adaptor_offset;
		if (spec->private_adaptors && start_bank)
			memcpy(bank, start_bank, sizeof(float) * spec->adaptor_size);
		memcpy(z, start_z, sizeof(float) * C);

		pinned = state.pinned ? state.pinned_pi : NULL;
		floral_rng_seed(&rng, (uint64) opts.seed, (uint64) spec->round, trows->name);
		loss = train_tenant(tr, trows, &opts, z, pinned, true, &rng);
		final_mixture(spec, tr->net, z, pinned, pi);
		if (spec->dp_clip > 0)
			clip_update(spec, global, tr->params);

		/* the tenant's new private state, and its place in this call */
		{
			Datum		a[TENANT_NARGS];
			char		n[TENANT_NARGS + 1];
			int			ret;

			memset(n, ' ', TENANT_NARGS);
			n[TENANT_NARGS] = '\0';
			a[0] = CStringGetTextDatum(spec->name);
			a[1] = CStringGetTextDatum(trows->name);
			a[2] = floral_real_array(z, C);
			a[4] = Int64GetDatum(trows->nrows);
			a[5] = Int32GetDatum(spec->round);
			a[6] = floral_real_array(start_z, C);
			a[8] = Int64GetDatum(call_id);
			a[3] = a[7] = (Datum) 0;
			if (spec->private_adaptors)
			{
				a[3] = floral_tensor_datum(bank, spec->adaptor_size);
				if (start_bank)
					a[7] = floral_tensor_datum(start_bank, spec->adaptor_size);
				else
					n[7] = 'n';
			}
			else
				n[3] = n[7] = 'n';
			/* the row exists and this call holds its lock (see claim_new_tenant) */
			ret = SPI_execute_plan(st.update_tenant, a, n, false, 0);
			if (ret != SPI_OK_UPDATE || SPI_processed != 1)
				elog(ERROR, "could not write floral.tenants: %s", SPI_result_code_string(ret));
			{
				Datum		h[5] = {a[0], Int32GetDatum(spec->round), a[1], a[4], Float8GetDatum(loss)};

				if (SPI_execute_plan(st.put_history, h, NULL, false, 0) != SPI_OK_INSERT)
					elog(ERROR, "could not write floral.history");
			}
		}
		/*
		 * Differential privacy bounds one tenant's weight, so that one
		 * tenant moves N, M and the sums by a known amount (aggregate.c,
		 * add_dp_noise).
		 */
		if (floral_sums_defer_tenant(&sums, spec->dp_max_examples > 0 ?
									 Min((double) trows->nrows, (double) spec->dp_max_examples) :
									 (double) trows->nrows, pi, tr->params, loss,
									 trows->name) || sums.npending == nbufs)
			flush_sums(&sums, global, &opts);

		{
			Datum		values[3];
			bool		nulls[3] = {false, false, false};

			values[0] = CStringGetTextDatum(trows->name);
			values[1] = Int64GetDatum(trows->nrows);
			values[2] = Float8GetDatum(loss);
			tuplestore_putvalues(call.rsinfo->setResult, call.rsinfo->setDesc, values, nulls);
		}
		MemoryContextSwitchTo(old);
	}

	if (sums.npending > 0)
		flush_sums(&sums, global, &opts);
	if (sums.tenants > 0)
		floral_store_call_sums(spec, spec->round, call_id, &sums);
	floral_restore_user(&saved);
	skipped_notice(spec, skipped, first_skipped);
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
	float	   *global;
	FloralRows *rows;
	Trainer    *tr;
	FloralTrainOptions opts;
	SPIPlanPtr	put_tenant;
	FloralSavedUser saved;
	MemoryContext tenant_cxt;
	int			C;

	train_call_begin(fcinfo, &call, "personalize", true);
	spec = call.spec;
	global = call.global;
	rows = call.rows;
	tr = call.tr;
	opts = call.opts;
	C = spec->nadaptors;
	floral_become_owner(&saved);
	tenant_cxt = AllocSetContextCreate(call.cxt, "floral tenant", ALLOCSET_DEFAULT_SIZES);

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

	for (int k = 0; k < rows->ntenants; k++)
	{
		FloralTenantRows *trows = rows->tenants[k];
		FloralTenantState state;
		float		z[FLORAL_MAX_ADAPTORS] = {0};
		float		pi[FLORAL_MAX_ADAPTORS];
		double		loss;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(tenant_cxt);
		old = MemoryContextSwitchTo(tenant_cxt);
		floral_progress_tenant(k + 1, trows->name, trows->nrows);
		/* locked: a concurrent training of the tenant must not be overwritten */
		floral_load_tenant(spec, trows->name, tenant_cxt, &state, true);
		memcpy(tr->params, global, sizeof(float) * spec->nparams);

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
				for (int64 s = 0; s < trows->nrows; s += opts.batch_size)
				{
					int			B = (int) Min((int64) opts.batch_size, trows->nrows - s);

					CHECK_FOR_INTERRUPTS();
					floral_rows_gather(rows, trows->rows + s, B, tr->net->X, tr->Y);
					floral_router_fixed(tr->net, onehot);
					floral_forward(tr->net, tr->params,
								   tr->params + spec->adaptor_offset, B);
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

			if (state.found)
				memcpy(z, state.logits, sizeof(float) * C);
			floral_rng_seed(&rng, (uint64) opts.seed, (uint64) spec->round, trows->name);
			loss = train_tenant(tr, trows, &opts, z, NULL, false, &rng);
		}
		final_mixture(spec, tr->net, z, NULL, pi);

		{
			Datum		ta[4];

			ta[0] = CStringGetTextDatum(spec->name);
			ta[1] = CStringGetTextDatum(trows->name);
			ta[2] = floral_real_array(z, C);
			ta[3] = Int32GetDatum(spec->round);
			if (SPI_execute_plan(put_tenant, ta, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "could not write floral.tenants");
		}
		{
			Datum		values[4];
			bool		nulls[4] = {false, false, false, false};

			values[0] = CStringGetTextDatum(trows->name);
			values[1] = Int64GetDatum(trows->nrows);
			values[2] = Float8GetDatum(loss);
			values[3] = floral_real_array(pi, C);
			tuplestore_putvalues(call.rsinfo->setResult, call.rsinfo->setDesc, values, nulls);
		}
		MemoryContextSwitchTo(old);
	}

	floral_restore_user(&saved);
	train_call_end(&call);
	return (Datum) 0;
}
