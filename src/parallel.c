/*
 * parallel.c
 *	  Spreading a call's tenants over parallel workers (see parallel.h).
 *
 * The leader puts in one dynamic shared memory segment everything a task
 * needs: the model's spec and options, the round's parameters, the rows and
 * the tasks; the outcomes come back in the same segment.  Participants take
 * tasks in order from an atomic counter, so a slow tenant holds back no one.
 *
 * Training has one more step: its outcome is a whole parameter vector, which
 * the leader must add into the sums in task order to store what a serial
 * call stores.  Each participant owns a few vectors in the segment; it
 * trains a task into a free one and marks the vector ready; the leader,
 * between its own tasks, sums the ready vectors that come next in order and
 * hands them back.  A participant whose vectors all wait for an earlier,
 * slower task waits too; a handful per participant makes that rare.
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xact.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "optimizer/paths.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/dsm.h"
#include "storage/shm_toc.h"
#include "storage/spin.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/wait_event.h"

#include "floral.h"
#include "parallel.h"
#include "progress.h"
#include "sums.h"

int			floral_max_parallel_workers = 8;

#define KEY_SHARED		UINT64CONST(0xF1084A0000000001)
#define KEY_GLOBAL		UINT64CONST(0xF1084A0000000002)
#define KEY_ROWS		UINT64CONST(0xF1084A0000000003)
#define KEY_TASKS		UINT64CONST(0xF1084A0000000004)
#define KEY_OUTCOMES	UINT64CONST(0xF1084A0000000005)
#define KEY_VECTORS		UINT64CONST(0xF1084A0000000006)

/* vectors a participant trains into, and the most they may take together */
#define VECTORS_EACH	4
#define VECTORS_MEMORY	((Size) 64 * 1024 * 1024)

/* a vector's state: free, being trained, or ready with task number >= 0 */
#define VECTOR_FREE		(-1)
#define VECTOR_BUSY		(-2)

typedef struct ParallelShared
{
	FloralWork	work;
	FloralSpec	spec;
	FloralTrainOptions opts;
	bool		one_hot;
	int			ntasks;
	int			vectors_each;
	int			nvectors;		/* vectors_each per participant */
	dsm_handle	banks;			/* DSM_HANDLE_INVALID: no private banks */

	pg_atomic_uint32 next_task; /* the next task to take */
	pg_atomic_uint32 tasks_done;

	slock_t		mutex;			/* protects the vectors' states */
	ConditionVariable cv;		/* a task is done, or a vector was handed back */
} ParallelShared;

/* a participant's view of the call, in shared memory (or the leader's) */
typedef struct Participant
{
	ParallelShared *sh;
	FloralParallelCall *call;
	FloralTrainer *tr;
	int			id;				/* workers 0..n-1, the leader n */
	int32	   *vector_state;	/* per vector */
	int32	   *task_vector;	/* per task: the vector holding it, or -1 */
	float	   *vectors;
	int64		stride;			/* floats from one vector to the next */
	/* outcomes, laid out as in FloralParallelCall */
	double	   *loss;
	int64	   *correct;
	float	   *out_logits;
	float	   *out_pi;
} Participant;

static bool
parallel_possible(void)
{
	return Min(floral_max_parallel_workers, max_parallel_maintenance_workers) > 0 &&
		IsUnderPostmaster && !IsInParallelMode();
}

double
floral_parallel_share_after(void)
{
	return parallel_possible() ? (double) min_parallel_table_scan_size * BLCKSZ : -1;
}

int
floral_parallel_workers(const FloralSpec *spec, const FloralRows *rows, int ntasks)
{
	int			n = Min(floral_max_parallel_workers, max_parallel_maintenance_workers);
	double		row_bytes = rows->stored_bytes;
	double		private_bytes = spec->private_adaptors ?
		(double) sizeof(float) * spec->adaptor_size * ntasks : 0;

	/*
	 * Like a parallel index build: only for work of some size, and only when
	 * the working set is in shared memory (rows that spilled to a temporary
	 * file stay with the leader, which owns the file).
	 */
	if (n <= 0 || ntasks < 2 || !rows->shared || !parallel_possible())
		return 0;
	if (row_bytes < (double) min_parallel_table_scan_size * BLCKSZ)
		return 0;
	if (private_bytes > (double) maintenance_work_mem * 1024)
		return 0;
	return Min(n, parallel_leader_participation ? ntasks - 1 : ntasks);
}

float *
floral_parallel_banks(const FloralSpec *spec, int ntasks, void **seg)
{
	dsm_segment *s;
	Size		size;

	*seg = NULL;
	if (!spec->private_adaptors || ntasks == 0)
		return NULL;
	size = sizeof(float) * (Size) spec->adaptor_size * ntasks;
	s = dsm_create(size, DSM_CREATE_NULL_IF_MAXSEGMENTS);
	*seg = s;
	return s ? dsm_segment_address(s) : NULL;
}

void
floral_parallel_banks_free(void *seg)
{
	if (seg)
		dsm_detach((dsm_segment *) seg);
}

/*
 * Each vector starts on a cache line of its own, so that two participants
 * never write the same line, and every vector is aligned alike.
 */
static Size
vector_stride(int64 nparams)
{
	return TYPEALIGN(PG_CACHE_LINE_SIZE, sizeof(float) * (Size) nparams);
}

static Size
vectors_size(int nvectors, int ntasks, int64 nparams)
{
	return PG_CACHE_LINE_SIZE + TYPEALIGN(PG_CACHE_LINE_SIZE, sizeof(int32) * nvectors) +
		TYPEALIGN(PG_CACHE_LINE_SIZE, sizeof(int32) * ntasks) +
		vector_stride(nparams) * nvectors;
}

static void
vectors_attach(Participant *p, char *space, int nvectors, int ntasks)
{
	space = (char *) TYPEALIGN(PG_CACHE_LINE_SIZE, space);
	p->vector_state = (int32 *) space;
	space += TYPEALIGN(PG_CACHE_LINE_SIZE, sizeof(int32) * nvectors);
	p->task_vector = (int32 *) space;
	space += TYPEALIGN(PG_CACHE_LINE_SIZE, sizeof(int32) * ntasks);
	p->vectors = (float *) space;
	p->stride = vector_stride(p->call->spec->nparams) / sizeof(float);
}

static float *
vector_at(Participant *p, int v)
{
	return p->vectors + (int64) v * p->stride;
}

/* the next task, or -1 when all are taken */
static int
take_task(ParallelShared *sh)
{
	uint32		t = pg_atomic_fetch_add_u32(&sh->next_task, 1);

	return (t < (uint32) sh->ntasks) ? (int) t : -1;
}

/* run task t; a training task trains into params */
static void
run_task(Participant *p, int t, float *params)
{
	FloralParallelCall *call = p->call;
	const FloralSpec *spec = call->spec;
	const FloralTenantTask *task = &call->tasks[t];
	const FloralTenantRows *trows = call->rows->tenants[task->tenant];
	int			C = spec->nadaptors;
	float	   *z = p->out_logits + (int64) t * C;
	float	   *pi = p->out_pi + (int64) t * C;
	const float *pinned;
	const float *bank = NULL;

	/* (load_bank fills in the task too) */
	if (call->load_bank)
		bank = call->load_bank(call->arg, t);
	else if (task->has_bank && call->banks)
		bank = call->banks + (int64) t * spec->adaptor_size;
	pinned = task->pinned ? call->pinned_pi + (int64) t * C : NULL;

	switch (call->work)
	{
		case FLORAL_WORK_TRAIN:
			memcpy(z, call->logits + (int64) t * C, sizeof(float) * C);
			p->loss[t] = floral_train_one(p->tr, trows, &call->opts, call->global,
										  params, bank, z, pinned, pi);
			/* the trained private bank takes the place of the start one */
			if (call->banks)
				memcpy(call->banks + (int64) t * spec->adaptor_size,
					   params + spec->adaptor_offset, sizeof(float) * spec->adaptor_size);
			break;
		case FLORAL_WORK_PERSONALIZE:
			p->loss[t] = floral_personalize_one(p->tr, trows, &call->opts, call->global,
												call->one_hot,
												task->found ? call->logits + (int64) t * C : NULL,
												z, pi);
			break;
		case FLORAL_WORK_EVALUATE:
			p->loss[t] = floral_evaluate_one(p->tr, trows, call->global, bank, pinned,
											 task->found ? call->logits + (int64) t * C : NULL,
											 &p->correct[t]);
			break;
	}
}

/* a free vector of this participant's, marked busy; -1 if none */
static int
take_vector(Participant *p)
{
	ParallelShared *sh = p->sh;
	int			first = p->id * sh->vectors_each;
	int			v = -1;

	SpinLockAcquire(&sh->mutex);
	for (int i = first; i < first + sh->vectors_each; i++)
		if (p->vector_state[i] == VECTOR_FREE)
		{
			p->vector_state[i] = VECTOR_BUSY;
			v = i;
			break;
		}
	SpinLockRelease(&sh->mutex);
	return v;
}

/* task t is done (in vector v, when training): tell the others */
static void
task_done(Participant *p, int t, int v)
{
	ParallelShared *sh = p->sh;

	if (v >= 0)
	{
		SpinLockAcquire(&sh->mutex);
		p->vector_state[v] = t;
		p->task_vector[t] = v;
		SpinLockRelease(&sh->mutex);
	}
	pg_atomic_fetch_add_u32(&sh->tasks_done, 1);
	ConditionVariableBroadcast(&sh->cv);
}

/*
 * The leader: sum the ready vectors that come next in task order (at most
 * FLORAL_SUMS_DEFER at a time) and hand them back.  Returns whether it
 * summed any.
 */
static bool
sum_ready(Participant *p, int *next_sum)
{
	ParallelShared *sh = p->sh;
	FloralParallelCall *call = p->call;
	int			batch[FLORAL_SUMS_DEFER];
	int			nb = 0;
	int			C = call->spec->nadaptors;

	SpinLockAcquire(&sh->mutex);
	while (nb < FLORAL_SUMS_DEFER && *next_sum + nb < sh->ntasks &&
		   p->task_vector[*next_sum + nb] >= 0)
	{
		batch[nb] = p->task_vector[*next_sum + nb];
		nb++;
	}
	SpinLockRelease(&sh->mutex);
	if (nb == 0)
		return false;

	for (int i = 0; i < nb; i++)
	{
		int			t = *next_sum + i;

		call->consume(call->arg, t, vector_at(p, batch[i]),
					  p->out_pi + (int64) t * C, p->loss[t]);
	}
	call->flush(call->arg);		/* also resets the vectors to the round's */

	SpinLockAcquire(&sh->mutex);
	for (int i = 0; i < nb; i++)
		p->vector_state[batch[i]] = VECTOR_FREE;
	SpinLockRelease(&sh->mutex);
	*next_sum += nb;
	ConditionVariableBroadcast(&sh->cv);
	return true;
}

/* a worker, or a leader that only collects: take tasks until none are left */
static void
work_tasks(Participant *p)
{
	ParallelShared *sh = p->sh;

	for (;;)
	{
		int			v = -1;
		int			t;

		CHECK_FOR_INTERRUPTS();
		if (sh->work == FLORAL_WORK_TRAIN)
		{
			while ((v = take_vector(p)) < 0)
				ConditionVariableSleep(&sh->cv, PG_WAIT_EXTENSION);
			ConditionVariableCancelSleep();
		}
		if ((t = take_task(sh)) < 0)
			break;
		run_task(p, t, v >= 0 ? vector_at(p, v) : NULL);
		task_done(p, t, v);
	}
}

/*
 * The leader takes tasks too (unless parallel_leader_participation is off
 * and some worker runs), sums training's vectors in order, and keeps the
 * call's progress: the tenants done by all participants.
 */
static void
lead_tasks(Participant *p, bool participate)
{
	ParallelShared *sh = p->sh;
	FloralParallelCall *call = p->call;
	bool		training = (sh->work == FLORAL_WORK_TRAIN);
	int			next_sum = 0;

	for (;;)
	{
		bool		summed = training && sum_ready(p, &next_sum);
		int			done = (int) pg_atomic_read_u32(&sh->tasks_done);

		CHECK_FOR_INTERRUPTS();
		if (training ? next_sum == sh->ntasks : done == sh->ntasks)
			break;
		if (participate)
		{
			int			v = training ? take_vector(p) : -1;

			if (!training || v >= 0)
			{
				int			t = take_task(sh);

				if (t >= 0)
				{
					const FloralTenantRows *trows =
						call->rows->tenants[call->tasks[t].tenant];

					ConditionVariableCancelSleep();
					floral_progress_tenant(done + 1, trows->name, trows->nrows);
					run_task(p, t, v >= 0 ? vector_at(p, v) : NULL);
					task_done(p, t, v);
					continue;
				}
				/* every task is taken: collect the others' */
				participate = false;
				if (v >= 0)
				{
					SpinLockAcquire(&sh->mutex);
					p->vector_state[v] = VECTOR_FREE;
					SpinLockRelease(&sh->mutex);
				}
			}
		}
		floral_progress_count(done);
		if (!summed)
			ConditionVariableSleep(&sh->cv, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	floral_progress_count(sh->ntasks);
}

static Size
outcomes_size(int ntasks, int C)
{
	return MAXALIGN(sizeof(double) * ntasks) + MAXALIGN(sizeof(int64) * ntasks) +
		2 * MAXALIGN(sizeof(float) * Max(C, 1) * ntasks);
}

static void
outcomes_attach(Participant *p, char *space, int ntasks, int C)
{
	p->loss = (double *) space;
	space += MAXALIGN(sizeof(double) * ntasks);
	p->correct = (int64 *) space;
	space += MAXALIGN(sizeof(int64) * ntasks);
	p->out_logits = (float *) space;
	space += MAXALIGN(sizeof(float) * Max(C, 1) * ntasks);
	p->out_pi = (float *) space;
}

static Size
tasks_size(int ntasks, int C)
{
	return MAXALIGN(sizeof(FloralTenantTask) * ntasks) +
		2 * MAXALIGN(sizeof(float) * Max(C, 1) * ntasks);
}


/* the caller's trainer, or one made for the call */
static FloralTrainer *
leader_trainer(FloralParallelCall *call)
{
	if (call->tr == NULL)
		call->tr = floral_trainer_create(call->spec, call->rows,
										 call->work == FLORAL_WORK_EVALUATE ?
										 FLORAL_EVAL_BATCH : call->opts.batch_size);
	return call->tr;
}

/* every task in the leader alone, on the call's own memory (no copies) */
static void
run_serially(FloralParallelCall *call)
{
	Participant p;
	int			C = call->spec->nadaptors;
	float	   *params = NULL;

	memset(&p, 0, sizeof(p));
	p.call = call;
	p.loss = call->loss;
	p.correct = call->correct;
	p.out_logits = call->out_logits;
	p.out_pi = call->out_pi;
	p.tr = leader_trainer(call);
	if (call->work == FLORAL_WORK_TRAIN)
	{
		params = palloc_extended(sizeof(float) * call->spec->nparams, MCXT_ALLOC_HUGE);
		memcpy(params, call->global, sizeof(float) * call->spec->nparams);
	}
	for (int t = 0; t < call->ntasks; t++)
	{
		const FloralTenantRows *trows = call->rows->tenants[call->tasks[t].tenant];

		CHECK_FOR_INTERRUPTS();
		floral_progress_tenant(t + 1, trows->name, trows->nrows);
		run_task(&p, t, params);
		if (call->work == FLORAL_WORK_TRAIN)
		{
			call->consume(call->arg, t, params, call->out_pi + (int64) t * C, call->loss[t]);
			call->flush(call->arg);
		}
	}
}

void
floral_parallel_run(FloralParallelCall *call, int nworkers)
{
	const FloralSpec *spec = call->spec;
	int			C = spec->nadaptors;
	int			ntasks = call->ntasks;
	ParallelContext *pcxt;
	ParallelShared *sh;
	Participant p;
	Size		rows_size;
	int			nvectors = 0;
	int			vectors_each = 0;
	bool		training = (call->work == FLORAL_WORK_TRAIN);
	bool		participate;
	char	   *space;

	call->loss = palloc_extended(sizeof(double) * Max(ntasks, 1), MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	call->correct = palloc_extended(sizeof(int64) * Max(ntasks, 1), MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	call->out_logits = palloc_extended(sizeof(float) * Max(C, 1) * Max(ntasks, 1), MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	call->out_pi = palloc_extended(sizeof(float) * Max(C, 1) * Max(ntasks, 1), MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	call->workers_launched = 0;
	nworkers = Min(nworkers, parallel_leader_participation ? ntasks - 1 : ntasks);

	/*
	 * Training's vectors: VECTORS_EACH per participant, fewer for a large
	 * model, and fewer workers if not even one each fits in VECTORS_MEMORY.
	 */
	if (training && nworkers > 0)
	{
		int			fit = (int) Min(VECTORS_MEMORY / vector_stride(spec->nparams), INT_MAX);

		nworkers = Min(nworkers, fit - 1);
		vectors_each = Min(VECTORS_EACH, fit / Max(nworkers + 1, 1));
		nvectors = vectors_each * (nworkers + 1);
	}
	if (nworkers <= 0)
	{
		run_serially(call);
		return;
	}

	EnterParallelMode();
	pcxt = CreateParallelContext("floral", "floral_parallel_main", nworkers);

	floral_rows_set_participants(call->rows, nworkers + 1);
	rows_size = floral_rows_shared_size(call->rows);
	shm_toc_estimate_chunk(&pcxt->estimator, sizeof(ParallelShared));
	shm_toc_estimate_chunk(&pcxt->estimator, sizeof(float) * spec->nparams);
	shm_toc_estimate_chunk(&pcxt->estimator, rows_size);
	shm_toc_estimate_chunk(&pcxt->estimator, tasks_size(ntasks, C));
	shm_toc_estimate_chunk(&pcxt->estimator, outcomes_size(ntasks, C));
	shm_toc_estimate_keys(&pcxt->estimator, 5);
	if (training)
	{
		shm_toc_estimate_chunk(&pcxt->estimator, vectors_size(nvectors, ntasks, spec->nparams));
		shm_toc_estimate_keys(&pcxt->estimator, 1);
	}
	InitializeParallelDSM(pcxt);

	sh = shm_toc_allocate(pcxt->toc, sizeof(ParallelShared));
	memset(sh, 0, sizeof(ParallelShared));
	sh->work = call->work;
	sh->spec = *spec;
	sh->opts = call->opts;
	sh->one_hot = call->one_hot;
	sh->ntasks = ntasks;
	sh->vectors_each = vectors_each;
	sh->nvectors = nvectors;
	sh->banks = DSM_HANDLE_INVALID;
	if (call->banks_seg)
		sh->banks = dsm_segment_handle((dsm_segment *) call->banks_seg);
	pg_atomic_init_u32(&sh->next_task, 0);
	pg_atomic_init_u32(&sh->tasks_done, 0);
	SpinLockInit(&sh->mutex);
	ConditionVariableInit(&sh->cv);
	shm_toc_insert(pcxt->toc, KEY_SHARED, sh);

	space = shm_toc_allocate(pcxt->toc, sizeof(float) * spec->nparams);
	memcpy(space, call->global, sizeof(float) * spec->nparams);
	shm_toc_insert(pcxt->toc, KEY_GLOBAL, space);

	/* the records are in shared memory already: only where to find them */
	space = shm_toc_allocate(pcxt->toc, rows_size);
	floral_rows_share(call->rows, space);
	shm_toc_insert(pcxt->toc, KEY_ROWS, space);

	space = shm_toc_allocate(pcxt->toc, tasks_size(ntasks, C));
	memcpy(space, call->tasks, sizeof(FloralTenantTask) * ntasks);
	memcpy(space + MAXALIGN(sizeof(FloralTenantTask) * ntasks), call->logits,
		   sizeof(float) * C * ntasks);
	if (call->pinned_pi)
		memcpy(space + MAXALIGN(sizeof(FloralTenantTask) * ntasks) +
			   MAXALIGN(sizeof(float) * Max(C, 1) * ntasks), call->pinned_pi,
			   sizeof(float) * C * ntasks);
	shm_toc_insert(pcxt->toc, KEY_TASKS, space);

	memset(&p, 0, sizeof(p));
	p.call = call;
	space = shm_toc_allocate(pcxt->toc, outcomes_size(ntasks, C));
	memset(space, 0, outcomes_size(ntasks, C));
	outcomes_attach(&p, space, ntasks, C);
	shm_toc_insert(pcxt->toc, KEY_OUTCOMES, space);

	if (training)
	{
		space = shm_toc_allocate(pcxt->toc, vectors_size(nvectors, ntasks, spec->nparams));
		vectors_attach(&p, space, nvectors, ntasks);
		for (int v = 0; v < nvectors; v++)
		{
			p.vector_state[v] = VECTOR_FREE;
			memcpy(vector_at(&p, v), call->global,
				   sizeof(float) * spec->nparams);
		}
		for (int t = 0; t < ntasks; t++)
			p.task_vector[t] = -1;
		shm_toc_insert(pcxt->toc, KEY_VECTORS, space);
	}

	LaunchParallelWorkers(pcxt);
	call->workers_launched = pcxt->nworkers_launched;

	/* the leader's part: its own tasks, the sums and the progress */
	p.sh = sh;
	p.call = call;
	p.id = nworkers;
	p.tr = leader_trainer(call);
	/*
	 * With one vector each (a large model), a leader that trains would keep
	 * the workers waiting for it to sum theirs: it only collects then.
	 */
	participate = (parallel_leader_participation && !(training && vectors_each < 2)) ||
		pcxt->nworkers_launched == 0;

	/*
	 * A leader that only collects would wait forever for a worker that was
	 * registered but never started: make sure they all did (this reports
	 * the ones that failed).
	 */
	if (!participate)
		WaitForParallelWorkersToAttach(pcxt);
	floral_progress_share_count(&sh->tasks_done);
	lead_tasks(&p, participate);
	floral_progress_share_count(NULL);
	WaitForParallelWorkersToFinish(pcxt);

	memcpy(call->loss, p.loss, sizeof(double) * ntasks);
	memcpy(call->correct, p.correct, sizeof(int64) * ntasks);
	memcpy(call->out_logits, p.out_logits, sizeof(float) * C * ntasks);
	memcpy(call->out_pi, p.out_pi, sizeof(float) * C * ntasks);

	DestroyParallelContext(pcxt);
	ExitParallelMode();
}

/* ---------- the worker ---------- */

void
floral_parallel_main(dsm_segment *seg, shm_toc *toc)
{
	ParallelShared *sh = shm_toc_lookup(toc, KEY_SHARED, false);
	FloralParallelCall *call = palloc0(sizeof(FloralParallelCall));
	Participant p;
	char	   *space;
	dsm_segment *banks_seg = NULL;
	int			C = sh->spec.nadaptors;
	int			ntasks = sh->ntasks;

	floral_blas_prepare();

	call->work = sh->work;
	call->spec = &sh->spec;
	call->opts = sh->opts;
	call->one_hot = sh->one_hot;
	call->ntasks = ntasks;
	call->global = shm_toc_lookup(toc, KEY_GLOBAL, false);
	call->rows = floral_rows_attach(shm_toc_lookup(toc, KEY_ROWS, false));
	space = shm_toc_lookup(toc, KEY_TASKS, false);
	call->tasks = (FloralTenantTask *) space;
	call->logits = (float *) (space + MAXALIGN(sizeof(FloralTenantTask) * ntasks));
	call->pinned_pi = (float *) (space + MAXALIGN(sizeof(FloralTenantTask) * ntasks) +
								 MAXALIGN(sizeof(float) * Max(C, 1) * ntasks));
	if (sh->banks != DSM_HANDLE_INVALID)
	{
		banks_seg = dsm_attach(sh->banks);
		if (banks_seg == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("could not map the private adaptors of a parallel floral call")));
		call->banks = dsm_segment_address(banks_seg);
	}

	memset(&p, 0, sizeof(p));
	p.sh = sh;
	p.call = call;
	p.id = ParallelWorkerNumber;
	outcomes_attach(&p, shm_toc_lookup(toc, KEY_OUTCOMES, false), ntasks, C);
	if (sh->work == FLORAL_WORK_TRAIN)
		vectors_attach(&p, shm_toc_lookup(toc, KEY_VECTORS, false),
					   sh->nvectors, ntasks);
	p.tr = floral_trainer_create(call->spec, call->rows,
								 sh->work == FLORAL_WORK_EVALUATE ?
								 FLORAL_EVAL_BATCH : sh->opts.batch_size);
	work_tasks(&p);
	floral_rows_detach(call->rows);
	if (banks_seg)
		dsm_detach(banks_seg);
}
