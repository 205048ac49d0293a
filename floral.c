/*
 * floral.c
 *	  Module entry of the floral extension: magic block, GUCs, start-up.
 *
 * floral implements FLoRAL (federated low-rank adaptive learning): one
 * shared base model, a bank of low-rank adaptors trained by all tenants
 * together, and one small mixture vector per tenant.
 */
#include "postgres.h"

#include <cblas.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "cache.h"
#include "floral.h"
#include "progress.h"

PG_MODULE_MAGIC;

int			floral_blas_threads = 1;
bool		floral_timing = false;
bool		floral_progress_notices = false;

void		_PG_init(void);

/*
 * OpenBLAS's worker threads do not survive fork(), and the postmaster forks
 * every backend, so BLAS may only be configured inside a backend.
 */
static void
assign_blas_threads(int newval, void *extra)
{
	if (IsUnderPostmaster || !IsPostmasterEnvironment)
		openblas_set_num_threads(newval);
}

void
_PG_init(void)
{
	DefineCustomIntVariable("floral.blas_threads",
							"Number of OpenBLAS threads a backend uses for floral's math.",
							"One thread per backend suits a server running many sessions; "
							"raise it for a single long training call on an idle machine.",
							&floral_blas_threads,
							1, 1, 64,
							PGC_USERSET, 0,
							NULL, assign_blas_threads, NULL);
	DefineCustomBoolVariable("floral.timing",
							 "Report how long training spent reading rows and computing.",
							 NULL,
							 &floral_timing,
							 false,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("floral.progress_notices",
							 "Send NOTICE messages with the progress of long training and evaluation calls.",
							 "One per tenant and at most one every 5 seconds within a tenant.",
							 &floral_progress_notices,
							 false,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);
	MarkGUCPrefixReserved("floral");

	/* progress slots in shared memory, when preloaded */
	floral_progress_shmem_init();

	/*
	 * The assign hook has not run if the default was never changed.  When
	 * preloaded, this runs in the postmaster: setting the thread count
	 * computes nothing, and backends forked from it then start with one
	 * BLAS thread instead of one per core.
	 */
	openblas_set_num_threads(floral_blas_threads);

	floral_cache_init();
}
