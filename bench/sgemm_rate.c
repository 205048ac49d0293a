/*
 * sgemm_rate: single-thread OpenBLAS rates at the exact shapes of one MLP
 * training step (and one prediction), to give floral's training and
 * prediction speed a roofline to be compared against.
 *
 *   cc -O2 $(pkg-config --cflags openblas) sgemm_rate.c -o sgemm_rate $(pkg-config --libs openblas)
 *   ./sgemm_rate [train|predict|all] [--layers 784,200,10] [--batch 32] [--seconds 0.2] [--reps 5]
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
 * Each shape is timed as the best, over --reps repetitions, of a loop of calls
 * sized to last about --seconds; warm caches, as inside a training loop.
 * Output lines (whitespace separated, one fact per line):
 *   openblas <config string> / corename <name> / threads <n>
 *   shape <name> <M> <N> <K> <flops> <seconds_per_call> <GFLOP/s>
 *   gemv <name> <M> <N> <flops> <seconds_per_call> <GFLOP/s>
 *   flops_per_sample_train <f>   roofline_seconds_per_sample <s>
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
} Gemm;

static void
gemm_call(const Gemm *g, long calls)
{
	long		i;

	for (i = 0; i < calls; i++)
		cblas_sgemm(CblasRowMajor, g->ta, g->tb, g->m, g->n, g->k,
					1.0f, g->a, g->lda, g->b, g->ldb, 0.0f, g->c, g->ldc);
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

static void
run_train(const int *layers, int nlayers, int batch)
{
	double		total_flops = 0,
				total_time = 0;
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
		g[ng++] = (Gemm) {nfwd, CblasNoTrans, CblasTrans, batch, out, in, A, W, Z, in, in, out};
		g[ng++] = (Gemm) {ndw, CblasTrans, CblasNoTrans, out, in, batch, Z, A, dW, out, in, in};
		/* no input gradient needed for the first layer */
		if (l > 0)
			g[ng++] = (Gemm) {nda, CblasNoTrans, CblasNoTrans, batch, in, out, Z, W, dA, out, in, in};
		for (i = 0; i < ng; i++)
		{
			double		flops = 2.0 * g[i].m * g[i].n * g[i].k;
			double		t = time_per_call(gemm_thunk, &g[i]);

			printf("shape %s %d %d %d %.0f %.4e %.2f\n", g[i].name,
				   g[i].m, g[i].n, g[i].k, flops, t, flops / t * 1e-9);
			fflush(stdout);
			total_flops += flops;
			total_time += t;
		}
		free(A);
		free(W);
		free(Z);
		free(dW);
		free(dA);
	}
	printf("flops_per_sample_train %.0f\n", total_flops / batch);
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
			"[--seconds 0.2] [--reps 5]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	const char *mode = "all";
	int			layers[MAX_LAYERS] = {784, 200, 10};
	int			nlayers = 3;
	int			batch = 32;
	int			i;

	for (i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--layers") == 0 && i + 1 < argc)
		{
			char	   *s = argv[++i],
					   *end;

			nlayers = 0;
			while (*s)
			{
				long		v = strtol(s, &end, 10);

				if (end == s || v < 1 || nlayers == MAX_LAYERS)
					usage();
				layers[nlayers++] = (int) v;
				s = (*end == ',') ? end + 1 : end;
				if (*end && *end != ',')
					usage();
			}
			if (nlayers < 2)
				usage();
		}
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
	if (batch < 1 || opt_seconds <= 0 || opt_reps < 1)
		usage();

	/* the roofline is per core: floral runs in one backend, one thread */
	openblas_set_num_threads(1);
	srand(1);
	printf("openblas %s\n", openblas_get_config());
	printf("corename %s\n", openblas_get_corename());
	printf("threads %d\n", openblas_get_num_threads());

	if (strcmp(mode, "train") == 0 || strcmp(mode, "all") == 0)
		run_train(layers, nlayers, batch);
	if (strcmp(mode, "predict") == 0 || strcmp(mode, "all") == 0)
		run_predict(layers, nlayers);
	return 0;
}
