/*
 * rng.h
 *	  Seeded random numbers, so that the same seeds give bit-identical models.
 *
 * Thin layer over PostgreSQL's pg_prng (xoroshiro128**), plus a stable hash
 * used to derive one independent stream per (seed, round, tenant).
 */
#ifndef FLORAL_RNG_H
#define FLORAL_RNG_H

#include "common/pg_prng.h"

extern void floral_rng_seed(pg_prng_state *state, uint64 seed, uint64 round,
							const char *tenant);
extern float floral_rng_uniform(pg_prng_state *state, float lo, float hi);
extern void floral_rng_shuffle(pg_prng_state *state, int32 *perm, int64 n);

#endif
