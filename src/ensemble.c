/*
 * ensemble.c
 *	  The Ensemble baseline: C full models mixed at the output by the
 *	  tenant's mixture (FLORAL.md, "Baselines").
 *
 *	  out = sum_c m_c f_c(x),	m_c = max(pi_c, min_prob)
 *
 * Each member is an MLP without adaptors, so its passes are nn.c's own,
 * run on a scratch net of its own (the member spec describes one member as
 * a base); only the mixing at the output and its gradients live here:
 *
 *	  dL/d out_c = m_c dL/d out,   dL/dm_c = <dL/d out, f_c(x)>
 *
 * The members read the batch from the ensemble's net->X, so a batch is
 * gathered once whatever C.  Every member sees every row: a step costs C
 * times a FedAvg step, which is the baseline's point of comparison.
 */
#include "postgres.h"

#include <math.h>
#include <cblas.h>

#include "ensemble.h"

void
floral_ensemble_net_init(FloralNet *net)
{
	const FloralSpec *spec = net->spec;
	FloralSpec *ms = palloc(sizeof(FloralSpec));

	/* one member: a base of member_size floats, nothing else */
	*ms = *spec;
	ms->ensemble = false;
	ms->nadaptors = 0;
	ms->private_adaptors = false;
	ms->base_size = spec->member_size;
	ms->adaptor_offset = spec->member_size;
	ms->adaptor_size = 0;
	ms->nparams = spec->member_size;
	ms->member_size = 0;
	net->member_spec = ms;
	for (int c = 0; c < spec->nadaptors; c++)
	{
		FloralNet  *m = floral_net_create(ms, net->max_batch);

		pfree(m->X);
		m->X = net->X;
		net->member[c] = m;
	}
}

/* out (B x K) = sum_c w_c(row) * out_c, with w from mix or from net->m */
static float *
mix_outputs(FloralNet *net, const FloralMixture *const *mix, int B)
{
	const FloralSpec *spec = net->spec;
	int			K = SPEC_OUTPUTS(spec);
	int			last = spec->nlayers - 1;
	float	   *out = net->Z[last];
	int64		n = (int64) B * K;

	memset(out, 0, sizeof(float) * n);
	for (int c = 0; c < spec->nadaptors; c++)
	{
		const float *oc = net->member[c]->Z[last];

		if (mix == NULL)
			cblas_saxpy((int) n, net->m[c], oc, 1, out, 1);
		else
			for (int i = 0; i < B; i++)
				cblas_saxpy(K, mix[i]->am[c], oc + (int64) i * K, 1, out + (int64) i * K, 1);
	}
	return out;
}

float *
floral_ensemble_forward(FloralNet *net, const float *bank, int B)
{
	const FloralSpec *spec = net->spec;

	Assert(B <= net->max_batch);
	for (int c = 0; c < spec->nadaptors; c++)
		floral_forward(net->member[c], bank + (int64) c * spec->member_size, NULL, B);
	return mix_outputs(net, NULL, B);
}

void
floral_ensemble_backward(FloralNet *net, float *bank, int B, float *gbank,
						 bool step, float lr)
{
	const FloralSpec *spec = net->spec;
	int			K = SPEC_OUTPUTS(spec);
	int			last = spec->nlayers - 1;
	int64		n = (int64) B * K;
	const float *dZ = net->dZ;

	for (int c = 0; c < spec->nadaptors; c++)
	{
		FloralNet  *m = net->member[c];
		const float *oc = m->Z[last];
		int64		off = (int64) c * spec->member_size;
		double		dm = 0.0;

		/* before the member's step: its output is the forward pass's */
		for (int64 i = 0; i < n; i++)
			dm += (double) dZ[i] * oc[i];
		net->dm[c] = dm;
		for (int64 i = 0; i < n; i++)
			m->dZ[i] = net->m[c] * dZ[i];
		if (step)
			floral_sgd_step(m, bank + off, NULL, B, lr);
		else
			floral_backward(m, bank + off, NULL, B, gbank + off, NULL);
	}
}

float *
floral_ensemble_forward_mixed(FloralNet *net, const FloralMixture *const *mix, int B)
{
	const FloralSpec *spec = net->spec;
	const float *bank = mix[0]->bank;

	/* an Ensemble has no private members: every row shares one bank */
	for (int c = 0; c < spec->nadaptors; c++)
		floral_forward(net->member[c], bank + (int64) c * spec->member_size, NULL, B);
	return mix_outputs(net, mix, B);
}

/* one member on one row, as matrix-vector products; returns its output */
static const float *
member_row(FloralNet *m, const float *member, const float *x)
{
	const FloralSpec *ms = m->spec;
	const float *in = x;

	for (int l = 0; l < ms->nlayers; l++)
	{
		const FloralLayer *layer = &ms->layers[l];
		float	   *z = m->Z[l];

		memcpy(z, member + layer->b, sizeof(float) * layer->out);
		cblas_sgemv(CblasRowMajor, CblasNoTrans, layer->out, layer->in,
					1.0f, member + layer->W, layer->in, in, 1, 1.0f, z, 1);
		if (l < ms->nlayers - 1)
		{
			float	   *h = m->H[l];

			switch (ms->activation)
			{
				case FLORAL_RELU:
					for (int k = 0; k < layer->out; k++)
						h[k] = Max(z[k], 0.0f);
					break;
				case FLORAL_TANH:
					for (int k = 0; k < layer->out; k++)
						h[k] = tanhf(z[k]);
					break;
				case FLORAL_IDENTITY:
					memcpy(h, z, sizeof(float) * layer->out);
					break;
			}
			in = h;
		}
	}
	return m->Z[ms->nlayers - 1];
}

float *
floral_ensemble_forward_row(FloralNet *net, const FloralMixture *mix, const float *x)
{
	const FloralSpec *spec = net->spec;
	int			K = SPEC_OUTPUTS(spec);
	float	   *out = net->Z[spec->nlayers - 1];

	memset(out, 0, sizeof(float) * K);
	for (int c = 0; c < spec->nadaptors; c++)
	{
		const float *oc = member_row(net->member[c],
									 mix->bank + (int64) c * spec->member_size, x);

		for (int k = 0; k < K; k++)
			out[k] += mix->am[c] * oc[k];
	}
	return out;
}
