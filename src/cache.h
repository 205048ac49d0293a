/*
 * cache.h
 *	  Per-backend cache of deserialised models for prediction.
 *
 * Prediction runs once per row, so a model's spec, parameters and tenant
 * mixtures are read once and kept here.  Each entry remembers the version
 * of the rows it was read from.  Any change to floral.models, floral.rounds
 * or floral.tenants (in this session or, once committed, in any other, and
 * on a logical replica when the change is applied) sends a relcache
 * invalidation through a trigger; the callback only marks every entry as
 * "to check".  On next use an entry compares its versions with the rows'
 * (one index lookup under the newest snapshot) and re-reads only what
 * changed: a new round re-reads that model's parameters, a tenant's new
 * mixture re-reads that tenant.
 *
 * In a parallel operation (floral_predict is PARALLEL SAFE) no new snapshot
 * may be taken, so entries are read under the query's own and marked to be
 * checked again once the operation is over; a parallel worker's cache ends
 * with the query anyway.
 *
 * Memory is bounded by floral.cache_memory: past it the least recently used
 * models are dropped.  Tenants nobody trained take no entry: they share the
 * model's uniform mixture.
 */
#ifndef FLORAL_CACHE_H
#define FLORAL_CACHE_H

#include "utils/hsearch.h"

#include "model.h"
#include "nn.h"
#include "source.h"

/* xmin and ctid of the rows an entry was read from, as text */
#define FLORAL_VERSION_LEN 64

typedef struct FloralCachedTenant
{
	char		name[FLORAL_MAX_TENANT_LEN + 1];	/* hash key */
	float		pi[FLORAL_MAX_ADAPTORS];	/* mixture used for prediction */
	float	   *bank;			/* private adaptors, or NULL for the shared */
	FloralMixture mix;			/* what pi makes of the layers, for every row */
	uint64		checked;		/* floral_cache_changes when last checked */
	bool		parallel_read;	/* read in parallel mode: check again after */
	char		version[FLORAL_VERSION_LEN];
} FloralCachedTenant;

typedef struct FloralCachedModel
{
	char		name[NAMEDATALEN * 2];	/* hash key */
	bool		valid;			/* checked against the newest committed rows */
	uint64		checked;		/* floral_cache_changes when last checked */
	bool		parallel_read;	/* read in parallel mode: check again after */
	uint64		last_used;		/* for least-recently-used eviction */
	char		version[FLORAL_VERSION_LEN];
	MemoryContext cxt;			/* everything below lives here */
	FloralSpec	spec;
	float	   *params;
	FloralNet  *net;			/* one-row scratch */
	HTAB	   *tenants;
	FloralCachedTenant uniform; /* every tenant without a row */
} FloralCachedModel;

/*
 * Bumped whenever a call site's remembered entry may have been freed or may
 * be stale: call sites compare it with the value they saw and look the
 * model up again when it moved.
 */
extern uint64 floral_cache_generation;

extern void floral_cache_init(void);
extern FloralCachedModel *floral_cache_get(const char *model);
extern FloralCachedTenant *floral_cache_tenant(FloralCachedModel *m,
											   const char *tenant, int len);

#endif
