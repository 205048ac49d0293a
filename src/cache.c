/*
 * cache.c
 *	  Per-backend cache of models for floral_predict, and its invalidation.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "cache.h"
#include "catalog.h"
#include "floral.h"

PG_FUNCTION_INFO_V1(floral_invalidate_cache);

/* bumped whenever any cached model may be stale */
uint64		floral_cache_generation = 1;

static MemoryContext cache_cxt = NULL;
static HTAB *cache_models = NULL;

/* the tables whose changes make cached models stale, found at load time */
static Oid	watched_relids[3] = {InvalidOid, InvalidOid, InvalidOid};

/*
 * Called for every relcache invalidation.  It must not touch the catalogs
 * or free memory that a running prediction may still use, so it only marks
 * entries stale.  InvalidOid means "everything" (sinval queue overflow).
 */
static void
floral_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS seq;
	FloralCachedModel *m;

	if (cache_models == NULL)
		return;
	if (OidIsValid(relid) && relid != watched_relids[0] &&
		relid != watched_relids[1] && relid != watched_relids[2])
		return;
	floral_cache_generation++;
	hash_seq_init(&seq, cache_models);
	while ((m = hash_seq_search(&seq)) != NULL)
		m->valid = false;
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

static void
cache_load(FloralCachedModel *m, const char *model)
{
	uint64		generation = floral_cache_generation;
	HASHCTL		ctl;
	MemoryContext old;

	m->cxt = AllocSetContextCreate(cache_cxt, "floral cached model",
								   ALLOCSET_DEFAULT_SIZES);
	m->valid = false;
	{
		Oid			nsp = get_namespace_oid(FLORAL_SCHEMA, false);

		watched_relids[0] = get_relname_relid("models", nsp);
		watched_relids[1] = get_relname_relid("rounds", nsp);
		watched_relids[2] = get_relname_relid("tenants", nsp);
	}
	SPI_connect();
	floral_load_spec(model, FLORAL_LOCK_NONE, &m->spec);
	m->params = floral_load_round(&m->spec, m->spec.round, m->cxt);
	SPI_finish();

	old = MemoryContextSwitchTo(m->cxt);
	m->net = floral_net_create(&m->spec, 1);
	ctl.keysize = FLORAL_MAX_TENANT_LEN + 1;
	ctl.entrysize = sizeof(FloralCachedTenant);
	ctl.hcxt = m->cxt;
	m->tenants = hash_create("floral cached tenants", 256, &ctl,
							 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	MemoryContextSwitchTo(old);

	/* if something changed while we read, use this copy once, then reload */
	m->valid = (generation == floral_cache_generation);
}

FloralCachedModel *
floral_cache_get(const char *model)
{
	char		key[NAMEDATALEN * 2];
	FloralCachedModel *m;
	bool		found;

	if (strlen(model) >= sizeof(key))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", model)));
	if (cache_models == NULL)
		cache_create();
	memset(key, 0, sizeof(key));
	strlcpy(key, model, sizeof(key));

	m = hash_search(cache_models, key, HASH_FIND, &found);
	if (found && m->valid)
		return m;
	if (found)
	{
		/*
		 * Call sites remember entries between rows; a new generation makes
		 * every one of them look the model up again instead of using the
		 * memory freed here.
		 */
		floral_cache_generation++;
		MemoryContextDelete(m->cxt);
		hash_search(cache_models, key, HASH_REMOVE, NULL);
	}

	m = hash_search(cache_models, key, HASH_ENTER, &found);
	m->cxt = NULL;
	PG_TRY();
	{
		cache_load(m, model);
	}
	PG_CATCH();
	{
		/* an unknown model must not leave a half-built entry behind */
		if (m->cxt)
			MemoryContextDelete(m->cxt);
		hash_search(cache_models, key, HASH_REMOVE, NULL);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return m;
}

/* a tenant's mixture; unknown tenants get the uniform mixture */
FloralCachedTenant *
floral_cache_tenant(FloralCachedModel *m, const char *tenant, int len)
{
	char		key[FLORAL_MAX_TENANT_LEN + 1];
	FloralCachedTenant *t;
	FloralTenantState state;
	bool		found;
	int			C = m->spec.nadaptors;

	if (len > FLORAL_MAX_TENANT_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("tenant name is longer than %d bytes", FLORAL_MAX_TENANT_LEN)));
	memset(key, 0, sizeof(key));
	memcpy(key, tenant, len);
	t = hash_search(m->tenants, key, HASH_FIND, &found);
	if (found)
		return t;

	SPI_connect();
	floral_load_tenant(&m->spec, key, m->cxt, &state, false);
	SPI_finish();

	t = hash_search(m->tenants, key, HASH_ENTER, &found);
	t->bank = state.bank;
	if (state.start_bank)
		pfree(state.start_bank);
	if (state.pinned)
		memcpy(t->pi, state.pinned_pi, sizeof(float) * C);
	else if (state.found && C > 0)
	{
		floral_router(m->net, state.logits, NULL);
		memcpy(t->pi, m->net->pi, sizeof(float) * C);
	}
	else
		for (int c = 0; c < C; c++)
			t->pi[c] = 1.0f / C;
	return t;
}

/*
 * Statement-level trigger on floral's tables: tell every backend (this one
 * at the end of the command, the others at commit) to drop cached models.
 * It also catches changes made by hand or by replication.
 */
Datum
floral_invalidate_cache(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("floral_invalidate_cache() must be called as a trigger")));
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}
