/*
 * progress.c
 *	  Shared-memory progress slots and the floral_progress() function.
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xact.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "floral.h"
#include "progress.h"

PG_FUNCTION_INFO_V1(floral_progress);

typedef struct ProgressSlot
{
	uint32		changecount;	/* odd while the owner writes */
	int			pid;			/* 0: idle */
	char		command[16];
	char		model[64];
	char		tenant[64];
	int			tenant_number;
	int			tenants;
	int			epoch;
	int			epochs;
	int64		examples_done;	/* of the current tenant, this epoch */
	int64		examples;		/* of the current tenant */
	double		loss;			/* running mean loss of this epoch */
	TimestampTz started_at;
	TimestampTz updated_at;
} ProgressSlot;

static ProgressSlot *slots = NULL;
static int	nslots = 0;
static ProgressSlot *mine = NULL;
static bool reporting = false;
static SubTransactionId reporting_subxact = InvalidSubTransactionId;
static TimestampTz last_notice = 0;

/* this backend's own view, for NOTICEs even without shared memory */
static char my_command[16];
static char my_tenant[64];
static int	my_tenants;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* copy a name into a fixed buffer, cut at a character boundary */
static void
copy_name(char *dst, const char *src, int size)
{
	int			len = pg_mbcliplen(src, strlen(src), size - 1);

	memcpy(dst, src, len);
	dst[len] = '\0';
}

static Size
progress_size(void)
{
	return mul_size(MaxBackends, sizeof(ProgressSlot));
}

static void
progress_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(progress_size());
}

static void
progress_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	slots = ShmemInitStruct("floral progress", progress_size(), &found);
	if (!found)
		memset(slots, 0, progress_size());
	nslots = MaxBackends;
	LWLockRelease(AddinShmemInitLock);
}

/* a call that fails or is cancelled must not leave its slot looking busy */
static void
progress_xact_callback(XactEvent event, void *arg)
{
	if (reporting && (event == XACT_EVENT_ABORT || event == XACT_EVENT_COMMIT ||
					  event == XACT_EVENT_PARALLEL_ABORT))
		floral_progress_end();
}

/* ... nor when it fails inside a subtransaction that is rolled back */
static void
progress_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	if (reporting && event == SUBXACT_EVENT_ABORT_SUB && mySubid == reporting_subxact)
		floral_progress_end();
}

void
floral_progress_shmem_init(void)
{
	if (process_shared_preload_libraries_in_progress)
	{
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = progress_shmem_request;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = progress_shmem_startup;
	}
	RegisterXactCallback(progress_xact_callback, NULL);
	RegisterSubXactCallback(progress_subxact_callback, NULL);
}

#define SLOT_WRITE_BEGIN(s)	do { (s)->changecount++; pg_write_barrier(); } while (0)
#define SLOT_WRITE_END(s)	do { pg_write_barrier(); (s)->changecount++; } while (0)

void
floral_progress_start(const char *command, const char *model, int tenants, int epochs)
{
	reporting = true;
	reporting_subxact = GetCurrentSubTransactionId();
	last_notice = GetCurrentTimestamp();
	strlcpy(my_command, command, sizeof(my_command));
	my_tenants = tenants;
	my_tenant[0] = '\0';
	if (slots == NULL || MyBackendId == InvalidBackendId || MyBackendId > nslots)
		return;
	mine = &slots[MyBackendId - 1];
	SLOT_WRITE_BEGIN(mine);
	mine->pid = MyProcPid;
	strlcpy(mine->command, command, sizeof(mine->command));
	copy_name(mine->model, model, sizeof(mine->model));
	mine->tenant[0] = '\0';
	mine->tenant_number = 0;
	mine->tenants = tenants;
	mine->epoch = 0;
	mine->epochs = epochs;
	mine->examples_done = mine->examples = 0;
	mine->loss = 0;
	mine->started_at = mine->updated_at = GetCurrentTimestamp();
	SLOT_WRITE_END(mine);
}

void
floral_progress_tenant(int number, const char *tenant, int64 examples)
{
	copy_name(my_tenant, tenant, sizeof(my_tenant));
	if (floral_progress_notices && !IsParallelWorker())
		ereport(NOTICE,
				(errmsg("floral %s: tenant %d of %d (\"%s\", " INT64_FORMAT " rows)",
						my_command, number, my_tenants, tenant, examples)));
	if (mine == NULL)
		return;
	SLOT_WRITE_BEGIN(mine);
	mine->tenant_number = number;
	copy_name(mine->tenant, tenant, sizeof(mine->tenant));
	mine->examples = examples;
	mine->examples_done = 0;
	mine->epoch = 1;
	mine->loss = 0;
	mine->updated_at = GetCurrentTimestamp();
	SLOT_WRITE_END(mine);
}

/*
 * A parallel call's leader: the tenants done by every participant, counted
 * in shared memory; while set, every batch of the leader's own tenants
 * reports it too, so the count moves while the leader trains.
 */
static pg_atomic_uint32 *shared_done = NULL;

void
floral_progress_share_count(pg_atomic_uint32 *done)
{
	shared_done = done;
}

void
floral_progress_count(int number)
{
	if (mine == NULL || mine->tenant_number == number)
		return;
	SLOT_WRITE_BEGIN(mine);
	mine->tenant_number = number;
	mine->updated_at = GetCurrentTimestamp();
	SLOT_WRITE_END(mine);
}

void
floral_progress_batch(int epoch, int64 done, double running_loss)
{
	if (mine != NULL)
	{
		SLOT_WRITE_BEGIN(mine);
		if (shared_done)
			mine->tenant_number = (int) pg_atomic_read_u32(shared_done) + 1;
		mine->epoch = epoch;
		mine->examples_done = done;
		mine->loss = running_loss;
		mine->updated_at = GetCurrentTimestamp();
		SLOT_WRITE_END(mine);
	}
	/*
	 * At most one NOTICE every few seconds, so a long epoch stays readable;
	 * none from parallel workers: the leader reports for the whole call.
	 */
	if (floral_progress_notices && !IsParallelWorker())
	{
		TimestampTz now = GetCurrentTimestamp();

		if (TimestampDifferenceExceeds(last_notice, now, 5000))
		{
			last_notice = now;
			ereport(NOTICE,
					(errmsg("floral %s: tenant \"%s\", epoch %d, " INT64_FORMAT " examples done, running loss %.4f",
							my_command, my_tenant, epoch, done, running_loss)));
		}
	}
}

void
floral_progress_end(void)
{
	reporting = false;
	shared_done = NULL;
	if (mine == NULL)
		return;
	SLOT_WRITE_BEGIN(mine);
	mine->pid = 0;
	SLOT_WRITE_END(mine);
	mine = NULL;
}

/*
 * floral_progress() returns one row per backend running a floral call:
 * what it does, on which tenant, how far, and the running loss.
 */
Datum
floral_progress(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (slots == NULL)
		return (Datum) 0;

	for (int i = 0; i < nslots; i++)
	{
		ProgressSlot copy;
		Datum		values[13];
		bool		nulls[13];

		for (;;)
		{
			uint32		before = slots[i].changecount;

			pg_read_barrier();
			memcpy(&copy, &slots[i], sizeof(copy));
			pg_read_barrier();
			if (before == slots[i].changecount && (before & 1) == 0)
				break;
			CHECK_FOR_INTERRUPTS();
		}
		if (copy.pid == 0)
			continue;

		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(copy.pid);
		values[1] = CStringGetTextDatum(copy.command);
		values[2] = CStringGetTextDatum(copy.model);
		if (copy.tenant_number > 0)
			values[3] = CStringGetTextDatum(copy.tenant);
		else
			nulls[3] = true;
		values[4] = Int32GetDatum(copy.tenant_number);
		values[5] = Int32GetDatum(copy.tenants);
		values[6] = Int32GetDatum(copy.epoch);
		values[7] = Int32GetDatum(copy.epochs);
		values[8] = Int64GetDatum(copy.examples_done);
		values[9] = Int64GetDatum(copy.examples);
		values[10] = Float8GetDatum(copy.loss);
		values[11] = TimestampTzGetDatum(copy.started_at);
		values[12] = TimestampTzGetDatum(copy.updated_at);
		if (copy.tenant_number == 0)
			nulls[10] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
