/*
 * source.h
 *	  Reading a user's source query into rows grouped by tenant.
 *
 * A source is any query returning (tenant, features real[], label).  Its
 * rows are read once and checked as they arrive: tenants, labels, NULLs
 * and the features' length, and the features' values too when they came
 * uncompressed.  They are kept as fixed-size float records, except features
 * the table stored compressed: those stay compressed, because
 * decompressing is most of the cost of reading, and the reader runs alone;
 * whoever uses the tenant (the leader or a parallel worker) decompresses
 * them and checks their values.  A tenant with compressed rows is decoded
 * once per call if it fits in the call's budget for that
 * (floral_rows_set_participants), batch by batch otherwise.  The first
 * records stay in memory up to maintenance_work_mem, the rest go to a
 * temporary file, so a source of any size trains in bounded memory.  Each
 * tenant keeps the list of its records, so a tenant's rows can be visited
 * in any order.
 *
 * A scoring source returns (key, tenant, features): its rows are checked the
 * same way and handed one by one to a callback, which keeps what it needs.
 */
#ifndef FLORAL_SOURCE_H
#define FLORAL_SOURCE_H

#include "storage/buffile.h"

#include "model.h"

#define FLORAL_MAX_TENANT_LEN 255

/*
 * A tenant of the source.  Per tenant the call keeps only this (and its
 * name, once): about 80 bytes with the lookup entry, so a source of many
 * small tenants costs what its rows cost.
 */
typedef struct FloralTenantRows
{
	char	   *name;
	int64		nrows;
	int64	   *rows;			/* record numbers (source.c), in source order */
	bool		compressed;		/* some of its features are stored compressed */
	int32		next;			/* next tenant with the same name hash, or -1 */
} FloralTenantRows;

typedef struct FloralRows
{
	int			nfeatures;
	int			ylen;			/* 1 for classification, outputs for regression */
	int			recfloats;		/* a decoded record: nfeatures + ylen */
	int64		nrows;
	double		stored_bytes;	/* what the records take, as stored */

	/*
	 * Records (source.c): the label, then the features, as floats (plain)
	 * or as their compressed varlena.  A record never straddles two chunks;
	 * its number is its byte offset (the chunk times chunk_bytes plus its
	 * place in the chunk, or FLORAL_REC_IN_FILE plus its offset in the
	 * temporary file), with bit 0 set for a compressed one.
	 */
	char	  **chunks;			/* records while they fit in memory */
	int64	   *chunk_used;		/* bytes used in each chunk */
	int			nchunks;
	int			max_chunks;
	int			mem_chunks;		/* chunks allowed in memory */
	int64		chunk_bytes;
	int64		max_record;		/* the largest record a valid row makes */
	BufFile    *file;			/* records beyond mem_chunks, if any */
	int64		file_bytes;
	char	   *recbuf;			/* one record, for reads from the file */

	/*
	 * Rows that parallel workers may read keep their chunks in dynamic
	 * shared memory, one segment each, so that sharing them copies nothing:
	 * shareable rows move there once they reach share_after bytes, and
	 * shared says they all are (never once the rows spilled to the file).
	 */
	bool		shareable;
	double		share_after;
	bool		shared;
	struct dsm_segment **segs;	/* per chunk, NULL for a private one */

	/*
	 * The last tenant decoded whole by floral_rows_gather, and its records:
	 * a participant decodes a tenant with compressed rows once if they fit
	 * in decode_budget bytes (floral_rows_set_participants).
	 */
	double		decode_budget;
	const FloralTenantRows *decoded_tenant;
	float	   *decoded;
	int64		decoded_capacity;	/* in records */
	struct MemoryContextData *cxt;	/* where the rows live */

	/* the tenant directory, built while reading */
	struct HTAB *hash;			/* name hash -> first tenant with it */
	FloralTenantRows *dir;		/* tenants in order of first appearance */
	int			ntenants;
	int			dir_capacity;
	int32	   *row_tenant;		/* while reading: each record's tenant */
	int64	   *row_offset;		/* while reading: each record's number */
	int64		row_capacity;
	char	   *names;			/* arena for the tenants' names */
	Size		names_free;

	FloralTenantRows **tenants; /* sorted by name after reading */
	int64	   *recnos;			/* every record number, grouped by tenant */
	double		read_seconds;
} FloralRows;

/*
 * share_after >= 0: once the rows reach that many bytes, keep them where
 * parallel workers can read them (parallel.h); -1: never.
 */
extern FloralRows *floral_read_source(const char *source, const FloralSpec *spec,
									  double share_after);
extern void floral_rows_free(FloralRows *rows);
/* one row of a scoring source; values are valid only during the call */
typedef void (*FloralScoreRowFn) (void *arg, text *key, text *tenant,
								  const float *features);

extern void floral_read_scoring_source(const char *source, int nfeatures,
									   FloralScoreRowFn fn, void *arg);

/*
 * The rows will be used by this many processes: each may hold one decoded
 * tenant in what maintenance_work_mem leaves after the rows themselves,
 * shared out among them (at least work_mem each), as a parallel index
 * build shares maintenance_work_mem among its participants.
 */
extern void floral_rows_set_participants(FloralRows *rows, int participants);

/*
 * Check a tenant's rows that the call does not use (a tenant it skips): a
 * call checks every row of its source, used or not.
 */
extern void floral_rows_check(FloralRows *rows, const FloralTenantRows *tenant);

/*
 * Decode n of a tenant's rows into a batch, features into X (n x nfeatures)
 * and labels into Y: its rows pos[0..n-1] (places in the tenant's list), or
 * start..start+n-1 when pos is NULL.  Invalid features end in an error
 * naming the tenant.
 */
extern void floral_rows_gather(FloralRows *rows, const FloralTenantRows *tenant,
							   const int32 *pos, int64 start, int n,
							   float *X, float *Y);

/* rows read as shareable, shared with parallel workers (parallel.h) */
extern Size floral_rows_shared_size(const FloralRows *rows);
extern void floral_rows_share(const FloralRows *rows, void *space);
extern FloralRows *floral_rows_attach(void *space);
extern void floral_rows_detach(FloralRows *rows);

#endif
