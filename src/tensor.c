/*
 * tensor.c
 *	  Input, output and casts of the floral.tensor type.
 *
 * The text form is nested brackets, like a numpy literal:
 *		[1, 2, 3]				a vector of shape {3}
 *		[[1, 2], [3, 4]]		a matrix of shape {2,2}
 * Every value must be finite and every sub-list of one level must have the
 * same length; anything else is rejected with an error, never stored.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/shortest_dec.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "tensor.h"

PG_FUNCTION_INFO_V1(floral_tensor_in);
PG_FUNCTION_INFO_V1(floral_tensor_out);
PG_FUNCTION_INFO_V1(floral_tensor_recv);
PG_FUNCTION_INFO_V1(floral_tensor_send);
PG_FUNCTION_INFO_V1(floral_tensor_from_bytea);
PG_FUNCTION_INFO_V1(floral_tensor_from_real_array);
PG_FUNCTION_INFO_V1(floral_tensor_to_real_array);
PG_FUNCTION_INFO_V1(floral_tensor_shape);
PG_FUNCTION_INFO_V1(floral_tensor_norm);

/*
 * Check a shape and return its number of values; errors on nonsense so that
 * no caller can be made to allocate an absurd amount of memory.
 */
static int64
tensor_check_shape(int ndim, const int32 *dims)
{
	int64		numel = 1;

	if (ndim < 1 || ndim > FLORAL_TENSOR_MAX_DIM)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("tensor must have between 1 and %d dimensions, not %d",
						FLORAL_TENSOR_MAX_DIM, ndim)));
	for (int i = 0; i < ndim; i++)
	{
		if (dims[i] < 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("tensor dimension %d has length %d", i + 1, dims[i]),
					 errdetail("Every dimension must have at least one element.")));
		numel *= dims[i];
		if (numel > TENSOR_MAX_NUMEL)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("tensor is too large"),
					 errdetail("A tensor holds at most " INT64_FORMAT " values.",
							   TENSOR_MAX_NUMEL)));
	}
	return numel;
}

FloralTensor *
floral_tensor_new(int ndim, const int32 *dims)
{
	int64		numel = tensor_check_shape(ndim, dims);
	Size		size = TENSOR_SIZE(ndim, numel);
	FloralTensor *t = (FloralTensor *) palloc0(size);

	SET_VARSIZE(t, size);
	t->ndim = ndim;
	memcpy(t->dims, dims, sizeof(int32) * ndim);
	return t;
}

FloralTensor *
floral_tensor_new_1d(int64 numel)
{
	int32		dim;

	if (numel < 1 || numel > PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("tensor of " INT64_FORMAT " values cannot be built", numel)));
	dim = (int32) numel;
	return floral_tensor_new(1, &dim);
}

int64
floral_tensor_numel(const FloralTensor *t)
{
	int64		numel = 1;

	for (int i = 0; i < t->ndim; i++)
		numel *= t->dims[i];
	return numel;
}

void
floral_tensor_check_finite(const float *data, int64 n, const char *what)
{
	if (likely(tensor_all_finite(data, n)))
		return;
	for (int64 i = 0; i < n; i++)
		if (unlikely(!isfinite(data[i])))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("%s contains a non-finite value at position " INT64_FORMAT,
							what, i + 1),
					 errdetail("NaN and infinite values are not allowed.")));
}

/*
 * Text input.  A first pass finds the shape and checks that the nesting is
 * rectangular; the second stores the values.  Parsing twice keeps the code
 * simple and costs nothing next to strtof.
 */
typedef struct TensorParser
{
	const char *input;			/* whole literal, for messages */
	const char *p;
	int			ndim;			/* nesting depth, fixed by the first leaf */
	int32		dims[FLORAL_TENSOR_MAX_DIM];
	bool		dim_known[FLORAL_TENSOR_MAX_DIM];
	float	   *out;			/* NULL in the first pass */
	int64		nvalues;
} TensorParser;

pg_attribute_noreturn()
static void
tensor_syntax_error(TensorParser *ps, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("invalid input syntax for type tensor: \"%s\"", ps->input),
			 errdetail("%s", detail)));
}

static void
skip_space(TensorParser *ps)
{
	while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')
		ps->p++;
}

static void
parse_level(TensorParser *ps, int depth)
{
	int32		count = 0;

	if (depth >= FLORAL_TENSOR_MAX_DIM)
		tensor_syntax_error(ps, "Too many levels of brackets.");
	skip_space(ps);
	if (*ps->p != '[')
		tensor_syntax_error(ps, "Expected \"[\".");
	ps->p++;
	skip_space(ps);
	if (*ps->p == ']')
		tensor_syntax_error(ps, "Empty lists are not allowed.");

	for (;;)
	{
		skip_space(ps);
		if (*ps->p == '[')
		{
			if (ps->ndim != 0 && depth + 1 >= ps->ndim)
				tensor_syntax_error(ps, "Sub-lists are nested unevenly.");
			parse_level(ps, depth + 1);
		}
		else
		{
			char	   *end;
			float		v;

			if (ps->ndim == 0)
				ps->ndim = depth + 1;
			else if (ps->ndim != depth + 1)
				tensor_syntax_error(ps, "Sub-lists are nested unevenly.");
			errno = 0;
			v = strtof(ps->p, &end);
			if (end == ps->p)
				tensor_syntax_error(ps, "Expected a number.");
			/* as float4in: an overflow, or an underflow to zero, is out of range */
			if (errno == ERANGE && (isinf(v) || v == 0.0f))
				ereport(ERROR,
						(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
						 errmsg("value \"%.*s\" is out of range for type real",
								(int) (end - ps->p), ps->p)));
			if (!isfinite(v))
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("tensor values must be finite"),
						 errdetail("Found \"%.*s\".", (int) (end - ps->p), ps->p)));
			if (ps->nvalues >= TENSOR_MAX_NUMEL)
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("tensor is too large")));
			if (ps->out)
				ps->out[ps->nvalues] = v;
			ps->nvalues++;
			ps->p = end;
		}
		count++;
		skip_space(ps);
		if (*ps->p == ',')
		{
			ps->p++;
			continue;
		}
		if (*ps->p == ']')
		{
			ps->p++;
			break;
		}
		tensor_syntax_error(ps, "Expected \",\" or \"]\".");
	}

	if (!ps->dim_known[depth])
	{
		ps->dims[depth] = count;
		ps->dim_known[depth] = true;
	}
	else if (ps->dims[depth] != count)
		tensor_syntax_error(ps, "Sub-lists have different lengths.");
}

static void
parse_tensor(TensorParser *ps)
{
	ps->p = ps->input;
	ps->nvalues = 0;
	parse_level(ps, 0);
	skip_space(ps);
	if (*ps->p != '\0')
		tensor_syntax_error(ps, "Unexpected characters after the closing \"]\".");
}

Datum
floral_tensor_in(PG_FUNCTION_ARGS)
{
	char	   *str = PG_GETARG_CSTRING(0);
	TensorParser ps;
	FloralTensor *t;
	int64		numel;

	memset(&ps, 0, sizeof(ps));
	ps.input = str;
	parse_tensor(&ps);

	numel = tensor_check_shape(ps.ndim, ps.dims);
	if (numel != ps.nvalues)	/* cannot happen for a rectangular literal */
		tensor_syntax_error(&ps, "Sub-lists have different lengths.");

	t = floral_tensor_new(ps.ndim, ps.dims);
	ps.out = TENSOR_DATA(t);
	parse_tensor(&ps);
	PG_RETURN_TENSOR_P(t);
}

static void
append_level(StringInfo buf, const FloralTensor *t, const float *data,
			 int depth, int64 *pos)
{
	appendStringInfoChar(buf, '[');
	for (int i = 0; i < t->dims[depth]; i++)
	{
		if (i > 0)
			appendStringInfoChar(buf, ',');
		if (depth + 1 < t->ndim)
			append_level(buf, t, data, depth + 1, pos);
		else
		{
			enlargeStringInfo(buf, FLOAT_SHORTEST_DECIMAL_LEN);
			buf->len += float_to_shortest_decimal_bufn(data[(*pos)++],
													   buf->data + buf->len);
			buf->data[buf->len] = '\0';
		}
	}
	appendStringInfoChar(buf, ']');
}

Datum
floral_tensor_out(PG_FUNCTION_ARGS)
{
	FloralTensor *t = PG_GETARG_TENSOR_P(0);
	StringInfoData buf;
	int64		pos = 0;

	initStringInfo(&buf);
	append_level(&buf, t, TENSOR_DATA(t), 0, &pos);
	PG_RETURN_CSTRING(buf.data);
}

/*
 * Binary form: int16 ndim, int16 flags (0), int32 dims[ndim], float4 data.
 * Everything is checked, because a replication peer or a client can send
 * anything.
 */
Datum
floral_tensor_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	int			ndim;
	int			flags;
	int32		dims[FLORAL_TENSOR_MAX_DIM];
	int64		numel;
	FloralTensor *t;
	float	   *data;

	ndim = pq_getmsgint(buf, 2);
	flags = pq_getmsgint(buf, 2);
	if (ndim < 1 || ndim > FLORAL_TENSOR_MAX_DIM)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid number of tensor dimensions: %d", ndim)));
	if (flags != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid tensor flags: %d", flags)));
	for (int i = 0; i < ndim; i++)
		dims[i] = pq_getmsgint(buf, 4);
	numel = tensor_check_shape(ndim, dims);
	if ((int64) (buf->len - buf->cursor) != numel * (int64) sizeof(float))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("tensor data has %d bytes, shape needs " INT64_FORMAT,
						buf->len - buf->cursor, numel * (int64) sizeof(float))));

	t = floral_tensor_new(ndim, dims);
	data = TENSOR_DATA(t);
	for (int64 i = 0; i < numel; i++)
		data[i] = pq_getmsgfloat4(buf);
	floral_tensor_check_finite(data, numel, "tensor");
	PG_RETURN_TENSOR_P(t);
}

/*
 * The binary form from a bytea, with every check of floral_tensor_recv: how a
 * federation coordinator decodes what a branch sent, without trusting it.
 */
Datum
floral_tensor_from_bytea(PG_FUNCTION_ARGS)
{
	bytea	   *b = PG_GETARG_BYTEA_PP(0);
	StringInfoData buf;

	buf.data = VARDATA_ANY(b);
	buf.len = VARSIZE_ANY_EXHDR(b);
	buf.maxlen = buf.len;
	buf.cursor = 0;
	if (buf.len < 4)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("tensor data is truncated")));
	return DirectFunctionCall1(floral_tensor_recv, PointerGetDatum(&buf));
}

Datum
floral_tensor_send(PG_FUNCTION_ARGS)
{
	FloralTensor *t = PG_GETARG_TENSOR_P(0);
	int64		numel = floral_tensor_numel(t);
	const float *data = TENSOR_DATA(t);
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendint16(&buf, t->ndim);
	pq_sendint16(&buf, 0);
	for (int i = 0; i < t->ndim; i++)
		pq_sendint32(&buf, t->dims[i]);
	for (int64 i = 0; i < numel; i++)
		pq_sendfloat4(&buf, data[i]);
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

/* real[] -> tensor, keeping the array's shape */
Datum
floral_tensor_from_real_array(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	int			ndim = ARR_NDIM(arr);
	FloralTensor *t;
	int64		numel;

	if (ARR_ELEMTYPE(arr) != FLOAT4OID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("expected an array of real")));
	if (ndim == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot convert an empty array to a tensor")));
	if (array_contains_nulls(arr))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("array must not contain nulls")));

	t = floral_tensor_new(ndim, ARR_DIMS(arr));
	numel = floral_tensor_numel(t);
	memcpy(TENSOR_DATA(t), ARR_DATA_PTR(arr), sizeof(float) * numel);
	floral_tensor_check_finite(TENSOR_DATA(t), numel, "array");
	PG_RETURN_TENSOR_P(t);
}

/* tensor -> real[], with the same shape (PostgreSQL arrays allow 6 dims) */
Datum
floral_tensor_to_real_array(PG_FUNCTION_ARGS)
{
	FloralTensor *t = PG_GETARG_TENSOR_P(0);
	int64		numel = floral_tensor_numel(t);
	int			lbs[MAXDIM];
	ArrayType  *arr;
	Size		nbytes;

	if (t->ndim > MAXDIM)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("tensor has %d dimensions; arrays allow at most %d",
						t->ndim, MAXDIM)));
	for (int i = 0; i < t->ndim; i++)
		lbs[i] = 1;

	/* build the array header directly: construct_md_array wants Datums */
	nbytes = ARR_OVERHEAD_NONULLS(t->ndim) + sizeof(float) * numel;
	arr = (ArrayType *) palloc0(nbytes);
	SET_VARSIZE(arr, nbytes);
	arr->ndim = t->ndim;
	arr->dataoffset = 0;
	arr->elemtype = FLOAT4OID;
	memcpy(ARR_DIMS(arr), t->dims, sizeof(int) * t->ndim);
	memcpy(ARR_LBOUND(arr), lbs, sizeof(int) * t->ndim);
	memcpy(ARR_DATA_PTR(arr), TENSOR_DATA(t), sizeof(float) * numel);
	PG_RETURN_ARRAYTYPE_P(arr);
}

Datum
floral_tensor_shape(PG_FUNCTION_ARGS)
{
	FloralTensor *t = PG_GETARG_TENSOR_P(0);
	Datum		elems[FLORAL_TENSOR_MAX_DIM];

	for (int i = 0; i < t->ndim; i++)
		elems[i] = Int32GetDatum(t->dims[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, t->ndim, INT4OID,
										  sizeof(int32), true, TYPALIGN_INT));
}

/* Euclidean norm, accumulated in double */
Datum
floral_tensor_norm(PG_FUNCTION_ARGS)
{
	FloralTensor *t = PG_GETARG_TENSOR_P(0);
	int64		numel = floral_tensor_numel(t);
	const float *data = TENSOR_DATA(t);
	double		sum = 0.0;

	for (int64 i = 0; i < numel; i++)
		sum += (double) data[i] * data[i];
	PG_RETURN_FLOAT8(sqrt(sum));
}
