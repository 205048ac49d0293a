/*
 * tensor.h
 *	  The floral.tensor type: a dense float4 array with a shape.
 *
 * On disk and in memory a tensor is a varlena: a small header, the
 * dimensions, then the values in row-major order.  The values start at a
 * four-byte boundary so that BLAS can read them in place after detoasting.
 */
#ifndef FLORAL_TENSOR_H
#define FLORAL_TENSOR_H

#include "fmgr.h"
#include "utils/memutils.h"

#define FLORAL_TENSOR_MAX_DIM 8

typedef struct FloralTensor
{
	int32		vl_len_;		/* varlena header (do not touch directly) */
	int16		ndim;			/* number of dimensions, 1..8 */
	int16		flags;			/* reserved, always 0 */
	int32		dims[FLEXIBLE_ARRAY_MEMBER];	/* then float4 data */
} FloralTensor;

#define TENSOR_HDRSZ(ndim)	(offsetof(FloralTensor, dims) + sizeof(int32) * (ndim))
#define TENSOR_SIZE(ndim, numel) (TENSOR_HDRSZ(ndim) + sizeof(float) * (Size) (numel))
#define TENSOR_DATA(t)		((float *) ((char *) (t) + TENSOR_HDRSZ((t)->ndim)))

/* the largest number of values a tensor may hold (fits in one palloc) */
#define TENSOR_MAX_NUMEL	((int64) ((MaxAllocSize - TENSOR_HDRSZ(FLORAL_TENSOR_MAX_DIM)) / sizeof(float)))

#define DatumGetTensorP(x)		((FloralTensor *) PG_DETOAST_DATUM(x))
#define PG_GETARG_TENSOR_P(n)	DatumGetTensorP(PG_GETARG_DATUM(n))
#define PG_RETURN_TENSOR_P(x)	PG_RETURN_POINTER(x)

extern FloralTensor *floral_tensor_new(int ndim, const int32 *dims);
extern FloralTensor *floral_tensor_new_1d(int64 numel);
extern int64 floral_tensor_numel(const FloralTensor *t);
extern void floral_tensor_check_finite(const float *data, int64 n, const char *what);

/*
 * True when no value is NaN or infinite: those are exactly the floats whose
 * exponent bits are all ones.  Integer operations, so the loop vectorises.
 */
static inline bool
tensor_all_finite(const float *data, int64 n)
{
	const uint32 *bits = (const uint32 *) data;
	uint32		bad = 0;

	for (int64 i = 0; i < n; i++)
		bad |= ((bits[i] & 0x7f800000) == 0x7f800000);
	return bad == 0;
}

#endif
