/*
 * nn.c
 *	  The FLoRAL layer, its loss and its gradients, on whole batches.
 *
 * Layer l for a tenant with mixture coefficients m_c (FLORAL.md, "Model"):
 *
 *	  Z_l = H_{l-1} W_l^T + b_l + alpha * sum_c m_c (H_{l-1} U_c^T V_c^T + beta_c)
 *	  H_l = act(Z_l)			(no activation after the last layer)
 *
 * Rows are examples (row-major), so every product is one cblas_sgemm over
 * the batch.  The C adaptors of a layer are stacked, so projecting the batch
 * on all of them is a single GEMM as well.
 *
 * Training takes its SGD step with floral_sgd_step, which applies each
 * update inside the GEMM that computes its gradient; floral_backward keeps
 * the gradients themselves for the gradient check and personalisation.
 */
#include "postgres.h"

#include <math.h>
#include <cblas.h>

#include "miscadmin.h"

#include "ensemble.h"
#include "nn.h"

FloralNet *
floral_net_create(const FloralSpec *spec, int max_batch)
{
	FloralNet  *net = palloc0(sizeof(FloralNet));
	int			widest = floral_spec_widest(spec);
	int			C = spec->nadaptors;
	int			max_cr = 1;
	int			max_r = 1;

	net->spec = spec;
	net->max_batch = max_batch;
	net->X = palloc(sizeof(float) * max_batch * SPEC_INPUTS(spec));
	for (int l = 0; l < spec->nlayers; l++)
	{
		const FloralLayer *layer = &spec->layers[l];
		int			cr = C * layer->rank;

		net->Z[l] = palloc(sizeof(float) * max_batch * layer->out);
		net->H[l] = (l == spec->nlayers - 1) ? net->Z[l] :
			palloc(sizeof(float) * max_batch * layer->out);
		if (cr > 0)
		{
			net->A[l] = palloc(sizeof(float) * max_batch * cr);
			net->As[l] = palloc(sizeof(float) * max_batch * cr);
		}
		max_cr = Max(max_cr, cr);
		max_r = Max(max_r, layer->rank);
	}
	net->G = palloc(sizeof(float) * max_batch * max_cr);
	net->Gp = palloc(sizeof(float) * max_batch * max_cr);
	net->T = palloc(sizeof(float) * max_batch * max_r);
	net->dZ = palloc(sizeof(float) * max_batch * widest);
	net->dX = palloc(sizeof(float) * max_batch * widest);
	net->bias = palloc(sizeof(float) * widest);
	net->colsum = palloc(sizeof(double) * widest);
	/* one r x r Gram matrix per adaptor: all U_c of a layer before U moves */
	net->ugram = palloc(sizeof(float) * max_r * max_r * Max(C, 1));
	net->vgram = palloc(sizeof(float) * max_r * max_r);
	net->inv = palloc(sizeof(float) * max_r * max_r);
	net->chol = palloc(sizeof(double) * 2 * max_r * max_r);
	net->pscratch = palloc(sizeof(float) * max_r * widest);
	if (spec->ensemble)
		floral_ensemble_net_init(net);
	return net;
}

/* ---------- router: the tenant's mixture ---------- */

double
floral_softmax(const float *x, int n, float *p)
{
	float		maxv = x[0];
	double		sum = 0.0;

	for (int k = 1; k < n; k++)
		maxv = Max(maxv, x[k]);
	for (int k = 0; k < n; k++)
		sum += exp((double) x[k] - maxv);
	if (p)
		for (int k = 0; k < n; k++)
			p[k] = (float) (exp((double) x[k] - maxv) / sum);
	return maxv + log(sum);
}

void
floral_tenant_mixture(const FloralSpec *spec, const float *pinned,
					  const float *logits, float *pi)
{
	int			C = spec->nadaptors;

	if (C == 0)
		return;
	if (pinned)
		memcpy(pi, pinned, sizeof(float) * C);
	else if (logits)
		floral_softmax(logits, C, pi);
	else
		for (int c = 0; c < C; c++)
			pi[c] = 1.0f / C;
}

/* pi = softmax(z + noise * u) (u NULL: no noise), and the floored weights */
void
floral_router(FloralNet *net, const float *z, const float *u)
{
	const FloralSpec *spec = net->spec;
	int			C = spec->nadaptors;
	float		s[FLORAL_MAX_ADAPTORS] = {0};

	for (int c = 0; c < C; c++)
		s[c] = u ? (float) (z[c] + (double) spec->noise * u[c]) : z[c];
	floral_softmax(s, C, net->pi);
	for (int c = 0; c < C; c++)
		net->m[c] = Max(net->pi[c], spec->min_prob);
}

void
floral_router_fixed(FloralNet *net, const float *pi)
{
	for (int c = 0; c < net->spec->nadaptors; c++)
	{
		net->pi[c] = pi[c];
		net->m[c] = Max(pi[c], net->spec->min_prob);
	}
}

/*
 * m_c = max(pi_c, min_prob) passes the gradient where pi_c >= min_prob;
 * then through the softmax: dz_j = pi_j (dpi_j - sum_c pi_c dpi_c).
 */
void
floral_router_backward(FloralNet *net, float *dz)
{
	int			C = net->spec->nadaptors;
	double		dpi[FLORAL_MAX_ADAPTORS];
	double		dot = 0.0;

	for (int c = 0; c < C; c++)
	{
		dpi[c] = (net->pi[c] >= net->spec->min_prob) ? net->dm[c] : 0.0;
		dot += net->pi[c] * dpi[c];
	}
	for (int c = 0; c < C; c++)
		dz[c] = (float) (net->pi[c] * (dpi[c] - dot));
}

/* ---------- forward ---------- */

/* H = act(Z) over n values; shared by the batch and the one-row paths */
static inline void
activate(FloralActivation act, const float *Z, float *H, int64 n)
{
	switch (act)
	{
		case FLORAL_RELU:
			for (int64 i = 0; i < n; i++)
				H[i] = Max(Z[i], 0.0f);
			break;
		case FLORAL_TANH:
			for (int64 i = 0; i < n; i++)
				H[i] = tanhf(Z[i]);
			break;
		case FLORAL_IDENTITY:
			memcpy(H, Z, sizeof(float) * n);
			break;
	}
}

float *
floral_forward(FloralNet *net, const float *base, const float *bank, int B)
{
	const FloralSpec *spec = net->spec;
	int			C = spec->nadaptors;
	const float *in = net->X;

	if (spec->ensemble)
		return floral_ensemble_forward(net, bank, B);
	Assert(B <= net->max_batch);
	for (int l = 0; l < spec->nlayers; l++)
	{
		const FloralLayer *layer = &spec->layers[l];
		int			r = layer->rank;
		int			cr = C * r;
		float	   *Z = net->Z[l];
		const float *W = base + layer->W;
		float	   *bias = net->bias;

		/* effective bias: b + alpha * sum_c m_c beta_c */
		memcpy(bias, base + layer->b, sizeof(float) * layer->out);
		for (int c = 0; c < C; c++)
			cblas_saxpy(layer->out, spec->alpha * net->m[c],
						bank + layer->beta + (int64) c * layer->out, 1,
						bias, 1);
		for (int i = 0; i < B; i++)
			memcpy(Z + (int64) i * layer->out, bias, sizeof(float) * layer->out);

		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
					B, layer->out, layer->in,
					1.0f, in, layer->in, W, layer->in,
					1.0f, Z, layer->out);

		if (cr > 0)
		{
			float	   *A = net->A[l];
			float	   *As = net->As[l];

			/* project on every adaptor's U at once */
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
						B, cr, layer->in,
						1.0f, in, layer->in, bank + layer->U, layer->in,
						0.0f, A, cr);
			for (int i = 0; i < B; i++)
				for (int c = 0; c < C; c++)
				{
					float		scale = spec->alpha * net->m[c];

					for (int j = 0; j < r; j++)
						As[(int64) i * cr + c * r + j] =
							scale * A[(int64) i * cr + c * r + j];
				}
			for (int c = 0; c < C; c++)
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
							B, layer->out, r,
							1.0f, As + c * r, cr,
							bank + layer->V + (int64) c * layer->out * r, r,
							1.0f, Z, layer->out);
		}

		if (l < spec->nlayers - 1)
		{
			float	   *H = net->H[l];
			int64		n = (int64) B * layer->out;

			activate(spec->activation, Z, H, n);
		}
		in = net->H[l];
	}
	return net->Z[spec->nlayers - 1];
}

/* ---------- prediction with a fixed mixture ---------- */

void
floral_mixture_init(const FloralSpec *spec, const float *base, const float *bank,
					const float *pi, FloralMixture *mix)
{
	int			C = spec->nadaptors;
	int			total = 0;
	float	   *bias;

	memset(mix, 0, sizeof(*mix));
	mix->bank = bank;
	for (int c = 0; c < C; c++)
		mix->am[c] = spec->alpha * Max(pi[c], spec->min_prob);
	for (int l = 0; l < spec->nlayers; l++)
		total += spec->layers[l].out;
	if (spec->ensemble)
	{
		/* members are mixed at the output, with m_c alone; no mixed biases */
		for (int c = 0; c < C; c++)
			mix->am[c] = Max(pi[c], spec->min_prob);
		mix->bias[0] = palloc0(sizeof(float) * total);
		for (int l = 1; l < spec->nlayers; l++)
			mix->bias[l] = mix->bias[l - 1] + spec->layers[l - 1].out;
		return;
	}
	bias = palloc(sizeof(float) * total);
	for (int l = 0; l < spec->nlayers; l++)
	{
		const FloralLayer *layer = &spec->layers[l];

		mix->bias[l] = bias;
		for (int o = 0; o < layer->out; o++)
		{
			/* in double, so the order of the C terms does not matter */
			double		acc = base[layer->b + o];

			for (int c = 0; c < C; c++)
				acc += (double) mix->am[c] * bank[layer->beta + (int64) c * layer->out + o];
			bias[o] = (float) acc;
		}
		bias += layer->out;
	}
}

void
floral_mixture_copy(const FloralSpec *spec, const FloralMixture *src, FloralMixture *dst)
{
	int			total = 0;

	for (int l = 0; l < spec->nlayers; l++)
		total += spec->layers[l].out;
	*dst = *src;
	dst->bias[0] = palloc(sizeof(float) * total);
	memcpy(dst->bias[0], src->bias[0], sizeof(float) * total);
	for (int l = 1; l < spec->nlayers; l++)
		dst->bias[l] = dst->bias[l - 1] + spec->layers[l - 1].out;
}

void
floral_mixture_free(FloralMixture *mix)
{
	if (mix->bias[0])
		pfree(mix->bias[0]);
	mix->bias[0] = NULL;
}

float *
floral_forward_mixed(FloralNet *net, const float *base,
					 const FloralMixture *const *mix, int B)
{
	const FloralSpec *spec = net->spec;
	int			C = spec->nadaptors;
	const float *in = net->X;

	if (spec->ensemble)
		return floral_ensemble_forward_mixed(net, mix, B);
	Assert(B <= net->max_batch);
	for (int l = 0; l < spec->nlayers; l++)
	{
		const FloralLayer *layer = &spec->layers[l];
		int			r = layer->rank;
		int			cr = C * r;
		float	   *Z = net->Z[l];

		for (int i = 0; i < B; i++)
			memcpy(Z + (int64) i * layer->out, mix[i]->bias[l], sizeof(float) * layer->out);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
					B, layer->out, layer->in,
					1.0f, in, layer->in, base + layer->W, layer->in,
					1.0f, Z, layer->out);

		/* the adaptors, once per run of rows that share a bank */
		for (int s = 0, e; cr > 0 && s < B; s = e)
		{
			const float *bank = mix[s]->bank;
			int			n;
			float	   *A = net->A[l] + (int64) s * cr;
			float	   *As = net->As[l] + (int64) s * cr;

			for (e = s + 1; e < B && mix[e]->bank == bank; e++)
				;
			n = e - s;
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
						n, cr, layer->in,
						1.0f, in + (int64) s * layer->in, layer->in,
						bank + layer->U, layer->in,
						0.0f, A, cr);
			for (int i = 0; i < n; i++)
			{
				const float *am = mix[s + i]->am;

				for (int c = 0; c < C; c++)
					for (int j = 0; j < r; j++)
						As[(int64) i * cr + c * r + j] = am[c] * A[(int64) i * cr + c * r + j];
			}
			for (int c = 0; c < C; c++)
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
							n, layer->out, r,
							1.0f, As + c * r, cr,
							bank + layer->V + (int64) c * layer->out * r, r,
							1.0f, Z + (int64) s * layer->out, layer->out);
		}

		if (l < spec->nlayers - 1)
			activate(spec->activation, Z, net->H[l], (int64) B * layer->out);
		in = net->H[l];
	}
	return net->Z[spec->nlayers - 1];
}

float *
floral_forward_row(FloralNet *net, const float *base, const FloralMixture *mix,
				   const float *x)
{
	const FloralSpec *spec = net->spec;
	int			C = spec->nadaptors;
	const float *in = x;
	const float *bank = mix->bank;

	if (spec->ensemble)
		return floral_ensemble_forward_row(net, mix, x);
	for (int l = 0; l < spec->nlayers; l++)
	{
		const FloralLayer *layer = &spec->layers[l];
		int			r = layer->rank;
		float	   *z = net->Z[l];

		/* the bias terms were mixed once for the tenant */
		memcpy(z, mix->bias[l], sizeof(float) * layer->out);
		cblas_sgemv(CblasRowMajor, CblasNoTrans, layer->out, layer->in,
					1.0f, base + layer->W, layer->in, in, 1, 1.0f, z, 1);
		if (C > 0 && r > 0)
		{
			float	   *a = net->A[l];

			/* a = U_all x (C*r values), one product for every adaptor */
			cblas_sgemv(CblasRowMajor, CblasNoTrans, C * r, layer->in,
						1.0f, bank + layer->U, layer->in, in, 1, 0.0f, a, 1);
			for (int k = 0; k < C * r; k++)
				a[k] *= mix->am[k / r];
			for (int c = 0; c < C; c++)
			{
				const float *V = bank + layer->V + (int64) c * layer->out * r;

				for (int o = 0; o < layer->out; o++)
				{
					float		acc = 0.0f;

					for (int j = 0; j < r; j++)
						acc += V[o * r + j] * a[c * r + j];
					z[o] += acc;
				}
			}
		}
		if (l < spec->nlayers - 1)
		{
			float	   *h = net->H[l];

			activate(spec->activation, z, h, layer->out);
			in = h;
		}
	}
	return net->Z[spec->nlayers - 1];
}

float
floral_output_prediction(const FloralSpec *spec, const float *out)
{
	int			best = 0;

	if (spec->task == FLORAL_REGRESSION)
		return out[0];
	for (int k = 1; k < SPEC_OUTPUTS(spec); k++)
		if (out[k] > out[best])
			best = k;
	return (float) best;
}

void
floral_output_proba(const FloralSpec *spec, const float *out, float *p)
{
	if (spec->task == FLORAL_REGRESSION)
		memcpy(p, out, sizeof(float) * SPEC_OUTPUTS(spec));
	else
		floral_softmax(out, SPEC_OUTPUTS(spec), p);
}

/* ---------- loss ---------- */

double
floral_loss(FloralNet *net, const float *Y, int B, bool want_grad,
			int64 *correct)
{
	const FloralSpec *spec = net->spec;
	int			K = SPEC_OUTPUTS(spec);
	const float *out = net->Z[spec->nlayers - 1];
	float	   *dZ = net->dZ;
	double		loss = 0.0;

	if (spec->task == FLORAL_CLASSIFICATION)
	{
		for (int i = 0; i < B; i++)
		{
			const float *row = out + (int64) i * K;
			int			y = (int) Y[i];
			int			argmax = 0;
			double		lse;

			for (int k = 1; k < K; k++)
				if (row[k] > row[argmax])
					argmax = k;
			/* the gradient of the mean cross-entropy: (softmax - one-hot) / B */
			lse = floral_softmax(row, K, want_grad ? dZ + (int64) i * K : NULL);
			loss += lse - row[y];
			if (correct && argmax == y)
				(*correct)++;
			if (want_grad)
			{
				float	   *g = dZ + (int64) i * K;

				for (int k = 0; k < K; k++)
					g[k] /= B;
				g[y] -= 1.0f / B;
			}
		}
		return loss / B;
	}

	/* mean squared error over all B * K outputs, as torch's MSELoss */
	for (int64 i = 0; i < (int64) B * K; i++)
	{
		double		d = (double) out[i] - Y[i];

		loss += d * d;
		if (want_grad)
			dZ[i] = (float) (2.0 * d / ((double) B * K));
	}
	return loss / ((double) B * K);
}

/* ---------- backward ---------- */

/*
 * The backward pass of one layer is split into the parts that
 * floral_backward and floral_sgd_step share, so that the fused step
 * computes exactly the same G, dm and input gradient as the plain one.
 */

/* db = column sums of dZ (B x out), accumulated in double */
static void
bias_gradient(const float *dZ, int B, int out, double *db)
{
	for (int k = 0; k < out; k++)
		db[k] = 0.0;
	for (int i = 0; i < B; i++)
		for (int k = 0; k < out; k++)
			db[k] += dZ[(int64) i * out + k];
}

/*
 * G_c = dZ V_c for every adaptor of the layer, and the mixture gradient
 * dm_c += alpha (<G_c, A_c> + <db, beta_c>).  On return G_c carries the
 * factor alpha m_c, which is what both dU and the input gradient need.
 */
static void
adaptor_backward(FloralNet *net, const FloralLayer *layer, const float *bank,
				 int B, const float *dZ, const double *db)
{
	const FloralSpec *spec = net->spec;
	int			C = spec->nadaptors;
	int			out = layer->out;
	int			r = layer->rank;
	int			cr = C * r;
	const float *A = net->A[layer - spec->layers];
	float	   *G = net->G;

	for (int c = 0; c < C; c++)
	{
		const float *V = bank + layer->V + (int64) c * out * r;
		const float *beta = bank + layer->beta + (int64) c * out;
		double		dm = 0.0;
		float		scale = spec->alpha * net->m[c];

		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans,
					B, r, out,
					1.0f, dZ, out, V, r,
					0.0f, G + c * r, cr);

		for (int i = 0; i < B; i++)
			for (int j = 0; j < r; j++)
				dm += (double) G[(int64) i * cr + c * r + j] *
					A[(int64) i * cr + c * r + j];
		for (int k = 0; k < out; k++)
			dm += db[k] * beta[k];
		net->dm[c] += spec->alpha * dm;

		for (int i = 0; i < B; i++)
			for (int j = 0; j < r; j++)
				G[(int64) i * cr + c * r + j] *= scale;
	}
}

/*
 * dX = (dZ W + G U) act'(Z_{l-1}), the output gradient of layer l - 1.  It
 * must see W and U as they were in the forward pass, so the fused step
 * calls this before it updates them.
 */
static void
input_gradient(FloralNet *net, int l, const float *base, const float *bank,
			   int B, const float *dZ, float *dX)
{
	const FloralSpec *spec = net->spec;
	const FloralLayer *layer = &spec->layers[l];
	int			cr = spec->nadaptors * layer->rank;
	const float *Zprev = net->Z[l - 1];
	const float *Hprev = net->H[l - 1];
	int64		n = (int64) B * layer->in;

	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans,
				B, layer->in, layer->out,
				1.0f, dZ, layer->out, base + layer->W, layer->in,
				0.0f, dX, layer->in);
	if (cr > 0)
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans,
					B, layer->in, cr,
					1.0f, net->G, cr, bank + layer->U, layer->in,
					1.0f, dX, layer->in);
	switch (spec->activation)
	{
		case FLORAL_RELU:
			for (int64 i = 0; i < n; i++)
				dX[i] = Zprev[i] > 0.0f ? dX[i] : 0.0f;
			break;
		case FLORAL_TANH:
			for (int64 i = 0; i < n; i++)
				dX[i] *= 1.0f - Hprev[i] * Hprev[i];
			break;
		case FLORAL_IDENTITY:
			break;
	}
}

void
floral_backward(FloralNet *net, const float *base, const float *bank, int B,
				float *gbase, float *gbank)
{
	const FloralSpec *spec = net->spec;
	int			C = spec->nadaptors;
	float	   *dZ = net->dZ;
	float	   *dX = net->dX;

	if (spec->ensemble)
	{
		floral_ensemble_backward(net, (float *) bank, B, gbank, false, 0.0f);
		return;
	}
	for (int c = 0; c < C; c++)
		net->dm[c] = 0.0;

	for (int l = spec->nlayers - 1; l >= 0; l--)
	{
		const FloralLayer *layer = &spec->layers[l];
		const float *in = (l == 0) ? net->X : net->H[l - 1];
		int			out = layer->out;
		int			r = layer->rank;
		int			cr = C * r;
		double	   *db = net->colsum;

		CHECK_FOR_INTERRUPTS();

		/* base: dW = dZ^T H_in, db = column sums of dZ */
		cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans,
					out, layer->in, B,
					1.0f, dZ, out, in, layer->in,
					0.0f, gbase + layer->W, layer->in);
		bias_gradient(dZ, B, out, db);
		for (int k = 0; k < out; k++)
			gbase[layer->b + k] = (float) db[k];

		if (cr > 0)
		{
			const float *As = net->As[l];

			adaptor_backward(net, layer, bank, B, dZ, db);
			for (int c = 0; c < C; c++)
			{
				float		scale = spec->alpha * net->m[c];

				/* dV_c = dZ^T (alpha m_c A_c) */
				cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans,
							out, r, B,
							1.0f, dZ, out, As + c * r, cr,
							0.0f, gbank + layer->V + (int64) c * out * r, r);
				/* dbeta_c = alpha m_c db */
				for (int k = 0; k < out; k++)
					gbank[layer->beta + (int64) c * out + k] = (float) (scale * db[k]);
			}
			/* dU (all adaptors) = G^T H_in */
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans,
						cr, layer->in, B,
						1.0f, net->G, cr, in, layer->in,
						0.0f, gbank + layer->U, layer->in);
		}

		if (l > 0)
		{
			float	   *tmp;

			input_gradient(net, l, base, bank, B, dZ, dX);
			tmp = dZ;
			dZ = dX;
			dX = tmp;
		}
	}
}

/* ---------- preconditioning ---------- */

/*
 * inv = (gram + eps I)^-1 for an r x r Gram matrix (only its lower triangle
 * is read; leading dimension ld), as a full symmetric matrix.  Cholesky in
 * double, then L^-1 by substitution and inv = L^-T L^-1: with r at most a
 * few dozen this costs little next to the products it serves, and applying
 * a full inverse is one GEMM where the factor needed two triangular solves
 * (small strsm calls took a third of the old preconditioning's time).
 */
static void
gram_inverse(FloralNet *net, const float *gram, int ld, int r, float *inv)
{
	double		eps = net->spec->precondition_eps;
	double	   *L = net->chol;
	double	   *M = net->chol + r * r;

	for (int i = 0; i < r; i++)
		for (int j = 0; j <= i; j++)
			L[i * r + j] = gram[i * ld + j] + ((i == j) ? eps : 0.0);

	for (int j = 0; j < r; j++)
	{
		double		d = L[j * r + j];

		for (int k = 0; k < j; k++)
			d -= L[j * r + k] * L[j * r + k];
		/* rounding can make a tiny pivot negative; keep it positive */
		d = sqrt(Max(d, eps));
		L[j * r + j] = d;
		for (int i = j + 1; i < r; i++)
		{
			double		s = L[i * r + j];

			for (int k = 0; k < j; k++)
				s -= L[i * r + k] * L[j * r + k];
			L[i * r + j] = s / d;
		}
	}

	/* M = L^-1, lower triangular, one column at a time */
	for (int j = 0; j < r; j++)
	{
		M[j * r + j] = 1.0 / L[j * r + j];
		for (int i = j + 1; i < r; i++)
		{
			double		s = 0.0;

			for (int k = j; k < i; k++)
				s += L[i * r + k] * M[k * r + j];
			M[i * r + j] = -s / L[i * r + i];
		}
	}

	/* (L L^T)^-1 = M^T M; M is lower, so only rows k >= max(i, j) count */
	for (int i = 0; i < r; i++)
		for (int j = 0; j <= i; j++)
		{
			double		s = 0.0;

			for (int k = i; k < r; k++)
				s += M[k * r + i] * M[k * r + j];
			inv[i * r + j] = inv[j * r + i] = (float) s;
		}
}

/*
 * The Gram matrices are taken with cblas_sgemm, both triangles, not with
 * cblas_ssyrk, and adaptor by adaptor.  Measured on one core for the
 * benchmark's first layer (C = 4, r = 15, in = 784): four sgemm 16 us, four
 * ssyrk 57 us, one ssyrk of U_all U_all^T (all C diagonal blocks at once)
 * 55 us, one sgemm of it 69 us.  The C^2 - C wasted off-diagonal blocks
 * cost more than the calls they save, and grow with C.
 */

/* (V_c^T V_c + eps I)^-1 into net->inv; r > 1 */
static void
v_inverse(FloralNet *net, const float *V, int out, int r)
{
	cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans,
				r, r, out,
				1.0f, V, r, V, r,
				0.0f, net->vgram, r);
	gram_inverse(net, net->vgram, r, r, net->inv);
}

/* U_c U_c^T of every adaptor of a layer into net->ugram (C blocks r x r) */
static void
u_grams(FloralNet *net, const FloralLayer *layer, const float *bank)
{
	int			r = layer->rank;
	int			in = layer->in;

	for (int c = 0; c < net->spec->nadaptors; c++)
	{
		const float *U = bank + layer->U + (int64) c * r * in;

		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
					r, r, in,
					1.0f, U, in, U, in,
					0.0f, net->ugram + c * r * r, r);
	}
}

/* (U_c U_c^T + eps I)^-1 into net->inv, from u_grams */
static void
u_inverse(FloralNet *net, int c, int r)
{
	gram_inverse(net, net->ugram + c * r * r, r, r, net->inv);
}

/*
 * For rank 1 both systems are scalars: the squared norms of V_c and U_c
 * plus eps.
 */
static void
rank1_norms(const FloralSpec *spec, const float *U, const float *V,
			int in, int out, double *vv, double *uu)
{
	*vv = spec->precondition_eps;
	*uu = spec->precondition_eps;
	for (int o = 0; o < out; o++)
		*vv += (double) V[o] * V[o];
	for (int k = 0; k < in; k++)
		*uu += (double) U[k] * U[k];
}

/*
 * grad_U <- (V^T V + eps I)^-1 grad_U and grad_V <- grad_V (U U^T + eps I)^-1,
 * per layer and adaptor, with the factors as they were before the step.
 * Rank 1, the common case, is a plain scaling.
 */
void
floral_precondition(FloralNet *net, const float *bank, float *gbank)
{
	const FloralSpec *spec = net->spec;
	float	   *tmp = net->pscratch;

	/* an Ensemble has no factors to precondition */
	if (spec->ensemble)
		return;
	for (int l = 0; l < spec->nlayers; l++)
	{
		const FloralLayer *layer = &spec->layers[l];
		int			r = layer->rank;
		int			in = layer->in;
		int			out = layer->out;

		if (r > 1)
			u_grams(net, layer, bank);
		for (int c = 0; c < spec->nadaptors; c++)
		{
			const float *U = bank + layer->U + (int64) c * r * in;
			const float *V = bank + layer->V + (int64) c * out * r;
			float	   *gU = gbank + layer->U + (int64) c * r * in;
			float	   *gV = gbank + layer->V + (int64) c * out * r;

			if (r == 1)
			{
				double		vv,
							uu;

				rank1_norms(spec, U, V, in, out, &vv, &uu);
				cblas_sscal(in, (float) (1.0 / vv), gU, 1);
				cblas_sscal(out, (float) (1.0 / uu), gV, 1);
				continue;
			}

			/* GEMM cannot work in place: the gradient goes through tmp */
			v_inverse(net, V, out, r);
			memcpy(tmp, gU, sizeof(float) * r * in);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans,
						r, in, r,
						1.0f, net->inv, r, tmp, in,
						0.0f, gU, in);

			u_inverse(net, c, r);
			memcpy(tmp, gV, sizeof(float) * out * r);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans,
						out, r, r,
						1.0f, tmp, r, net->inv, r,
						0.0f, gV, r);
		}
	}
}

/* ---------- the fused SGD step ---------- */

/*
 * The adaptor part of one layer's step, after adaptor_backward (G) and
 * input_gradient (which needed U before the step).  With
 * dU_all = G^T H_in and dV_c = dZ^T As_c, the preconditioned gradients are
 *
 *	  P_V dU_c = (G_c P_V)^T H_in	and   dV_c P_U = dZ^T (As_c P_U)
 *
 * (P_V, P_U the symmetric inverses): multiplying the B x r factors costs
 * B r^2 instead of r^2 in (or r^2 out), and then every update is a GEMM with
 * beta = 1 straight into U or V.  Both inverses are taken from U and V
 * before either moves: V_c is updated only after P_V of adaptor c is formed,
 * and U only at the end.
 */
static void
adaptor_step(FloralNet *net, const FloralLayer *layer, float *bank,
			 const float *in, int B, float lr, const float *dZ,
			 const double *db)
{
	const FloralSpec *spec = net->spec;
	int			C = spec->nadaptors;
	int			out = layer->out;
	int			r = layer->rank;
	int			cr = C * r;
	const float *As = net->As[layer - spec->layers];
	const float *G = net->G;
	float	   *Gp = spec->precondition ? net->Gp : net->G;

	if (spec->precondition && r > 1)
		u_grams(net, layer, bank);
	for (int c = 0; c < C; c++)
	{
		const float *U = bank + layer->U + (int64) c * r * layer->in;
		float	   *V = bank + layer->V + (int64) c * out * r;
		float	   *beta = bank + layer->beta + (int64) c * out;
		float		scale = spec->alpha * net->m[c];
		const float *T = As + c * r;
		int			ldt = cr;
		float		vlr = -lr;

		if (spec->precondition && r == 1)
		{
			double		vv,
						uu;
			float		s;

			rank1_norms(spec, U, V, layer->in, out, &vv, &uu);
			s = (float) (1.0 / vv);
			for (int i = 0; i < B; i++)
				Gp[(int64) i * cr + c] = s * G[(int64) i * cr + c];
			vlr = -lr * (float) (1.0 / uu);
		}
		else if (spec->precondition)
		{
			v_inverse(net, V, out, r);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans,
						B, r, r,
						1.0f, G + c * r, cr, net->inv, r,
						0.0f, Gp + c * r, cr);
			u_inverse(net, c, r);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans,
						B, r, r,
						1.0f, As + c * r, cr, net->inv, r,
						0.0f, net->T, r);
			T = net->T;
			ldt = r;
		}

		/*
		 * V_c -= lr dZ^T T, T = alpha m_c A_c times P_U (for rank 1, P_U is
		 * in vlr)
		 */
		cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans,
					out, r, B,
					vlr, dZ, out, T, ldt,
					1.0f, V, r);
		/* beta_c -= lr alpha m_c db */
		for (int k = 0; k < out; k++)
			beta[k] += -lr * (float) (scale * db[k]);
	}
	/* U_all -= lr Gp^T H_in, every adaptor at once */
	cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans,
				cr, layer->in, B,
				-lr, Gp, cr, in, layer->in,
				1.0f, bank + layer->U, layer->in);
}

void
floral_sgd_step(FloralNet *net, float *base, float *bank, int B, float lr)
{
	const FloralSpec *spec = net->spec;
	int			C = spec->nadaptors;
	float	   *dZ = net->dZ;
	float	   *dX = net->dX;

	if (spec->ensemble)
	{
		floral_ensemble_backward(net, bank, B, NULL, true, lr);
		return;
	}
	for (int c = 0; c < C; c++)
		net->dm[c] = 0.0;

	for (int l = spec->nlayers - 1; l >= 0; l--)
	{
		const FloralLayer *layer = &spec->layers[l];
		const float *in = (l == 0) ? net->X : net->H[l - 1];
		int			out = layer->out;
		int			cr = C * layer->rank;
		double	   *db = net->colsum;
		float	   *b = base + layer->b;

		CHECK_FOR_INTERRUPTS();

		bias_gradient(dZ, B, out, db);
		if (cr > 0)
			adaptor_backward(net, layer, bank, B, dZ, db);
		/* before W and U move */
		if (l > 0)
			input_gradient(net, l, base, bank, B, dZ, dX);

		/* W -= lr dZ^T H_in, b -= lr db */
		cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans,
					out, layer->in, B,
					-lr, dZ, out, in, layer->in,
					1.0f, base + layer->W, layer->in);
		for (int k = 0; k < out; k++)
			b[k] += -lr * (float) db[k];

		if (cr > 0)
			adaptor_step(net, layer, bank, in, B, lr, dZ, db);

		if (l > 0)
		{
			float	   *tmp = dZ;

			dZ = dX;
			dX = tmp;
		}
	}
}
