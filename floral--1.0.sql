-- floral 1.0: federated low-rank adaptive learning (FLoRAL) in PostgreSQL.
-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION floral" to load this file. \quit

-- The script reads top to bottom by concern:
--   1. the tensor type
--   2. the catalog: tables, internal helpers, creating and dropping models
--   3. training and aggregation
--   4. prediction and evaluation, and tenants' mixtures
--   5. inspection and housekeeping, and differential privacy accounting
--   6. privileges
-- Every object's COMMENT follows its definition.  The coordinator and
-- branch layer is a separate extension, floral_federation
-- (floral_federation--1.0.sql), for the databases of a federation.
--
-- Catalog tables, the tensor type and internal helpers live in schema
-- "floral"; the user-facing floral_* functions in the extension's schema.
CREATE SCHEMA floral;
COMMENT ON SCHEMA floral IS 'floral: catalog of models, rounds, tenants and contributions';

------------------------------------------------------------------------
-- 1. The tensor type: dense float4 values with a shape
------------------------------------------------------------------------
CREATE TYPE floral.tensor;

CREATE FUNCTION floral.tensor_in(cstring) RETURNS floral.tensor
	AS 'MODULE_PATHNAME', 'floral_tensor_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral.tensor_in(cstring) IS
	'input function of the tensor type: nested brackets, for example ''[[1,2,3],[4,5,6]]''';
CREATE FUNCTION floral.tensor_out(floral.tensor) RETURNS cstring
	AS 'MODULE_PATHNAME', 'floral_tensor_out' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral.tensor_out(floral.tensor) IS
	'output function of the tensor type: nested brackets, as tensor_in reads them';
CREATE FUNCTION floral.tensor_recv(internal) RETURNS floral.tensor
	AS 'MODULE_PATHNAME', 'floral_tensor_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral.tensor_recv(internal) IS
	'binary input function of the tensor type (COPY BINARY, replication), fully validated';
CREATE FUNCTION floral.tensor_send(floral.tensor) RETURNS bytea
	AS 'MODULE_PATHNAME', 'floral_tensor_send' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral.tensor_send(floral.tensor) IS
	'binary output function of the tensor type: what floral.tensor_from_bytea reads back';

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
	AS 'MODULE_PATHNAME', 'floral_tensor_from_real_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral.tensor(real[]) IS
	'a one-dimensional tensor of the array''s values';
CREATE FUNCTION floral.tensor_to_real(floral.tensor) RETURNS real[]
	AS 'MODULE_PATHNAME', 'floral_tensor_to_real_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral.tensor_to_real(floral.tensor) IS
	'a tensor''s values as a flat real[]';
CREATE CAST (real[] AS floral.tensor) WITH FUNCTION floral.tensor(real[]) AS ASSIGNMENT;
CREATE CAST (floral.tensor AS real[]) WITH FUNCTION floral.tensor_to_real(floral.tensor) AS ASSIGNMENT;

CREATE FUNCTION floral.tensor_shape(floral.tensor) RETURNS int[]
	AS 'MODULE_PATHNAME', 'floral_tensor_shape' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral.tensor_shape(floral.tensor) IS 'the dimensions of a tensor';
CREATE FUNCTION floral.tensor_norm(floral.tensor) RETURNS double precision
	AS 'MODULE_PATHNAME', 'floral_tensor_norm' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral.tensor_norm(floral.tensor) IS 'the Euclidean norm of a tensor''s values';
CREATE FUNCTION floral.tensor_from_bytea(bytea) RETURNS floral.tensor
	AS 'MODULE_PATHNAME', 'floral_tensor_from_bytea' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral.tensor_from_bytea(bytea) IS
	'a tensor from its binary form (as floral.tensor_send makes it), fully validated';

------------------------------------------------------------------------
-- 2. Catalog: tables.  Every table has a primary key so that it can be
-- replicated; the model name is the key, so it means the same model in
-- every database of a federation.
------------------------------------------------------------------------
CREATE TABLE floral.models (
	name		text PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 127),
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
	contributed_call bigint,
	updated_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (model, tenant)
);
COMMENT ON TABLE floral.tenants IS 'each tenant''s private state: mixture logits, an optional pinned mixture, private adaptors (Local Adaptor)';
COMMENT ON COLUMN floral.tenants.start_logits IS 'logits the tenant had when it first trained in start_round: a retry in that round starts from them';
COMMENT ON COLUMN floral.tenants.contributed_call IS 'the training call whose sums hold the tenant''s contribution to start_round; while that call is in floral.contributions the tenant is not trained again in the round';

-- What training calls leave for aggregation: one row per call (one per
-- chunk of 8M values for very large models) holding the call's
-- hierarchical sums (FLORAL.md, "Aggregation"): N, M_c and the weighted
-- sums of the trained parameters, as raw float8 values.  A round therefore
-- stores O(model size) per call, never one model per tenant.  Logged like
-- every other table, so a crash keeps what committed and a standby or a
-- backup sees the same pending round.
CREATE SEQUENCE floral.call_seq;
COMMENT ON SEQUENCE floral.call_seq IS 'ids of training calls (floral.contributions.call, floral.tenants.contributed_call)';
CREATE TABLE floral.contributions (
	model		text NOT NULL REFERENCES floral.models ON DELETE CASCADE ON UPDATE CASCADE,
	round		int NOT NULL,
	call		bigint NOT NULL,
	chunk		int NOT NULL CHECK (chunk >= 0),
	tenants		int NOT NULL CHECK (tenants > 0),
	examples	double precision NOT NULL CHECK (examples > 0),
	weights		double precision[] NOT NULL,
	max_examples double precision NOT NULL,
	loss_sum	double precision NOT NULL,
	sums		bytea NOT NULL,
	trained_by	name NOT NULL DEFAULT session_user,
	created_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (model, round, call, chunk)
);
-- doubles do not compress: store them out of line without trying
ALTER TABLE floral.contributions ALTER COLUMN sums SET STORAGE EXTERNAL;
COMMENT ON TABLE floral.contributions IS 'per training call: the sums (N, M_c, weighted parameters) of the tenants it trained, until floral_aggregate merges them';
COMMENT ON COLUMN floral.contributions.examples IS 'N: the examples of the call''s tenants';
COMMENT ON COLUMN floral.contributions.weights IS 'M_c = sum n_k pi_kc for each shared adaptor';
COMMENT ON COLUMN floral.contributions.sums IS 'sum n_k base_k, then sum n_k pi_kc adaptor_kc, as float8 values in network byte order (float8send''s bytes, one after the other)';
COMMENT ON COLUMN floral.contributions.max_examples IS 'the largest n_k of the call (the scale of one tenant''s influence, for differential privacy)';

-- The history a dashboard reads: training loss of every tenant in every
-- round (written by floral_train), and evaluations that were asked to be
-- recorded (floral_evaluate(..., record => 'test')).
CREATE TABLE floral.history (
	model		text NOT NULL REFERENCES floral.models ON DELETE CASCADE ON UPDATE CASCADE,
	round		int NOT NULL,
	split		text NOT NULL,
	tenant		text NOT NULL,
	examples	bigint NOT NULL,
	loss		double precision,
	accuracy	double precision,
	recorded_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (model, round, split, tenant)
);
COMMENT ON TABLE floral.history IS 'per round, split and tenant: examples, loss and accuracy';

-- Optional: which group each tenant belongs to, for per-group history.
CREATE TABLE floral.tenant_groups (
	model		text NOT NULL REFERENCES floral.models ON DELETE CASCADE ON UPDATE CASCADE,
	tenant		text NOT NULL,
	tenant_group text NOT NULL,
	PRIMARY KEY (model, tenant)
);
COMMENT ON TABLE floral.tenant_groups IS 'optional tenant groups (regions, store formats...) for floral.history_by_group';

SELECT pg_catalog.pg_extension_config_dump('floral.history', '');
SELECT pg_catalog.pg_extension_config_dump('floral.tenant_groups', '');
SELECT pg_catalog.pg_extension_config_dump('floral.models', '');
SELECT pg_catalog.pg_extension_config_dump('floral.rounds', '');
SELECT pg_catalog.pg_extension_config_dump('floral.tenants', '');
SELECT pg_catalog.pg_extension_config_dump('floral.contributions', '');
SELECT pg_catalog.pg_extension_config_dump('floral.call_seq', '');

-- Cached models in every backend are checked again when these tables
-- change (src/cache.c).  The statement triggers cover changes made here and
-- fire always, so a TRUNCATE a logical replication apply worker replays is
-- seen too; a logical apply worker fires no statement triggers for row
-- changes, so the row triggers, enabled for replicas only, cover those.
CREATE FUNCTION floral._invalidate_cache() RETURNS trigger
	AS 'MODULE_PATHNAME', 'floral_invalidate_cache' LANGUAGE C;
COMMENT ON FUNCTION floral._invalidate_cache() IS
	'trigger: tell every backend''s model cache to check its entries again (src/cache.c)';
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['models', 'rounds', 'tenants'] LOOP
		EXECUTE format('CREATE TRIGGER invalidate_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE '
					   'ON floral.%I FOR EACH STATEMENT EXECUTE FUNCTION floral._invalidate_cache()', t);
		EXECUTE format('ALTER TABLE floral.%I ENABLE ALWAYS TRIGGER invalidate_cache', t);
		EXECUTE format('CREATE TRIGGER invalidate_cache_replica AFTER INSERT OR UPDATE OR DELETE '
					   'ON floral.%I FOR EACH ROW EXECUTE FUNCTION floral._invalidate_cache()', t);
		EXECUTE format('ALTER TABLE floral.%I ENABLE REPLICA TRIGGER invalidate_cache_replica', t);
	END LOOP;
END $$;

------------------------------------------------------------------------
-- 2. Catalog: internal helpers (options, checks, locks, the engines)
------------------------------------------------------------------------
CREATE FUNCTION floral._rank(rho real, fan_in int, fan_out int) RETURNS int
	AS 'MODULE_PATHNAME', 'floral_rank' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral._rank(real, int, int) IS
	'the rank of a layer''s adaptors for a parameter budget rho of the layer''s size';
CREATE FUNCTION floral._initial_parameters(model text) RETURNS floral.tensor
	AS 'MODULE_PATHNAME', 'floral_initial_parameters' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral._initial_parameters(text) IS
	'round 0 of a model: base and adaptors initialised from the model''s seed';
CREATE FUNCTION floral._train(model text, source text, epochs int, batch_size int,
		lr real, router_lr real, seed bigint)
	RETURNS TABLE (tenant text, examples bigint, loss double precision)
	AS 'MODULE_PATHNAME', 'floral_train_internal' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral._train(text, text, int, int, real, real, bigint) IS
	'floral_train''s engine, after its options are checked';
CREATE FUNCTION floral._gradient_check(model text, features real[], labels real[],
		logits real[], seed bigint, eps double precision)
	RETURNS TABLE (part text, parameters int, analytic_norm double precision,
				   max_abs_error double precision, relative_error double precision)
	AS 'MODULE_PATHNAME', 'floral_gradient_check' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral._gradient_check(text, real[], real[], real[], bigint, double precision) IS
	'test aid: compare analytic gradients with central finite differences at random parameters';
CREATE FUNCTION floral._step_check(model text, features real[], labels real[],
		logits real[], seed bigint, lr real)
	RETURNS TABLE (part text, parameters int, step_norm double precision,
				   max_abs_difference double precision, relative_difference double precision)
	AS 'MODULE_PATHNAME', 'floral_step_check' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral._step_check(text, real[], real[], real[], bigint, real) IS
	'test aid: compare the fused SGD step with backward, preconditioning and axpy at random parameters';
CREATE FUNCTION floral._personalize(model text, source text, epochs int, batch_size int,
		lr real, router_lr real, seed bigint, one_hot boolean)
	RETURNS TABLE (tenant text, examples bigint, loss double precision, mixture real[])
	AS 'MODULE_PATHNAME', 'floral_personalize_internal' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral._personalize(text, text, int, int, real, real, bigint, boolean) IS
	'floral_personalize''s engine, after its options are checked';

-- Validate an options object: only known keys, each of the expected JSON
-- type.  Returns the object with defaults filled in.
CREATE FUNCTION floral._options(options jsonb, defaults jsonb, what text)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
#variable_conflict use_variable
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
COMMENT ON FUNCTION floral._options(jsonb, jsonb, text) IS
	'an options object checked against its defaults (only known keys, each of the expected type), with the defaults filled in';

CREATE FUNCTION floral._check(ok boolean, message text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
#variable_conflict use_variable
BEGIN
	IF ok IS NOT TRUE THEN
		RAISE EXCEPTION '%', message USING ERRCODE = 'invalid_parameter_value';
	END IF;
END $$;
COMMENT ON FUNCTION floral._check(boolean, text) IS
	'raise invalid_parameter_value with message unless ok';

-- the model lock, exclusive: for whatever moves or rewrites a round (training
-- takes it shared; see floral_lock_model in src/catalog.c)
CREATE FUNCTION floral._lock_model(model text) RETURNS void
	AS 'MODULE_PATHNAME', 'floral_lock_model_sql' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral._lock_model(text) IS
	'take the model lock exclusively, for whatever moves or rewrites a round';

-- Functions that delete whatever a round holds read the table with the
-- transaction's snapshot; under REPEATABLE READ or SERIALIZABLE that would
-- miss what was committed while they waited for the model lock, so they
-- refuse up front.
CREATE FUNCTION floral._require_read_committed(what text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
	IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION '% must run in a READ COMMITTED transaction', what
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = format('This transaction is %s.', pg_catalog.current_setting('transaction_isolation')),
				  HINT = format('Run %s in a transaction of its own, or start it with BEGIN ISOLATION LEVEL READ COMMITTED.', what);
	END IF;
END $$;
COMMENT ON FUNCTION floral._require_read_committed(text) IS
	'refuse to run what deletes a round''s rows under REPEATABLE READ or SERIALIZABLE';

CREATE FUNCTION floral._check_integer(o jsonb, key text, lo bigint, hi bigint) RETURNS void
LANGUAGE sql IMMUTABLE AS $$
	SELECT floral._check((o->>key)::numeric BETWEEN lo AND hi
						 AND (o->>key)::numeric = trunc((o->>key)::numeric),
						 format('option "%s" must be an integer from %s to %s', key, lo, hi))
$$;
COMMENT ON FUNCTION floral._check_integer(jsonb, text, bigint, bigint) IS
	'check that an option is an integer in [lo, hi]';

CREATE FUNCTION floral._model_options(model text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_variable
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
COMMENT ON FUNCTION floral._model_options(text) IS
	'a model''s options, or undefined_object if there is no such model';

------------------------------------------------------------------------
-- 2. Catalog: models
------------------------------------------------------------------------
CREATE FUNCTION floral_create_model(name text, layers int[],
		task text DEFAULT 'classification', adaptors int DEFAULT 4,
		rank real DEFAULT 0.01, options jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	o jsonb;
	ranks int[] := '{}';
	n int;
BEGIN
	PERFORM floral._check(name IS NOT NULL AND octet_length(name) BETWEEN 1 AND 127,
						  'model name must have 1 to 127 bytes');
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
	PERFORM floral._check(rank > 0 AND rank <= 100000 AND rank <> 'NaN'::real,
						  'rank must be a positive number, at most 100000');

	o := floral._options(options, jsonb_build_object(
			'activation', 'relu', 'seed', 0, 'alpha', 1.0, 'min_prob', 0.01,
			'noise', 1.0, 'precondition', true, 'precondition_eps', 1e-5,
			'server_lr', 1.0, 'private_adaptors', false, 'ensemble', false,
			'router', null, 'adaptor_init', 'paper', 'reseed', null,
			'dp_clip', null, 'dp_noise', 0, 'dp_max_examples', null),
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
	PERFORM floral._check(jsonb_typeof(o->'ensemble') = 'boolean',
						  'option "ensemble" must be true or false');
	PERFORM floral._check(NOT (o->>'ensemble')::boolean OR adaptors >= 1,
						  'option "ensemble" needs at least one member (adaptors >= 1)');
	PERFORM floral._check(NOT ((o->>'ensemble')::boolean AND (o->>'private_adaptors')::boolean),
						  'options "ensemble" and "private_adaptors" exclude each other');
	-- router and reseed default to the probe router with re-seeding where
	-- the model has a shared bank of two or more adaptors (README, "A router
	-- that closes the oracle gap"), to the paper's router elsewhere
	IF jsonb_typeof(o->'router') = 'null' THEN
		o := o || jsonb_build_object('router', CASE WHEN adaptors >= 2 AND NOT (o->>'private_adaptors')::boolean
														 AND NOT (o->>'ensemble')::boolean THEN 'probe' ELSE 'paper' END);
	END IF;
	IF jsonb_typeof(o->'reseed') = 'null' THEN
		o := o || jsonb_build_object('reseed', adaptors >= 2 AND NOT (o->>'private_adaptors')::boolean
											   AND NOT (o->>'ensemble')::boolean);
	END IF;
	PERFORM floral._check(jsonb_typeof(o->'router') = 'string' AND o->>'router' IN ('paper', 'probe'),
						  'option "router" must be "paper" or "probe"');
	PERFORM floral._check(jsonb_typeof(o->'reseed') = 'boolean', 'option "reseed" must be true or false');
	PERFORM floral._check(o->>'adaptor_init' IN ('paper', 'random'),
						  'option "adaptor_init" must be "paper" or "random"');
	PERFORM floral._check(NOT (o->>'reseed')::boolean OR (adaptors >= 2 AND NOT (o->>'private_adaptors')::boolean
														  AND NOT (o->>'ensemble')::boolean),
						  'option "reseed" needs a shared bank of at least two adaptors');
	PERFORM floral._check(jsonb_typeof(o->'dp_clip') IN ('null', 'number')
						  AND coalesce((o->>'dp_clip')::real, 1) > 0,
						  'option "dp_clip" must be a positive number');
	PERFORM floral._check(jsonb_typeof(o->'dp_max_examples') IN ('null', 'number')
						  AND coalesce((o->>'dp_max_examples')::real, 1) > 0,
						  'option "dp_max_examples" must be a positive number');
	PERFORM floral._check((o->>'dp_noise')::real >= 0
						  AND ((o->>'dp_noise')::real = 0
							   OR (o->>'dp_clip' IS NOT NULL AND o->>'dp_max_examples' IS NOT NULL)),
						  'option "dp_noise" must be >= 0, and needs "dp_clip" and "dp_max_examples"');

	FOR i IN 1 .. n - 1 LOOP
		-- an Ensemble's members are full layers: no factors, no rank
		ranks := ranks || CASE WHEN adaptors = 0 OR (o->>'ensemble')::boolean THEN 0
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
				o || jsonb_build_object('seed', (o->>'seed')::numeric::bigint));
	INSERT INTO floral.rounds (model, round, params)
		VALUES (name, 0, floral._initial_parameters(name));
END $$;
COMMENT ON FUNCTION floral_create_model(text, int[], text, int, real, jsonb) IS
	'create a FLoRAL model: base MLP with the given widths and a bank of low-rank adaptors (options: private_adaptors for Local Adaptor, ensemble for C full models mixed at the output; router and reseed default to the probe router with re-seeding, "paper" and false give the paper''s FLoRAL)';

CREATE FUNCTION floral_drop_model(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	DELETE FROM floral.models m WHERE m.name = floral_drop_model.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" does not exist', name USING ERRCODE = 'undefined_object';
	END IF;
END $$;
COMMENT ON FUNCTION floral_drop_model(text) IS 'drop a model with all its rounds, tenants and contributions';

------------------------------------------------------------------------
-- 3. Training and aggregation
------------------------------------------------------------------------
CREATE FUNCTION floral_train(model text, source text, options jsonb DEFAULT '{}')
RETURNS TABLE (tenant text, examples bigint, loss double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	mo jsonb := floral._model_options(model);
	o jsonb;
BEGIN
	PERFORM floral._check(source IS NOT NULL, 'source must not be NULL');
	o := floral._options(options, jsonb_build_object(
			'epochs', 1, 'batch_size', 32, 'lr', 0.1, 'router_lr', null,
			'seed', mo->'seed'), 'floral_train');
	PERFORM floral._check_integer(o, 'epochs', 1, 100000);
	PERFORM floral._check_integer(o, 'batch_size', 1, 65536);
	PERFORM floral._check((o->>'lr')::real > 0 AND (o->>'lr')::real < 1e6,
						  'option "lr" must be a positive number');
	PERFORM floral._check(jsonb_typeof(o->'router_lr') IN ('null', 'number')
						  AND coalesce((o->>'router_lr')::real, 0) >= 0
						  AND coalesce((o->>'router_lr')::real, 0) < 1e6,
						  'option "router_lr" must be a number >= 0');
	PERFORM floral._check((o->>'seed')::numeric = trunc((o->>'seed')::numeric),
						  'option "seed" must be an integer');
	RETURN QUERY SELECT * FROM floral._train(model, source,
		(o->>'epochs')::numeric::int, (o->>'batch_size')::numeric::int, (o->>'lr')::real,
		coalesce((o->>'router_lr')::real, (o->>'lr')::real), (o->>'seed')::numeric::bigint);
END $$;
COMMENT ON FUNCTION floral_train(text, text, jsonb) IS
	'local training of every tenant in source from the current round; adds them into one row of sums for aggregation (a tenant that already contributed to the round is skipped)';

CREATE FUNCTION floral_aggregate(model text) RETURNS int
	AS 'MODULE_PATHNAME', 'floral_aggregate' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral_aggregate(text) IS
	'merge the current round''s contributions by FloralAvg into the next round; returns its number';

CREATE FUNCTION floral._call_average(model text, call bigint) RETURNS floral.tensor
	AS 'MODULE_PATHNAME', 'floral_call_average' LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION floral._call_average(text, bigint) IS
	'the parameters one pending training call averages to (for a call over one tenant, that tenant''s trained model)';

-- Drop the current round's pending contributions, so that its tenants can
-- be trained again in the round (each from the state it had at the start of
-- the round, so the result is as if the dropped calls had never run).
CREATE FUNCTION floral_discard(model text) RETURNS int
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	cur int;
	n int;
BEGIN
	PERFORM floral._require_read_committed('floral_discard');
	PERFORM floral._lock_model(model);
	SELECT m.round INTO cur FROM floral.models m WHERE m.name = model FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object';
	END IF;
	SELECT count(DISTINCT c.call) INTO n FROM floral.contributions c
		WHERE c.model = floral_discard.model AND c.round = cur;
	DELETE FROM floral.contributions c WHERE c.model = floral_discard.model AND c.round = cur;
	RETURN n;
END $$;
COMMENT ON FUNCTION floral_discard(text) IS
	'drop the current round''s pending contributions (so its tenants can be trained again); returns how many training calls were dropped';

CREATE FUNCTION floral_personalize(model text, source text, options jsonb DEFAULT '{}')
RETURNS TABLE (tenant text, examples bigint, loss double precision, mixture real[])
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
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
	PERFORM floral._check_integer(o, 'epochs', 1, 100000);
	PERFORM floral._check_integer(o, 'batch_size', 1, 65536);
	PERFORM floral._check((o->>'router_lr')::real > 0 AND (o->>'router_lr')::real < 1e6,
						  'option "router_lr" must be a positive number');
	PERFORM floral._check((o->>'seed')::numeric = trunc((o->>'seed')::numeric),
						  'option "seed" must be an integer');
	RETURN QUERY SELECT * FROM floral._personalize(model, source,
		(o->>'epochs')::numeric::int, (o->>'batch_size')::numeric::int, 0::real,
		(o->>'router_lr')::real, (o->>'seed')::numeric::bigint, o->>'method' = 'one_hot');
END $$;
COMMENT ON FUNCTION floral_personalize(text, text, jsonb) IS
	'fit only the mixture of each tenant in source (cold start); shared parameters stay frozen';

------------------------------------------------------------------------
-- 4. Prediction and evaluation
------------------------------------------------------------------------
-- Scoring a table: the source (key, tenant, features) runs read-only with
-- the caller's privileges; rows are buffered in work_mem, grouped by tenant
-- and run as GEMMs.  VOLATILE and PARALLEL UNSAFE, as any function that runs
-- a query given as text.
CREATE FUNCTION floral_predict_batch(model text, source text, with_proba boolean DEFAULT false)
	RETURNS TABLE (key text, tenant text, prediction real, proba real[])
	AS 'MODULE_PATHNAME', 'floral_predict_batch' LANGUAGE C;
COMMENT ON FUNCTION floral_predict_batch(text, text, boolean) IS
	'personalised prediction of every row of a source (key, tenant, features), as GEMMs over blocks of rows in work_mem; rows come out grouped by tenant; proba (with with_proba) as floral_predict_proba';

-- Per row.  PARALLEL SAFE: they only read floral's tables, and in a parallel
-- operation the cache reads them under the query's snapshot (src/cache.c).
CREATE FUNCTION floral_predict(model text, tenant text, features real[]) RETURNS real
	AS 'MODULE_PATHNAME', 'floral_predict' LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral_predict(text, text, real[]) IS
	'personalised prediction: the class index (classification) or the first output (regression)';

CREATE FUNCTION floral_predict_proba(model text, tenant text, features real[]) RETURNS real[]
	AS 'MODULE_PATHNAME', 'floral_predict_proba' LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral_predict_proba(text, text, real[]) IS
	'personalised class probabilities (classification) or all outputs (regression)';

CREATE FUNCTION floral_evaluate(model text, source text, record text DEFAULT NULL)
	RETURNS TABLE (tenant text, examples bigint, loss double precision, accuracy double precision)
	AS 'MODULE_PATHNAME', 'floral_evaluate_internal' LANGUAGE C;
COMMENT ON FUNCTION floral_evaluate(text, text, text) IS
	'per-tenant loss and accuracy of the current round over a labelled source; with record, also kept in floral.history under that split name';

CREATE FUNCTION floral_progress()
	RETURNS TABLE (pid int, command text, model text, tenant text, tenant_number int,
				   tenants int, epoch int, epochs int, examples_done bigint, examples bigint,
				   running_loss double precision, started_at timestamptz, updated_at timestamptz)
	AS 'MODULE_PATHNAME', 'floral_progress' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION floral_progress() IS
	'running floral calls in every session (needs floral in shared_preload_libraries)';
CREATE VIEW floral.progress AS
SELECT p.*, a.usename, a.datname, now() - p.started_at AS running_for
FROM floral_progress() p LEFT JOIN pg_stat_activity a ON a.pid = p.pid;
COMMENT ON VIEW floral.progress IS
	'running floral_train/floral_evaluate/floral_personalize calls: tenant i of n, epoch, examples done, running loss';

------------------------------------------------------------------------
-- 4. Prediction: mixtures
------------------------------------------------------------------------
CREATE FUNCTION floral_mixture(model text, tenant text) RETURNS real[]
	AS 'MODULE_PATHNAME', 'floral_mixture' LANGUAGE C STABLE;
COMMENT ON FUNCTION floral_mixture(text, text) IS
	'a tenant''s mixture probabilities over the adaptors (uniform for an unknown tenant)';

CREATE FUNCTION floral_set_mixture(model text, tenant text, mixture real[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	c int;
	s double precision;
BEGIN
	PERFORM floral._model_options(model);
	SELECT m.adaptors INTO c FROM floral.models m WHERE m.name = model;
	PERFORM floral._check(tenant IS NOT NULL AND octet_length(tenant) BETWEEN 1 AND 255,
						  'tenant name must have 1 to 255 bytes');
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
-- 5. Inspection and housekeeping
------------------------------------------------------------------------
CREATE FUNCTION floral_parameter(model text, part text, layer int,
		adaptor int DEFAULT NULL, round int DEFAULT NULL) RETURNS floral.tensor
	AS 'MODULE_PATHNAME', 'floral_parameter' LANGUAGE C STABLE;
COMMENT ON FUNCTION floral_parameter(text, text, int, int, int) IS
	'one parameter (W, b, U, V or beta) of a layer, with its shape; layers and adaptors count from 1';

CREATE FUNCTION floral_layers(model text)
RETURNS TABLE (layer int, part text, adaptor int, shape int[], parameters bigint)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_variable
DECLARE
	m floral.models;
BEGIN
	PERFORM floral._model_options(model);
	SELECT * INTO m FROM floral.models x WHERE x.name = model;
	IF coalesce((m.options->>'ensemble')::boolean, false) THEN
		-- an Ensemble: each member (numbered like an adaptor) is a full MLP
		FOR c IN 1 .. m.adaptors LOOP
			FOR l IN 1 .. cardinality(m.layers) - 1 LOOP
				layer := l; adaptor := c;
				part := 'W'; shape := ARRAY[m.layers[l + 1], m.layers[l]];
				parameters := m.layers[l + 1]::bigint * m.layers[l]; RETURN NEXT;
				part := 'b'; shape := ARRAY[m.layers[l + 1]];
				parameters := m.layers[l + 1]; RETURN NEXT;
			END LOOP;
		END LOOP;
		RETURN;
	END IF;
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
COMMENT ON FUNCTION floral_layers(text) IS 'every parameter of a model with its shape and size (an Ensemble''s members are numbered in adaptor)';

CREATE FUNCTION floral.shared_parameters(model text) RETURNS bigint
LANGUAGE sql STABLE AS $$
	-- what rounds, contributions and branch updates carry: everything but a
	-- private bank (Local Adaptor), which stays on its tenant's row
	SELECT sum(l.parameters)::bigint
	FROM @extschema@.floral_layers(model) l, floral.models m
	WHERE m.name = model
	  AND (l.part IN ('W', 'b') OR NOT coalesce((m.options->>'private_adaptors')::boolean, false))
$$;
COMMENT ON FUNCTION floral.shared_parameters(text) IS
	'the number of federated parameters of a model: what a round and a branch update hold';

CREATE FUNCTION floral_rollback(model text, round int) RETURNS int
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	PERFORM floral._require_read_committed('floral_rollback');
	PERFORM floral._lock_model(model);
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
	-- the tenants' start-of-round state in undone rounds is forgotten: a
	-- round of that number later is another round, and must not restart
	-- them from it (their mixtures themselves stay)
	UPDATE floral.tenants t SET start_round = NULL, start_logits = NULL, start_adaptors = NULL,
		contributed_call = NULL
		WHERE t.model = floral_rollback.model AND t.start_round > floral_rollback.round;
	-- at a coordinator (floral_federation), the undone rounds are collected
	-- again from scratch; schema floral is the owner's alone, so nobody else
	-- can have put a function of that name there
	IF pg_catalog.to_regprocedure('floral._federation_rollback(text, integer)') IS NOT NULL THEN
		EXECUTE 'SELECT floral._federation_rollback($1, $2)' USING model, round;
	END IF;
	UPDATE floral.models m SET round = floral_rollback.round WHERE m.name = floral_rollback.model;
	RETURN round;
END $$;
COMMENT ON FUNCTION floral_rollback(text, int) IS
	'make a kept earlier round current again (tenant mixtures are private state and stay as they are)';

CREATE FUNCTION floral_prune(model text, keep int DEFAULT 1) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	cur int;
	n bigint;
BEGIN
	PERFORM floral._check(keep >= 1, 'keep must be at least 1');
	PERFORM floral._lock_model(model);
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
	   -- an Ensemble has no base: its C members are its bank
	   CASE WHEN coalesce((m.options->>'ensemble')::boolean, false) THEN 0 ELSE
	   (SELECT sum(m.layers[i + 1]::bigint * m.layers[i] + m.layers[i + 1])
		  FROM generate_subscripts(m.layers, 1) i WHERE i < cardinality(m.layers)) END AS base_parameters,
	   CASE WHEN coalesce((m.options->>'ensemble')::boolean, false) THEN
	   (SELECT m.adaptors * sum(m.layers[i + 1]::bigint * m.layers[i] + m.layers[i + 1])
		  FROM generate_subscripts(m.layers, 1) i WHERE i < cardinality(m.layers)) ELSE
	   (SELECT coalesce(sum(m.adaptors * (m.ranks[i]::bigint * (m.layers[i] + m.layers[i + 1]) + m.layers[i + 1])), 0)
		  FROM generate_subscripts(m.layers, 1) i WHERE i < cardinality(m.layers)) END AS adaptor_parameters,
	   (SELECT count(*) FROM floral.tenants t WHERE t.model = m.name) AS tenants,
	   (SELECT count(*) FROM floral.rounds r WHERE r.model = m.name) AS rounds_kept,
	   m.options
FROM floral.models m;
COMMENT ON VIEW floral.model_summary IS 'each model with its sizes, current round and number of tenants';

CREATE VIEW floral.history_by_group AS
SELECT h.model, h.round, h.split, coalesce(g.tenant_group, 'all') AS tenant_group,
	   count(*) AS tenants, sum(h.examples) AS examples,
	   sum(h.loss * h.examples) / sum(h.examples) AS loss,
	   sum(h.accuracy * h.examples) / sum(h.examples) AS accuracy
FROM floral.history h
LEFT JOIN floral.tenant_groups g ON g.model = h.model AND g.tenant = h.tenant
GROUP BY h.model, h.round, h.split, coalesce(g.tenant_group, 'all');
COMMENT ON VIEW floral.history_by_group IS 'per round, split and tenant group: loss and accuracy weighted by examples';

CREATE VIEW floral.tenant_mixtures AS
SELECT t.model, t.tenant, floral_mixture(t.model, t.tenant) AS mixture,
	   t.pinned IS NOT NULL AS pinned, t.examples, t.last_round, t.updated_at
FROM floral.tenants t;
COMMENT ON VIEW floral.tenant_mixtures IS 'each tenant''s mixture probabilities';

------------------------------------------------------------------------
-- 5. Inspection: differential privacy accounting
------------------------------------------------------------------------
CREATE FUNCTION floral_dp_epsilon(noise double precision, sampling double precision, rounds int,
		delta double precision DEFAULT 1e-5, OUT epsilon double precision, OUT best_order int)
	AS 'MODULE_PATHNAME', 'floral_dp_epsilon' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION floral_dp_epsilon(double precision, double precision, int, double precision) IS
	'privacy accountant: cumulative epsilon at delta of rounds of the (Poisson-)sampled Gaussian mechanism with noise multiplier noise, by RDP at integer orders 2..256 (Mironov, Talwar, Zhang 2019)';

-- What a model's federated updates have spent.  Each round a tenant is in
-- (at most once: a tenant contributes once per round) is the Gaussian
-- mechanism of aggregate.c with noise multiplier dp_noise; the rounds are
-- the model's rounds so far, an upper bound on those any one tenant was in.
-- Branches are sampled by a public hash, not at random, so no
-- amplification by sampling is claimed: sampling is 1.
CREATE VIEW floral.privacy_ledger AS
SELECT m.name AS model,
	   (m.options->>'dp_clip')::real AS dp_clip,
	   (m.options->>'dp_noise')::real AS dp_noise,
	   (m.options->>'dp_max_examples')::real AS dp_max_examples,
	   CASE WHEN (m.options->>'dp_noise')::real > 0
			THEN (m.options->>'dp_max_examples')::float8 * sqrt(2 + (m.options->>'dp_clip')::float8 ^ 2) END
		   AS sensitivity,
	   1.0::float8 AS sampling,
	   m.round AS rounds,
	   1e-5::float8 AS delta,
	   e.epsilon, e.best_order,
	   CASE WHEN (m.options->>'dp_noise')::real > 0
			THEN 'tenant-level (epsilon, delta)-DP, adding or removing one tenant, of every update this model''s branches sent (N, M and the sums), over all its rounds so far'
			ELSE 'none: the model adds no noise' END AS guarantee
FROM floral.models m
CROSS JOIN LATERAL @extschema@.floral_dp_epsilon((m.options->>'dp_noise')::float8, 1.0, m.round, 1e-5) e;
COMMENT ON VIEW floral.privacy_ledger IS 'each model''s differential privacy spent so far: cumulative (epsilon, delta = 1e-5) of its federated updates by the RDP accountant, with the mechanism''s parameters';

------------------------------------------------------------------------
-- 6. Privileges
--
-- PUBLIC gets nothing but the tensor type.  Three roles (cluster-wide, so
-- they are created only if missing, and stay when the extension is dropped;
-- floral_federation adds a fourth, floral_branch, and its own grants):
--   floral_reader   predict, evaluate, read models, mixtures and history
--   floral_trainer  + train and personalise tenants, read the pending
--                   contributions
--   floral_admin    + create, drop, aggregate, discard, roll back, prune,
--                   pin mixtures (and, with floral_federation, run a
--                   coordinator or a branch)
-- Nobody but the extension's owner writes the tables that make up a model
-- (models, rounds, contributions, tenants, history): every role writes
-- them only through floral's functions.  Those
-- that write run their own fixed statements as the owner: in C, after the
-- caller's source query has run with the caller's own rights
-- (floral_become_owner in src/catalog.c); in PL/pgSQL, as SECURITY DEFINER
-- with a fixed search_path, granted to floral_admin only.  A source query
-- therefore still reads only what its caller may read.  floral_admin writes
-- directly only the configuration it owns: tenant groups.
------------------------------------------------------------------------
-- The objects of an extension in one catalog (pg_proc, pg_class): what its
-- script grants and revokes on, here and in floral_federation.
CREATE FUNCTION floral._extension_members(extname name, catalog name) RETURNS SETOF oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT d.objid FROM pg_depend d
	JOIN pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_extension'::regclass
	WHERE e.extname = $1 AND d.classid = $2::regclass AND d.deptype = 'e'
$$;
COMMENT ON FUNCTION floral._extension_members(name, name) IS
	'the objects of an extension in one catalog (pg_proc, pg_class), for its grants';

DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['floral_reader', 'floral_trainer', 'floral_admin'] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
	END LOOP;
END $$;
GRANT floral_reader TO floral_trainer;
GRANT floral_trainer TO floral_admin;

-- nothing for PUBLIC, except what using the tensor type needs
DO $$
DECLARE
	f regprocedure;
BEGIN
	FOR f IN SELECT r::regprocedure FROM floral._extension_members('floral', 'pg_proc') r
			 WHERE (SELECT p.proname FROM pg_catalog.pg_proc p WHERE p.oid = r) NOT IN ('tensor_in', 'tensor_out', 'tensor_recv', 'tensor_send', 'tensor',
									 'tensor_to_real', 'tensor_shape', 'tensor_norm', 'tensor_from_bytea') LOOP
		EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);
	END LOOP;
END $$;
REVOKE ALL ON SCHEMA floral FROM PUBLIC;
GRANT USAGE ON SCHEMA floral TO PUBLIC;	-- the tensor type; tables and functions stay closed

-- readers
GRANT EXECUTE ON FUNCTION floral_predict_batch(text, text, boolean),
	floral_predict(text, text, real[]), floral_predict_proba(text, text, real[]),
	floral_evaluate(text, text, text), floral_mixture(text, text), floral_layers(text), floral.shared_parameters(text),
	floral_parameter(text, text, int, int, int), floral_progress(),
	floral._model_options(text), floral._check(boolean, text), floral._options(jsonb, jsonb, text),
	floral._check_integer(jsonb, text, bigint, bigint), floral._require_read_committed(text),
	floral._rank(real, int, int), floral._gradient_check(text, real[], real[], real[], bigint, double precision),
	floral._step_check(text, real[], real[], real[], bigint, real),
	floral_dp_epsilon(double precision, double precision, int, double precision)
	TO floral_reader;
GRANT SELECT ON floral.models, floral.rounds, floral.tenants, floral.history, floral.tenant_groups,
	floral.model_summary, floral.tenant_mixtures, floral.history_by_group, floral.progress,
	floral.privacy_ledger
	TO floral_reader;

-- trainers: their tenants' state, never the shared parameters or a pin
GRANT EXECUTE ON FUNCTION floral_train(text, text, jsonb), floral._train(text, text, int, int, real, real, bigint),
	floral_personalize(text, text, jsonb),
	floral._personalize(text, text, int, int, real, real, bigint, boolean),
	floral._call_average(text, bigint)
	TO floral_trainer;
GRANT SELECT ON floral.contributions TO floral_trainer;

-- admins: everything
DO $$
DECLARE
	f regprocedure;
BEGIN
	FOR f IN SELECT r::regprocedure FROM floral._extension_members('floral', 'pg_proc') r LOOP
		EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO floral_admin', f);
	END LOOP;
END $$;
GRANT SELECT ON ALL TABLES IN SCHEMA floral TO floral_admin;
GRANT INSERT, UPDATE, DELETE ON floral.tenant_groups TO floral_admin;
