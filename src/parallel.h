/*
 * parallel.h
 *	  Spreading a call's tenants over parallel workers.
 *
 * floral_train, floral_evaluate and floral_personalize do the same thing
 * for every tenant of their source, and each tenant depends only on the
 * round's parameters and its own state.  So a call can hand whole tenants
 * to PostgreSQL's parallel workers (access/parallel.h, as a parallel index
 * build does):
 *
 *	1. the leader runs the source (as the caller, read-only) and locks or
 *	   claims every tenant's row, as the serial path does; from each row it
 *	   makes a task: the tenant's start logits, pinned mixture and private
 *	   adaptors;
 *	2. the rows were read into dynamic shared memory already, as stored
 *	   (source.h: still compressed, features unchecked); it copies the
 *	   tasks there too and launches the workers; every participant (the
 *	   leader too) takes the next task, decodes and checks the tenant's
 *	   rows, runs the task and leaves its outcome in shared memory;
 *	3. training's trained parameter vectors are summed by the leader alone,
 *	   in task order, so a parallel call's sums are the serial call's bit for
 *	   bit; every participant trains into a few vectors of its own, which the
 *	   leader hands back once it has summed them;
 *	4. once the workers have finished and parallel mode has ended (nothing
 *	   may be written before), the leader writes every tenant's row, history
 *	   and result in task order, exactly as the serial path does.
 *
 * Workers never run user code and never touch a table: everything they need
 * is in shared memory.  An error in a worker (a diverging tenant) reaches
 * the leader, which fails the call; cancelling the leader stops the workers.
 */
#ifndef FLORAL_PARALLEL_H
#define FLORAL_PARALLEL_H

#include "storage/dsm.h"
#include "storage/shm_toc.h"

#include "model.h"
#include "source.h"
#include "train.h"

typedef enum FloralWork
{
	FLORAL_WORK_TRAIN,
	FLORAL_WORK_PERSONALIZE,
	FLORAL_WORK_EVALUATE
} FloralWork;

/* one tenant's work, made by the leader from the tenant's row */
typedef struct FloralTenantTask
{
	int32		tenant;			/* index into rows->tenants */
	bool		found;			/* the tenant has a row with logits */
	bool		pinned;			/* mixture fixed by floral_set_mixture */
	bool		has_bank;		/* banks + task * adaptor_size holds its private bank */
} FloralTenantTask;

/*
 * A call's tenants and what the participants need to run them.  The leader
 * fills in everything above "outcomes"; floral_parallel_run fills in the
 * outcomes.  Arrays of C floats per task are laid out task after task.
 */
typedef struct FloralParallelCall
{
	FloralWork	work;
	const FloralSpec *spec;
	FloralTrainOptions opts;	/* train and personalise */
	bool		one_hot;		/* personalise */
	const float *global;		/* the round's parameters */
	FloralRows *rows;
	int			ntasks;
	FloralTenantTask *tasks;
	float	   *logits;			/* ntasks x C: start (train) or current logits */
	float	   *pinned_pi;		/* ntasks x C */

	/*
	 * Private adaptors, ntasks x adaptor_size, in a shared segment of their
	 * own (floral_parallel_banks) that outlives parallel mode: training
	 * leaves each tenant's trained bank in place of its start bank, for the
	 * leader to write afterwards.
	 */
	float	   *banks;
	void	   *banks_seg;

	/*
	 * Without banks, a call that runs in the leader alone may read a task's
	 * tenant when the task runs: load_bank returns its private bank and
	 * fills in the task's logits and pinned mixture from the same row, so
	 * that the call never holds every tenant's bank.
	 */
	const float *(*load_bank) (void *arg, int task);

	/*
	 * Training: called by the leader in task order with each trained
	 * parameter vector (and the task's mixture and loss), then "flush" once for at most FLORAL_SUMS_DEFER of
	 * them; the vectors must hold the round's parameters again after flush
	 * (floral_sums_flush resets them).
	 */
	void		(*consume) (void *arg, int task, float *params, const float *pi,
							double loss);
	void		(*flush) (void *arg);
	void	   *arg;

	/* the leader's trainer (NULL: floral_parallel_run makes one) */
	FloralTrainer *tr;

	/* outcomes, per task (leader memory) */
	double	   *loss;
	int64	   *correct;		/* evaluate */
	float	   *out_logits;		/* ntasks x C: train and personalise */
	float	   *out_pi;			/* ntasks x C */
	int			workers_launched;
} FloralParallelCall;

/*
 * From how many bytes of rows a call may go parallel: what to give
 * floral_read_source (-1 when it cannot go parallel at all).
 */
extern double floral_parallel_share_after(void);

/*
 * How many workers a call over these rows should ask for: 0 (serial) unless
 * the rows are all in shared memory and their size reaches
 * min_parallel_table_scan_size; then max_parallel_maintenance_workers,
 * capped by floral.max_parallel_workers and by the number of tasks; 0 also
 * when the private adaptors of the tasks would exceed maintenance_work_mem.
 */
extern int	floral_parallel_workers(const FloralSpec *spec, const FloralRows *rows,
									int ntasks);

/*
 * A shared segment for ntasks private banks (NULL if the model has none);
 * *seg is the segment, for floral_parallel_banks_free and for the call.
 */
extern float *floral_parallel_banks(const FloralSpec *spec, int ntasks, void **seg);
extern void floral_parallel_banks_free(void *seg);

/* allocate the outcome arrays and run every task with nworkers workers */
extern void floral_parallel_run(FloralParallelCall *call, int nworkers);

/* the parallel worker's entry point (named in CreateParallelContext) */
extern PGDLLEXPORT void floral_parallel_main(dsm_segment *seg, shm_toc *toc);

#endif
