-- floral 1.0: federated low-rank adaptive learning (FLoRAL) in PostgreSQL.
-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION floral" to load this file. \quit

-- Catalog tables, the tensor type and internal helpers live in schema
-- "floral"; the user-facing floral_* functions in the extension's schema.
CREATE SCHEMA floral;
COMMENT ON SCHEMA floral IS 'floral: catalog of models, rounds, tenants and contributions';

------------------------------------------------------------------------
-- The tensor type: dense float4 values with a shape
------------------------------------------------------------------------
CREATE TYPE floral.tensor;

CREATE FUNCTION floral.tensor_in(cstring) RETURNS floral.tensor
	AS 'MODULE_PATHNAME', 'tensor_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION floral.tensor_out(floral.tensor) RETURNS cstring
	AS 'MODULE_PATHNAME', 'tensor_out' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION floral.tensor_recv(internal) RETURNS floral.tensor
	AS 'MODULE_PATHNAME', 'tensor_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION floral.tensor_send(floral.tensor) RETURNS bytea
	AS 'MODULE_PATHNAME', 'tensor_send' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- STORAGE external: float data hardly compresses, so skip trying
CREATE TYPE floral.tensor (
	INPUT = floral.tensor_in,
	OUTPUT = floral.tensor_out,
	RECEIVE = floral.tensor_recv,
	SEND = floral.tensor_send,
	INTERNALLENGTH = VARIABLE,
	ALIGNMENT = int4,
	STORAGE = external
);
COMMENT ON TYPE floral.tensor IS 'dense float4 tensor with a shape, e.g. ''[[1,2],[3,4]]''';

CREATE FUNCTION floral.tensor(real[]) RETURNS floral.tensor
	AS 'MODULE_PATHNAME', 'tensor_from_real_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION floral.tensor_to_real(floral.tensor) RETURNS real[]
	AS 'MODULE_PATHNAME', 'tensor_to_real_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE CAST (real[] AS floral.tensor) WITH FUNCTION floral.tensor(real[]) AS ASSIGNMENT;
CREATE CAST (floral.tensor AS real[]) WITH FUNCTION floral.tensor_to_real(floral.tensor) AS ASSIGNMENT;

CREATE FUNCTION floral.tensor_shape(floral.tensor) RETURNS int[]
	AS 'MODULE_PATHNAME', 'tensor_shape' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral.tensor_shape(floral.tensor) IS 'the dimensions of a tensor';
CREATE FUNCTION floral.tensor_norm(floral.tensor) RETURNS double precision
	AS 'MODULE_PATHNAME', 'tensor_norm' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral.tensor_norm(floral.tensor) IS 'the Euclidean norm of a tensor''s values';

------------------------------------------------------------------------
-- Catalog tables.  Every table has a primary key so that it can be
-- replicated; the model name is the key, so it means the same model in
-- every database of a federation.
------------------------------------------------------------------------
CREATE TABLE floral.models (
	name		text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 127),
	task		text NOT NULL CHECK (task IN ('classification', 'regression')),
	layers		int[] NOT NULL,
	adaptors	int NOT NULL CHECK (adaptors BETWEEN 0 AND 64),
	rank		real NOT NULL,
	ranks		int[] NOT NULL,
	options		jsonb NOT NULL,
	round		int NOT NULL DEFAULT 0,
	created_at	timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE floral.models IS 'one row per model: its specification (with every option resolved) and current round';

CREATE TABLE floral.rounds (
	model		text NOT NULL REFERENCES floral.models ON DELETE CASCADE ON UPDATE CASCADE,
	round		int NOT NULL,
	params		floral.tensor NOT NULL,
	tenants		int,
	examples	bigint,
	loss		double precision,
	created_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (model, round)
);
COMMENT ON TABLE floral.rounds IS 'the shared parameters (base and adaptor bank) of every kept round, with the training that produced them';

CREATE TABLE floral.tenants (
	model		text NOT NULL REFERENCES floral.models ON DELETE CASCADE ON UPDATE CASCADE,
	tenant		text NOT NULL,
	logits		real[] NOT NULL,
	pinned		real[],
	adaptors	floral.tensor,
	examples	bigint NOT NULL DEFAULT 0,
	last_round	int,
	start_round	int,
	start_logits real[],
	start_adaptors floral.tensor,
	updated_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (model, tenant)
);
COMMENT ON TABLE floral.tenants IS 'each tenant''s private state: mixture logits, an optional pinned mixture, private adaptors (Local Adaptor)';
COMMENT ON COLUMN floral.tenants.start_logits IS 'logits the tenant had when it first trained in start_round: a retry in that round starts from them';

-- Contributions are transient and large (a whole trained model per tenant),
-- so they are UNLOGGED: no WAL for them.  A crash empties the table; the
-- round's training is then simply run again, from the start state kept in
-- floral.tenants, and nothing half-merged can exist because aggregation is
-- one transaction.
CREATE UNLOGGED TABLE floral.contributions (
	model		text NOT NULL REFERENCES floral.models ON DELETE CASCADE ON UPDATE CASCADE,
	round		int NOT NULL,
	tenant		text NOT NULL,
	examples	bigint NOT NULL CHECK (examples > 0),
	mixture		real[] NOT NULL,
	params		floral.tensor NOT NULL,
	loss		double precision,
	created_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (model, round, tenant)
);
COMMENT ON TABLE floral.contributions IS 'what each tenant trained in the current round, until floral_aggregate merges it';

SELECT pg_catalog.pg_extension_config_dump('floral.models', '');
SELECT pg_catalog.pg_extension_config_dump('floral.rounds', '');
SELECT pg_catalog.pg_extension_config_dump('floral.tenants', '');
SELECT pg_catalog.pg_extension_config_dump('floral.contributions', '');

-- Cached models in every backend are dropped when these tables change.
CREATE FUNCTION floral._invalidate_cache() RETURNS trigger
	AS 'MODULE_PATHNAME', 'floral_invalidate_cache' LANGUAGE C;
CREATE TRIGGER invalidate_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON floral.models FOR EACH STATEMENT EXECUTE FUNCTION floral._invalidate_cache();
CREATE TRIGGER invalidate_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON floral.rounds FOR EACH STATEMENT EXECUTE FUNCTION floral._invalidate_cache();
CREATE TRIGGER invalidate_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON floral.tenants FOR EACH STATEMENT EXECUTE FUNCTION floral._invalidate_cache();

------------------------------------------------------------------------
-- Internal helpers
------------------------------------------------------------------------
CREATE FUNCTION floral._rank(rho real, fan_in int, fan_out int) RETURNS int
	AS 'MODULE_PATHNAME', 'floral_rank' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION floral._initial_parameters(model text) RETURNS floral.tensor
	AS 'MODULE_PATHNAME', 'floral_initial_parameters' LANGUAGE C STRICT;
CREATE FUNCTION floral._train(model text, source text, epochs int, batch_size int,
		lr real, router_lr real, seed bigint)
	RETURNS TABLE (tenant text, examples bigint, loss double precision)
	AS 'MODULE_PATHNAME', 'floral_train_internal' LANGUAGE C STRICT;
CREATE FUNCTION floral._gradient_check(model text, features real[], labels real[],
		logits real[], seed bigint, eps double precision)
	RETURNS TABLE (part text, parameters int, analytic_norm double precision,
				   max_abs_error double precision, relative_error double precision)
	AS 'MODULE_PATHNAME', 'floral_gradient_check' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral._gradient_check(text, real[], real[], real[], bigint, double precision) IS
	'test aid: compare analytic gradients with central finite differences at random parameters';
CREATE FUNCTION floral._personalize(model text, source text, epochs int, batch_size int,
		lr real, router_lr real, seed bigint, one_hot boolean)
	RETURNS TABLE (tenant text, examples bigint, loss double precision, mixture real[])
	AS 'MODULE_PATHNAME', 'floral_personalize_internal' LANGUAGE C STRICT;

-- Validate an options object: only known keys, each of the expected JSON
-- type.  Returns the object with defaults filled in.
CREATE FUNCTION floral._options(options jsonb, defaults jsonb, what text)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
	k text;
	v jsonb;
BEGIN
	IF options IS NULL THEN
		options := '{}';
	END IF;
	IF jsonb_typeof(options) <> 'object' THEN
		RAISE EXCEPTION 'options of % must be a JSON object', what
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR k, v IN SELECT * FROM jsonb_each(options) LOOP
		IF NOT defaults ? k THEN
			RAISE EXCEPTION 'unknown option "%" for %', k, what
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = format('Known options: %s.',
									(SELECT string_agg(d, ', ' ORDER BY d) FROM jsonb_object_keys(defaults) d));
		END IF;
		IF jsonb_typeof(v) <> jsonb_typeof(defaults -> k)
		   AND NOT (jsonb_typeof(defaults -> k) = 'null') THEN
			RAISE EXCEPTION 'option "%" of % must be a JSON %', k, what, jsonb_typeof(defaults -> k)
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
	END LOOP;
	RETURN defaults || options;
END $$;

CREATE FUNCTION floral._check(ok boolean, message text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	IF ok IS NOT TRUE THEN
		RAISE EXCEPTION '%', message USING ERRCODE = 'invalid_parameter_value';
	END IF;
END $$;

CREATE FUNCTION floral._model_options(model text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
	o jsonb;
BEGIN
	SELECT m.options INTO o FROM floral.models m WHERE m.name = model;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" does not exist', model
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it with floral_create_model().';
	END IF;
	RETURN o;
END $$;

------------------------------------------------------------------------
-- Models
------------------------------------------------------------------------
CREATE FUNCTION floral_create_model(name text, layers int[],
		task text DEFAULT 'classification', adaptors int DEFAULT 4,
		rank real DEFAULT 0.01, options jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	o jsonb;
	ranks int[] := '{}';
	n int;
BEGIN
	PERFORM floral._check(name IS NOT NULL AND length(name) BETWEEN 1 AND 127,
						  'model name must have 1 to 127 characters');
	PERFORM floral._check(task IN ('classification', 'regression'),
						  format('task must be "classification" or "regression", not %L', task));
	n := coalesce(cardinality(layers), 0);
	PERFORM floral._check(n BETWEEN 2 AND 17 AND array_ndims(layers) = 1,
						  'layers must list 2 to 17 widths, from input to output');
	PERFORM floral._check(NOT array_position(layers, NULL) IS NOT NULL
						  AND (SELECT bool_and(w BETWEEN 1 AND 1000000) FROM unnest(layers) w),
						  'every layer width must be between 1 and 1000000');
	PERFORM floral._check(task <> 'classification' OR layers[n] >= 2,
						  'a classification model needs at least 2 outputs');
	PERFORM floral._check(adaptors BETWEEN 0 AND 64, 'adaptors must be between 0 and 64');
	PERFORM floral._check(rank > 0 AND rank < 'Infinity'::real AND rank <> 'NaN'::real,
						  'rank must be a positive number');

	o := floral._options(options, jsonb_build_object(
			'activation', 'relu', 'seed', 0, 'alpha', 1.0, 'min_prob', 0.01,
			'noise', 1.0, 'precondition', true, 'precondition_eps', 1e-5,
			'server_lr', 1.0, 'private_adaptors', false),
		'floral_create_model');
	PERFORM floral._check(o->>'activation' IN ('relu', 'tanh', 'identity'),
						  'option "activation" must be "relu", "tanh" or "identity"');
	PERFORM floral._check((o->>'seed')::numeric = trunc((o->>'seed')::numeric)
						  AND (o->>'seed')::numeric BETWEEN -9223372036854775808 AND 9223372036854775807,
						  'option "seed" must be an integer');
	PERFORM floral._check((o->>'alpha')::real >= 0, 'option "alpha" must be >= 0');
	PERFORM floral._check((o->>'min_prob')::real >= 0 AND (o->>'min_prob')::real < 1,
						  'option "min_prob" must be in [0, 1)');
	PERFORM floral._check((o->>'noise')::real >= 0, 'option "noise" must be >= 0');
	PERFORM floral._check((o->>'precondition_eps')::real > 0, 'option "precondition_eps" must be > 0');
	PERFORM floral._check((o->>'server_lr')::real > 0 AND (o->>'server_lr')::real <= 10,
						  'option "server_lr" must be in (0, 10]');
	PERFORM floral._check(NOT (o->>'private_adaptors')::boolean OR adaptors >= 1,
						  'option "private_adaptors" needs at least one adaptor');

	FOR i IN 1 .. n - 1 LOOP
		ranks := ranks || CASE WHEN adaptors = 0 THEN 0
							   ELSE floral._rank(rank, layers[i], layers[i + 1]) END;
	END LOOP;
	PERFORM floral._check((SELECT bool_and(r BETWEEN 0 AND 100000) FROM unnest(ranks) r),
						  'rank is too large');

	IF EXISTS (SELECT 1 FROM floral.models m WHERE m.name = floral_create_model.name) THEN
		RAISE EXCEPTION 'model "%" already exists', name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Drop it first with floral_drop_model().';
	END IF;
	INSERT INTO floral.models (name, task, layers, adaptors, rank, ranks, options)
		VALUES (name, task, layers, adaptors, rank, ranks,
				o || jsonb_build_object('seed', (o->>'seed')::bigint));
	INSERT INTO floral.rounds (model, round, params)
		VALUES (name, 0, floral._initial_parameters(name));
END $$;
COMMENT ON FUNCTION floral_create_model(text, int[], text, int, real, jsonb) IS
	'create a FLoRAL model: base MLP with the given widths and a bank of low-rank adaptors';

CREATE FUNCTION floral_drop_model(name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	DELETE FROM floral.models m WHERE m.name = floral_drop_model.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" does not exist', name USING ERRCODE = 'undefined_object';
	END IF;
END $$;
COMMENT ON FUNCTION floral_drop_model(text) IS 'drop a model with all its rounds, tenants and contributions';

------------------------------------------------------------------------
-- Training and aggregation
------------------------------------------------------------------------
CREATE FUNCTION floral_train(model text, source text, options jsonb DEFAULT '{}')
RETURNS TABLE (tenant text, examples bigint, loss double precision)
LANGUAGE plpgsql AS $$
DECLARE
	mo jsonb := floral._model_options(model);
	o jsonb;
BEGIN
	PERFORM floral._check(source IS NOT NULL, 'source must not be NULL');
	o := floral._options(options, jsonb_build_object(
			'epochs', 1, 'batch_size', 32, 'lr', 0.1, 'router_lr', null,
			'seed', mo->'seed'), 'floral_train');
	PERFORM floral._check((o->>'epochs')::numeric BETWEEN 1 AND 100000
						  AND (o->>'epochs')::numeric = trunc((o->>'epochs')::numeric),
						  'option "epochs" must be an integer from 1 to 100000');
	PERFORM floral._check((o->>'batch_size')::numeric BETWEEN 1 AND 65536
						  AND (o->>'batch_size')::numeric = trunc((o->>'batch_size')::numeric),
						  'option "batch_size" must be an integer from 1 to 65536');
	PERFORM floral._check((o->>'lr')::real > 0 AND (o->>'lr')::real < 1e6,
						  'option "lr" must be a positive number');
	PERFORM floral._check(jsonb_typeof(o->'router_lr') IN ('null', 'number')
						  AND coalesce((o->>'router_lr')::real, 0) >= 0
						  AND coalesce((o->>'router_lr')::real, 0) < 1e6,
						  'option "router_lr" must be a number >= 0');
	PERFORM floral._check((o->>'seed')::numeric = trunc((o->>'seed')::numeric),
						  'option "seed" must be an integer');
	RETURN QUERY SELECT * FROM floral._train(model, source,
		(o->>'epochs')::int, (o->>'batch_size')::int, (o->>'lr')::real,
		coalesce((o->>'router_lr')::real, (o->>'lr')::real), (o->>'seed')::bigint);
END $$;
COMMENT ON FUNCTION floral_train(text, text, jsonb) IS
	'local training of every tenant in source from the current round; records each tenant''s contribution';

CREATE FUNCTION floral_aggregate(model text) RETURNS int
	AS 'MODULE_PATHNAME', 'floral_aggregate' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral_aggregate(text) IS
	'merge the current round''s contributions by FloralAvg into the next round; returns its number';

CREATE FUNCTION floral_personalize(model text, source text, options jsonb DEFAULT '{}')
RETURNS TABLE (tenant text, examples bigint, loss double precision, mixture real[])
LANGUAGE plpgsql AS $$
DECLARE
	mo jsonb := floral._model_options(model);
	o jsonb;
BEGIN
	PERFORM floral._check(source IS NOT NULL, 'source must not be NULL');
	o := floral._options(options, jsonb_build_object(
			'method', 'gradient', 'epochs', 10, 'batch_size', 32, 'router_lr', 0.1,
			'seed', mo->'seed'), 'floral_personalize');
	PERFORM floral._check(o->>'method' IN ('gradient', 'one_hot'),
						  'option "method" must be "gradient" or "one_hot"');
	PERFORM floral._check((o->>'epochs')::numeric BETWEEN 1 AND 100000
						  AND (o->>'epochs')::numeric = trunc((o->>'epochs')::numeric),
						  'option "epochs" must be an integer from 1 to 100000');
	PERFORM floral._check((o->>'batch_size')::numeric BETWEEN 1 AND 65536
						  AND (o->>'batch_size')::numeric = trunc((o->>'batch_size')::numeric),
						  'option "batch_size" must be an integer from 1 to 65536');
	PERFORM floral._check((o->>'router_lr')::real > 0 AND (o->>'router_lr')::real < 1e6,
						  'option "router_lr" must be a positive number');
	PERFORM floral._check((o->>'seed')::numeric = trunc((o->>'seed')::numeric),
						  'option "seed" must be an integer');
	RETURN QUERY SELECT * FROM floral._personalize(model, source,
		(o->>'epochs')::int, (o->>'batch_size')::int, 0::real,
		(o->>'router_lr')::real, (o->>'seed')::bigint, o->>'method' = 'one_hot');
END $$;
COMMENT ON FUNCTION floral_personalize(text, text, jsonb) IS
	'fit only the mixture of each tenant in source (cold start); shared parameters stay frozen';

------------------------------------------------------------------------
-- Prediction and evaluation
------------------------------------------------------------------------
CREATE FUNCTION floral_predict(model text, tenant text, features real[]) RETURNS real
	AS 'MODULE_PATHNAME', 'floral_predict' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION floral_predict(text, text, real[]) IS
	'personalised prediction: the class index (classification) or the first output (regression)';

CREATE FUNCTION floral_predict_proba(model text, tenant text, features real[]) RETURNS real[]
	AS 'MODULE_PATHNAME', 'floral_predict_proba' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION floral_predict_proba(text, text, real[]) IS
	'personalised class probabilities (classification) or all outputs (regression)';

CREATE FUNCTION floral_evaluate(model text, source text)
	RETURNS TABLE (tenant text, examples bigint, loss double precision, accuracy double precision)
	AS 'MODULE_PATHNAME', 'floral_evaluate_internal' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral_evaluate(text, text) IS
	'per-tenant loss and accuracy of the current round over a labelled source';

------------------------------------------------------------------------
-- Mixtures
------------------------------------------------------------------------
CREATE FUNCTION floral_mixture(model text, tenant text) RETURNS real[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
	c int;
	z real[];
	p real[];
BEGIN
	PERFORM floral._model_options(model);
	SELECT m.adaptors INTO c FROM floral.models m WHERE m.name = model;
	IF c = 0 THEN
		RETURN '{}'::real[];
	END IF;
	SELECT t.logits, t.pinned INTO z, p FROM floral.tenants t
		WHERE t.model = floral_mixture.model AND t.tenant = floral_mixture.tenant;
	IF p IS NOT NULL THEN
		RETURN p;
	ELSIF z IS NULL THEN
		RETURN array_fill((1.0 / c)::real, ARRAY[c]);
	END IF;
	RETURN (SELECT array_agg((e / total)::real ORDER BY i)
			FROM (SELECT i, e, sum(e) OVER () AS total
				  FROM (SELECT i, exp(v - max(v) OVER ()) AS e
						FROM unnest(z::float8[]) WITH ORDINALITY AS u(v, i)) a) b);
END $$;
COMMENT ON FUNCTION floral_mixture(text, text) IS
	'a tenant''s mixture probabilities over the adaptors (uniform for an unknown tenant)';

CREATE FUNCTION floral_set_mixture(model text, tenant text, mixture real[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	c int;
	s double precision;
BEGIN
	PERFORM floral._model_options(model);
	SELECT m.adaptors INTO c FROM floral.models m WHERE m.name = model;
	PERFORM floral._check(tenant IS NOT NULL AND length(tenant) BETWEEN 1 AND 255,
						  'tenant name must have 1 to 255 characters');
	IF mixture IS NOT NULL THEN
		PERFORM floral._check(c >= 1, format('model %s has no adaptors', model));
		PERFORM floral._check(cardinality(mixture) = c AND array_ndims(mixture) = 1,
							  format('mixture must have %s values', c));
		SELECT sum(v), bool_and(v >= 0 AND v <= 1) INTO s
			FROM unnest(mixture) v;
		PERFORM floral._check((SELECT bool_and(v IS NOT NULL AND v >= 0 AND v <= 1) FROM unnest(mixture) v)
							  AND abs(s - 1) < 1e-3,
							  'mixture values must be in [0, 1] and sum to 1');
	END IF;
	INSERT INTO floral.tenants AS t (model, tenant, logits, pinned)
		VALUES (model, tenant, array_fill(0::real, ARRAY[c]), mixture)
		ON CONFLICT ON CONSTRAINT tenants_pkey DO UPDATE SET pinned = excluded.pinned, updated_at = now();
END $$;
COMMENT ON FUNCTION floral_set_mixture(text, text, real[]) IS
	'pin a tenant''s mixture (e.g. the oracle one-hot of its group); NULL unpins it';

------------------------------------------------------------------------
-- Inspection and housekeeping
------------------------------------------------------------------------
CREATE FUNCTION floral_parameter(model text, part text, layer int,
		adaptor int DEFAULT NULL, round int DEFAULT NULL) RETURNS floral.tensor
	AS 'MODULE_PATHNAME', 'floral_parameter' LANGUAGE C STABLE;
COMMENT ON FUNCTION floral_parameter(text, text, int, int, int) IS
	'one parameter (W, b, U, V or beta) of a layer, with its shape; layers and adaptors count from 1';

CREATE FUNCTION floral_layers(model text)
RETURNS TABLE (layer int, part text, adaptor int, shape int[], parameters bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
	m floral.models;
BEGIN
	PERFORM floral._model_options(model);
	SELECT * INTO m FROM floral.models x WHERE x.name = model;
	FOR l IN 1 .. cardinality(m.layers) - 1 LOOP
		layer := l; adaptor := NULL;
		part := 'W'; shape := ARRAY[m.layers[l + 1], m.layers[l]];
		parameters := m.layers[l + 1]::bigint * m.layers[l]; RETURN NEXT;
		part := 'b'; shape := ARRAY[m.layers[l + 1]];
		parameters := m.layers[l + 1]; RETURN NEXT;
		FOR c IN 1 .. m.adaptors LOOP
			adaptor := c;
			part := 'U'; shape := ARRAY[m.ranks[l], m.layers[l]];
			parameters := m.ranks[l]::bigint * m.layers[l]; RETURN NEXT;
			part := 'V'; shape := ARRAY[m.layers[l + 1], m.ranks[l]];
			parameters := m.ranks[l]::bigint * m.layers[l + 1]; RETURN NEXT;
			part := 'beta'; shape := ARRAY[m.layers[l + 1]];
			parameters := m.layers[l + 1]; RETURN NEXT;
		END LOOP;
	END LOOP;
END $$;
COMMENT ON FUNCTION floral_layers(text) IS 'every parameter of a model with its shape and size';

CREATE FUNCTION floral_rollback(model text, round int) RETURNS int
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM 1 FROM floral.models m WHERE m.name = model FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM floral.rounds r
				   WHERE r.model = floral_rollback.model AND r.round = floral_rollback.round) THEN
		RAISE EXCEPTION 'round % of model "%" is not kept', round, model
			USING ERRCODE = 'undefined_object';
	END IF;
	DELETE FROM floral.contributions c WHERE c.model = floral_rollback.model;
	DELETE FROM floral.rounds r WHERE r.model = floral_rollback.model AND r.round > floral_rollback.round;
	UPDATE floral.models m SET round = floral_rollback.round WHERE m.name = floral_rollback.model;
	RETURN round;
END $$;
COMMENT ON FUNCTION floral_rollback(text, int) IS
	'make a kept earlier round current again (tenant mixtures are private state and stay as they are)';

CREATE FUNCTION floral_prune(model text, keep int DEFAULT 1) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	cur int;
	n bigint;
BEGIN
	PERFORM floral._check(keep >= 1, 'keep must be at least 1');
	SELECT m.round INTO cur FROM floral.models m WHERE m.name = model FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object';
	END IF;
	DELETE FROM floral.rounds r WHERE r.model = floral_prune.model AND r.round <= cur - keep;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END $$;
COMMENT ON FUNCTION floral_prune(text, int) IS
	'delete all but the newest keep rounds of a model; returns how many were deleted';

CREATE VIEW floral.model_summary AS
SELECT m.name, m.task, m.layers, m.adaptors, m.ranks, m.round,
	   (SELECT sum(m.layers[i + 1]::bigint * m.layers[i] + m.layers[i + 1])
		  FROM generate_subscripts(m.layers, 1) i WHERE i < cardinality(m.layers)) AS base_parameters,
	   (SELECT coalesce(sum(m.adaptors * (m.ranks[i]::bigint * (m.layers[i] + m.layers[i + 1]) + m.layers[i + 1])), 0)
		  FROM generate_subscripts(m.layers, 1) i WHERE i < cardinality(m.layers)) AS adaptor_parameters,
	   (SELECT count(*) FROM floral.tenants t WHERE t.model = m.name) AS tenants,
	   (SELECT count(*) FROM floral.rounds r WHERE r.model = m.name) AS rounds_kept,
	   m.options
FROM floral.models m;
COMMENT ON VIEW floral.model_summary IS 'each model with its sizes, current round and number of tenants';

CREATE VIEW floral.tenant_mixtures AS
SELECT t.model, t.tenant, floral_mixture(t.model, t.tenant) AS mixture,
	   t.pinned IS NOT NULL AS pinned, t.examples, t.last_round, t.updated_at
FROM floral.tenants t;
COMMENT ON VIEW floral.tenant_mixtures IS 'each tenant''s mixture probabilities';
