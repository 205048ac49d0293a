/*
 * rng.c
 *	  Seeded random streams for initialisation, shuffling and router noise.
 */
#include "postgres.h"

#include "rng.h"

/* FNV-1a: stable across platforms and releases, unlike hash_any */
static uint64
fnv1a(uint64 h, const void *data, size_t len)
{
	const unsigned char *p = data;

	for (size_t i = 0; i < len; i++)
	{
		h ^= p[i];
		h *= UINT64CONST(0x100000001b3);
	}
	return h;
}

void
floral_rng_seed(pg_prng_state *state, uint64 seed, uint64 round,
				const char *tenant)
{
	uint64		h = UINT64CONST(0xcbf29ce484222325);

	h = fnv1a(h, &seed, sizeof(seed));
	h = fnv1a(h, &round, sizeof(round));
	if (tenant)
		h = fnv1a(h, tenant, strlen(tenant));
	pg_prng_seed(state, h);
}

/* uniform in [lo, hi) */
float
floral_rng_uniform(pg_prng_state *state, float lo, float hi)
{
	return lo + (hi - lo) * (float) pg_prng_double(state);
}

/* Fisher-Yates */
void
floral_rng_shuffle(pg_prng_state *state, int32 *perm, int64 n)
{
	for (int64 i = n - 1; i > 0; i--)
	{
		int64		j = (int64) pg_prng_uint64_range(state, 0, (uint64) i);
		int32		tmp = perm[i];

		perm[i] = perm[j];
		perm[j] = tmp;
	}
}
