/*
 * cache.h
 *	  Per-backend cache of deserialised models for prediction.
 *
 * Prediction runs once per row, so a model's spec, parameters and tenant
 * mixtures are read once and kept here.  Any change to floral.models,
 * floral.rounds or floral.tenants (in this session or, once committed, in
 * any other) sends a relcache invalidation through a trigger; the callback
 * only marks entries stale, and they are rebuilt on next use.
 */
#ifndef FLORAL_CACHE_H
#define FLORAL_CACHE_H

#include "utils/hsearch.h"

#include "model.h"
#include "nn.h"
#include "source.h"

typedef struct FloralCachedTenant
{
	char		name[FLORAL_MAX_TENANT_LEN + 1];	/* hash key */
	float		pi[FLORAL_MAX_ADAPTORS];	/* mixture used for prediction */
	float	   *bank;			/* private adaptors, or NULL for the shared */
} FloralCachedTenant;

typedef struct FloralCachedModel
{
	char		name[NAMEDATALEN * 2];	/* hash key */
	bool		valid;
	MemoryContext cxt;			/* everything below lives here */
	FloralSpec	spec;
	float	   *params;
	FloralNet  *net;			/* one-row scratch */
	HTAB	   *tenants;
} FloralCachedModel;

extern uint64 floral_cache_generation;

extern void floral_cache_init(void);
extern FloralCachedModel *floral_cache_get(const char *model);
extern FloralCachedTenant *floral_cache_tenant(FloralCachedModel *m,
											   const char *tenant, int len);

#endif
