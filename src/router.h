/*
 * router.h
 *	  Alternatives to the paper's router that keep its per-tenant state
 *	  (C logits) and its communication (model option "router").
 */
#ifndef FLORAL_ROUTER_H
#define FLORAL_ROUTER_H

#include "nn.h"
#include "source.h"

/*
 * The one-hot probe: the tenant's summed loss with each adaptor alone
 * (mixture = one-hot c), over its rows, base and bank frozen; z is set to
 * the log-posterior of "adaptor c explains these rows" under a uniform
 * prior, z_c = -(L_c - min_j L_j), floored at -FLORAL_PROBE_FLOOR.  Y is
 * scratch for batch_size labels.
 */
#define FLORAL_PROBE_FLOOR 20.0

extern void floral_router_probe(FloralNet *net, FloralRows *rows,
								const FloralTenantRows *trows,
								const float *base, const float *bank,
								int batch_size, float *Y, float *z);

/*
 * Option reseed: after aggregation, an adaptor that (almost) no tenant of
 * the round used, M_c < FLORAL_RESEED_SHARE / C of sum_j M_j, becomes a
 * perturbed copy of the most used one (router.c).
 */
#define FLORAL_RESEED_SHARE 0.1
#define FLORAL_RESEED_JITTER 0.1

extern int	floral_reseed_unused(const FloralSpec *spec, const double *M, float *bank);

#endif
