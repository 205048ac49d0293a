/*
 * train.h
 *	  Training, personalising and evaluating one tenant.
 *
 * A training call (train.c) and an evaluation (predict.c) run these for
 * every tenant of their source, one after another or in parallel workers
 * (parallel.h).  They read only the rows and what they are given, and write
 * only their outputs, so the result of a tenant does not depend on where,
 * or in which order, it runs.
 */
#ifndef FLORAL_TRAIN_H
#define FLORAL_TRAIN_H

#include "portability/instr_time.h"

#include "model.h"
#include "source.h"

typedef struct FloralTrainOptions
{
	int			epochs;
	int			batch_size;
	float		lr;
	float		router_lr;
	int64		seed;
} FloralTrainOptions;

/* rows per batch of an evaluation */
#define FLORAL_EVAL_BATCH 256

/* scratch for running one tenant after another */
typedef struct FloralTrainer FloralTrainer;

extern FloralTrainer *floral_trainer_create(const FloralSpec *spec, FloralRows *rows,
											int batch_size);

/*
 * Train one tenant: params holds the round's parameters on entry and the
 * tenant's trained ones on return (its private bank starts from start_bank
 * when it has one); z holds its start logits and gets the trained ones, pi
 * its final mixture.  Returns the mean loss of the last epoch.
 */
extern double floral_train_one(FloralTrainer *tr, const FloralTenantRows *trows,
							   const FloralTrainOptions *opts, const float *global,
							   float *params, const float *start_bank,
							   float *z, const float *pinned, float *pi);

/*
 * Fit only the mixture of one tenant over the frozen round (logits: its
 * current ones, or NULL for a new tenant); z and pi get the result.
 */
extern double floral_personalize_one(FloralTrainer *tr, const FloralTenantRows *trows,
									 const FloralTrainOptions *opts, const float *global,
									 bool one_hot, const float *logits,
									 float *z, float *pi);

/*
 * Evaluate one tenant with its mixture: the pinned one, softmax(logits), or
 * uniform when both are NULL; bank is its private bank or NULL.  Returns
 * the mean loss and counts the correct predictions of a classifier.
 */
extern double floral_evaluate_one(FloralTrainer *tr, const FloralTenantRows *trows,
								  const float *global, const float *bank,
								  const float *pinned, const float *logits,
								  int64 *correct);

/*
 * With floral.timing on, NOTICE how long a call (floral_<what>) spent
 * reading its rows and computing since start, and its parallel workers.
 */
extern void floral_timing_notice(const char *what, const FloralRows *rows,
								 instr_time start, int workers);

#endif
