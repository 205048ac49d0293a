/*
 * cache.c
 *	  Per-backend cache of models for floral_predict, its invalidation and
 *	  its memory bound (see cache.h).
 *
 * What is cached is always what is committed now: entries are read and
 * checked under the newest snapshot, not the caller's, so that a copy read
 * inside an old REPEATABLE READ transaction can never outlive it as if it
 * were current.  (Like the catalog caches, prediction therefore sees the
 * newest committed round even inside a REPEATABLE READ transaction.)
 * A parallel operation may not take a new snapshot: there an entry is read
 * under the query's snapshot, which leader and workers share, and is checked
 * again under the newest one at its first use after the operation.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "cache.h"
#include "catalog.h"
#include "floral.h"

PG_FUNCTION_INFO_V1(floral_invalidate_cache);

uint64		floral_cache_generation = 1;

/* bumped by every invalidation: entries checked before it must be checked again */
static uint64 cache_changes = 1;
/* a clock for least-recently-used eviction */
static uint64 use_clock = 0;

static MemoryContext cache_cxt = NULL;
static HTAB *cache_models = NULL;

/* the tables whose changes make cached models stale, found at load time */
static Oid	watched_relids[3] = {InvalidOid, InvalidOid, InvalidOid};

/*
 * Called for every relcache invalidation.  It must not touch the catalogs
 * or free memory that a running prediction may still use, so it only marks
 * every entry as to be checked.  InvalidOid means "everything" (sinval
 * queue overflow).
 */
static void
floral_relcache_callback(Datum arg, Oid relid)
{
	if (cache_models == NULL)
		return;
	if (OidIsValid(relid) && relid != watched_relids[0] &&
		relid != watched_relids[1] && relid != watched_relids[2])
		return;
	cache_changes++;
	floral_cache_generation++;
}

void
floral_cache_init(void)
{
	CacheRegisterRelcacheCallback(floral_relcache_callback, (Datum) 0);
}

static void
cache_create(void)
{
	HASHCTL		ctl;

	cache_cxt = AllocSetContextCreate(CacheMemoryContext, "floral model cache",
									  ALLOCSET_SMALL_SIZES);
	ctl.keysize = NAMEDATALEN * 2;
	ctl.entrysize = sizeof(FloralCachedModel);
	ctl.hcxt = cache_cxt;
	cache_models = hash_create("floral models", 16, &ctl,
							   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

/* the only text result of a one-row query, copied into out; false if no row */
static bool
query_version(const char *query, int nargs, Oid *types, Datum *args, char *out)
{
	int			ret = SPI_execute_with_args(query, nargs, types, args, NULL, true, 1);
	bool		isnull;
	Datum		d;

	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read floral's catalog: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
	{
		SPI_freetuptable(SPI_tuptable);
		return false;
	}
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		text_to_cstring_buffer(DatumGetTextPP(d), out, FLORAL_VERSION_LEN);
	SPI_freetuptable(SPI_tuptable);
	return !isnull;
}

/* the version of a model's row and of its current round's row */
static bool
model_version(const char *model, char *out)
{
	Oid			types[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(model)};

	return query_version("SELECT m.xmin::text || ':' || m.ctid::text || '/' || "
						 "r.xmin::text || ':' || r.ctid::text "
						 "FROM floral.models m JOIN floral.rounds r "
						 "ON r.model = m.name AND r.round = m.round WHERE m.name = $1",
						 1, types, args, out);
}

static bool
tenant_version(const char *model, const char *tenant, char *out)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		args[2] = {CStringGetTextDatum(model), CStringGetTextDatum(tenant)};

	return query_version("SELECT xmin::text || ':' || ctid::text FROM floral.tenants "
						 "WHERE model = $1 AND tenant = $2",
						 2, types, args, out);
}

/*
 * The snapshot entries are read and checked under; returns true when it is
 * not the newest (in parallel mode), so the entry must be checked again
 * once out of it.
 */
static bool
push_read_snapshot(void)
{
	if (IsInParallelMode())
	{
		PushActiveSnapshot(GetActiveSnapshot());
		return true;
	}
	PushActiveSnapshot(GetLatestSnapshot());
	return false;
}

/* an entry checked since the last change, and under the newest snapshot */
static inline bool
still_checked(uint64 checked, bool parallel_read)
{
	return checked == cache_changes && (!parallel_read || IsInParallelMode());
}

/* a tenant entry's own memory */
static void
free_tenant(FloralCachedTenant *t)
{
	if (t->bank)
		pfree(t->bank);
	t->bank = NULL;
	floral_mixture_free(&t->mix);
}

static void
create_tenant_table(FloralCachedModel *m)
{
	HASHCTL		ctl;

	ctl.keysize = FLORAL_MAX_TENANT_LEN + 1;
	ctl.entrysize = sizeof(FloralCachedTenant);
	ctl.hcxt = m->cxt;
	m->tenants = hash_create("floral cached tenants", 256, &ctl,
							 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

/* read a model's spec and current round into a new entry */
static void
cache_load(FloralCachedModel *m, const char *model)
{
	MemoryContext old;

	m->cxt = AllocSetContextCreate(cache_cxt, "floral cached model",
								   ALLOCSET_DEFAULT_SIZES);
	{
		Oid			nsp = get_namespace_oid(FLORAL_SCHEMA, false);

		watched_relids[0] = get_relname_relid("models", nsp);
		watched_relids[1] = get_relname_relid("rounds", nsp);
		watched_relids[2] = get_relname_relid("tenants", nsp);
	}
	floral_load_spec(model, FLORAL_LOCK_NONE, &m->spec);
	m->params = floral_load_round(&m->spec, m->spec.round, m->cxt);

	old = MemoryContextSwitchTo(m->cxt);
	m->net = floral_net_create(&m->spec, 1);
	MemoryContextSwitchTo(old);
	create_tenant_table(m);
	memset(&m->uniform, 0, sizeof(m->uniform));
	floral_tenant_mixture(&m->spec, NULL, NULL, m->uniform.pi);
	old = MemoryContextSwitchTo(m->cxt);
	floral_mixture_init(&m->spec, m->params, m->params + m->spec.adaptor_offset,
						m->uniform.pi, &m->uniform.mix);
	MemoryContextSwitchTo(old);
}

static void
cache_remove(FloralCachedModel *m)
{
	char		key[NAMEDATALEN * 2];

	/*
	 * Call sites remember entries between rows; a new generation makes every
	 * one of them look the model up again instead of using freed memory.
	 */
	floral_cache_generation++;
	memcpy(key, m->name, sizeof(key));
	if (m->cxt)
		MemoryContextDelete(m->cxt);
	hash_search(cache_models, key, HASH_REMOVE, NULL);
}

/*
 * Keep the cache within floral.cache_memory: drop the least recently used
 * models other than the one in use; if that one alone is over the bound,
 * drop its tenants (they are read again as they are needed).
 */
static void
enforce_bound(FloralCachedModel *current)
{
	Size		limit = (Size) floral_cache_memory * 1024;

	for (;;)
	{
		HASH_SEQ_STATUS seq;
		FloralCachedModel *m;
		FloralCachedModel *oldest = NULL;
		Size		total = 0;

		hash_seq_init(&seq, cache_models);
		while ((m = hash_seq_search(&seq)) != NULL)
		{
			total += MemoryContextMemAllocated(m->cxt, true);
			if (m != current && (oldest == NULL || m->last_used < oldest->last_used))
				oldest = m;
		}
		if (total <= limit)
			return;
		if (oldest)
		{
			cache_remove(oldest);
			continue;
		}
		if (hash_get_num_entries(current->tenants) > 0)
		{
			HASH_SEQ_STATUS tseq;
			FloralCachedTenant *t;

			floral_cache_generation++;
			hash_seq_init(&tseq, current->tenants);
			while ((t = hash_seq_search(&tseq)) != NULL)
				free_tenant(t);
			hash_destroy(current->tenants);
			create_tenant_table(current);
		}
		return;
	}
}

FloralCachedModel *
floral_cache_get(const char *model)
{
	char		key[NAMEDATALEN * 2];
	char		version[FLORAL_VERSION_LEN];
	FloralCachedModel *m;
	bool		found;
	bool		parallel_read;
	uint64		start;

	if (strlen(model) >= sizeof(key))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", model)));
	floral_blas_prepare();
	if (cache_models == NULL)
		cache_create();
	memset(key, 0, sizeof(key));
	strlcpy(key, model, sizeof(key));
	m = hash_search(cache_models, key, HASH_FIND, &found);
	if (found && still_checked(m->checked, m->parallel_read))
	{
		m->last_used = ++use_clock;
		m->valid = true;
		return m;
	}

	/* check, and read again only if the rows changed */
	start = cache_changes;
	SPI_connect();
	parallel_read = push_read_snapshot();
	if (!model_version(key, version))
	{
		if (found)
			cache_remove(m);
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", model),
				 errhint("Create it with floral_create_model().")));
	}
	if (found && strcmp(version, m->version) != 0)
	{
		cache_remove(m);
		found = false;
	}
	if (!found)
	{
		m = hash_search(cache_models, key, HASH_ENTER, &found);
		m->cxt = NULL;
		PG_TRY();
		{
			cache_load(m, key);
		}
		PG_CATCH();
		{
			/* a failed read must not leave a half-built entry behind */
			cache_remove(m);
			PG_RE_THROW();
		}
		PG_END_TRY();
		strlcpy(m->version, version, sizeof(m->version));
	}
	PopActiveSnapshot();
	SPI_finish();

	/* if something changed while we read, use this copy once, then check again */
	m->checked = start;
	m->parallel_read = parallel_read;
	m->valid = (start == cache_changes);
	m->last_used = ++use_clock;
	enforce_bound(m);
	return m;
}

/* fill a tenant's entry from its row */
static void
load_tenant(FloralCachedModel *m, FloralCachedTenant *t)
{
	FloralTenantState state;
	MemoryContext old;

	floral_load_tenant(&m->spec, t->name, m->cxt, &state, false);
	t->bank = state.bank;
	if (state.start_bank)
		pfree(state.start_bank);
	floral_tenant_mixture(&m->spec, state.pinned ? state.pinned_pi : NULL,
						  state.found ? state.logits : NULL, t->pi);
	old = MemoryContextSwitchTo(m->cxt);
	floral_mixture_init(&m->spec, m->params,
						t->bank ? t->bank : m->params + m->spec.adaptor_offset,
						t->pi, &t->mix);
	MemoryContextSwitchTo(old);
}

/*
 * A tenant's mixture (and private adaptors).  A tenant without a row gets
 * the model's shared uniform entry and takes no memory of its own.
 */
FloralCachedTenant *
floral_cache_tenant(FloralCachedModel *m, const char *tenant, int len)
{
	char		key[FLORAL_MAX_TENANT_LEN + 1];
	char		version[FLORAL_VERSION_LEN];
	FloralCachedTenant *t;
	bool		found;
	bool		exists;
	bool		parallel_read;
	uint64		start;

	if (len > FLORAL_MAX_TENANT_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("tenant name is longer than %d bytes", FLORAL_MAX_TENANT_LEN)));
	memset(key, 0, sizeof(key));
	memcpy(key, tenant, len);
	t = hash_search(m->tenants, key, HASH_FIND, &found);
	if (found && still_checked(t->checked, t->parallel_read))
		return t;

	start = cache_changes;
	SPI_connect();
	parallel_read = push_read_snapshot();
	exists = tenant_version(m->spec.name, key, version);
	if (found && (!exists || strcmp(version, t->version) != 0))
	{
		/* changed or gone: call sites must not keep the old entry */
		floral_cache_generation++;
		free_tenant(t);
		hash_search(m->tenants, key, HASH_REMOVE, NULL);
		found = false;
	}
	if (exists && !found)
	{
		t = hash_search(m->tenants, key, HASH_ENTER, &found);
		t->bank = NULL;
		memset(&t->mix, 0, sizeof(t->mix));
		PG_TRY();
		{
			load_tenant(m, t);
		}
		PG_CATCH();
		{
			free_tenant(t);
			hash_search(m->tenants, key, HASH_REMOVE, NULL);
			PG_RE_THROW();
		}
		PG_END_TRY();
		strlcpy(t->version, version, sizeof(t->version));
	}
	PopActiveSnapshot();
	SPI_finish();
	if (!exists)
		return &m->uniform;
	t->checked = start;
	t->parallel_read = parallel_read;
	if (!found)
		enforce_bound(m);
	/* the bound may have dropped the tenants: look this one up again */
	t = hash_search(m->tenants, key, HASH_FIND, &found);
	return found ? t : &m->uniform;
}

/*
 * Trigger on floral's tables (statement level for local changes; row level
 * and ENABLE REPLICA for changes a logical replication apply worker makes,
 * since it fires no statement triggers): tell every backend (this one at the
 * end of the command, the others at commit) that cached models may be
 * stale.
 */
Datum
floral_invalidate_cache(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Oid			relid;

	/*
	 * Where the relcache invalidation of each table was last queued: once per
	 * (sub)transaction is enough for the other backends, which act on it at
	 * commit.  Queuing it for every statement would also make this backend
	 * rebuild the table's relcache entry and re-plan every statement on the
	 * table after each of them: a training call writes a tenant per
	 * statement.  A subtransaction that aborts loses what it queued, so the
	 * next statement elsewhere queues it again.
	 */
	static struct
	{
		Oid			relid;
		LocalTransactionId lxid;
		SubTransactionId subxid;
	}			queued[4];

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("floral_invalidate_cache() must be called as a trigger")));
	relid = RelationGetRelid(trigdata->tg_relation);

	/* this backend's own cache notices at once */
	cache_changes++;
	floral_cache_generation++;

	for (int i = 0; i < lengthof(queued); i++)
	{
		if (queued[i].relid == relid || queued[i].relid == InvalidOid || i == lengthof(queued) - 1)
		{
			if (queued[i].relid == relid && queued[i].lxid == MyProc->lxid &&
				queued[i].subxid == GetCurrentSubTransactionId())
				return PointerGetDatum(NULL);
			CacheInvalidateRelcacheByRelid(relid);
			queued[i].relid = relid;
			queued[i].lxid = MyProc->lxid;
			queued[i].subxid = GetCurrentSubTransactionId();
			return PointerGetDatum(NULL);
		}
	}
	return PointerGetDatum(NULL);
}
