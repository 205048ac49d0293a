/*
 * source.c
 *	  Run a source query with the caller's privileges and keep its rows.
 *
 * The query runs through SPI as a subquery, with the caller's privileges,
 * as in a READ ONLY transaction (floral_run_read_only_begin) and as a
 * security-restricted operation, so it can read only what the caller may
 * read, cannot modify anything and cannot change its role.  Every value is
 * checked at this boundary: NULLs, feature lengths, non-finite values and
 * label ranges all end in an error naming the tenant at fault.  All of it is
 * checked as the rows arrive, except the values of features the table
 * stored compressed: those are checked when they are decompressed, as their
 * tenant's turn comes (floral_rows_gather, floral_rows_check), because
 * decompressing is most of the cost of reading, and parallel workers can
 * share that part, where the reader runs alone.
 */
#include "postgres.h"

#include <math.h>

#include "access/detoast.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "storage/dsm.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "common/hashfn.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "source.h"
#include "tensor.h"


static bool
is_integer_type(Oid t)
{
	return t == INT2OID || t == INT4OID || t == INT8OID;
}

static bool
is_number_type(Oid t)
{
	return is_integer_type(t) || t == FLOAT4OID || t == FLOAT8OID ||
		t == NUMERICOID;
}

/* the LIMIT 0 description of a source, checked to have natts columns */
static TupleDesc
describe_source(const char *source, int natts, const char *shape)
{
	StringInfoData q;
	TupleDesc	desc;
	int			ret;

	initStringInfo(&q);
	appendStringInfo(&q, "SELECT * FROM (%s) AS floral_source LIMIT 0", source);
	ret = SPI_execute(q.data, true, 0);
	if (ret != SPI_OK_SELECT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("source must be a query returning rows")));
	desc = CreateTupleDescCopy(SPI_tuptable->tupdesc);
	SPI_freetuptable(SPI_tuptable);
	pfree(q.data);
	if (desc->natts != natts)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("source must return %d columns %s, not %d",
						natts, shape, desc->natts)));
	return desc;
}

static Oid
column_type(TupleDesc desc, int i)
{
	return getBaseType(TupleDescAttr(desc, i)->atttypid);
}

/* tenants are named by text, or by anything that reads well as text */
static void
check_tenant_type(Oid tenant_type)
{
	if (!(tenant_type == TEXTOID || tenant_type == VARCHAROID ||
		  tenant_type == BPCHAROID || tenant_type == NAMEOID ||
		  tenant_type == UUIDOID || is_integer_type(tenant_type)))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("source's tenant column has type %s", format_type_be(tenant_type)),
				 errhint("Use text or an integer type for the tenant.")));
}

static void
check_features_type(Oid feature_type)
{
	if (!(feature_type == FLOAT4ARRAYOID || feature_type == FLOAT8ARRAYOID ||
		  feature_type == NUMERICARRAYOID || feature_type == INT4ARRAYOID ||
		  feature_type == INT8ARRAYOID || feature_type == INT2ARRAYOID))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("source's features column has type %s", format_type_be(feature_type)),
				 errhint("Use real[] for the features.")));
}

/*
 * Look at the source's columns and build the query that reads it, with the
 * casts that turn whatever the user wrote into text, real[] and a label.
 */
static char *
build_reader_query(const char *source, const FloralSpec *spec, bool *label_is_array)
{
	StringInfoData q;
	TupleDesc	desc;
	Oid			label_type;

	desc = describe_source(source, 3, "(tenant, features, label)");
	check_tenant_type(column_type(desc, 0));
	check_features_type(column_type(desc, 1));
	label_type = column_type(desc, 2);
	FreeTupleDesc(desc);

	*label_is_array = false;
	if (spec->task == FLORAL_CLASSIFICATION)
	{
		if (!is_number_type(label_type))
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("source's label column has type %s", format_type_be(label_type)),
					 errhint("A classification label is an integer from 0 to %d.",
							 SPEC_OUTPUTS(spec) - 1)));
	}
	else if (label_type == FLOAT4ARRAYOID || label_type == FLOAT8ARRAYOID ||
			 label_type == NUMERICARRAYOID || label_type == INT2ARRAYOID ||
			 label_type == INT4ARRAYOID || label_type == INT8ARRAYOID)
		*label_is_array = true;
	else if (!is_number_type(label_type))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("source's label column has type %s", format_type_be(label_type)),
				 errhint("A regression label is a number or real[].")));

	initStringInfo(&q);
	appendStringInfo(&q,
					 "SELECT floral_source.t::text, floral_source.f::real[], floral_source.y::%s "
					 "FROM (%s) AS floral_source(t, f, y)",
					 *label_is_array ? "real[]" : "float8", source);
	return q.data;
}

/*
 * Records are kept in chunks, never moved once written: at least this many
 * bytes, and few enough that shared rows (one segment per chunk) never take
 * more than FLORAL_ROWS_SEGMENTS of the server's few hundred segments.
 */
#define ROWS_CHUNK_BYTES (8 * 1024 * 1024)
#define FLORAL_ROWS_SEGMENTS 64

/* a record number at or above this is an offset in the temporary file */
#define FLORAL_REC_IN_FILE (INT64CONST(1) << 62)

/*
 * Two kinds of record, told apart by bit 0 of the record number (records
 * start at 4-byte offsets, so the bit is free):
 *	 plain		the label, then nfeatures floats: features that came
 *				uncompressed, checked in full as they were read
 *	 compressed	the label, then the features' compressed varlena (padded to
 *				4 bytes): its length and NULLs were checked as it was read,
 *				its values are checked when it is decompressed
 */
#define REC_COMPRESSED INT64CONST(1)
#define REC_LABEL_BYTES(rows) (sizeof(float) * (rows)->ylen)
#define REC_PLAIN_SIZE(rows) (sizeof(float) * ((rows)->ylen + (rows)->nfeatures))
#define REC_COMPRESSED_SIZE(rows, vlen) (REC_LABEL_BYTES(rows) + INTALIGN(vlen))

/* a chunk in a shared segment of its own, or NULL if the server has none to spare */
static char *
shared_chunk(FloralRows *rows, int c)
{
	dsm_segment *seg = dsm_create(rows->chunk_bytes, DSM_CREATE_NULL_IF_MAXSEGMENTS);

	rows->segs[c] = seg;
	return seg ? (char *) dsm_segment_address(seg) : NULL;
}

/*
 * Shareable rows start in private memory, like any others, and move to
 * shared segments only once they reach share_after bytes (the size from
 * which a call may go parallel), so that a small call never uses shared
 * memory.  Moving copies at most those first bytes.  Without a segment to
 * spare, the rows stay private and the call runs serially.
 */
static void
share_rows(FloralRows *rows)
{
	rows->shareable = false;
	for (int c = 0; c < rows->nchunks; c++)
	{
		char	   *dst = shared_chunk(rows, c);

		if (dst == NULL)
			return;
		memcpy(dst, rows->chunks[c], rows->chunk_used[c]);
		pfree(rows->chunks[c]);
		rows->chunks[c] = dst;
	}
	rows->shared = true;
}

static void
new_chunk(FloralRows *rows)
{
	char	   *chunk = NULL;

	if (rows->nchunks == rows->max_chunks)
	{
		rows->max_chunks = Max(rows->max_chunks * 2, 16);
		rows->chunks = rows->chunks ?
			repalloc(rows->chunks, sizeof(char *) * rows->max_chunks) :
			palloc(sizeof(char *) * rows->max_chunks);
		rows->chunk_used = rows->chunk_used ?
			repalloc(rows->chunk_used, sizeof(int64) * rows->max_chunks) :
			palloc(sizeof(int64) * rows->max_chunks);
		rows->segs = rows->segs ?
			repalloc(rows->segs, sizeof(dsm_segment *) * rows->max_chunks) :
			palloc(sizeof(dsm_segment *) * rows->max_chunks);
	}
	rows->segs[rows->nchunks] = NULL;
	if (rows->shared)
	{
		chunk = shared_chunk(rows, rows->nchunks);
		if (chunk == NULL)
			rows->shared = false;
	}
	rows->chunks[rows->nchunks] = chunk ? chunk :
		palloc_extended(rows->chunk_bytes, MCXT_ALLOC_HUGE);
	rows->chunk_used[rows->nchunks] = 0;
	rows->nchunks++;
}

/*
 * Store a row: its label and either its checked features (plain) or their
 * compressed varlena, byte for byte.  Records stay in memory while they fit
 * in mem_chunks chunks; the ones beyond go to the temporary file.  Returns
 * the record's number.
 */
static int64
rows_append(FloralRows *rows, const float *label, const float *features,
			const struct varlena *compressed)
{
	int32		vlen = compressed ? VARSIZE(compressed) : 0;
	int64		size = compressed ? REC_COMPRESSED_SIZE(rows, vlen) : REC_PLAIN_SIZE(rows);
	int64		kind = compressed ? REC_COMPRESSED : 0;
	char	   *rec;
	int64		recno;

	Assert(size <= rows->max_record);
	if (rows->file == NULL &&
		(rows->nchunks == 0 ||
		 rows->chunk_used[rows->nchunks - 1] + size > rows->chunk_bytes))
	{
		if (rows->nchunks < rows->mem_chunks)
			new_chunk(rows);
		else
		{
			rows->file = BufFileCreateTemp(false);
			/* the file is the leader's alone */
			rows->shared = rows->shareable = false;
		}
	}
	rows->nrows++;
	rows->stored_bytes += size;
	if (rows->file)
	{
		static const char pad[ALIGNOF_INT] = {0};

		recno = (FLORAL_REC_IN_FILE + rows->file_bytes) | kind;
		BufFileWrite(rows->file, (void *) label, REC_LABEL_BYTES(rows));
		if (compressed)
		{
			BufFileWrite(rows->file, (void *) compressed, vlen);
			if (INTALIGN(vlen) > vlen)
				BufFileWrite(rows->file, (void *) pad, INTALIGN(vlen) - vlen);
		}
		else
			BufFileWrite(rows->file, (void *) features, sizeof(float) * rows->nfeatures);
		rows->file_bytes += size;
		return recno;
	}

	recno = ((int64) (rows->nchunks - 1) * rows->chunk_bytes +
			 rows->chunk_used[rows->nchunks - 1]) | kind;
	rec = rows->chunks[rows->nchunks - 1] + rows->chunk_used[rows->nchunks - 1];
	memcpy(rec, label, REC_LABEL_BYTES(rows));
	if (compressed)
		memcpy(rec + REC_LABEL_BYTES(rows), compressed, vlen);
	else
		memcpy(rec + REC_LABEL_BYTES(rows), features, sizeof(float) * rows->nfeatures);
	rows->chunk_used[rows->nchunks - 1] += size;
	if (rows->shareable && rows->stored_bytes >= rows->share_after)
		share_rows(rows);
	return recno;
}

static int	tenant_cmp(const void *a, const void *b);

/* the directory's lookup entry: a 64-bit hash of the name */
typedef struct TenantHashEntry
{
	uint64		hash;
	int32		first;			/* index into rows->dir */
} TenantHashEntry;

#define NAMES_BLOCK 65536

/* a copy of the name in the arena: names are small and never freed alone */
static char *
store_name(FloralRows *rows, const char *name, int len)
{
	char	   *p;

	if (rows->names_free < (Size) len + 1)
	{
		rows->names = palloc(NAMES_BLOCK);
		rows->names_free = NAMES_BLOCK;
	}
	p = rows->names;
	memcpy(p, name, len);
	p[len] = '\0';
	rows->names += len + 1;
	rows->names_free -= len + 1;
	return p;
}

/* the index of a tenant in the directory, added on first sight */
static int32
tenant_index(FloralRows *rows, const char *name, int len)
{
	uint64		h;
	TenantHashEntry *entry;
	FloralTenantRows *t;
	bool		found;

	if (len > FLORAL_MAX_TENANT_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("tenant name is longer than %d bytes", FLORAL_MAX_TENANT_LEN)));
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenant name must not be empty")));
	h = hash_bytes_extended((const unsigned char *) name, len, 0);
	entry = hash_search(rows->hash, &h, HASH_ENTER, &found);
	if (found)
	{
		for (int32 i = entry->first; i >= 0; i = rows->dir[i].next)
			if (strncmp(rows->dir[i].name, name, len) == 0 && rows->dir[i].name[len] == '\0')
				return i;
	}
	if (rows->ntenants == rows->dir_capacity)
	{
		if (rows->ntenants >= PG_INT32_MAX / 2)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("a source may have at most %d tenants", PG_INT32_MAX / 2)));
		rows->dir_capacity = Max(rows->dir_capacity * 2, 64);
		rows->dir = rows->dir ?
			repalloc_huge(rows->dir, sizeof(FloralTenantRows) * rows->dir_capacity) :
			palloc(sizeof(FloralTenantRows) * rows->dir_capacity);
	}
	t = &rows->dir[rows->ntenants];
	t->name = store_name(rows, name, len);
	t->nrows = 0;
	t->rows = NULL;
	t->compressed = false;
	t->next = found ? entry->first : -1;
	entry->first = rows->ntenants;
	return rows->ntenants++;
}

/*
 * Once every row is read: one array of record numbers grouped by tenant (a
 * counting sort over the rows' tenant indexes), and the tenants sorted by
 * name, so that results and their listing are repeatable.
 */
static void
finish_directory(FloralRows *rows)
{
	int64		off = 0;

	rows->recnos = palloc_extended(sizeof(int64) * Max(rows->nrows, 1), MCXT_ALLOC_HUGE);
	for (int i = 0; i < rows->ntenants; i++)
	{
		rows->dir[i].rows = rows->recnos + off;
		off += rows->dir[i].nrows;
		rows->dir[i].nrows = 0;
	}
	for (int64 r = 0; r < rows->nrows; r++)
	{
		FloralTenantRows *t = &rows->dir[rows->row_tenant[r]];

		t->rows[t->nrows++] = rows->row_offset[r];
		t->compressed |= (rows->row_offset[r] & REC_COMPRESSED) != 0;
	}
	pfree(rows->row_tenant);
	rows->row_tenant = NULL;
	pfree(rows->row_offset);
	rows->row_offset = NULL;
	hash_destroy(rows->hash);
	rows->hash = NULL;

	rows->tenants = palloc_extended(sizeof(FloralTenantRows *) * rows->ntenants, MCXT_ALLOC_HUGE);
	for (int i = 0; i < rows->ntenants; i++)
		rows->tenants[i] = &rows->dir[i];
	qsort(rows->tenants, rows->ntenants, sizeof(FloralTenantRows *), tenant_cmp);
}

static int
tenant_cmp(const void *a, const void *b)
{
	return strcmp((*(FloralTenantRows *const *) a)->name,
				  (*(FloralTenantRows *const *) b)->name);
}

/*
 * Rows reach floral through a DestReceiver, so the executor hands each
 * tuple straight to us: no SPI tuple table, no copy of the features.
 */
typedef struct SourceReceiver
{
	DestReceiver pub;
	FloralRows *rows;
	const FloralSpec *spec;
	bool		label_is_array;
	MemoryContext target;		/* where the rows live */
	MemoryContext rowcxt;		/* detoasted values, reset often */
	float	   *label;
	uint64		seen;
} SourceReceiver;

static void
source_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
}

static void
source_shutdown(DestReceiver *self)
{
}

static void
source_destroy(DestReceiver *self)
{
}

static void
read_label(SourceReceiver *r, Datum d, const char *tenant)
{
	int			K = SPEC_OUTPUTS(r->spec);
	float	   *label = r->label;

	if (!r->label_is_array)
	{
		double		y = DatumGetFloat8(d);

		if (!isfinite(y))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("label of tenant \"%s\" is not finite", tenant)));
		if (r->spec->task == FLORAL_CLASSIFICATION &&
			(y != floor(y) || y < 0 || y >= K))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("label %g of tenant \"%s\" is not a class of this model",
							y, tenant),
					 errdetail("Labels are integers from 0 to %d.", K - 1)));
		if (r->spec->task == FLORAL_REGRESSION && K != 1)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("label of tenant \"%s\" has 1 value, the model has %d outputs",
							tenant, K),
					 errhint("Give the label as real[].")));
		label[0] = (float) y;
		if (!isfinite(label[0]))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("label of tenant \"%s\" is out of range for type real",
							tenant)));
	}
	else
	{
		ArrayType  *ya = DatumGetArrayTypeP(d);

		if (ARR_NDIM(ya) != 1 || ARR_DIMS(ya)[0] != K)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("label of tenant \"%s\" has the wrong length, the model has %d outputs",
							tenant, K)));
		if (ARR_HASNULL(ya) && array_contains_nulls(ya))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("label of tenant \"%s\" contains a NULL", tenant)));
		memcpy(label, ARR_DATA_PTR(ya), sizeof(float) * K);
		for (int k = 0; k < K; k++)
			if (!isfinite(label[k]))
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("label of tenant \"%s\" is not finite", tenant)));
	}
}

/*
 * A row's features, checked: nfeatures values, none NULL.  The tenant
 * (len bytes, not terminated) names the row in the messages.
 */
static const float *
check_features_shape(ArrayType *features, int nfeatures, const char *tenant, int len)
{
	if (ARR_NDIM(features) != 1 || ARR_DIMS(features)[0] != nfeatures)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("features of tenant \"%.*s\" have %d values, the model expects %d",
						len, tenant,
						ARR_NDIM(features) == 0 ? 0 :
						ArrayGetNItems(ARR_NDIM(features), ARR_DIMS(features)),
						nfeatures)));
	if (ARR_HASNULL(features) && array_contains_nulls(features))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("features of tenant \"%.*s\" contain a NULL", len, tenant)));
	return (const float *) ARR_DATA_PTR(features);
}

/* every feature finite (one vectorised pass; the loop only finds which) */
static void
check_features_finite(const float *fv, int nfeatures, const char *tenant, int len)
{
	for (int k = 0; !tensor_all_finite(fv, nfeatures) && k < nfeatures; k++)
		if (!isfinite(fv[k]))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("features of tenant \"%.*s\" contain a non-finite value",
							len, tenant),
					 errdetail("Feature %d is %g.", k + 1, fv[k])));
}

/*
 * A row's features, checked as far as the reader can cheaply: in full when
 * they came uncompressed (*fv points at their values), else their length
 * and NULLs, from the first bytes only, and *compressed is the value to
 * store (TOAST pointers are fetched here, in the reader, which holds the
 * snapshot; decompressing and checking the values is left to whoever uses
 * the tenant, as decompressing is most of the cost of reading).
 */
static void
check_stored_features(FloralRows *rows, Datum d, const char *tenant,
					  const float **fv, struct varlena **compressed, void **copy)
{
	struct varlena *v = (struct varlena *) DatumGetPointer(d);
	int			len = strlen(tenant);
	ArrayType  *plain;

	*copy = NULL;
	if (VARATT_IS_EXTERNAL(v))
		*copy = v = detoast_external_attr(v);
	if (VARATT_IS_COMPRESSED(v))
	{
		/* the header, all its dimensions and a NULL bitmap for nfeatures */
		int32		head = Max(ARR_OVERHEAD_WITHNULLS(1, rows->nfeatures),
							   ARR_OVERHEAD_NONULLS(MAXDIM)) - VARHDRSZ;
		ArrayType  *a = (ArrayType *) detoast_attr_slice(v, 0, head);

		check_features_shape(a, rows->nfeatures, tenant, len);
		pfree(a);
		*fv = NULL;
		*compressed = v;
		return;
	}
	plain = DatumGetArrayTypeP(PointerGetDatum(v));
	if ((void *) plain != (void *) v)
	{
		if (*copy)
			pfree(*copy);
		*copy = plain;
	}
	*fv = check_features_shape(plain, rows->nfeatures, tenant, len);
	check_features_finite(*fv, rows->nfeatures, tenant, len);
	*compressed = NULL;
}

static bool
source_receive(TupleTableSlot *slot, DestReceiver *self)
{
	SourceReceiver *r = (SourceReceiver *) self;
	FloralRows *rows = r->rows;
	MemoryContext oldcxt;
	text	   *tenant_text;
	FloralTenantRows *tenant;
	int32		tenant_no;
	const float *fv;
	struct varlena *compressed;
	void	   *copy;
	int64		row;

	/*
	 * Detoasted copies are freed row by row so that their memory is reused
	 * at once: handing it back in bulk costs a page fault per 4 kB when the
	 * next rows allocate it again.  The occasional reset catches the rest.
	 */
	if ((++r->seen & 4095) == 0)
	{
		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(r->rowcxt);
	}
	slot_getallattrs(slot);
	oldcxt = MemoryContextSwitchTo(r->rowcxt);

	if (slot->tts_isnull[0])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("source returned a NULL tenant")));
	tenant_text = DatumGetTextPP(slot->tts_values[0]);
	MemoryContextSwitchTo(r->target);
	tenant_no = tenant_index(rows, VARDATA_ANY(tenant_text),
							 VARSIZE_ANY_EXHDR(tenant_text));
	tenant = &rows->dir[tenant_no];
	MemoryContextSwitchTo(r->rowcxt);

	if (slot->tts_isnull[1])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("source returned NULL features for tenant \"%s\"",
						tenant->name)));
	check_stored_features(rows, slot->tts_values[1], tenant->name, &fv, &compressed, &copy);

	if (slot->tts_isnull[2])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("source returned a NULL label for tenant \"%s\"",
						tenant->name)));
	read_label(r, slot->tts_values[2], tenant->name);

	MemoryContextSwitchTo(r->target);
	if (rows->nrows >= rows->row_capacity)
	{
		rows->row_capacity = Max(rows->row_capacity * 2, 1024);
		rows->row_tenant = rows->row_tenant ?
			repalloc_huge(rows->row_tenant, sizeof(int32) * rows->row_capacity) :
			palloc_extended(sizeof(int32) * rows->row_capacity, MCXT_ALLOC_HUGE);
		rows->row_offset = rows->row_offset ?
			repalloc_huge(rows->row_offset, sizeof(int64) * rows->row_capacity) :
			palloc_extended(sizeof(int64) * rows->row_capacity, MCXT_ALLOC_HUGE);
	}
	row = rows->nrows;			/* rows_append counts the row */
	rows->row_tenant[row] = tenant_no;
	rows->row_offset[row] = rows_append(rows, r->label, fv, compressed);
	if (copy)
		pfree(copy);
	tenant->nrows++;
	MemoryContextSwitchTo(oldcxt);
	return true;
}

/*
 * A source query runs as if the transaction were READ ONLY: SPI's read-only
 * mode alone refuses only a top-level statement that writes, while a
 * function the query calls could still write (an INSERT in a VOLATILE
 * PL/pgSQL function, nextval(), ...).  With transaction_read_only in force
 * the executor and every utility command refuse those with 25006, exactly
 * as in a READ ONLY transaction (writes to temporary tables stay allowed,
 * as there).  The setting cannot be turned off again through the GUC once
 * the transaction has run a query, so the variable itself is saved and
 * restored, also on error.
 */
static bool saved_read_only;
static int	read_only_depth = 0;

static void
floral_run_read_only_begin(void)
{
	if (read_only_depth++ == 0)
		saved_read_only = XactReadOnly;
	XactReadOnly = true;
}

static void
floral_run_read_only_end(void)
{
	if (--read_only_depth == 0)
		XactReadOnly = saved_read_only;
}

/*
 * Run a source: the query build() makes of it (which may look at the
 * source's columns), its rows to dest.  Both run as in a READ ONLY
 * transaction, with the caller's privileges.
 */
static void
run_source(const char *source, char *(*build) (const char *source, void *arg),
		   void *arg, DestReceiver *dest)
{
	SPIExecuteOptions options;
	char	   *query;
	int			ret;
	Oid			save_userid;
	int			save_sec_context;

	memset(&options, 0, sizeof(options));
	options.read_only = true;
	options.dest = dest;

	/*
	 * As a security-restricted operation (as REFRESH MATERIALIZED VIEW runs
	 * its query), the role the query starts with is the role it runs as.  A
	 * branch step runs the source that the role which joined stored, under
	 * SET ROLE to that role; without this a function the source calls could
	 * SET ROLE NONE (or set_config('role', ...)) back to the session's own
	 * user, a superuser running the step, and act as it.
	 */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	floral_run_read_only_begin();
	SetUserIdAndSecContext(save_userid, save_sec_context | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		query = build(source, arg);
		ret = SPI_execute_extended(query, &options);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
		floral_run_read_only_end();
	}
	PG_END_TRY();
	/* with a receiver of ours and DestNone, SPI reports SPI_OK_UTILITY */
	if (ret != SPI_OK_SELECT && ret != SPI_OK_UTILITY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("source must be a query returning rows")));
}

static char *
build_training_query(const char *source, void *arg)
{
	SourceReceiver *r = (SourceReceiver *) arg;

	return build_reader_query(source, r->spec, &r->label_is_array);
}

/*
 * Read the source.  Must be called inside SPI_connect; the rows live in the
 * memory context that is current at the time of the call.
 */
FloralRows *
floral_read_source(const char *source, const FloralSpec *spec, double share_after)
{
	MemoryContext target = CurrentMemoryContext;
	FloralRows *rows;
	HASHCTL		ctl;
	SourceReceiver receiver;
	instr_time	start,
				elapsed;

	INSTR_TIME_SET_CURRENT(start);

	rows = palloc0(sizeof(FloralRows));
	rows->nfeatures = SPEC_INPUTS(spec);
	rows->ylen = (spec->task == FLORAL_CLASSIFICATION) ? 1 : SPEC_OUTPUTS(spec);
	rows->recfloats = rows->nfeatures + rows->ylen;
	rows->cxt = target;
	/* a valid row's features: one dimension, nfeatures values, maybe a NULL bitmap */
	rows->max_record = Max(REC_PLAIN_SIZE(rows),
						   REC_COMPRESSED_SIZE(rows, ARR_OVERHEAD_WITHNULLS(1, rows->nfeatures) +
											   sizeof(float) * (int64) rows->nfeatures));
	rows->recbuf = palloc(rows->max_record);

	/*
	 * Like an index build, training holds its working set in up to
	 * maintenance_work_mem and spills the rest to a temporary file.
	 */
	rows->chunk_bytes = Max(Min(Max((int64) ROWS_CHUNK_BYTES,
									(int64) maintenance_work_mem * 1024 / FLORAL_ROWS_SEGMENTS),
								(int64) maintenance_work_mem * 1024),
							rows->max_record);
	rows->mem_chunks = Max((int64) maintenance_work_mem * 1024 / rows->chunk_bytes, 1);
	rows->shareable = (share_after >= 0);
	rows->share_after = share_after;

	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(TenantHashEntry);
	ctl.hcxt = target;
	rows->hash = hash_create("floral source tenants", 256, &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	memset(&receiver, 0, sizeof(receiver));
	receiver.pub.receiveSlot = source_receive;
	receiver.pub.rStartup = source_startup;
	receiver.pub.rShutdown = source_shutdown;
	receiver.pub.rDestroy = source_destroy;
	receiver.pub.mydest = DestNone;
	receiver.rows = rows;
	receiver.target = target;
	receiver.rowcxt = AllocSetContextCreate(target, "floral source row",
											ALLOCSET_DEFAULT_SIZES);
	receiver.label = palloc(sizeof(float) * rows->ylen);

	receiver.spec = spec;
	run_source(source, build_training_query, &receiver, &receiver.pub);
	MemoryContextSwitchTo(target);
	MemoryContextDelete(receiver.rowcxt);

	if (rows->ntenants == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("source returned no rows")));

	finish_directory(rows);
	floral_rows_set_participants(rows, 1);

	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);
	rows->read_seconds = INSTR_TIME_GET_DOUBLE(elapsed);
	return rows;
}

/* release the temporary file, if the rows spilled to one, and the segments */
void
floral_rows_free(FloralRows *rows)
{
	if (rows->file)
	{
		BufFileClose(rows->file);
		rows->file = NULL;
	}
	floral_rows_detach(rows);
}

void
floral_rows_detach(FloralRows *rows)
{
	for (int c = 0; c < rows->nchunks; c++)
		if (rows->segs && rows->segs[c])
		{
			dsm_detach(rows->segs[c]);
			rows->segs[c] = NULL;
			rows->chunks[c] = NULL;
		}
}

/* a stored record, in memory or read from the file into recbuf */
static const char *
rows_record(FloralRows *rows, int64 recno)
{
	int64		at = recno & ~REC_COMPRESSED;
	size_t		first;
	size_t		size;

	if (at < FLORAL_REC_IN_FILE)
		return rows->chunks[at / rows->chunk_bytes] + at % rows->chunk_bytes;

	/* a compressed record's size is in its varlena header, after the label */
	first = (recno & REC_COMPRESSED) ? REC_LABEL_BYTES(rows) + VARHDRSZ : REC_PLAIN_SIZE(rows);
	if (BufFileSeek(rows->file, 0, (off_t) (at - FLORAL_REC_IN_FILE), SEEK_SET) != 0 ||
		BufFileRead(rows->file, rows->recbuf, first) != first)
		goto fail;
	if (recno & REC_COMPRESSED)
	{
		size = REC_COMPRESSED_SIZE(rows, VARSIZE(rows->recbuf + REC_LABEL_BYTES(rows)));
		if (size > rows->max_record ||
			BufFileRead(rows->file, rows->recbuf + first, size - first) != size - first)
			goto fail;
	}
	return rows->recbuf;

fail:
	ereport(ERROR,
			(errcode_for_file_access(),
			 errmsg("could not read training rows from temporary file")));
	return NULL;				/* keep compiler quiet */
}

/*
 * Decode one record: its label into y, its features into x, decompressed
 * and checked if they were stored compressed.  The decompressed copy is
 * freed at once, so that a tenant's rows reuse one piece of memory.
 */
static void
decode_record(FloralRows *rows, int64 recno, const char *tenant, float *x, float *y)
{
	const char *rec = rows_record(rows, recno);
	struct varlena *v;
	ArrayType  *a;
	const float *fv;
	int			len;

	memcpy(y, rec, REC_LABEL_BYTES(rows));
	if (!(recno & REC_COMPRESSED))
	{
		memcpy(x, rec + REC_LABEL_BYTES(rows), sizeof(float) * rows->nfeatures);
		return;
	}
	v = (struct varlena *) (rec + REC_LABEL_BYTES(rows));
	Assert(VARATT_IS_COMPRESSED(v));
	a = (ArrayType *) detoast_attr(v);
	len = strlen(tenant);
	fv = check_features_shape(a, rows->nfeatures, tenant, len);
	check_features_finite(fv, rows->nfeatures, tenant, len);
	memcpy(x, fv, sizeof(float) * rows->nfeatures);
	pfree(a);
}

/*
 * Decode every row of a tenant, in order, into records of recfloats floats
 * from dst on, stride records apart (0: each over the last, to check them).
 */
static void
decode_rows(FloralRows *rows, const FloralTenantRows *t, float *dst, int stride)
{
	for (int64 i = 0; i < t->nrows; i++)
	{
		float	   *x = dst + i * stride * rows->recfloats;

		if ((i & 255) == 0)
			CHECK_FOR_INTERRUPTS();
		decode_record(rows, t->rows[i], t->name, x, x + rows->nfeatures);
	}
}

/*
 * Decode all of a tenant's rows into rows->decoded, once, if it has
 * compressed ones and they fit in the call's budget for it; false if not
 * (gather then decodes, or copies, batch by batch).
 */
static bool
decode_tenant(FloralRows *rows, const FloralTenantRows *t)
{
	int			rf = rows->recfloats;

	if (rows->decoded_tenant == t)
		return true;
	if (!t->compressed || (double) sizeof(float) * rf * t->nrows > rows->decode_budget)
		return false;
	rows->decoded_tenant = NULL;
	if (t->nrows > rows->decoded_capacity)
	{
		if (rows->decoded)
			pfree(rows->decoded);
		rows->decoded = MemoryContextAllocHuge(rows->cxt, sizeof(float) * rf * t->nrows);
		rows->decoded_capacity = t->nrows;
	}
	decode_rows(rows, t, rows->decoded, 1);
	rows->decoded_tenant = t;
	return true;
}

void
floral_rows_set_participants(FloralRows *rows, int participants)
{
	double		in_memory = (double) rows->nchunks * rows->chunk_bytes;

	rows->decode_budget = Max((double) work_mem * 1024,
							  ((double) maintenance_work_mem * 1024 - in_memory) /
							  Max(participants, 1));
}

void
floral_rows_check(FloralRows *rows, const FloralTenantRows *tenant)
{
	float	   *x;

	if (!tenant->compressed || decode_tenant(rows, tenant))
		return;
	x = palloc(sizeof(float) * rows->recfloats);
	decode_rows(rows, tenant, x, 0);
	pfree(x);
}

void
floral_rows_gather(FloralRows *rows, const FloralTenantRows *tenant,
				   const int32 *pos, int64 start, int n, float *X, float *Y)
{
	int			nf = rows->nfeatures;
	int			ny = rows->ylen;
	bool		whole = decode_tenant(rows, tenant);

	for (int i = 0; i < n; i++)
	{
		int64		p = pos ? pos[i] : start + i;

		Assert(p >= 0 && p < tenant->nrows);
		if (whole)
		{
			const float *rec = rows->decoded + p * rows->recfloats;

			memcpy(X + (int64) i * nf, rec, sizeof(float) * nf);
			memcpy(Y + (int64) i * ny, rec + nf, sizeof(float) * ny);
		}
		else
			decode_record(rows, tenant->rows[p], tenant->name,
						  X + (int64) i * nf, Y + (int64) i * ny);
	}
}

/* ---------- the rows in shared memory, for parallel workers ---------- */

/*
 * The records are already in shared segments; what a worker needs besides
 * is one block: this header, the segments' handles, the record numbers
 * grouped by tenant, the tenants in name order and their names.
 */
typedef struct SharedRows
{
	int			nfeatures;
	int			ylen;
	int			recfloats;
	int			ntenants;
	int			nchunks;
	int64		nrows;
	int64		chunk_bytes;
	double		decode_budget;
	Size		handles;		/* offsets from the start of the block */
	Size		recnos;
	Size		tenants;
	Size		names;
} SharedRows;

typedef struct SharedTenant
{
	int64		nrows;
	bool		compressed;
	int64		first;			/* index of its first record number */
	Size		name;			/* offset in the names */
} SharedTenant;

static void
shared_rows_layout(const FloralRows *rows, SharedRows *layout, Size *total)
{
	Size		names = 0;

	for (int i = 0; i < rows->ntenants; i++)
		names += strlen(rows->tenants[i]->name) + 1;
	layout->nfeatures = rows->nfeatures;
	layout->ylen = rows->ylen;
	layout->recfloats = rows->recfloats;
	layout->ntenants = rows->ntenants;
	layout->nchunks = rows->nchunks;
	layout->nrows = rows->nrows;
	layout->chunk_bytes = rows->chunk_bytes;
	layout->decode_budget = rows->decode_budget;
	layout->handles = MAXALIGN(sizeof(SharedRows));
	layout->recnos = layout->handles + MAXALIGN(sizeof(dsm_handle) * rows->nchunks);
	layout->tenants = layout->recnos + MAXALIGN(sizeof(int64) * rows->nrows);
	layout->names = layout->tenants + MAXALIGN(sizeof(SharedTenant) * rows->ntenants);
	*total = layout->names + names;
}

Size
floral_rows_shared_size(const FloralRows *rows)
{
	SharedRows	layout;
	Size		total;

	shared_rows_layout(rows, &layout, &total);
	return total;
}

/* describe shareable rows in space (floral_rows_shared_size bytes) */
void
floral_rows_share(const FloralRows *rows, void *space)
{
	char	   *base = space;
	SharedRows *layout = space;
	Size		total;
	dsm_handle *handles;
	SharedTenant *tenants;
	Size		name_off = 0;

	Assert(rows->shared && rows->file == NULL);
	shared_rows_layout(rows, layout, &total);
	handles = (dsm_handle *) (base + layout->handles);
	for (int c = 0; c < rows->nchunks; c++)
		handles[c] = dsm_segment_handle(rows->segs[c]);
	memcpy(base + layout->recnos, rows->recnos, sizeof(int64) * rows->nrows);
	tenants = (SharedTenant *) (base + layout->tenants);
	for (int i = 0; i < rows->ntenants; i++)
	{
		const FloralTenantRows *t = rows->tenants[i];
		Size		len = strlen(t->name) + 1;

		tenants[i].nrows = t->nrows;
		tenants[i].compressed = t->compressed;
		tenants[i].first = t->rows - rows->recnos;
		tenants[i].name = name_off;
		memcpy(base + layout->names + name_off, t->name, len);
		name_off += len;
	}
}

/* a worker's view of rows shared by floral_rows_share (floral_rows_detach ends it) */
FloralRows *
floral_rows_attach(void *space)
{
	char	   *base = space;
	SharedRows *layout = space;
	dsm_handle *handles = (dsm_handle *) (base + layout->handles);
	SharedTenant *tenants = (SharedTenant *) (base + layout->tenants);
	int64	   *recnos = (int64 *) (base + layout->recnos);
	FloralRows *rows = palloc0(sizeof(FloralRows));

	rows->nfeatures = layout->nfeatures;
	rows->ylen = layout->ylen;
	rows->recfloats = layout->recfloats;
	rows->nrows = layout->nrows;
	rows->nchunks = rows->max_chunks = layout->nchunks;
	rows->chunk_bytes = layout->chunk_bytes;
	rows->decode_budget = layout->decode_budget;
	rows->mem_chunks = rows->nchunks;
	rows->cxt = CurrentMemoryContext;
	rows->chunks = palloc(sizeof(char *) * Max(rows->nchunks, 1));
	rows->segs = palloc(sizeof(dsm_segment *) * Max(rows->nchunks, 1));
	for (int c = 0; c < rows->nchunks; c++)
	{
		rows->segs[c] = dsm_attach(handles[c]);
		if (rows->segs[c] == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("could not map the rows of a parallel floral call")));
		rows->chunks[c] = dsm_segment_address(rows->segs[c]);
	}
	rows->shared = true;
	rows->recnos = recnos;
	rows->ntenants = layout->ntenants;
	rows->dir = palloc_extended(sizeof(FloralTenantRows) * Max(rows->ntenants, 1),
								MCXT_ALLOC_HUGE);
	rows->tenants = palloc_extended(sizeof(FloralTenantRows *) * Max(rows->ntenants, 1),
									MCXT_ALLOC_HUGE);
	for (int i = 0; i < rows->ntenants; i++)
	{
		rows->dir[i].name = base + layout->names + tenants[i].name;
		rows->dir[i].nrows = tenants[i].nrows;
		rows->dir[i].compressed = tenants[i].compressed;
		rows->dir[i].rows = recnos + tenants[i].first;
		rows->dir[i].next = -1;
		rows->tenants[i] = &rows->dir[i];
	}
	return rows;
}

/* ---------- scoring sources: (key, tenant, features) ---------- */

typedef struct ScoreReceiver
{
	DestReceiver pub;
	int			nfeatures;
	FloralScoreRowFn fn;
	void	   *arg;
	MemoryContext rowcxt;		/* detoasted values */
	uint64		seen;
} ScoreReceiver;

static char *
build_scoring_query(const char *source, void *arg)
{
	StringInfoData q;
	TupleDesc	desc = describe_source(source, 3, "(key, tenant, features)");

	check_tenant_type(column_type(desc, 1));
	check_features_type(column_type(desc, 2));
	FreeTupleDesc(desc);
	initStringInfo(&q);
	appendStringInfo(&q,
					 "SELECT floral_source.k::text, floral_source.t::text, floral_source.f::real[] "
					 "FROM (%s) AS floral_source(k, t, f)", source);
	return q.data;
}

static bool
score_receive(TupleTableSlot *slot, DestReceiver *self)
{
	ScoreReceiver *r = (ScoreReceiver *) self;
	MemoryContext oldcxt;
	text	   *key = NULL;
	text	   *tenant;
	ArrayType  *features;
	const float *fv;

	/* as for training: copies freed row by row, a reset now and then */
	if ((++r->seen & 4095) == 0)
	{
		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(r->rowcxt);
	}
	slot_getallattrs(slot);
	oldcxt = MemoryContextSwitchTo(r->rowcxt);
	if (slot->tts_isnull[1])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("source returned a NULL tenant")));
	tenant = DatumGetTextPP(slot->tts_values[1]);
	if (!slot->tts_isnull[0])
		key = DatumGetTextPP(slot->tts_values[0]);
	if (slot->tts_isnull[2])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("source returned NULL features for tenant \"%.*s\"",
						(int) VARSIZE_ANY_EXHDR(tenant), VARDATA_ANY(tenant))));
	features = DatumGetArrayTypeP(slot->tts_values[2]);
	fv = check_features_shape(features, r->nfeatures, VARDATA_ANY(tenant),
							  VARSIZE_ANY_EXHDR(tenant));
	check_features_finite(fv, r->nfeatures, VARDATA_ANY(tenant),
						  VARSIZE_ANY_EXHDR(tenant));
	MemoryContextSwitchTo(oldcxt);

	r->fn(r->arg, key, tenant, fv);

	if ((Pointer) features != DatumGetPointer(slot->tts_values[2]))
		pfree(features);
	return true;
}

/*
 * Run a scoring source and hand each row, checked, to fn: its key (NULL for
 * a NULL key) and tenant as text, and nfeatures finite floats.  Nothing is
 * kept here: fn copies what it keeps, since the values are freed after it
 * returns.  Must be called inside SPI_connect.
 */
void
floral_read_scoring_source(const char *source, int nfeatures,
						   FloralScoreRowFn fn, void *arg)
{
	ScoreReceiver receiver;

	memset(&receiver, 0, sizeof(receiver));
	receiver.pub.receiveSlot = score_receive;
	receiver.pub.rStartup = source_startup;
	receiver.pub.rShutdown = source_shutdown;
	receiver.pub.rDestroy = source_destroy;
	receiver.pub.mydest = DestNone;
	receiver.nfeatures = nfeatures;
	receiver.fn = fn;
	receiver.arg = arg;
	receiver.rowcxt = AllocSetContextCreate(CurrentMemoryContext, "floral source row",
											ALLOCSET_DEFAULT_SIZES);
	run_source(source, build_scoring_query, NULL, &receiver.pub);
	MemoryContextDelete(receiver.rowcxt);
}
