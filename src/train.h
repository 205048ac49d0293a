/*
 * train.h
 *	  Options of local training.
 */
#ifndef FLORAL_TRAIN_H
#define FLORAL_TRAIN_H

typedef struct FloralTrainOptions
{
	int			epochs;
	int			batch_size;
	float		lr;
	float		router_lr;
	int64		seed;
} FloralTrainOptions;

#endif
