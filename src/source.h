/*
 * source.h
 *	  Reading a user's source query into rows grouped by tenant.
 *
 * A source is any query returning (tenant, features real[], label).  Its
 * rows are read once, checked, and kept as fixed-size float records: the
 * first ones in memory up to maintenance_work_mem, the rest in a temporary
 * file, so a source of any size trains in bounded memory.  Each tenant keeps
 * the list of its record numbers, so a tenant's rows can be visited in any
 * order.
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
	int64	   *rows;			/* record numbers, in source order */
	int32		next;			/* next tenant with the same name hash, or -1 */
} FloralTenantRows;

typedef struct FloralRows
{
	int			nfeatures;
	int			ylen;			/* 1 for classification, outputs for regression */
	int			recfloats;		/* nfeatures + ylen */
	int64		nrows;

	float	  **chunks;			/* records while they fit in memory */
	int			nchunks;
	int			max_chunks;
	int64		chunk_records;	/* records per chunk */
	int64		mem_limit;		/* records allowed in memory */
	BufFile    *file;			/* records beyond mem_limit, if any */
	float	   *recbuf;			/* one record, for reads from the file */

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

	/* the tenant directory, built while reading */
	struct HTAB *hash;			/* name hash -> first tenant with it */
	FloralTenantRows *dir;		/* tenants in order of first appearance */
	int			ntenants;
	int			dir_capacity;
	int32	   *row_tenant;		/* while reading: each record's tenant */
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
extern void floral_rows_gather(FloralRows *rows, const int64 *recnos, int n,
							   float *X, float *Y);

/* rows read as shareable, shared with parallel workers (parallel.h) */
extern Size floral_rows_shared_size(const FloralRows *rows);
extern void floral_rows_share(const FloralRows *rows, void *space);
extern FloralRows *floral_rows_attach(void *space);
extern void floral_rows_detach(FloralRows *rows);

#endif
