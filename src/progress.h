/*
 * progress.h
 *	  Progress of long floral calls, readable from any session.
 *
 * Each backend owns one slot in shared memory and is its only writer;
 * readers copy a slot and retry if its change counter moved, the same
 * protocol PostgreSQL uses for pg_stat_activity.  The slots exist only when
 * floral is in shared_preload_libraries; without that, reporting is a no-op
 * and floral.progress is empty.
 */
#ifndef FLORAL_PROGRESS_H
#define FLORAL_PROGRESS_H

#include "port/atomics.h"

extern void floral_progress_shmem_init(void);
extern void floral_progress_start(const char *command, const char *model,
								  int tenants, int epochs);
extern void floral_progress_tenant(int number, const char *tenant, int64 examples);
extern void floral_progress_count(int number);
extern void floral_progress_share_count(pg_atomic_uint32 *done);
extern void floral_progress_batch(int epoch, int64 done, double running_loss);
extern void floral_progress_end(void);

#endif
