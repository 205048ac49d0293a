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
#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker_internals.h"
#include "utils/guc.h"

#include "cache.h"
#include "floral.h"
#include "progress.h"

PG_MODULE_MAGIC;

int			floral_blas_threads = 1;
int			floral_cache_memory = 65536;	/* kB */
bool		floral_timing = false;
bool		floral_progress_notices = false;

void		_PG_init(void);

/* the thread count OpenBLAS was last given in this process */
static int	blas_threads_applied = 0;

/*
 * OpenBLAS's worker threads do not survive fork(), and the postmaster forks
 * every backend, so the postmaster (and anything that is not a backend)
 * keeps exactly one BLAS thread, whatever the setting says.  A backend
 * applies the setting when it changes, and before its first floral call
 * (floral_blas_prepare), since a backend forked from a preloaded postmaster
 * never runs the assign hook for the value it inherited.
 */
static void
set_blas_threads(int n)
{
	if (!IsUnderPostmaster)
		n = 1;
	if (n != blas_threads_applied)
	{
		openblas_set_num_threads(n);
		blas_threads_applied = n;
	}
}

static void
assign_blas_threads(int newval, void *extra)
{
	if (IsUnderPostmaster)
		set_blas_threads(newval);
}

void
floral_blas_prepare(void)
{
	if (blas_threads_applied != floral_blas_threads || !IsUnderPostmaster)
		set_blas_threads(floral_blas_threads);
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
							PGC_SUSET, 0,
							NULL, assign_blas_threads, NULL);
	DefineCustomIntVariable("floral.cache_memory",
							"Memory a backend may use for cached models and tenants (for prediction).",
							"Past it the least recently used models are dropped and read again when needed.",
							&floral_cache_memory,
							65536, 1024, MAX_KILOBYTES,
							PGC_USERSET, GUC_UNIT_KB,
							NULL, NULL, NULL);
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
	DefineCustomIntVariable("floral.max_parallel_workers",
							"Most parallel workers a floral_train, floral_evaluate or floral_personalize call may use.",
							"The call asks for max_parallel_maintenance_workers workers, at most this many; "
							"0 runs every call in its own backend.",
							&floral_max_parallel_workers,
							8, 0, MAX_PARALLEL_WORKER_LIMIT,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("floral");

	/* progress slots in shared memory, when preloaded */
	floral_progress_shmem_init();

	/* one BLAS thread in the postmaster, the setting in a backend */
	set_blas_threads(floral_blas_threads);

	floral_cache_init();
}
