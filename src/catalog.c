/*
 * catalog.c
 *	  Access to floral.models, floral.rounds and floral.tenants.
 *
 * Queries name the catalog tables with their schema and pass every value
 * as a parameter, so neither the caller's search_path nor a model or
 * tenant name can change what they do.
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "catalog.h"
#include "floral.h"
#include "miscadmin.h"

PG_FUNCTION_INFO_V1(floral_caller);
PG_FUNCTION_INFO_V1(floral_lock_model_sql);
PG_FUNCTION_INFO_V1(floral_branch_step_lock);
PG_FUNCTION_INFO_V1(floral_branch_step_unlock);

/*
 * floral._caller() returns the role that is current outside any SECURITY
 * DEFINER function: the remote API runs as its owner and checks with this
 * who is really calling.
 */
Datum
floral_caller(PG_FUNCTION_ARGS)
{
	PG_RETURN_DATUM(DirectFunctionCall1(namein,
										CStringGetDatum(GetUserNameFromId(GetOuterUserId(), false))));
}

Oid
floral_tensor_type(void)
{
	Oid			nsp = get_namespace_oid(FLORAL_SCHEMA, false);

	return GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
						   CStringGetDatum("tensor"), ObjectIdGetDatum(nsp));
}

static Datum
get_col(int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, isnull);
}

static Datum
get_notnull(int col)
{
	bool		isnull;
	Datum		d = get_col(col, &isnull);

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("floral catalog row has an unexpected NULL in column %d", col)));
	return d;
}

/* copy a real[] of exactly n elements into out, checking it on the way */
void
floral_read_real_array(Datum d, float *out, int n, const char *what)
{
	ArrayType  *arr = DatumGetArrayTypeP(d);

	if (ARR_ELEMTYPE(arr) != FLOAT4OID || ARR_NDIM(arr) > 1 ||
		ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr)) != n ||
		array_contains_nulls(arr))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("%s must be a real[] of %d elements", what, n)));
	if (n > 0)
		memcpy(out, ARR_DATA_PTR(arr), sizeof(float) * n);
}

Datum
floral_real_array(const float *v, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	ArrayType  *arr;

	for (int i = 0; i < n; i++)
		elems[i] = Float4GetDatum(v[i]);
	arr = construct_array(elems, n, FLOAT4OID, sizeof(float4), true, TYPALIGN_INT);
	pfree(elems);
	return PointerGetDatum(arr);
}

Datum
floral_tensor_datum(const float *v, int64 n)
{
	FloralTensor *t = floral_tensor_new_1d(n);

	memcpy(TENSOR_DATA(t), v, sizeof(float) * n);
	return PointerGetDatum(t);
}

static void
read_int_array(Datum d, int *out, int n, const char *what)
{
	ArrayType  *arr = DatumGetArrayTypeP(d);

	if (ARR_ELEMTYPE(arr) != INT4OID || ARR_NDIM(arr) != 1 ||
		ARR_DIMS(arr)[0] != n || array_contains_nulls(arr))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("%s must be an int[] of %d elements", what, n)));
	memcpy(out, ARR_DATA_PTR(arr), sizeof(int) * n);
}

/*
 * floral's model lock: a transaction-level advisory lock on the model's
 * name (the key pg_advisory_xact_lock(1718382450, hashtext(name)) takes, so
 * it shows in pg_locks as such).  Training takes it shared: the round must
 * not move under it.  Whatever moves or rewrites the round (aggregation,
 * discard, rollback, prune, a branch's pull) takes it exclusive, and so
 * waits for the training calls running and holds off new ones.
 *
 * A transaction that trained a model and then aggregates it would need to
 * upgrade its shared lock; two of them at once would deadlock.  Such an
 * upgrade therefore never waits: it succeeds if nobody else holds the lock
 * and fails at once otherwise.
 */
#define FLORAL_LOCK_KEY 1718382450
#define FLORAL_STEP_KEY 1718382451

/*
 * The tag of the advisory lock pg_advisory_lock(key1, hashtext(model))
 * takes: floral's locks are ordinary advisory locks, seen as such in pg_locks.
 */
static void
model_locktag(LOCKTAG *tag, uint32 key1, Datum model_text)
{
	int32		key2 = DatumGetInt32(DirectFunctionCall1Coll(hashtext, DEFAULT_COLLATION_OID,
															 model_text));

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, key1, (uint32) key2, 2);
}

void
floral_lock_model(const char *model, FloralLock lock)
{
	LOCKTAG		tag;

	if (lock == FLORAL_LOCK_NONE)
		return;
	model_locktag(&tag, FLORAL_LOCK_KEY, CStringGetTextDatum(model));
	if (lock == FLORAL_LOCK_UPDATE && LockHeldByMe(&tag, ShareLock) &&
		!LockHeldByMe(&tag, ExclusiveLock))
	{
		if (LockAcquire(&tag, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("cannot change the round of model \"%s\" in a transaction that trained it while other training calls run",
							model),
					 errdetail("Waiting for them could deadlock with another transaction that trained and aggregates the model too."),
					 errhint("Commit the training first, then aggregate in a transaction of its own.")));
		return;
	}
	(void) LockAcquire(&tag, lock == FLORAL_LOCK_SHARE ? ShareLock : ExclusiveLock,
					   false, false);
}

/*
 * floral._lock_model(model text) returns void: the exclusive model lock,
 * for floral's PL/pgSQL functions that move or rewrite a round.
 */
Datum
floral_lock_model_sql(PG_FUNCTION_ARGS)
{
	floral_lock_model(text_to_cstring(PG_GETARG_TEXT_PP(0)), FLORAL_LOCK_UPDATE);
	PG_RETURN_VOID();
}

/*
 * floral._branch_step_lock(model) returns bool, floral._branch_step_unlock:
 * one branch step at a time per model.  The step commits between its
 * phases, so this is a session-level lock, held by one step at a time in a
 * session; it is released when the step ends, or when it aborts.
 */
/* the step lock this session holds, if any: released if a step aborts */
static bool step_lock_held = false;
static LOCKTAG step_lock_tag;

static void
release_step_lock(void)
{
	while (step_lock_held && LockHeldByMe(&step_lock_tag, ExclusiveLock))
		if (!LockRelease(&step_lock_tag, ExclusiveLock, true))
			break;
	step_lock_held = false;
}

/*
 * A step that ends by an error its phases did not catch (a cancel, a
 * statement_timeout) aborts its transaction: the session-level lock must
 * not outlive it, or every later step would report "busy".
 */
static void
step_lock_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		release_step_lock();
}

Datum
floral_branch_step_lock(PG_FUNCTION_ARGS)
{
	static bool registered = false;
	LOCKTAG		tag;

	if (!registered)
	{
		RegisterXactCallback(step_lock_xact_callback, NULL);
		registered = true;
	}
	model_locktag(&tag, FLORAL_STEP_KEY, PointerGetDatum(PG_GETARG_TEXT_PP(0)));
	if (step_lock_held)
		release_step_lock();
	if (LockAcquire(&tag, ExclusiveLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
		PG_RETURN_BOOL(false);
	step_lock_tag = tag;
	step_lock_held = true;
	PG_RETURN_BOOL(true);
}

Datum
floral_branch_step_unlock(PG_FUNCTION_ARGS)
{
	release_step_lock();
	PG_RETURN_VOID();
}

/*
 * Load a model's specification, under the model lock when asked.
 *
 * Everything read after the lock must be what is committed now, not what
 * the transaction's snapshot saw before it waited.  Under READ COMMITTED
 * every statement takes a fresh snapshot, so that holds by itself.  Under
 * REPEATABLE READ or SERIALIZABLE the snapshot is the transaction's: the
 * model's row is then locked too, which raises a serialization failure
 * (40001) when the round moved after the snapshot was taken, so a training
 * call never trains on a round that was merged meanwhile.  (Aggregation
 * locks the row in every isolation level, since it is about to update it.)
 * The row lock is taken as the owner: only it may lock rows of the catalog.
 */
void
floral_load_spec(const char *model, FloralLock lock, FloralSpec *spec)
{
	static const char *const lock_clause[] = {"", " FOR SHARE", " FOR UPDATE"};
	char		query[1024];
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	int			widths[FLORAL_MAX_LAYERS + 1];
	int			ranks[FLORAL_MAX_LAYERS];
	ArrayType  *layers;
	int			ret;
	FloralLock	row_lock = lock;
	FloralSavedUser saved;

	if (strlen(model) >= sizeof(spec->name))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", model),
				 errdetail("Model names have at most %d bytes.", (int) sizeof(spec->name) - 1)));
	floral_lock_model(model, lock);
	if (lock == FLORAL_LOCK_SHARE && !IsolationUsesXactSnapshot())
		row_lock = FLORAL_LOCK_NONE;

	snprintf(query, sizeof(query),
			 "SELECT task, layers, adaptors, ranks, round, "
			 "options->>'activation', (options->>'alpha')::real, "
			 "(options->>'min_prob')::real, (options->>'noise')::real, "
			 "(options->>'precondition')::boolean, "
			 "(options->>'precondition_eps')::real, "
			 "(options->>'server_lr')::real, (options->>'seed')::bigint, "
			 "(options->>'private_adaptors')::boolean, "
			 "coalesce((options->>'dp_clip')::real, 0), coalesce((options->>'dp_noise')::real, 0), "
			 "coalesce((options->>'ensemble')::boolean, false), "
			 "coalesce(options->>'router', 'paper'), coalesce(options->>'adaptor_init', 'paper'), "
			 "coalesce((options->>'reseed')::boolean, false), "
			 "coalesce((options->>'dp_max_examples')::real, 0) "
			 "FROM floral.models WHERE name = $1%s", lock_clause[row_lock]);
	args[0] = CStringGetTextDatum(model);
	if (row_lock != FLORAL_LOCK_NONE)
		floral_become_owner(&saved);
	ret = SPI_execute_with_args(query, 1, argtypes, args, NULL,
								lock == FLORAL_LOCK_NONE, 1);
	if (row_lock != FLORAL_LOCK_NONE)
		floral_restore_user(&saved);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read floral.models: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", model),
				 errhint("Create it with floral_create_model().")));

	memset(spec, 0, sizeof(FloralSpec));
	strlcpy(spec->name, model, sizeof(spec->name));
	spec->locked = (lock != FLORAL_LOCK_NONE);
	spec->task = floral_task_from_name(TextDatumGetCString(get_notnull(1)));
	layers = DatumGetArrayTypeP(get_notnull(2));
	spec->nlayers = ArrayGetNItems(ARR_NDIM(layers), ARR_DIMS(layers)) - 1;
	if (spec->nlayers < 1 || spec->nlayers > FLORAL_MAX_LAYERS)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("model \"%s\" has an invalid layer list", model)));
	read_int_array(get_notnull(2), widths, spec->nlayers + 1, "layers");
	spec->nadaptors = DatumGetInt32(get_notnull(3));
	read_int_array(get_notnull(4), ranks, spec->nlayers, "ranks");
	spec->round = DatumGetInt32(get_notnull(5));
	spec->activation = floral_activation_from_name(TextDatumGetCString(get_notnull(6)));
	spec->alpha = DatumGetFloat4(get_notnull(7));
	spec->min_prob = DatumGetFloat4(get_notnull(8));
	spec->noise = DatumGetFloat4(get_notnull(9));
	spec->precondition = DatumGetBool(get_notnull(10));
	spec->precondition_eps = DatumGetFloat4(get_notnull(11));
	spec->server_lr = DatumGetFloat4(get_notnull(12));
	spec->seed = DatumGetInt64(get_notnull(13));
	spec->private_adaptors = DatumGetBool(get_notnull(14));
	spec->dp_clip = DatumGetFloat4(get_notnull(15));
	spec->dp_noise = DatumGetFloat4(get_notnull(16));
	spec->ensemble = DatumGetBool(get_notnull(17));
	spec->router = floral_router_from_name(TextDatumGetCString(get_notnull(18)));
	spec->random_v = floral_adaptor_init_from_name(TextDatumGetCString(get_notnull(19)));
	spec->reseed = DatumGetBool(get_notnull(20));
	spec->dp_max_examples = DatumGetFloat4(get_notnull(21));
	if (spec->nadaptors < 0 || spec->nadaptors > FLORAL_MAX_ADAPTORS)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("model \"%s\" has an invalid number of adaptors", model)));
	floral_spec_layout(spec, widths, ranks);
	SPI_freetuptable(SPI_tuptable);
}

/* the shared parameters of a round, as a palloc'd float vector in cxt */
float *
floral_load_round(const FloralSpec *spec, int32 round, MemoryContext cxt)
{
	Oid			argtypes[2] = {TEXTOID, INT4OID};
	Datum		args[2];
	FloralTensor *t;
	float	   *params;
	MemoryContext old;
	int			ret;

	args[0] = CStringGetTextDatum(spec->name);
	args[1] = Int32GetDatum(round);
	ret = SPI_execute_with_args("SELECT params FROM floral.rounds "
								"WHERE model = $1 AND round = $2",
								2, argtypes, args, NULL, !spec->locked, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read floral.rounds: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("round %d of model \"%s\" does not exist", round, spec->name)));

	old = MemoryContextSwitchTo(cxt);
	t = DatumGetTensorP(get_notnull(1));
	if (floral_tensor_numel(t) != SPEC_SHARED_SIZE(spec))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("round %d of model \"%s\" has " INT64_FORMAT " parameters, expected " INT64_FORMAT,
						round, spec->name, floral_tensor_numel(t), SPEC_SHARED_SIZE(spec))));
	params = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);
	memcpy(params, TENSOR_DATA(t), sizeof(float) * SPEC_SHARED_SIZE(spec));

	/*
	 * A round holds only what is federated.  Private adaptors are not in it:
	 * the bank part is the one a new tenant starts from, drawn again from
	 * the model's seed, so that the vector has the whole layout.
	 */
	if (spec->private_adaptors)
		floral_init_private_bank(spec, params + spec->adaptor_offset);
	MemoryContextSwitchTo(old);
	SPI_freetuptable(SPI_tuptable);
	return params;
}

static float *
read_bank(const FloralSpec *spec, Datum d, MemoryContext cxt, const char *tenant)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	FloralTensor *t = DatumGetTensorP(d);
	float	   *bank;

	if (floral_tensor_numel(t) != spec->adaptor_size)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("private adaptors of tenant \"%s\" have the wrong size", tenant)));
	bank = palloc(sizeof(float) * spec->adaptor_size);
	memcpy(bank, TENSOR_DATA(t), sizeof(float) * spec->adaptor_size);
	MemoryContextSwitchTo(old);
	return bank;
}

/*
 * A tenant's logits, pinned mixture and private adaptors, if it has any.
 * for_update locks the tenant's row until the end of the transaction, so
 * that two calls training the same tenant at once are serialised on it;
 * the second then sees what the first committed.
 */
void
floral_load_tenant(const FloralSpec *spec, const char *tenant,
				   MemoryContext cxt, FloralTenantState *state, bool for_update)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2];
	bool		isnull;
	Datum		d;
	int			C = spec->nadaptors;
	int			ret;

	/* run once per tenant: planned once per backend (the plan cache re-plans it if the table changes) */
	static SPIPlanPtr plans[2] = {NULL, NULL};

	if (plans[for_update] == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(for_update ?
									   "SELECT logits, pinned, adaptors, start_round, "
									   "start_logits, start_adaptors, contributed_call FROM floral.tenants "
									   "WHERE model = $1 AND tenant = $2 FOR UPDATE" :
									   "SELECT logits, pinned, adaptors, start_round, "
									   "start_logits, start_adaptors, contributed_call FROM floral.tenants "
									   "WHERE model = $1 AND tenant = $2",
									   2, argtypes);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare the floral.tenants lookup: %s",
				 SPI_result_code_string(SPI_result));
		plans[for_update] = plan;
	}
	memset(state, 0, sizeof(*state));
	state->start_round = -1;
	args[0] = CStringGetTextDatum(spec->name);
	args[1] = CStringGetTextDatum(tenant);
	ret = SPI_execute_plan(plans[for_update], args, NULL, !spec->locked && !for_update, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read floral.tenants: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
	{
		/* even an empty result holds a tuple table until SPI_finish */
		SPI_freetuptable(SPI_tuptable);
		return;
	}

	state->found = true;
	floral_read_real_array(get_notnull(1), state->logits, C, "tenant logits");
	d = get_col(2, &isnull);
	if (!isnull)
	{
		state->pinned = true;
		floral_read_real_array(d, state->pinned_pi, C, "pinned mixture");
	}
	d = get_col(3, &isnull);
	if (!isnull && spec->private_adaptors)
		state->bank = read_bank(spec, d, cxt, tenant);
	d = get_col(4, &isnull);
	if (!isnull)
	{
		state->start_round = DatumGetInt32(d);
		floral_read_real_array(get_notnull(5), state->start_logits, C, "start logits");
		d = get_col(6, &isnull);
		if (!isnull && spec->private_adaptors)
			state->start_bank = read_bank(spec, d, cxt, tenant);
		d = get_col(7, &isnull);
		if (!isnull)
		{
			state->contributed = true;
			state->contributed_call = DatumGetInt64(d);
		}
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * floral's catalog is written only by the extension's owner (the owner of
 * schema floral), so that no role can forge a contribution, a round or a
 * tenant's state by writing the tables directly.  The functions that train,
 * aggregate or record history run their own, fixed statements as the owner,
 * after everything the caller supplied (the source query) has run with the
 * caller's own rights.  A restricted security context keeps anything that
 * could run inside those statements from changing session state; an error
 * restores the caller's identity through transaction abort.
 */
static Oid
floral_owner(void)
{
	HeapTuple	tup = SearchSysCache1(NAMESPACENAME, CStringGetDatum(FLORAL_SCHEMA));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_SCHEMA),
				 errmsg("schema \"%s\" does not exist", FLORAL_SCHEMA),
				 errhint("Install the extension with CREATE EXTENSION floral.")));
	owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
	ReleaseSysCache(tup);
	return owner;
}

void
floral_become_owner(FloralSavedUser *saved)
{
	GetUserIdAndSecContext(&saved->userid, &saved->sec_context);
	SetUserIdAndSecContext(floral_owner(),
						   saved->sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);

	/*
	 * The caller's search_path must not decide what the owner's statements
	 * call: a function or operator of the caller's own schema placed before
	 * pg_catalog (now(), =, ->>) would otherwise run with the owner's
	 * rights.  As a SECURITY DEFINER function's SET clause does, pin it for
	 * as long as floral acts as the owner; the nest level undoes it, also on
	 * error.
	 */
	saved->guc_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

void
floral_restore_user(const FloralSavedUser *saved)
{
	AtEOXact_GUC(true, saved->guc_nestlevel);
	SetUserIdAndSecContext(saved->userid, saved->sec_context);
}

/*
 * Statements that must see what is committed now, whatever the isolation
 * level: the reads and deletes that follow the exclusive model lock (what
 * aggregation merges and what it retires must be the same rows, and every
 * row committed while it waited for the lock).  Under READ COMMITTED that
 * is what a fresh statement snapshot gives; under REPEATABLE READ the
 * transaction's snapshot would miss the rows committed after it was taken,
 * and they would then be neither merged nor retired.  Like the checks of
 * foreign keys, these run with the newest snapshot instead.
 */
Portal
floral_cursor_latest(const char *query, int nargs, Oid *types, Datum *args)
{
	Portal		portal;

	PushActiveSnapshot(GetLatestSnapshot());
	portal = SPI_cursor_open_with_args(NULL, query, nargs, types, args, NULL, true, 0);
	PopActiveSnapshot();
	return portal;
}

int
floral_execute_latest(const char *query, int nargs, Oid *types, Datum *args)
{
	SPIPlanPtr	plan = SPI_prepare(query, nargs, types);
	int			ret;

	if (plan == NULL)
		elog(ERROR, "could not prepare a floral statement: %s", SPI_result_code_string(SPI_result));
	CommandCounterIncrement();

	/*
	 * fire_triggers: AFTER triggers (foreign keys of floral.updates, a
	 * user's audit trigger) fire at the end of this statement, as they do
	 * for SPI_execute; queued for an outer query instead, they would fail
	 * when there is none (a PL/pgSQL assignment such as the coordinator's
	 * "new_round := floral._merge_updates(model)").
	 */
	ret = SPI_execute_snapshot(plan, args, NULL, GetLatestSnapshot(), InvalidSnapshot,
							   false, true, 0);
	SPI_freeplan(plan);
	return ret;
}
