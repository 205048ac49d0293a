/*
 * catalog.h
 *	  Reading and writing floral's catalog tables through SPI.
 *
 * Every function here must be called between SPI_connect and SPI_finish.
 * Values that outlive the SPI call are copied into the memory context that
 * was current before SPI_connect (passed explicitly as "cxt").
 */
#ifndef FLORAL_CATALOG_H
#define FLORAL_CATALOG_H

#include "executor/spi.h"

#include "model.h"
#include "tensor.h"

typedef enum FloralLock
{
	FLORAL_LOCK_NONE,
	FLORAL_LOCK_SHARE,			/* training: the round must not move */
	FLORAL_LOCK_UPDATE			/* aggregation: moves the round */
} FloralLock;

/* a tenant's private state */
typedef struct FloralTenantState
{
	bool		found;
	float		logits[FLORAL_MAX_ADAPTORS];
	bool		pinned;			/* mixture fixed by floral_set_mixture */
	float		pinned_pi[FLORAL_MAX_ADAPTORS];
	float	   *bank;			/* private adaptors (Local Adaptor), or NULL */

	/*
	 * The state the tenant had when it first trained in round start_round,
	 * so that training it again in that round starts from the same place.
	 */
	int32		start_round;	/* -1 if never trained */
	float		start_logits[FLORAL_MAX_ADAPTORS];
	float	   *start_bank;

	/* the call whose sums hold the tenant's contribution to start_round */
	bool		contributed;
	int64		contributed_call;
} FloralTenantState;

/* the caller's identity while floral runs its own statements as the owner */
typedef struct FloralSavedUser
{
	Oid			userid;
	int			sec_context;
	int			guc_nestlevel;	/* of the pinned search_path */
} FloralSavedUser;

extern void floral_lock_model(const char *model, FloralLock lock);
extern void floral_load_spec(const char *model, FloralLock lock, FloralSpec *spec);
extern float *floral_load_round(const FloralSpec *spec, int32 round,
								MemoryContext cxt);
extern void floral_load_tenant(const FloralSpec *spec, const char *tenant,
							   MemoryContext cxt, FloralTenantState *state,
							   bool for_update);
extern void floral_become_owner(FloralSavedUser *saved);
extern void floral_restore_user(const FloralSavedUser *saved);
extern void floral_read_real_array(Datum d, float *out, int n, const char *what);
extern Datum floral_real_array(const float *v, int n);
extern Datum floral_tensor_datum(const float *v, int64 n);
extern Oid	floral_tensor_type(void);
extern Portal floral_cursor_latest(const char *query, int nargs, Oid *types, Datum *args);
extern int	floral_execute_latest(const char *query, int nargs, Oid *types, Datum *args);

#endif
