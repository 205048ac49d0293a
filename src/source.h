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
 */
#ifndef FLORAL_SOURCE_H
#define FLORAL_SOURCE_H

#include "storage/buffile.h"

#include "model.h"

#define FLORAL_MAX_TENANT_LEN 255

typedef struct FloralTenantRows
{
	char		name[FLORAL_MAX_TENANT_LEN + 1];	/* hash key */
	int64		nrows;
	int64		capacity;
	int64	   *rows;			/* record numbers */
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

	struct HTAB *hash;
	int			ntenants;
	FloralTenantRows **tenants; /* sorted by name after reading */
	double		read_seconds;
} FloralRows;

extern FloralRows *floral_read_source(const char *source, const FloralSpec *spec);
extern void floral_rows_free(FloralRows *rows);
extern void floral_rows_gather(FloralRows *rows, const int64 *recnos, int n,
							   float *X, float *Y);

#endif
