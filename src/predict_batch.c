/*
 * predict_batch.c
 *	  floral_predict_batch: personalised prediction over a source query.
 *
 * Per-row floral_predict does one matrix-vector product per layer, so it is
 * bound by memory bandwidth.  Scoring a whole table, the same work is a
 * GEMM per layer over a block of rows, several times cheaper per row.
 *
 * Rows of the source (key, tenant, features) are buffered, up to work_mem.
 * When the buffer is full, and at the end, its rows are grouped by tenant
 * (a counting sort over the buffer's own tenant directory), each tenant's
 * mixture is taken from the prediction cache once for the group, and the
 * layers run over blocks of BLOCK_ROWS rows with floral_forward_mixed.  Rows
 * of tenants that share the model's adaptor bank share blocks too: the
 * products do not depend on the tenant, only each row's bias and adaptor
 * weights do.  A tenant with private adaptors (Local Adaptor) gets blocks of
 * its own.  A tenant whose rows span several buffers is simply processed in
 * several groups.  Results go to the function's tuplestore, which spills to
 * a temporary file past work_mem by itself: memory does not grow with the
 * number of rows or tenants.
 *
 * The mixtures come from the same cache, and the outputs are turned into
 * predictions by the same helpers, as per-row floral_predict: results agree
 * with it to float rounding (GEMM and GEMV sum in different orders).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "cache.h"
#include "floral.h"
#include "nn.h"
#include "source.h"

PG_FUNCTION_INFO_V1(floral_predict_batch);

/* rows per GEMM: past a few hundred rows the products gain little */
#define BLOCK_ROWS 256

/* keys and tenant names are copied into blocks of this size */
#define ARENA_BLOCK 65536

/* a tenant of the current buffer */
typedef struct BatchTenant
{
	text	   *name;			/* a text datum, in the arena */
	uint64		hash;
	int32		next;			/* next tenant with the same hash bucket, or -1 */
	int32		nrows;
	int32		first;			/* its rows start at order[first] */
	bool		shared;			/* uses the model's adaptor bank */
	FloralMixture mix;			/* copied from the cache at the flush */
} BatchTenant;

typedef struct BatchHashEntry
{
	uint64		hash;
	int32		first;			/* index into tenants */
} BatchHashEntry;

typedef struct BatchState
{
	const char *model;
	FloralSpec	spec;			/* the model's layout, for the whole call */
	int			nfeatures;
	int			K;
	bool		with_proba;
	ReturnSetInfo *rsinfo;

	/* the buffer: rows in arrival order */
	Size		budget;			/* work_mem, in bytes */
	Size		row_bytes;		/* what a buffered row costs outside the arena */
	int			capacity;
	int			nrows;
	float	   *features;		/* capacity x nfeatures */
	text	  **keys;			/* NULL for a NULL key */
	int32	   *row_tenant;
	int32	   *order;			/* row numbers grouped by tenant */

	/* per buffer: tenants and copies of keys and names, reset at each flush */
	MemoryContext arena;
	char	   *arena_free;
	Size		arena_left;
	HTAB	   *hash;
	BatchTenant *tenants;
	int			ntenants;
	int			tenant_capacity;
	int32		last_tenant;	/* the previous row's, to skip the lookup */

	/* one block */
	FloralNet  *net;
	const FloralMixture *mix[BLOCK_ROWS];
	int32		block[BLOCK_ROWS];
	ArrayType  *proba;			/* K reals, refilled for every row */
} BatchState;

/* a MAXALIGNed copy of a varlena in the arena; no palloc per row */
static text *
arena_copy(BatchState *st, const text *t)
{
	Size		len = VARSIZE_ANY(t);
	Size		need = MAXALIGN(len);
	text	   *copy;

	if (st->arena_left < need)
	{
		Size		block = Max(need, ARENA_BLOCK);

		st->arena_free = MemoryContextAlloc(st->arena, block);
		st->arena_left = block;
	}
	copy = (text *) st->arena_free;
	memcpy(copy, t, len);
	st->arena_free += need;
	st->arena_left -= need;
	return copy;
}

static void
reset_buffer(BatchState *st)
{
	HASHCTL		ctl;

	MemoryContextReset(st->arena);
	st->arena_free = NULL;
	st->arena_left = 0;
	st->nrows = 0;
	st->ntenants = 0;
	st->tenant_capacity = 64;
	st->tenants = MemoryContextAlloc(st->arena, sizeof(BatchTenant) * st->tenant_capacity);
	st->last_tenant = -1;
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(BatchHashEntry);
	ctl.hcxt = st->arena;
	st->hash = hash_create("floral batch tenants", 64, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

static bool
same_name(const text *a, const char *name, int len)
{
	return VARSIZE_ANY_EXHDR(a) == len && memcmp(VARDATA_ANY(a), name, len) == 0;
}

/* the buffer's index of a tenant, added on first sight */
static int32
tenant_index(BatchState *st, const text *tenant)
{
	const char *name = VARDATA_ANY(tenant);
	int			len = VARSIZE_ANY_EXHDR(tenant);
	uint64		h;
	BatchHashEntry *entry;
	BatchTenant *t;
	bool		found;

	/* tables are often ordered or clustered by tenant */
	if (st->last_tenant >= 0 && same_name(st->tenants[st->last_tenant].name, name, len))
		return st->last_tenant;
	h = hash_bytes_extended((const unsigned char *) name, len, 0);
	entry = hash_search(st->hash, &h, HASH_ENTER, &found);
	if (found)
	{
		for (int32 i = entry->first; i >= 0; i = st->tenants[i].next)
			if (same_name(st->tenants[i].name, name, len))
				return st->last_tenant = i;
	}
	if (st->ntenants == st->tenant_capacity)
	{
		st->tenant_capacity *= 2;
		st->tenants = repalloc(st->tenants, sizeof(BatchTenant) * st->tenant_capacity);
	}
	t = &st->tenants[st->ntenants];
	memset(t, 0, sizeof(*t));
	t->name = arena_copy(st, tenant);
	t->hash = h;
	t->next = found ? entry->first : -1;
	entry->first = st->ntenants;
	return st->last_tenant = st->ntenants++;
}

/* emit the results of block rows (rows[0..B-1]) from the outputs out */
static void
emit_block(BatchState *st, const int32 *rows, int B, const float *out)
{
	Datum		values[4];
	bool		nulls[4] = {false, false, false, !st->with_proba};

	for (int i = 0; i < B; i++)
	{
		int32		row = rows[i];
		const float *o = out + (int64) i * st->K;

		nulls[0] = (st->keys[row] == NULL);
		values[0] = PointerGetDatum(st->keys[row]);
		values[1] = PointerGetDatum(st->tenants[st->row_tenant[row]].name);
		values[2] = Float4GetDatum(floral_output_prediction(&st->spec, o));
		if (st->with_proba)
		{
			/* the tuplestore copies the array: one serves every row */
			floral_output_proba(&st->spec, o, (float *) ARR_DATA_PTR(st->proba));
			values[3] = PointerGetDatum(st->proba);
		}
		else
			values[3] = (Datum) 0;
		tuplestore_putvalues(st->rsinfo->setResult, st->rsinfo->setDesc, values, nulls);
	}
}

/* run rows (n of them, in this order) through the model, BLOCK_ROWS at a time */
static void
run_rows(BatchState *st, const float *base, const int32 *rows, int n,
		 const FloralMixture *only)
{
	int			nf = st->nfeatures;

	for (int s = 0; s < n; s += BLOCK_ROWS)
	{
		int			B = Min(BLOCK_ROWS, n - s);
		const float *out;

		CHECK_FOR_INTERRUPTS();
		for (int i = 0; i < B; i++)
		{
			int32		row = rows[s + i];

			memcpy(st->net->X + (int64) i * nf, st->features + (int64) row * nf,
				   sizeof(float) * nf);
			st->mix[i] = only ? only : &st->tenants[st->row_tenant[row]].mix;
		}
		out = floral_forward_mixed(st->net, base, st->mix, B);
		emit_block(st, rows + s, B, out);
	}
}

/* the model as cached now, checked to be the one the call started with */
static FloralCachedModel *
current_model(BatchState *st)
{
	FloralCachedModel *m = floral_cache_get(st->model);
	const FloralSpec *spec = &m->spec;

	if (spec->task != st->spec.task || spec->nlayers != st->spec.nlayers ||
		spec->nadaptors != st->spec.nadaptors ||
		spec->adaptor_offset != st->spec.adaptor_offset ||
		memcmp(spec->layers, st->spec.layers, sizeof(FloralLayer) * spec->nlayers) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("model \"%s\" was re-created with another shape during the call",
						st->model)));
	return m;
}

/*
 * Predict every buffered row.  The model entry stays put during a flush:
 * looking tenants up may drop other tenants' entries to stay within
 * floral.cache_memory, never the model in use.  So each tenant's mixture is
 * copied (a few hundred bytes) before the next lookup, and a tenant with
 * private adaptors, whose bank belongs to its entry, is run right away.
 */
static void
flush(BatchState *st)
{
	FloralCachedModel *m;
	const float *shared;
	int32		off = 0;
	int32		n;
	MemoryContext old;

	if (st->nrows == 0)
		return;
	m = current_model(st);
	shared = m->params + m->spec.adaptor_offset;

	/* group the rows by tenant, in order of first appearance */
	for (int k = 0; k < st->ntenants; k++)
	{
		st->tenants[k].first = off;
		off += st->tenants[k].nrows;
		st->tenants[k].nrows = 0;
	}
	for (int32 r = 0; r < st->nrows; r++)
	{
		BatchTenant *t = &st->tenants[st->row_tenant[r]];

		st->order[t->first + t->nrows++] = r;
	}

	old = MemoryContextSwitchTo(st->arena);
	for (int k = 0; k < st->ntenants; k++)
	{
		BatchTenant *bt = &st->tenants[k];
		FloralCachedTenant *t;

		CHECK_FOR_INTERRUPTS();
		t = floral_cache_tenant(m, VARDATA_ANY(bt->name), VARSIZE_ANY_EXHDR(bt->name));
		bt->shared = (t->mix.bank == shared);
		if (bt->shared)
			floral_mixture_copy(&m->spec, &t->mix, &bt->mix);
		else
			run_rows(st, m->params, st->order + bt->first, bt->nrows, &t->mix);
	}
	MemoryContextSwitchTo(old);

	/* the tenants of the shared bank, in blocks that span tenants */
	n = 0;
	for (int k = 0; k < st->ntenants; k++)
	{
		BatchTenant *bt = &st->tenants[k];

		if (!bt->shared)
			continue;
		memmove(st->order + n, st->order + bt->first, sizeof(int32) * bt->nrows);
		n += bt->nrows;
	}
	run_rows(st, m->params, st->order, n, NULL);
	reset_buffer(st);
}

/* a source row: into the buffer, which is flushed first if it is full */
static void
buffer_row(void *arg, text *key, text *tenant, const float *features)
{
	BatchState *st = (BatchState *) arg;
	int32		row;
	int32		k;

	if (st->nrows == st->capacity ||
		st->nrows * st->row_bytes + MemoryContextMemAllocated(st->arena, false) > st->budget)
		flush(st);
	row = st->nrows++;
	k = tenant_index(st, tenant);
	st->tenants[k].nrows++;
	st->row_tenant[row] = k;
	st->keys[row] = key ? arena_copy(st, key) : NULL;
	memcpy(st->features + (int64) row * st->nfeatures, features,
		   sizeof(float) * st->nfeatures);
}

/*
 * floral_predict_batch(model, source, with_proba) returns setof (key,
 * tenant, prediction, proba): one row per source row, grouped by tenant.
 */
Datum
floral_predict_batch(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt;
	MemoryContext old;
	BatchState *st;
	FloralCachedModel *m;
	char	   *source;
	Size		fixed;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model and source must not be NULL")));
	InitMaterializedSRF(fcinfo, 0);
	cxt = AllocSetContextCreate(CurrentMemoryContext, "floral predict batch",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	st = palloc0(sizeof(BatchState));
	st->model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	source = text_to_cstring(PG_GETARG_TEXT_PP(1));
	st->with_proba = !PG_ARGISNULL(2) && PG_GETARG_BOOL(2);
	st->rsinfo = rsinfo;

	/* an unknown model fails before the source runs */
	m = floral_cache_get(st->model);
	MemoryContextSwitchTo(cxt);
	st->spec = m->spec;
	st->nfeatures = SPEC_INPUTS(&st->spec);
	st->K = SPEC_OUTPUTS(&st->spec);
	st->net = floral_net_create(&st->spec, BLOCK_ROWS);
	{
		Datum	   *zeros = palloc0(sizeof(Datum) * st->K);

		for (int k = 0; k < st->K; k++)
			zeros[k] = Float4GetDatum(0.0f);
		st->proba = construct_array(zeros, st->K, FLOAT4OID, sizeof(float4), true,
									TYPALIGN_INT);
		pfree(zeros);
	}

	/*
	 * The buffer takes work_mem: its rows (features, key pointer, tenant and
	 * place in the grouping) and, in the arena, the keys, the tenant names
	 * and their directory.  The tuplestore of results has work_mem of its
	 * own, as any other node of the query would.
	 */
	st->budget = (Size) work_mem * 1024;
	st->row_bytes = sizeof(float) * st->nfeatures + sizeof(text *) + 2 * sizeof(int32);
	fixed = ARENA_BLOCK + 64 * sizeof(BatchTenant);
	st->capacity = (int) Min((st->budget > fixed + st->row_bytes ?
							  (st->budget - fixed) / st->row_bytes : 1),
							 (Size) (MaxAllocSize / (sizeof(float) * st->nfeatures)));
	st->capacity = Max(st->capacity, 1);
	st->features = palloc(sizeof(float) * st->nfeatures * (Size) st->capacity);
	st->keys = palloc(sizeof(text *) * st->capacity);
	st->row_tenant = palloc(sizeof(int32) * st->capacity);
	st->order = palloc(sizeof(int32) * st->capacity);
	st->arena = AllocSetContextCreate(cxt, "floral batch buffer", ALLOCSET_DEFAULT_SIZES);
	reset_buffer(st);

	SPI_connect();
	floral_read_scoring_source(source, st->nfeatures, buffer_row, st);
	flush(st);
	SPI_finish();

	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	return (Datum) 0;
}
