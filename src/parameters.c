/*
 * parameters.c
 *	  SQL access to parameter vectors: a new model's initial parameters, and
 *	  one named slice (W, b, U, V or beta of a layer) with its real shape.
 */
#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"

#include "catalog.h"
#include "model.h"
#include "tensor.h"

PG_FUNCTION_INFO_V1(floral_initial_parameters);
PG_FUNCTION_INFO_V1(floral_parameter);

/* floral._initial_parameters(model) returns floral.tensor */
Datum
floral_initial_parameters(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	MemoryContext cxt = CurrentMemoryContext;
	FloralSpec *spec = palloc(sizeof(FloralSpec));
	FloralTensor *t;

	SPI_connect();
	floral_load_spec(model, FLORAL_LOCK_NONE, spec);
	SPI_finish();

	MemoryContextSwitchTo(cxt);
	if (spec->private_adaptors)
	{
		/* a round holds only what is federated: the base (model.h) */
		float	   *all = palloc_extended(sizeof(float) * spec->nparams, MCXT_ALLOC_HUGE);

		floral_init_params(spec, all);
		t = floral_tensor_new_1d(spec->base_size);
		memcpy(TENSOR_DATA(t), all, sizeof(float) * spec->base_size);
		pfree(all);
	}
	else
	{
		t = floral_tensor_new_1d(spec->nparams);
		floral_init_params(spec, TENSOR_DATA(t));
	}
	PG_RETURN_TENSOR_P(t);
}

/*
 * floral_parameter(model, part, layer, adaptor, round) returns
 * floral.tensor.  Layers and adaptors count from 1, as in SQL arrays;
 * round NULL is the current round.
 */
Datum
floral_parameter(PG_FUNCTION_ARGS)
{
	char	   *model;
	char	   *part;
	int			layer_no;
	int			adaptor_no;
	MemoryContext cxt = CurrentMemoryContext;
	FloralSpec *spec = palloc(sizeof(FloralSpec));
	const FloralLayer *layer;
	float	   *params;
	int64		offset;
	int			ndim;
	int32		dims[2];
	FloralTensor *t;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model, part and layer must not be NULL")));
	model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	part = text_to_cstring(PG_GETARG_TEXT_PP(1));
	layer_no = PG_GETARG_INT32(2);
	adaptor_no = PG_ARGISNULL(3) ? 0 : PG_GETARG_INT32(3);

	SPI_connect();
	floral_load_spec(model, FLORAL_LOCK_NONE, spec);
	if (layer_no < 1 || layer_no > spec->nlayers)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model \"%s\" has layers 1 to %d, not %d",
						model, spec->nlayers, layer_no)));
	layer = &spec->layers[layer_no - 1];
	params = floral_load_round(spec, PG_ARGISNULL(4) ? spec->round : PG_GETARG_INT32(4), cxt);
	SPI_finish();
	MemoryContextSwitchTo(cxt);

	if (spec->ensemble && (strcmp(part, "W") == 0 || strcmp(part, "b") == 0))
	{
		/* an Ensemble member is named like an adaptor */
		if (adaptor_no < 1 || adaptor_no > spec->nadaptors)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("model \"%s\" is an ensemble of members 1 to %d, not %s",
							model, spec->nadaptors, PG_ARGISNULL(3) ? "none" : psprintf("%d", adaptor_no)),
					 errhint("Name the member as the adaptor argument.")));
		offset = (int64) (adaptor_no - 1) * spec->member_size +
			((part[0] == 'W') ? layer->W : layer->b);
		ndim = (part[0] == 'W') ? 2 : 1;
		dims[0] = layer->out;
		dims[1] = layer->in;
	}
	else if (spec->ensemble)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model \"%s\" is an ensemble: its members have W and b, no part \"%s\"",
						model, part)));
	else if (strcmp(part, "W") == 0 || strcmp(part, "b") == 0)
	{
		if (!PG_ARGISNULL(3))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("part \"%s\" belongs to the base and takes no adaptor", part)));
		offset = (part[0] == 'W') ? layer->W : layer->b;
		ndim = (part[0] == 'W') ? 2 : 1;
		dims[0] = layer->out;
		dims[1] = layer->in;
	}
	else if (strcmp(part, "U") == 0 || strcmp(part, "V") == 0 ||
			 strcmp(part, "beta") == 0)
	{
		int			c = adaptor_no - 1;
		int64		r = layer->rank;

		if (spec->nadaptors == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("model \"%s\" has no adaptors", model)));
		if (c < 0 || c >= spec->nadaptors)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("model \"%s\" has adaptors 1 to %d, not %d",
							model, spec->nadaptors, adaptor_no)));
		offset = spec->adaptor_offset;
		if (part[0] == 'U')
		{
			offset += layer->U + c * r * layer->in;
			ndim = 2;
			dims[0] = (int32) r;
			dims[1] = layer->in;
		}
		else if (part[0] == 'V')
		{
			offset += layer->V + c * layer->out * r;
			ndim = 2;
			dims[0] = layer->out;
			dims[1] = (int32) r;
		}
		else
		{
			offset += layer->beta + (int64) c * layer->out;
			ndim = 1;
			dims[0] = layer->out;
		}
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown parameter part \"%s\"", part),
				 errhint("Use W, b, U, V or beta.")));

	t = floral_tensor_new(ndim, dims);
	memcpy(TENSOR_DATA(t), params + offset, sizeof(float) * floral_tensor_numel(t));
	PG_RETURN_TENSOR_P(t);
}
