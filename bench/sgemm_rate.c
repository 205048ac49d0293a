/*
 * sgemm_rate: single-thread OpenBLAS rates at the exact shapes of one MLP
 * training step (and one prediction), to give floral's training and
 * prediction speed a roofline to be compared against.
 *
 *   cc -O2 $(pkg-config --cflags openblas) sgemm_rate.c -o sgemm_rate $(pkg-config --libs openblas)
 *   ./sgemm_rate [train|predict|all] [--layers 784,200,10] [--batch 32] [--seconds 0.2] [--reps 5]
 *                [--adaptors C --ranks r1,r2,...]
 *
 * Row-major, per layer l with weights W[out x in] and input activations
 * A[B x in] (B = batch):
 *   forward      Z[B x out]   = A[B x in] * W^T        (NoTrans, Trans)
 *   backward     dW[out x in] = dZ^T[out x B] * A      (Trans, NoTrans)
 *                dA[B x in]   = dZ[B x out] * W        (NoTrans, NoTrans), not for layer 1
 * Predict, per layer: y[out] = W[out x in] * x  (sgemv, NoTrans).
 *
 * For 784-200-10, batch 32 the train shapes are fwd1 32x200x784, fwd2 32x10x200,
 * dW2 10x200x32, dA2 (= dH) 32x200x10, dW1 200x784x32.
 *
 * With --adaptors C --ranks r1,r2,... (one rank per layer) train mode also
 * times the adaptor GEMMs of src/nn.c, per layer with cr = C * r:
 *   aU    A[B x cr]    = X[B x in] * U_all^T               (NoTrans, Trans), once
 *   aV    Z[B x out]  += As_c[B x r] * V_c^T               (NoTrans, Trans), C times
 *   aG    G_c[B x r]   = dZ[B x out] * V_c                 (NoTrans, NoTrans), C times
 *   adV   dV_c[out x r] = dZ^T * As_c                      (Trans, NoTrans), C times
 *   adU   dU[cr x in]  = G^T[cr x B] * X                   (Trans, NoTrans), once
 *   adX   dX[B x in]  += G[B x cr] * U_all                 (NoTrans, NoTrans), once, not for layer 1
 * (As_c and G_c are column blocks of B x cr matrices, leading dimension cr,
 * as in nn.c).  The triangular solves of the preconditioning are no GEMMs
 * and are left out.
 *
 * Each shape is timed as the best, over --reps repetitions, of a loop of calls
 * sized to last about --seconds; warm caches, as inside a training loop.
 * Output lines (whitespace separated, one fact per line):
 *   openblas <config string> / corename <name> / threads <n>
 *   shape <name> <M> <N> <K> <flops> <seconds_per_call> <GFLOP/s> [<calls per step>]
 *     (the 9th field is printed only for adaptor shapes; absent means 1)
 *   gemv <name> <M> <N> <flops> <seconds_per_call> <GFLOP/s>
 *   flops_per_sample_train <f>   roofline_seconds_per_sample <s>
 *     (base and adaptors; with --adaptors also flops_per_sample_base/_adaptors)
 *   flops_per_sample_predict <f> roofline_predict_seconds_per_sample <s>
 * Only the BLAS calls count: bias, activations, softmax and the optimizer
 * update are left out, so the roofline is a lower bound on time.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Declared by OpenBLAS' cblas.h, repeated here in case another CBLAS header is found. */
extern void openblas_set_num_threads(int);
extern int openblas_get_num_threads(void);
extern char *openblas_get_config(void);
extern char *openblas_get_corename(void);

#define MAX_LAYERS 16

static double opt_seconds = 0.2;
static int opt_reps = 5;

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float *
rand_matrix(size_t n)
{
	float	   *m = malloc(n * sizeof(float));
	size_t		i;

	if (m == NULL)
	{
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	/* small values in [-0.5, 0.5): keeps results finite, no denormals */
	for (i = 0; i < n; i++)
		m[i] = (float) rand() / RAND_MAX - 0.5f;
	return m;
}

/* one C = A*B with the layout of a training step; see header comment */
typedef struct
{
	const char *name;
	enum CBLAS_TRANSPOSE ta, tb;
	int			m, n, k;
	float	   *a, *b, *c;
	int			lda, ldb, ldc;
	float		beta;			/* 1 where the product accumulates into C */
	int			per_step;		/* calls of this shape per training step */
} Gemm;

static void
gemm_call(const Gemm *g, long calls)
{
	long		i;

	for (i = 0; i < calls; i++)
		cblas_sgemm(CblasRowMajor, g->ta, g->tb, g->m, g->n, g->k,
					1.0f, g->a, g->lda, g->b, g->ldb, g->beta, g->c, g->ldc);
}

typedef struct
{
	const char *name;
	int			m, n;
	float	   *a, *x, *y;
} Gemv;

static void
gemv_call(const Gemv *g, long calls)
{
	long		i;

	for (i = 0; i < calls; i++)
		cblas_sgemv(CblasRowMajor, CblasNoTrans, g->m, g->n, 1.0f, g->a, g->n,
					g->x, 1, 0.0f, g->y, 1);
}

/*
 * Best seconds per call of fn(arg, calls): first grow the loop length until
 * one loop lasts ~opt_seconds, then keep the fastest of opt_reps loops.
 */
static double
time_per_call(void (*fn) (const void *, long), const void *arg)
{
	long		calls = 1;
	double		t,
				best;
	int			r;

	fn(arg, 3);					/* warm-up: page in, let OpenBLAS set up */
	for (;;)
	{
		double		t0 = now();

		fn(arg, calls);
		t = now() - t0;
		if (t >= opt_seconds / 4 || calls > (1L << 40))
			break;
		calls *= (t < opt_seconds / 100) ? 10 : 2;
	}
	calls = (long) (calls * (opt_seconds / (t > 0 ? t : 1e-9))) + 1;
	best = 1e30;
	for (r = 0; r < opt_reps; r++)
	{
		double		t0 = now();

		fn(arg, calls);
		t = (now() - t0) / calls;
		if (t < best)
			best = t;
	}
	return best;
}

static void
gemm_thunk(const void *g, long calls)
{
	gemm_call((const Gemm *) g, calls);
}

static void
gemv_thunk(const void *g, long calls)
{
	gemv_call((const Gemv *) g, calls);
}

/* time one shape, print its line, add it to the running totals */
static void
time_shape(const Gemm *g, double *flops_sum, double *time_sum)
{
	double		flops = 2.0 * g->m * g->n * g->k;
	double		t = time_per_call(gemm_thunk, g);

	if (g->per_step > 1)
		printf("shape %s %d %d %d %.0f %.4e %.2f %d\n", g->name,
			   g->m, g->n, g->k, flops, t, flops / t * 1e-9, g->per_step);
	else
		printf("shape %s %d %d %d %.0f %.4e %.2f\n", g->name,
			   g->m, g->n, g->k, flops, t, flops / t * 1e-9);
	fflush(stdout);
	*flops_sum += flops * g->per_step;
	*time_sum += t * g->per_step;
}

/*
 * The adaptor GEMMs of one layer (see the header comment): C adaptors of
 * rank r, cr = C * r.
 */
static void
time_adaptor_shapes(int l, int in, int out, int C, int r, int batch,
					double *flops_sum, double *time_sum)
{
	int			cr = C * r;
	float	   *X = rand_matrix((size_t) batch * in);	/* layer input */
	float	   *U = rand_matrix((size_t) cr * in);	/* all adaptors' U */
	float	   *V = rand_matrix((size_t) out * r);	/* one adaptor's V */
	float	   *A = rand_matrix((size_t) batch * cr);	/* A, As, G */
	float	   *Z = rand_matrix((size_t) batch * out);	/* Z, dZ */
	float	   *dV = rand_matrix((size_t) out * r);
	float	   *dU = rand_matrix((size_t) cr * in);
	float	   *dX = rand_matrix((size_t) batch * in);
	char		names[6][32];
	Gemm		g[6];
	int			ng = 0,
				i;

	snprintf(names[0], sizeof names[0], "aU%d", l + 1);
	snprintf(names[1], sizeof names[1], "aV%d", l + 1);
	snprintf(names[2], sizeof names[2], "aG%d", l + 1);
	snprintf(names[3], sizeof names[3], "adV%d", l + 1);
	snprintf(names[4], sizeof names[4], "adU%d", l + 1);
	snprintf(names[5], sizeof names[5], "adX%d", l + 1);
	g[ng++] = (Gemm) {names[0], CblasNoTrans, CblasTrans, batch, cr, in, X, U, A, in, in, cr, 0.0f, 1};
	g[ng++] = (Gemm) {names[1], CblasNoTrans, CblasTrans, batch, out, r, A, V, Z, cr, r, out, 1.0f, C};
	g[ng++] = (Gemm) {names[2], CblasNoTrans, CblasNoTrans, batch, r, out, Z, V, A, out, r, cr, 0.0f, C};
	g[ng++] = (Gemm) {names[3], CblasTrans, CblasNoTrans, out, r, batch, Z, A, dV, out, cr, r, 0.0f, C};
	g[ng++] = (Gemm) {names[4], CblasTrans, CblasNoTrans, cr, in, batch, A, X, dU, cr, in, in, 0.0f, 1};
	if (l > 0)
		g[ng++] = (Gemm) {names[5], CblasNoTrans, CblasNoTrans, batch, in, cr, A, U, dX, cr, in, in, 1.0f, 1};
	for (i = 0; i < ng; i++)
		time_shape(&g[i], flops_sum, time_sum);
	free(X);
	free(U);
	free(V);
	free(A);
	free(Z);
	free(dV);
	free(dU);
	free(dX);
}

static void
run_train(const int *layers, int nlayers, int batch, int adaptors, const int *ranks)
{
	double		base_flops = 0,
				base_time = 0,
				ad_flops = 0,
				ad_time = 0,
				total_flops,
				total_time;
	int			l;

	for (l = 0; l + 1 < nlayers; l++)
	{
		int			in = layers[l],
					out = layers[l + 1];
		float	   *A = rand_matrix((size_t) batch * in);	/* activations in */
		float	   *W = rand_matrix((size_t) out * in);
		float	   *Z = rand_matrix((size_t) batch * out);	/* also dZ */
		float	   *dW = rand_matrix((size_t) out * in);
		float	   *dA = rand_matrix((size_t) batch * in);
		char		nfwd[32],
					ndw[32],
					nda[32];
		Gemm		g[3];
		int			ng = 0,
					i;

		snprintf(nfwd, sizeof nfwd, "fwd%d", l + 1);
		snprintf(ndw, sizeof ndw, "dW%d", l + 1);
		snprintf(nda, sizeof nda, "dA%d", l + 1);
		g[ng++] = (Gemm) {nfwd, CblasNoTrans, CblasTrans, batch, out, in, A, W, Z, in, in, out, 0.0f, 1};
		g[ng++] = (Gemm) {ndw, CblasTrans, CblasNoTrans, out, in, batch, Z, A, dW, out, in, in, 0.0f, 1};
		/* no input gradient needed for the first layer */
		if (l > 0)
			g[ng++] = (Gemm) {nda, CblasNoTrans, CblasNoTrans, batch, in, out, Z, W, dA, out, in, in, 0.0f, 1};
		for (i = 0; i < ng; i++)
			time_shape(&g[i], &base_flops, &base_time);
		free(A);
		free(W);
		free(Z);
		free(dW);
		free(dA);
		if (adaptors > 0 && ranks[l] > 0)
			time_adaptor_shapes(l, in, out, adaptors, ranks[l], batch, &ad_flops, &ad_time);
	}
	total_flops = base_flops + ad_flops;
	total_time = base_time + ad_time;
	printf("flops_per_sample_train %.0f\n", total_flops / batch);
	if (adaptors > 0)
	{
		printf("flops_per_sample_base %.0f\n", base_flops / batch);
		printf("flops_per_sample_adaptors %.0f\n", ad_flops / batch);
		printf("roofline_seconds_per_sample_base %.4e\n", base_time / batch);
		printf("roofline_seconds_per_sample_adaptors %.4e\n", ad_time / batch);
	}
	printf("gflops_train_step %.2f\n", total_flops / total_time * 1e-9);
	printf("roofline_seconds_per_sample %.4e\n", total_time / batch);
}

static void
run_predict(const int *layers, int nlayers)
{
	double		total_flops = 0,
				total_time = 0;
	int			l;

	for (l = 0; l + 1 < nlayers; l++)
	{
		char		name[32];
		Gemv		g;
		double		flops,
					t;

		snprintf(name, sizeof name, "pred%d", l + 1);
		g.name = name;
		g.m = layers[l + 1];
		g.n = layers[l];
		g.a = rand_matrix((size_t) g.m * g.n);
		g.x = rand_matrix(g.n);
		g.y = rand_matrix(g.m);
		flops = 2.0 * g.m * g.n;
		t = time_per_call(gemv_thunk, &g);
		printf("gemv %s %d %d %.0f %.4e %.2f\n", g.name, g.m, g.n, flops, t, flops / t * 1e-9);
		fflush(stdout);
		total_flops += flops;
		total_time += t;
		free(g.a);
		free(g.x);
		free(g.y);
	}
	printf("flops_per_sample_predict %.0f\n", total_flops);
	printf("roofline_predict_seconds_per_sample %.4e\n", total_time);
}

static void
usage(void)
{
	fprintf(stderr, "usage: sgemm_rate [train|predict|all] [--layers 784,200,10] [--batch 32] "
			"[--seconds 0.2] [--reps 5] [--adaptors C --ranks r1,r2,...]\n");
	exit(2);
}

/* "a,b,c" into out[] (at most MAX_LAYERS values, each >= min); returns the count */
static int
parse_list(char *s, int *out, long min)
{
	int			n = 0;

	while (*s)
	{
		char	   *end;
		long		v = strtol(s, &end, 10);

		if (end == s || v < min || v > 1000000 || n == MAX_LAYERS)
			usage();
		out[n++] = (int) v;
		if (*end && *end != ',')
			usage();
		s = (*end == ',') ? end + 1 : end;
	}
	return n;
}

int
main(int argc, char **argv)
{
	const char *mode = "all";
	int			layers[MAX_LAYERS] = {784, 200, 10};
	int			nlayers = 3;
	int			batch = 32;
	int			adaptors = 0;
	int			ranks[MAX_LAYERS] = {0};
	int			nranks = -1;	/* -1: no --ranks given */
	int			i;

	for (i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--layers") == 0 && i + 1 < argc)
		{
			nlayers = parse_list(argv[++i], layers, 1);
			if (nlayers < 2)
				usage();
		}
		else if (strcmp(argv[i], "--ranks") == 0 && i + 1 < argc)
			nranks = parse_list(argv[++i], ranks, 0);
		else if (strcmp(argv[i], "--adaptors") == 0 && i + 1 < argc)
			adaptors = atoi(argv[++i]);
		else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
			batch = atoi(argv[++i]);
		else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
			opt_seconds = atof(argv[++i]);
		else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
			opt_reps = atoi(argv[++i]);
		else if (strcmp(argv[i], "train") == 0 || strcmp(argv[i], "predict") == 0 ||
				 strcmp(argv[i], "all") == 0)
			mode = argv[i];
		else
			usage();
	}
	if (batch < 1 || opt_seconds <= 0 || opt_reps < 1 || adaptors < 0)
		usage();
	/* adaptors need one rank per layer */
	if (adaptors > 0 && nranks != nlayers - 1)
		usage();

	/* the roofline is per core: floral runs in one backend, one thread */
	openblas_set_num_threads(1);
	srand(1);
	printf("openblas %s\n", openblas_get_config());
	printf("corename %s\n", openblas_get_corename());
	printf("threads %d\n", openblas_get_num_threads());

	if (strcmp(mode, "train") == 0 || strcmp(mode, "all") == 0)
		run_train(layers, nlayers, batch, adaptors, ranks);
	if (strcmp(mode, "predict") == 0 || strcmp(mode, "all") == 0)
		run_predict(layers, nlayers);
	return 0;
}
