/*
 * floral.h
 *	  Declarations shared by the floral extension's source files.
 */
#ifndef FLORAL_H
#define FLORAL_H


/* GUCs (floral.c) */
extern int	floral_blas_threads;
extern int	floral_cache_memory;
extern bool floral_timing;
extern bool floral_progress_notices;
extern int	floral_max_parallel_workers;

/* give OpenBLAS the thread count of floral.blas_threads (floral.c) */
extern void floral_blas_prepare(void);

/* Name of the schema holding floral's catalog tables. */
#define FLORAL_SCHEMA "floral"

#endif
