/*
 * ensemble.h
 *	  The Ensemble baseline's passes: C full models mixed at the output.
 *
 * For a tenant with mixture coefficients m_c = max(pi_c, min_prob) the
 * output is  sum_c m_c f_c(x),  f_c the MLP of member c (model.h).  nn.c
 * hands every pass of an Ensemble model to these functions, so that the
 * rest of floral (training, aggregation, prediction) sees the same
 * interface as for FLoRAL: the members are the bank, the mixture weighs
 * them, the router gradient is net->dm.
 */
#ifndef FLORAL_ENSEMBLE_H
#define FLORAL_ENSEMBLE_H

#include "nn.h"

/* member scratch nets sharing net->X; called by floral_net_create */
extern void floral_ensemble_net_init(FloralNet *net);

extern float *floral_ensemble_forward(FloralNet *net, const float *bank, int B);

/*
 * After floral_ensemble_forward and floral_loss: net->dm, and either the
 * gradients into gbank (step false) or an SGD step on bank (step true).
 */
extern void floral_ensemble_backward(FloralNet *net, float *bank, int B,
									 float *gbank, bool step, float lr);

extern float *floral_ensemble_forward_mixed(FloralNet *net,
											const FloralMixture *const *mix, int B);
extern float *floral_ensemble_forward_row(FloralNet *net, const FloralMixture *mix,
										  const float *x);

#endif
