/*
 * contributions.h
 *	  What training calls leave for aggregation: one row of hierarchical
 *	  sums per call in floral.contributions.
 *
 * Like catalog.h, everything here runs between SPI_connect and SPI_finish.
 */
#ifndef FLORAL_CONTRIBUTIONS_H
#define FLORAL_CONTRIBUTIONS_H

#include "sums.h"

extern int64 floral_new_call_id(void);
extern void floral_store_call_sums(const FloralSpec *spec, int32 round,
								   int64 call, const FloralSums *sums);
extern int	floral_add_round_sums(const FloralSpec *spec, int32 round,
								  FloralSums *sums);
extern int	floral_add_calls_sums(const FloralSpec *spec, int32 round, Datum calls,
								  FloralSums *sums);
extern int	floral_add_call_sums(const FloralSpec *spec, int32 round, int64 call,
								 FloralSums *sums);
extern bool floral_call_pending(const FloralSpec *spec, int32 round, int64 call);

#endif
