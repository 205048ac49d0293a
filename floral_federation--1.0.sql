-- floral_federation 1.0: the coordinator and branch layer of floral.
-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION floral_federation CASCADE" to load this file. \quit

------------------------------------------------------------------------
-- Federation: a coordinator database merges, branch databases train.
--
-- A single database needs only floral; coordinators and branches add this
-- extension (CREATE EXTENSION floral_federation CASCADE, which brings floral
-- and dblink).  It lives in floral's shared library and catalog schema.
--
-- Every connection is opened by a branch (dblink, with an ordinary libpq
-- conninfo), so branches may sit behind firewalls.  Raw rows never leave a
-- branch: it sends one update per round, the hierarchical sums of
-- FLORAL.md (N_B, M_B,c and one parameter-shaped vector of weighted sums),
-- and nothing about any single tenant.  The coordinator's remote API lives
-- in schema floral (floral.fed_*); the user-facing floral_coordinator_* and
-- floral_branch_* functions in floral's own schema.
--
-- The script reads top to bottom: the coordinator side, its remote API
-- (what branches call over dblink), the branch side, secure aggregation
-- (again coordinator side, remote API, branch side), what a rollback does
-- at a coordinator, and privileges.  Every object's COMMENT follows its
-- definition.
------------------------------------------------------------------------

-- The federation calls floral's functions (floral_train, floral_layers, ...)
-- from its own schema, so the two extensions share one.
DO $$
BEGIN
	IF (SELECT e.extnamespace FROM pg_catalog.pg_extension e WHERE e.extname = 'floral') <>
	   (SELECT e.extnamespace FROM pg_catalog.pg_extension e WHERE e.extname = 'floral_federation') THEN
		RAISE EXCEPTION 'floral_federation must be installed in the schema of floral'
			USING ERRCODE = 'invalid_schema_name',
				  HINT = format('Run CREATE EXTENSION floral_federation SCHEMA %I;',
								(SELECT n.nspname FROM pg_catalog.pg_extension e
								 JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
								 WHERE e.extname = 'floral'));
	END IF;
END $$;

CREATE FUNCTION floral._caller() RETURNS name
	AS 'MODULE_PATHNAME', 'floral_caller' LANGUAGE C STABLE;
COMMENT ON FUNCTION floral._caller() IS 'the role that called, even inside a SECURITY DEFINER function';
CREATE FUNCTION floral._branch_update(model text, round int, calls bigint[] DEFAULT NULL,
		OUT examples double precision, OUT weights real[], OUT sums floral.tensor,
		OUT loss_sum double precision, OUT tenants int)
	AS 'MODULE_PATHNAME', 'floral_branch_update' LANGUAGE C;
COMMENT ON FUNCTION floral._branch_update(text, int, bigint[]) IS
	'a branch''s update for a round: the sums of its pending calls (all, or those listed), as the coordinator merges them';
CREATE FUNCTION floral._merge_updates(model text) RETURNS int
	AS 'MODULE_PATHNAME', 'floral_merge_updates' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral._merge_updates(text) IS
	'the coordinator''s FloralAvg over the accepted updates of the current round; returns the new round';
CREATE FUNCTION floral._update_norm(model text, examples double precision,
		weights real[], sums floral.tensor) RETURNS double precision
	AS 'MODULE_PATHNAME', 'floral_update_norm' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral._update_norm(text, double precision, real[], floral.tensor) IS
	'the size of an update''s step from the round (Euclidean norm over base and used adaptors), which max_update_norm bounds';

-- coordinator side -----------------------------------------------------
CREATE TABLE floral.federations (
	model		text PRIMARY KEY REFERENCES floral.models ON DELETE CASCADE ON UPDATE CASCADE,
	min_branches int NOT NULL DEFAULT 1 CHECK (min_branches >= 1),
	deadline	interval NOT NULL DEFAULT '10 minutes',
	fraction	real NOT NULL DEFAULT 1 CHECK (fraction > 0 AND fraction <= 1),
	max_update_norm double precision CHECK (max_update_norm > 0),
	secure_aggregation boolean NOT NULL DEFAULT false,
	secagg_threshold int CHECK (secagg_threshold >= 2),
	round_started_at timestamptz NOT NULL DEFAULT now(),
	created_at	timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE floral.federations IS 'coordinator: models this database coordinates, with their quorum rules';

CREATE TABLE floral.branches (
	model		text NOT NULL REFERENCES floral.federations ON DELETE CASCADE ON UPDATE CASCADE,
	branch		text NOT NULL CHECK (length(branch) BETWEEN 1 AND 63),
	role		name,
	active		boolean NOT NULL DEFAULT true,
	added_at	timestamptz NOT NULL DEFAULT now(),
	last_contact timestamptz,
	last_round_seen int,
	PRIMARY KEY (model, branch)
);
COMMENT ON TABLE floral.branches IS 'coordinator: the branches that take part in each federated model';
COMMENT ON COLUMN floral.branches.role IS 'the role a branch connects as; only members of it may act as this branch (NULL: members of floral_admin)';

CREATE TABLE floral.updates (
	model		text NOT NULL REFERENCES floral.federations ON DELETE CASCADE ON UPDATE CASCADE,
	round		int NOT NULL,
	branch		text NOT NULL,
	status		text NOT NULL CHECK (status IN ('accepted', 'merged', 'stale', 'rejected', 'secure')),
	reason		text,
	examples	double precision,
	weights		real[],
	sums		floral.tensor,
	loss_sum	double precision,
	tenants		int,
	bytes		bigint,
	merged_into	int,
	received_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (model, round, branch)
);
COMMENT ON TABLE floral.updates IS 'coordinator: every update a branch sent, with what became of it; the key makes a resend harmless';
SELECT pg_catalog.pg_extension_config_dump('floral.federations', '');
SELECT pg_catalog.pg_extension_config_dump('floral.branches', '');
SELECT pg_catalog.pg_extension_config_dump('floral.updates', '');

CREATE FUNCTION floral_coordinator_setup(model text, options jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	o jsonb;
BEGIN
	PERFORM floral._model_options(model);
	o := floral._options(options, jsonb_build_object(
			'min_branches', 1, 'deadline', '10 minutes', 'fraction', 1.0,
			'max_update_norm', null, 'secure_aggregation', false, 'secagg_threshold', null),
		'floral_coordinator_setup');
	PERFORM floral._check(jsonb_typeof(o->'secagg_threshold') IN ('null', 'number')
						  AND coalesce((o->>'secagg_threshold')::numeric, 2) >= 2
						  AND coalesce((o->>'secagg_threshold')::numeric, 2) <= 1024
						  AND coalesce((o->>'secagg_threshold')::numeric, 2) = trunc(coalesce((o->>'secagg_threshold')::numeric, 2)),
						  'option "secagg_threshold" must be an integer from 2 to 1024');
	PERFORM floral._check((o->>'min_branches')::numeric >= 1
						  AND (o->>'min_branches')::numeric = trunc((o->>'min_branches')::numeric),
						  'option "min_branches" must be a positive integer');
	PERFORM floral._check((o->>'fraction')::real > 0 AND (o->>'fraction')::real <= 1,
						  'option "fraction" must be in (0, 1]');
	PERFORM floral._check(jsonb_typeof(o->'max_update_norm') IN ('null', 'number')
						  AND coalesce((o->>'max_update_norm')::float8, 1) > 0,
						  'option "max_update_norm" must be a positive number');
	INSERT INTO floral.federations AS f (model, min_branches, deadline, fraction, max_update_norm,
										 secure_aggregation, secagg_threshold)
		VALUES (model, (o->>'min_branches')::numeric::int, (o->>'deadline')::interval,
				(o->>'fraction')::real, (o->>'max_update_norm')::float8,
				(o->>'secure_aggregation')::boolean, (o->>'secagg_threshold')::numeric::int)
		ON CONFLICT ON CONSTRAINT federations_pkey DO UPDATE SET
			min_branches = excluded.min_branches, deadline = excluded.deadline,
			fraction = excluded.fraction, max_update_norm = excluded.max_update_norm,
			secure_aggregation = excluded.secure_aggregation, secagg_threshold = excluded.secagg_threshold;
END $$;
COMMENT ON FUNCTION floral_coordinator_setup(text, jsonb) IS
	'coordinator: federate a model (options min_branches, deadline, fraction, max_update_norm, secure_aggregation, secagg_threshold)';

CREATE FUNCTION floral_coordinator_add_branch(model text, branch text, role name DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
	IF NOT EXISTS (SELECT 1 FROM floral.federations f WHERE f.model = model) THEN
		RAISE EXCEPTION 'model "%" is not federated here', model
			USING ERRCODE = 'undefined_object', HINT = 'Call floral_coordinator_setup() first.';
	END IF;
	IF role IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = role) THEN
		RAISE EXCEPTION 'role "%" does not exist', role USING ERRCODE = 'undefined_object';
	END IF;
	INSERT INTO floral.branches AS b (model, branch, role) VALUES (model, branch, role)
		ON CONFLICT ON CONSTRAINT branches_pkey DO UPDATE SET active = true, role = excluded.role;
END $$;
COMMENT ON FUNCTION floral_coordinator_add_branch(text, text, name) IS
	'coordinator: let a branch take part, acting through the given role (grant that role floral_branch)';

CREATE FUNCTION floral_coordinator_remove_branch(model text, branch text) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
	UPDATE floral.branches b SET active = false
		WHERE b.model = floral_coordinator_remove_branch.model AND b.branch = floral_coordinator_remove_branch.branch;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'branch "%" is not part of model "%"', branch, model USING ERRCODE = 'undefined_object';
	END IF;
END $$;
COMMENT ON FUNCTION floral_coordinator_remove_branch(text, text) IS 'coordinator: stop a branch taking part (its history stays)';

-- Is a branch selected for a round?  With fraction < 1, each round picks
-- ceil(fraction * active) branches by a hash of (model, round, branch): a
-- fresh sample every round, the same answer every time it is asked.
CREATE FUNCTION floral._selected(model text, round int, branch text) RETURNS boolean
LANGUAGE sql STABLE AS $$
	WITH f AS (SELECT * FROM floral.federations WHERE federations.model = _selected.model),
	active AS (SELECT b.branch, md5(_selected.model || '/' || _selected.round || '/' || b.branch) AS h
			   FROM floral.branches b WHERE b.model = _selected.model AND b.active),
	k AS (SELECT greatest(ceil(f.fraction * (SELECT count(*) FROM active)),
						  least(f.min_branches, (SELECT count(*) FROM active))) AS k FROM f)
	SELECT coalesce((SELECT rn <= (SELECT k FROM k)
					 FROM (SELECT a.branch, row_number() OVER (ORDER BY a.h) AS rn FROM active a) s
					 WHERE s.branch = _selected.branch), false)
$$;
COMMENT ON FUNCTION floral._selected(text, int, text) IS
	'is a branch selected for a round (the federation''s fraction, by a public hash)';

CREATE FUNCTION floral._fed_branch(model text, branch text) RETURNS floral.branches
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	b floral.branches;
BEGIN
	SELECT * INTO b FROM floral.branches x WHERE x.model = _fed_branch.model AND x.branch = _fed_branch.branch;
	IF NOT FOUND OR NOT b.active THEN
		RAISE EXCEPTION 'branch "%" does not take part in model "%"', branch, model
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'The coordinator adds branches with floral_coordinator_add_branch().';
	END IF;
	-- the remote API runs as its owner; the caller must be the branch's role
	IF NOT pg_catalog.pg_has_role(floral._caller(), coalesce(b.role, 'floral_admin'), 'MEMBER') THEN
		RAISE EXCEPTION 'role "%" may not act as branch "%" of model "%"', floral._caller(), branch, model
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	UPDATE floral.branches x SET last_contact = now()
		WHERE x.model = _fed_branch.model AND x.branch = _fed_branch.branch;
	RETURN b;
END $$;
COMMENT ON FUNCTION floral._fed_branch(text, text) IS
	'the calling branch''s row at the coordinator, checked: registered, active, and the caller may act as it';

-- remote API, called by branches over dblink
CREATE FUNCTION floral.fed_spec(model text, branch text,
		OUT task text, OUT layers int[], OUT adaptors int, OUT rank real, OUT options jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	PERFORM floral._fed_branch(model, branch);
	SELECT m.task, m.layers, m.adaptors, m.rank, m.options
		INTO task, layers, adaptors, rank, options
		FROM floral.models m WHERE m.name = model;
END $$;
COMMENT ON FUNCTION floral.fed_spec(text, text) IS 'coordinator API: the model''s specification, for a branch that joins';

CREATE FUNCTION floral.fed_round(model text, branch text,
		OUT round int, OUT selected boolean, OUT round_id text, OUT have_update boolean,
		OUT secure boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	PERFORM floral._fed_branch(model, branch);
	SELECT m.round INTO round FROM floral.models m WHERE m.name = model;
	SELECT f.secure_aggregation INTO secure FROM floral.federations f WHERE f.model = fed_round.model;
	selected := floral._selected(model, round, branch);
	-- a round number can come back after a rollback: its creation time
	-- tells the branch whether the parameters it holds are still the ones
	SELECT r.created_at::text INTO round_id FROM floral.rounds r
		WHERE r.model = fed_round.model AND r.round = fed_round.round;
	have_update := EXISTS (SELECT 1 FROM floral.updates u WHERE u.model = fed_round.model
						   AND u.round = fed_round.round AND u.branch = fed_round.branch);
	UPDATE floral.branches b SET last_round_seen = fed_round.round
		WHERE b.model = fed_round.model AND b.branch = fed_round.branch;
END $$;
COMMENT ON FUNCTION floral.fed_round(text, text) IS 'coordinator API: the current round, its identity, whether the branch trains in it, whether its update has arrived, and whether updates are aggregated securely';

CREATE FUNCTION floral.fed_params(model text, branch text, round int) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	p floral.tensor;
BEGIN
	PERFORM floral._fed_branch(model, branch);
	SELECT r.params INTO p FROM floral.rounds r WHERE r.model = fed_params.model AND r.round = fed_params.round;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'round % of model "%" is not kept', round, model USING ERRCODE = 'undefined_object';
	END IF;
	RETURN encode(floral.tensor_send(p), 'base64');
END $$;
COMMENT ON FUNCTION floral.fed_params(text, text, int) IS 'coordinator API: a round''s shared parameters, base64 of the binary tensor';

CREATE FUNCTION floral.fed_submit(model text, branch text, round int,
		examples double precision, weights real[], sums text,
		loss_sum double precision, tenants int) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	cur int;
	m floral.models;
	f floral.federations;
	t floral.tensor;
	st text := 'accepted';
	why text;
	norm double precision;
	n int;
	nw int;
BEGIN
	IF model IS NULL OR branch IS NULL OR round IS NULL THEN
		RAISE EXCEPTION 'model, branch and round must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM floral._fed_branch(model, branch);
	PERFORM floral._require_read_committed('floral.fed_submit');
	-- the round must not be merged while an update for it is being accepted
	PERFORM pg_catalog.pg_advisory_xact_lock_shared(1718382450, pg_catalog.hashtext(model));
	SELECT * INTO m FROM floral.models x WHERE x.name = model;
	SELECT * INTO f FROM floral.federations x WHERE x.model = fed_submit.model;
	cur := m.round;

	IF fed_submit.round > cur THEN
		-- not recorded: it would take the place of the real update later
		RAISE EXCEPTION 'round % of model "%" has not started (current round %)', fed_submit.round, model, cur
			USING ERRCODE = 'object_not_in_prerequisite_state';
	ELSIF fed_submit.round < cur THEN
		st := 'stale';
		why := format('update for round %s arrived in round %s', fed_submit.round, cur);
	ELSIF NOT floral._selected(model, cur, branch) THEN
		st := 'rejected';
		why := format('branch %s was not selected for round %s', branch, cur);
	ELSIF f.secure_aggregation THEN
		-- never stored: the coordinator must not hold a branch's own update
		st := 'rejected';
		why := 'secure aggregation is on: updates travel masked (floral.fed_secagg_input)';
	ELSIF octet_length(sums) > (floral.shared_parameters(model) * 4 + 1024) * 4 / 3 * 1.02 + 1024 THEN
		-- refused before decoding: a huge payload costs nothing more here
		-- (base64 makes 4 characters of 3 bytes, plus a newline every 76)
		st := 'rejected';
		why := format('sums: %s bytes of base64 is more than the model''s parameters can take', octet_length(sums));
	ELSIF tenants IS NULL OR tenants < 1 THEN
		st := 'rejected';
		why := 'tenants must be at least 1';
	ELSE
		BEGIN
			t := floral.tensor_from_bytea(decode(sums, 'base64'));
		EXCEPTION WHEN OTHERS THEN
			st := 'rejected';
			why := 'sums: ' || SQLERRM;
		END;
		IF st = 'accepted' THEN
			n := floral.shared_parameters(model);
			-- one weight M_c per shared adaptor: none for private ones
			nw := CASE WHEN coalesce((m.options->>'private_adaptors')::boolean, false) THEN 0 ELSE m.adaptors END;
			-- every part of an accepted update must be there: the checks
			-- below (and floral._update_norm, which is STRICT) would let a
			-- NULL through, and the merge cannot use it
			IF t IS NULL THEN
				st := 'rejected';
				why := 'sums must not be NULL';
			ELSIF floral.tensor_shape(t) <> ARRAY[n] THEN
				st := 'rejected';
				why := format('sums have shape %s, the model has %s parameters', floral.tensor_shape(t), n);
			ELSIF examples IS NULL OR NOT (examples >= 1 AND examples < 'Infinity') THEN
				st := 'rejected';
				why := format('examples must be a finite count of at least 1, not %s', examples);
			ELSIF tenants IS NULL OR tenants < 1 THEN
				st := 'rejected';
				why := format('tenants must be a count of at least 1, not %s', tenants);
			ELSIF weights IS NULL OR coalesce(cardinality(weights), 0) <> nw
				  OR coalesce(array_ndims(weights), 1) <> 1
				  OR EXISTS (SELECT 1 FROM unnest(weights) w
							 WHERE w IS NULL OR NOT (w >= 0 AND w <= examples * 1.0001)) THEN
				st := 'rejected';
				why := format('weights must be %s numbers between 0 and the examples', nw);
			ELSIF loss_sum IS NULL OR NOT (loss_sum >= 0 AND loss_sum < 'Infinity') THEN
				st := 'rejected';
				why := 'loss_sum must be finite';
			ELSE
				-- the model the update averages to must be finite, and within
				-- the bound if there is one
				norm := floral._update_norm(model, examples, weights, t);
				IF NOT (norm < 'Infinity') THEN
					st := 'rejected';
					why := 'the update averages to a non-finite model';
				ELSIF norm > f.max_update_norm THEN
					st := 'rejected';
					why := format('update norm %s exceeds the bound %s', round(norm::numeric, 3), f.max_update_norm);
				END IF;
			END IF;
		END IF;
	END IF;

	INSERT INTO floral.updates AS u (model, round, branch, status, reason, examples, weights,
									 sums, loss_sum, tenants, bytes)
		VALUES (model, fed_submit.round, branch, st, why,
				CASE WHEN st = 'accepted' THEN examples END,
				CASE WHEN st = 'accepted' THEN weights END,
				CASE WHEN st = 'accepted' THEN t END,
				CASE WHEN st = 'accepted' THEN loss_sum END,
				tenants, octet_length(sums))
		ON CONFLICT ON CONSTRAINT updates_pkey DO NOTHING;
	IF NOT FOUND THEN
		RETURN 'duplicate';
	END IF;
	RETURN st;
END $$;
COMMENT ON FUNCTION floral.fed_submit(text, text, int, double precision, real[], text, double precision, int) IS
	'coordinator API: receive a branch''s update for a round; validates and records it, exactly once';

CREATE FUNCTION floral.fed_goodbye(model text, branch text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	PERFORM floral._fed_branch(model, branch);
	UPDATE floral.branches b SET active = false
		WHERE b.model = fed_goodbye.model AND b.branch = fed_goodbye.branch;
END $$;
COMMENT ON FUNCTION floral.fed_goodbye(text, text) IS
	'remote API: a branch leaves the model''s federation';

-- One step of the coordinator: merge the round when its quorum is there.
-- Safe to run at any time and concurrently (an advisory lock; a second
-- caller returns at once).
CREATE FUNCTION floral_coordinator_step(model text) RETURNS text
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	f floral.federations;
	cur int;
	selected int;
	arrived int;
	answered int;
	late boolean;
	new_round int;
	sa floral.secagg_rounds;
	why text;
BEGIN
	SELECT * INTO f FROM floral.federations x WHERE x.model = floral_coordinator_step.model;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" is not federated here', model USING ERRCODE = 'undefined_object';
	END IF;
	IF NOT pg_try_advisory_xact_lock(hashtext('floral.coordinator'), hashtext(model)) THEN
		RETURN 'busy: another step is running';
	END IF;
	-- no update may be accepted for the round while it is counted and merged
	PERFORM floral._lock_model(model);
	SELECT m.round INTO cur FROM floral.models m WHERE m.name = model FOR UPDATE;
	IF f.secure_aggregation THEN
		-- the stages move on as the branches' messages arrive; here they
		-- also move on at the deadline, and a round whose reveals are in
		-- is unmasked and merged
		sa := floral._secagg_advance(model);
		IF sa.stage <> 'ready' THEN
			RETURN format('round %s: secure aggregation, attempt %s, stage %s (%s)', cur, sa.attempt, sa.stage,
						  CASE sa.stage
							WHEN 'advertise' THEN format('%s keys advertised', (SELECT count(*) FROM floral.secagg_keys k
								WHERE k.model = sa.model AND k.round = sa.round AND k.attempt = sa.attempt))
							WHEN 'share' THEN format('%s of %s participants shared', (SELECT count(DISTINCT x.sender) FROM floral.secagg_shares x
								WHERE x.model = sa.model AND x.round = sa.round AND x.attempt = sa.attempt), cardinality(sa.participants))
							WHEN 'mask' THEN format('%s of %s masked updates', (SELECT count(*) FROM floral.secagg_inputs x
								WHERE x.model = sa.model AND x.round = sa.round AND x.attempt = sa.attempt), cardinality(sa.sharers))
							ELSE format('%s of %s revealed', (SELECT count(DISTINCT x.holder) FROM floral.secagg_reveals x
								WHERE x.model = sa.model AND x.round = sa.round AND x.attempt = sa.attempt), cardinality(sa.senders)) END);
		END IF;
		why := floral._secagg_finish(model);
		IF why IS NOT NULL THEN
			RETURN format('round %s: the secure sum was rejected: %s', cur, why);
		END IF;
		new_round := floral._merge_updates(model);
		PERFORM floral._secagg_merged(model, cur, new_round);
		UPDATE floral.federations x SET round_started_at = now() WHERE x.model = floral_coordinator_step.model;
		RETURN format('round %s merged securely from %s of %s branches (masks of %s recovered); round %s started',
					  cur, cardinality(sa.senders), cardinality(sa.participants),
					  cardinality(sa.sharers) - cardinality(sa.senders), new_round);
	END IF;
	SELECT count(*) INTO selected FROM floral.branches b
		WHERE b.model = floral_coordinator_step.model AND b.active
		  AND floral._selected(model, cur, b.branch);
	SELECT count(*) FILTER (WHERE u.status = 'accepted'),
		   count(*) FILTER (WHERE u.status IN ('accepted', 'rejected')
							AND floral._selected(model, cur, u.branch))
		INTO arrived, answered
		FROM floral.updates u
		WHERE u.model = floral_coordinator_step.model AND u.round = cur;
	late := now() > f.round_started_at + f.deadline;

	-- wait for every selected branch (a rejected update is an answer too),
	-- or after the deadline for the quorum
	IF arrived = 0 THEN
		RETURN format('round %s: waiting, no update yet from %s selected branches', cur, selected);
	ELSIF answered < selected AND NOT (late AND arrived >= f.min_branches) THEN
		RETURN format('round %s: waiting, %s of %s selected branches%s', cur, arrived, selected,
					  CASE WHEN late THEN format(', deadline passed but quorum is %s', f.min_branches) ELSE '' END);
	END IF;

	new_round := floral._merge_updates(model);
	UPDATE floral.federations x SET round_started_at = now() WHERE x.model = floral_coordinator_step.model;
	RETURN format('round %s merged from %s of %s selected branches; round %s started',
				  cur, arrived, selected, new_round);
END $$;
COMMENT ON FUNCTION floral_coordinator_step(text) IS
	'coordinator job: merge the current round once its quorum has arrived (safe to run any time, concurrently)';

-- floral.federation_rounds is defined with secure aggregation's tables, below
CREATE VIEW floral.federation_branches AS
SELECT b.model, b.branch, b.active, b.last_contact, now() - b.last_contact AS silent_for,
	   b.last_round_seen,
	   (SELECT max(u.round) FROM floral.updates u WHERE u.model = b.model AND u.branch = b.branch) AS last_update_round,
	   (SELECT u.status FROM floral.updates u WHERE u.model = b.model AND u.branch = b.branch
		 ORDER BY u.round DESC LIMIT 1) AS last_update_status
FROM floral.branches b;
COMMENT ON VIEW floral.federation_branches IS 'coordinator: each branch and its last contact';

-- branch side ----------------------------------------------------------
--
-- A branch's link to a coordinator records who joined.  Every step runs as
-- that role, never as whoever runs the job: the stored source query is read
-- with that role's rights, and dblink connects as that role (a role that is
-- not a superuser must then authenticate with a password, or use a client
-- certificate through dblink_connect_u, which a superuser grants it).  The
-- link and the outbox are written only through floral's functions, so no
-- other role can change the SQL or the connection a step uses.
CREATE TABLE floral.branch_links (
	model		text PRIMARY KEY,
	branch		text NOT NULL,
	coordinator	text NOT NULL,
	source		text NOT NULL,
	train_options jsonb NOT NULL DEFAULT '{}',
	owner		name NOT NULL,
	auth		text NOT NULL DEFAULT 'password' CHECK (auth IN ('password', 'certificate')),
	connect_timeout int NOT NULL DEFAULT 10 CHECK (connect_timeout BETWEEN 1 AND 3600),
	statement_timeout int NOT NULL DEFAULT 60000 CHECK (statement_timeout BETWEEN 100 AND 86400000),
	require_secure_aggregation boolean NOT NULL DEFAULT false,
	joined_at	timestamptz NOT NULL DEFAULT now(),
	last_contact timestamptz,
	last_error	text,
	last_error_at timestamptz,
	last_step	text,
	last_step_at timestamptz
);
COMMENT ON TABLE floral.branch_links IS 'branch: the models this database trains for a coordinator, how to reach it, and the role that joined (every step runs as it)';
COMMENT ON COLUMN floral.branch_links.coordinator IS 'libpq conninfo of the coordinator, or the name of a foreign server of dblink_fdw whose user mapping holds the credentials';
COMMENT ON COLUMN floral.branch_links.owner IS 'the role that joined: the step runs the source and connects as this role';
COMMENT ON COLUMN floral.branch_links.auth IS 'password: dblink_connect (a role that is not a superuser must send a password); certificate: dblink_connect_u (a superuser must grant it)';
COMMENT ON COLUMN floral.branch_links.statement_timeout IS 'milliseconds a call on the coordinator may take (SET statement_timeout there)';
COMMENT ON COLUMN floral.branch_links.require_secure_aggregation IS 'the branch sends its updates only masked: when the coordinator says secure aggregation is off it trains and sends nothing (no downgrade to plain updates)';

CREATE TABLE floral.outbox (
	model		text NOT NULL REFERENCES floral.branch_links ON DELETE CASCADE,
	round		int NOT NULL,
	examples	double precision NOT NULL,
	weights		real[] NOT NULL,
	sums		floral.tensor NOT NULL,
	loss_sum	double precision NOT NULL,
	tenants		int NOT NULL,
	secure		boolean NOT NULL DEFAULT false,
	masked_attempt int,
	created_at	timestamptz NOT NULL DEFAULT now(),
	sent_at		timestamptz,
	answer		text,
	bytes		bigint,
	PRIMARY KEY (model, round)
);
COMMENT ON TABLE floral.outbox IS 'branch: the update of each round; kept until the coordinator has it';
COMMENT ON COLUMN floral.outbox.masked_attempt IS 'secure aggregation: the attempt in which this update was (about to be) sent masked; recorded before it goes out, and the update is never masked in another attempt (the difference of two sums would give it away)';
COMMENT ON COLUMN floral.outbox.secure IS 'the federation aggregates securely: this update only ever leaves masked (floral._branch_phase_secagg)';
SELECT pg_catalog.pg_extension_config_dump('floral.branch_links', '');
SELECT pg_catalog.pg_extension_config_dump('floral.outbox', '');

-- a branch step at a time per model (a session-level lock: it spans the
-- step's transactions)
CREATE FUNCTION floral._branch_step_lock(model text) RETURNS boolean
	AS 'MODULE_PATHNAME', 'floral_branch_step_lock' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral._branch_step_lock(text) IS
	'take the session lock that lets one branch step run per model; false if another holds it';
CREATE FUNCTION floral._branch_step_unlock(model text) RETURNS void
	AS 'MODULE_PATHNAME', 'floral_branch_step_unlock' LANGUAGE C STRICT;
COMMENT ON FUNCTION floral._branch_step_unlock(text) IS
	'release the branch step''s session lock';

-- The link of a model, checked: it exists, the role that joined still
-- exists and is a floral_admin, and the session may act as it.
CREATE FUNCTION floral._branch_link(model text) RETURNS floral.branch_links
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_variable
DECLARE
	l floral.branch_links;
BEGIN
	SELECT * INTO l FROM floral.branch_links x WHERE x.model = _branch_link.model;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'this database is not a branch of model "%"', model
			USING ERRCODE = 'undefined_object', HINT = 'Call floral_branch_join() first.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = l.owner) THEN
		RAISE EXCEPTION 'role "%", which joined model "%", no longer exists', l.owner, model
			USING ERRCODE = 'undefined_object', HINT = 'Join again with floral_branch_join().';
	END IF;
	IF NOT pg_catalog.pg_has_role(l.owner, 'floral_admin', 'MEMBER') THEN
		RAISE EXCEPTION 'role "%", which joined model "%", is no longer a member of floral_admin', l.owner, model
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF NOT pg_catalog.pg_has_role(session_user, l.owner, 'MEMBER') THEN
		RAISE EXCEPTION 'role "%" may not run the branch of model "%"', session_user, model
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('A branch step runs as the role that joined, "%s".', l.owner),
				  HINT = format('Run it as "%s" (own the pg_cron job by it), or grant that role to "%s".', l.owner, session_user);
	END IF;
	RETURN l;
END $$;
COMMENT ON FUNCTION floral._branch_link(text) IS
	'a model''s branch link, checked: it exists, the role that joined exists and is a floral_admin, and the session may act as it';

-- Act as the role that joined, until the end of the transaction (the step's
-- phases commit right after) or until _branch_act_as(model, prev) puts the
-- previous role back.  Returns the role setting it replaced.
CREATE FUNCTION floral._branch_act_as(model text) RETURNS text
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	l floral.branch_links := floral._branch_link(model);
	prev text := pg_catalog.current_setting('role');
BEGIN
	PERFORM pg_catalog.set_config('role', l.owner, true);
	RETURN prev;
END $$;
COMMENT ON FUNCTION floral._branch_act_as(text) IS
	'act as the role that joined, until the end of the transaction; returns the role setting it replaced';

-- The branch's SECURITY DEFINER helpers act for the role that joined only:
-- the calling role (outside them) must be it or a member of it.
CREATE FUNCTION floral._branch_check_caller(model text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_variable
DECLARE
	owner name;
BEGIN
	SELECT x.owner INTO owner FROM floral.branch_links x WHERE x.model = _branch_check_caller.model;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'this database is not a branch of model "%"', model
			USING ERRCODE = 'undefined_object', HINT = 'Call floral_branch_join() first.';
	END IF;
	IF NOT pg_catalog.pg_has_role(floral._caller(), owner, 'MEMBER') THEN
		RAISE EXCEPTION 'role "%" may not act for the branch of model "%"', floral._caller(), model
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('The branch was joined by role "%s".', owner);
	END IF;
END $$;
COMMENT ON FUNCTION floral._branch_check_caller(text) IS
	'refuse a caller that is not the role that joined (or a member of it)';

-- Local writes of a branch, as floral's owner: links, outbox, status.
CREATE FUNCTION floral._branch_link_put(model text, branch text, coordinator text, source text,
		train_options jsonb, auth text, connect_timeout int, statement_timeout int,
		require_secure_aggregation boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	-- replacing a link takes the rights of the role that joined it
	IF EXISTS (SELECT 1 FROM floral.branch_links x WHERE x.model = _branch_link_put.model) THEN
		PERFORM floral._branch_check_caller(model);
	END IF;
	INSERT INTO floral.branch_links AS l (model, branch, coordinator, source, train_options, owner,
										  auth, connect_timeout, statement_timeout, require_secure_aggregation)
		VALUES (model, branch, coordinator, source, train_options, floral._caller(),
				auth, connect_timeout, statement_timeout, require_secure_aggregation)
		ON CONFLICT ON CONSTRAINT branch_links_pkey DO UPDATE SET
			branch = excluded.branch, coordinator = excluded.coordinator, source = excluded.source,
			train_options = excluded.train_options, owner = excluded.owner, auth = excluded.auth,
			connect_timeout = excluded.connect_timeout, statement_timeout = excluded.statement_timeout,
			require_secure_aggregation = excluded.require_secure_aggregation,
			joined_at = now();
END $$;
COMMENT ON FUNCTION floral._branch_link_put(text, text, text, text, jsonb, text, int, int, boolean) IS
	'record a branch''s link (as floral''s owner)';

CREATE FUNCTION floral._branch_link_drop(model text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	PERFORM floral._branch_check_caller(model);
	DELETE FROM floral.branch_links x WHERE x.model = _branch_link_drop.model;
END $$;
COMMENT ON FUNCTION floral._branch_link_drop(text) IS
	'forget a branch''s link and outbox (as floral''s owner)';

-- what the last step or contact said; error NULL clears the last error
CREATE FUNCTION floral._branch_note(model text, contact boolean, error text, step text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	PERFORM floral._branch_check_caller(model);
	UPDATE floral.branch_links x SET
		last_contact = CASE WHEN contact THEN now() ELSE x.last_contact END,
		last_error = CASE WHEN error IS NOT NULL THEN error WHEN contact THEN NULL ELSE x.last_error END,
		last_error_at = CASE WHEN error IS NOT NULL THEN now() WHEN contact THEN NULL ELSE x.last_error_at END,
		last_step = coalesce(step, x.last_step),
		last_step_at = CASE WHEN step IS NOT NULL THEN now() ELSE x.last_step_at END
		WHERE x.model = _branch_note.model;
END $$;
COMMENT ON FUNCTION floral._branch_note(text, boolean, text, text) IS
	'record what the last step or contact said in floral.branch_links';

CREATE FUNCTION floral._branch_mark_sent(model text, round int, answer text, bytes bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	PERFORM floral._branch_check_caller(model);
	UPDATE floral.outbox x SET sent_at = now(), answer = _branch_mark_sent.answer, bytes = _branch_mark_sent.bytes
		WHERE x.model = _branch_mark_sent.model AND x.round = _branch_mark_sent.round;
END $$;
COMMENT ON FUNCTION floral._branch_mark_sent(text, int, text, bigint) IS
	'record the coordinator''s answer to a sent update in the outbox';

-- a sent update the coordinator does not have (it rolled back) is void
CREATE FUNCTION floral._branch_void_sent(model text, round int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	PERFORM floral._branch_check_caller(model);
	DELETE FROM floral.outbox x WHERE x.model = _branch_void_sent.model AND x.round = _branch_void_sent.round
		AND x.sent_at IS NOT NULL;
END $$;
COMMENT ON FUNCTION floral._branch_void_sent(text, int) IS
	'void a sent update the coordinator no longer has (it rolled back)';

-- Run a query on the coordinator through dblink (wherever dblink is
-- installed), as the current role, on a connection of its own that is
-- closed again at once, with the link's connect and statement timeouts.
CREATE FUNCTION floral._remote(model text, query text, coldef text) RETURNS SETOF record
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	l floral.branch_links;
	nsp name;
	conn text := 'floral_branch_' || pg_catalog.md5(model);
	connstr text;
	left_open boolean;
	err_state text;
	err_text text;
	err_context text;
BEGIN
	SELECT * INTO l FROM floral.branch_links x WHERE x.model = _remote.model;
	SELECT n.nspname INTO nsp FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
		WHERE e.extname = 'dblink';
	IF nsp IS NULL THEN
		RAISE EXCEPTION 'a branch needs the dblink extension'
			USING ERRCODE = 'undefined_object', HINT = 'Run CREATE EXTENSION dblink;';
	END IF;
	connstr := l.coordinator;
	-- a conninfo (not a foreign server's name) gets the timeouts and
	-- keepalives, so that a stalled or vanished coordinator is noticed;
	-- later keywords override earlier ones in libpq
	IF pg_catalog.strpos(connstr, '=') > 0 THEN
		connstr := connstr || format(' connect_timeout=%s keepalives=1 keepalives_idle=30 keepalives_interval=10 keepalives_count=3',
									 l.connect_timeout);
	END IF;
	-- a call this session could not finish may have left its connection
	EXECUTE format('SELECT coalesce($1 = ANY (%I.dblink_get_connections()), false)', nsp)
		USING conn INTO STRICT left_open;
	IF left_open THEN
		EXECUTE format('SELECT %I.dblink_disconnect($1)', nsp) USING conn;
	END IF;
	EXECUTE format('SELECT %I.%I($1, $2)', nsp,
				   CASE WHEN l.auth = 'certificate' THEN 'dblink_connect_u' ELSE 'dblink_connect' END)
		USING conn, connstr;
	BEGIN
		EXECUTE format('SELECT %I.dblink_exec($1, $2)', nsp)
			USING conn, format('SET statement_timeout = %s', l.statement_timeout);
		RETURN QUERY EXECUTE format('SELECT * FROM %I.dblink($1, $2) AS t(%s)', nsp, coldef)
			USING conn, query;
	EXCEPTION WHEN OTHERS OR query_canceled THEN
		GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_text = MESSAGE_TEXT,
								err_context = PG_EXCEPTION_CONTEXT;
		EXECUTE format('SELECT %I.dblink_disconnect($1)', nsp) USING conn;
		-- dblink raises the coordinator's errors with their own SQLSTATE: a
		-- call the coordinator cancelled (past the statement_timeout set
		-- above) comes back as 57014, which no WHEN OTHERS catches, so the
		-- step could not keep its update and report.  It is the
		-- coordinator's failure, not a cancel of this session (that one is
		-- raised again as it is).
		IF err_state = '57014'
		   AND pg_catalog.strpos(err_context, format('on dblink connection named "%s"', conn)) > 0 THEN
			RAISE EXCEPTION USING MESSAGE = err_text, ERRCODE = 'connection_exception',
				DETAIL = format('The coordinator cancelled the call (the link''s statement_timeout is %s ms).',
								l.statement_timeout);
		END IF;
		RAISE;
	END;
	EXECUTE format('SELECT %I.dblink_disconnect($1)', nsp) USING conn;
END $$;
COMMENT ON FUNCTION floral._remote(text, text, text) IS
	'run a query on the coordinator through dblink, as the current role, on a connection of its own with the link''s timeouts';

-- Ask the coordinator for its newest round (network only: no lock, nothing
-- written).  params is set only when the local copy is not that round.
CREATE FUNCTION floral._branch_fetch(model text, OUT round int, OUT selected boolean,
		OUT have_update boolean, OUT round_id text, OUT params bytea, OUT secure boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	l floral.branch_links := floral._branch_link(model);
	r record;
	local_id text;
	p text;
BEGIN
	SELECT * INTO r FROM floral._remote(model,
		format('SELECT * FROM floral.fed_round(%L, %L)', model, l.branch),
		'round int, selected boolean, round_id text, have_update boolean, secure boolean')
		AS t(round int, selected boolean, round_id text, have_update boolean, secure boolean);
	round := r.round;
	secure := coalesce(r.secure, false);
	selected := r.selected;
	have_update := r.have_update;
	round_id := r.round_id;
	SELECT x.created_at::text INTO local_id FROM floral.rounds x
		WHERE x.model = _branch_fetch.model AND x.round = r.round;
	IF local_id IS DISTINCT FROM r.round_id THEN
		SELECT t.p INTO p FROM floral._remote(model,
			format('SELECT floral.fed_params(%L, %L, %s)', model, l.branch, r.round), 'p text') AS t(p text);
		params := decode(p, 'base64');
	END IF;
END $$;
COMMENT ON FUNCTION floral._branch_fetch(text) IS
	'ask the coordinator for its newest round (network only: no lock, nothing written)';

-- The local half of a pull: make the coordinator's round r the current one
-- here, with its parameters when they are new (params NULL: the local copy
-- is already that round).  Runs as floral's owner, since only floral writes
-- rounds; it never touches the network, and holds the model lock only for
-- its own short transaction.
CREATE FUNCTION floral._branch_sync(model text, round int, round_id text, params bytea)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	local_round int;
	t floral.tensor;
BEGIN
	PERFORM floral._branch_check_caller(model);
	PERFORM floral._require_read_committed('floral_branch_step');
	PERFORM floral._lock_model(model);
	SELECT m.round INTO local_round FROM floral.models m WHERE m.name = model FOR UPDATE;
	IF round IS NULL OR round < 0 THEN
		RAISE EXCEPTION 'the coordinator sent no valid round for model "%"', model
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF params IS NOT NULL THEN
		t := floral.tensor_from_bytea(params);
		IF floral.tensor_shape(t) <> ARRAY[floral.shared_parameters(model)::int] THEN
			RAISE EXCEPTION 'the coordinator sent round % of model "%" with the wrong number of parameters', round, model
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('It has shape %s.', floral.tensor_shape(t));
		END IF;
		DELETE FROM floral.rounds x WHERE x.model = _branch_sync.model AND x.round >= _branch_sync.round;
		INSERT INTO floral.rounds (model, round, params, created_at)
			VALUES (model, round, t, round_id::timestamptz);
		-- an update trained on other parameters for this round is void
		DELETE FROM floral.outbox o WHERE o.model = _branch_sync.model AND o.round >= _branch_sync.round;
		-- and so are secure-aggregation keys made for that round: a round
		-- that came back (a rollback) must never be masked with the same
		-- keys as before, or two masked updates would give away their
		-- difference
		DELETE FROM floral.secagg_secrets x WHERE x.model = _branch_sync.model AND x.round >= _branch_sync.round;
	END IF;
	-- rounds the coordinator does not have (it rolled back) are forgotten,
	-- and so is the start-of-round state of tenants in them: a round of
	-- that number later is another round
	DELETE FROM floral.rounds x WHERE x.model = _branch_sync.model AND x.round > _branch_sync.round;
	DELETE FROM floral.outbox o WHERE o.model = _branch_sync.model AND o.round > _branch_sync.round;
	DELETE FROM floral.secagg_secrets x WHERE x.model = _branch_sync.model AND x.round > _branch_sync.round;
	UPDATE floral.tenants x SET start_round = NULL, start_logits = NULL, start_adaptors = NULL,
		contributed_call = NULL
		WHERE x.model = _branch_sync.model AND x.start_round > _branch_sync.round;
	-- a new round, or new parameters for the same one, moves the model's row,
	-- so that caches and REPEATABLE READ trainers see the change
	IF local_round <> round OR params IS NOT NULL THEN
		UPDATE floral.models m SET round = _branch_sync.round WHERE m.name = _branch_sync.model;
	END IF;
	-- contributions to other rounds can never be sent any more
	DELETE FROM floral.contributions c WHERE c.model = _branch_sync.model AND c.round <> _branch_sync.round;
END $$;
COMMENT ON FUNCTION floral._branch_sync(text, int, text, bytea) IS
	'make the coordinator''s round the current one here (local only, as floral''s owner)';

-- Sum this branch's contributions to a round into an update in the outbox
-- and retire them (floral's owner: only floral deletes contributions).
CREATE FUNCTION floral._branch_collect(model text, round int, secure boolean DEFAULT false,
		OUT examples double precision, OUT tenants int)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	u record;
	calls bigint[];
BEGIN
	PERFORM floral._branch_check_caller(model);
	-- exactly the calls summed are retired: a local training call that
	-- commits meanwhile is not deleted unsummed (it is not part of this
	-- round's update, and is dropped when the round moves on)
	SELECT pg_catalog.array_agg(DISTINCT c.call) INTO calls FROM floral.contributions c
		WHERE c.model = _branch_collect.model AND c.round = _branch_collect.round;
	SELECT * INTO u FROM floral._branch_update(model, round, coalesce(calls, '{}'));
	INSERT INTO floral.outbox (model, round, examples, weights, sums, loss_sum, tenants, secure)
		VALUES (model, round, u.examples, u.weights, u.sums, u.loss_sum, u.tenants, secure);
	DELETE FROM floral.contributions c WHERE c.model = _branch_collect.model
		AND c.round = _branch_collect.round AND c.call = ANY (calls);
	examples := u.examples;
	tenants := u.tenants;
END $$;
COMMENT ON FUNCTION floral._branch_collect(text, int, boolean) IS
	'sum this branch''s contributions to a round into an update in the outbox, and retire them';

-- Send every unsent update, oldest first; stop at the first failure.  Each
-- update is one network call and then one short local write; a resend after
-- a failure in between is answered "duplicate" by the coordinator.
CREATE FUNCTION floral._branch_flush(model text) RETURNS int
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	l floral.branch_links := floral._branch_link(model);
	o floral.outbox;
	payload text;
	q text;
	answer text;
	sent int := 0;
BEGIN
	-- a link that requires secure aggregation never sends a plain update
	FOR o IN SELECT * FROM floral.outbox x WHERE x.model = _branch_flush.model AND x.sent_at IS NULL
			 AND NOT x.secure AND NOT l.require_secure_aggregation ORDER BY x.round LOOP
		payload := encode(floral.tensor_send(o.sums), 'base64');
		q := format('SELECT floral.fed_submit(%L, %L, %s, %s, %L, %L, %s, %s)',
					model, l.branch, o.round, o.examples, o.weights, payload, o.loss_sum, o.tenants);
		SELECT t.a INTO answer FROM floral._remote(model, q, 'a text') AS t(a text);
		PERFORM floral._branch_mark_sent(model, o.round, answer, length(q));
		sent := sent + 1;
	END LOOP;
	PERFORM floral._branch_note(model, true, NULL, NULL);
	RETURN sent;
END $$;
COMMENT ON FUNCTION floral._branch_flush(text) IS
	'send every unsent update, oldest first, stopping at the first failure; returns how many were sent';

CREATE FUNCTION floral_branch_join(model text, branch text, coordinator text,
		source text, train_options jsonb DEFAULT '{}', options jsonb DEFAULT '{}') RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	s record;
	existing floral.models;
	o jsonb;
	f record;
BEGIN
	PERFORM floral._check(source IS NOT NULL AND coordinator IS NOT NULL AND branch IS NOT NULL,
						  'branch, coordinator and source must not be NULL');
	PERFORM floral._options(train_options, jsonb_build_object(
			'epochs', 1, 'batch_size', 32, 'lr', 0.1, 'router_lr', null, 'seed', 0), 'floral_train');
	o := floral._options(options, jsonb_build_object(
			'auth', 'password', 'connect_timeout', 10, 'statement_timeout', 60000,
			'require_secure_aggregation', false), 'floral_branch_join');
	PERFORM floral._check(o->>'auth' IN ('password', 'certificate'),
						  'option "auth" must be "password" or "certificate"');
	PERFORM floral._check_integer(o, 'connect_timeout', 1, 3600);
	PERFORM floral._check_integer(o, 'statement_timeout', 100, 86400000);
	-- the link records the caller: every later step runs as this role
	PERFORM floral._branch_link_put(model, branch, coordinator, source, coalesce(train_options, '{}'),
									o->>'auth', (o->>'connect_timeout')::numeric::int,
									(o->>'statement_timeout')::numeric::int,
									(o->>'require_secure_aggregation')::boolean);
	SELECT * INTO s FROM floral._remote(model,
		format('SELECT * FROM floral.fed_spec(%L, %L)', model, branch),
		'task text, layers int[], adaptors int, rank real, options jsonb')
		AS t(task text, layers int[], adaptors int, rank real, options jsonb);
	SELECT * INTO existing FROM floral.models m WHERE m.name = model;
	IF FOUND THEN
		IF (existing.task, existing.layers, existing.adaptors, existing.rank, existing.options)
		   IS DISTINCT FROM (s.task, s.layers, s.adaptors, s.rank, s.options) THEN
			RAISE EXCEPTION 'a different model "%" exists here', model
				USING ERRCODE = 'duplicate_object';
		END IF;
	ELSE
		PERFORM floral_create_model(model, s.layers, s.task, s.adaptors, s.rank, s.options);
	END IF;
	-- start from the coordinator's current round
	f := floral._branch_fetch(model);
	PERFORM floral._branch_sync(model, f.round, f.round_id, f.params);
	PERFORM floral._branch_note(model, true, NULL, NULL);
END $$;
COMMENT ON FUNCTION floral_branch_join(text, text, text, text, jsonb, jsonb) IS
	'branch: take part in a coordinator''s model, training the tenants of source; every step runs as the role that joined (options auth, connect_timeout, statement_timeout, require_secure_aggregation)';

CREATE FUNCTION floral_branch_leave(model text) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	l floral.branch_links := floral._branch_link(model);
	prev text := floral._branch_act_as(model);
BEGIN
	PERFORM * FROM floral._remote(model,
		format('SELECT floral.fed_goodbye(%L, %L)::text', model, l.branch), 'x text') AS t(x text);
	PERFORM pg_catalog.set_config('role', prev, true);
	PERFORM floral._branch_link_drop(model);
END $$;
COMMENT ON FUNCTION floral_branch_leave(text) IS
	'branch: stop taking part (the local model and tenants stay)';

-- The phases of a step.  Each runs as the role that joined and catches its
-- own errors, so that the step always reaches its end and releases its
-- lock; what went wrong is returned and kept in floral.branch_links.
CREATE FUNCTION floral._branch_phase_pull(model text, OUT round int, OUT selected boolean,
		OUT have_update boolean, OUT secure boolean, OUT error text)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	f record;
BEGIN
	PERFORM floral._branch_act_as(model);
	f := floral._branch_fetch(model);
	round := f.round;
	selected := f.selected;
	have_update := f.have_update;
	secure := f.secure;
	-- back from the network: install the round in a short local transaction
	PERFORM floral._branch_sync(model, f.round, f.round_id, f.params);
	PERFORM floral._branch_note(model, true, NULL, NULL);
EXCEPTION WHEN OTHERS THEN
	error := SQLERRM;
END $$;
COMMENT ON FUNCTION floral._branch_phase_pull(text) IS
	'branch step, pull: catch up with the coordinator''s round';

CREATE FUNCTION floral._branch_phase_send(model text, OUT sent int, OUT error text)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
	PERFORM floral._branch_act_as(model);
	sent := floral._branch_flush(model);
EXCEPTION WHEN OTHERS THEN
	error := SQLERRM;
END $$;
COMMENT ON FUNCTION floral._branch_phase_send(text) IS
	'branch step, send: flush the outbox';

CREATE FUNCTION floral._branch_phase_train(model text, round int, secure boolean DEFAULT false,
		OUT tenants int, OUT examples double precision, OUT error text)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	l floral.branch_links := floral._branch_link(model);
	u record;
BEGIN
	PERFORM floral._branch_act_as(model);
	PERFORM floral._branch_void_sent(model, round);
	PERFORM floral_train(model, l.source, l.train_options);
	u := floral._branch_collect(model, round, secure);
	tenants := u.tenants;
	examples := u.examples;
EXCEPTION WHEN OTHERS THEN
	error := SQLERRM;
END $$;
COMMENT ON FUNCTION floral._branch_phase_train(text, int, boolean) IS
	'branch step, train: train every local tenant from the round and collect the branch''s update';

-- One step of a branch: send what waits in the outbox, catch up with the
-- coordinator's round and, if selected and not done yet, train every local
-- tenant from it and send the branch's update.  A procedure, so that its
-- phases commit in between: no transaction and no lock spans a network
-- call, and the training holds the model lock only while it trains.  Safe
-- to run at any time and concurrently (a second step returns "busy"); a
-- coordinator that cannot be reached, or stalls past the link's timeouts,
-- leaves the update in the outbox for the next step.  Call it outside a
-- transaction block: CALL floral_branch_step('m').
CREATE PROCEDURE floral_branch_step(model text, INOUT status text DEFAULT NULL)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	l floral.branch_links;
	pulled record;
	s record;
	t record;
	a record;
	acts text[] := '{}';
	failed boolean := false;
	msg text := '';
BEGIN
	l := floral._branch_link(model);
	-- inside a transaction block this fails at once, before anything is held
	COMMIT;
	IF NOT floral._branch_step_lock(model) THEN
		status := 'busy: another step is running';
		RETURN;
	END IF;

	-- 1. catch up with the coordinator's round (an update trained on
	-- parameters the coordinator no longer has is voided here, before
	-- anything is sent)
	pulled := floral._branch_phase_pull(model);
	COMMIT;
	IF pulled.error IS NOT NULL THEN
		msg := 'coordinator unreachable: ' || pulled.error;
	ELSE
		-- 2. send what waits from earlier attempts
		s := floral._branch_phase_send(model);
		COMMIT;
		IF s.error IS NOT NULL THEN
			msg := 'coordinator unreachable: ' || s.error;
		ELSE
			IF s.sent > 0 THEN
				msg := format('sent %s waiting update(s); ', s.sent);
			END IF;
			IF NOT pulled.selected THEN
				msg := msg || format('round %s: not selected', pulled.round);
			ELSIF pulled.secure THEN
				-- secure aggregation: train once, then as many of its stages
				-- as the other branches have made possible, each committed
				IF NOT pulled.have_update AND NOT EXISTS (SELECT 1 FROM floral.outbox x
						WHERE x.model = floral_branch_step.model AND x.round = pulled.round) THEN
					t := floral._branch_phase_train(model, pulled.round, true);
					COMMIT;
					failed := t.error IS NOT NULL;
					IF failed THEN
						msg := msg || format('round %s: training failed: %s', pulled.round, t.error);
					ELSE
						msg := msg || format('round %s: trained %s tenants on %s rows; ', pulled.round, t.tenants, t.examples);
					END IF;
				END IF;
				IF NOT failed THEN
					FOR i IN 1 .. 12 LOOP
						a := floral._branch_phase_secagg(model, pulled.round);
						COMMIT;
						IF a.action IS NOT NULL THEN
							acts := acts || a.action;
						END IF;
						EXIT WHEN a.error IS NOT NULL OR NOT a.more;
					END LOOP;
					msg := msg || format('round %s: secure aggregation: %s', pulled.round,
										 coalesce(array_to_string(acts, '; '), ''));
					IF a.error IS NOT NULL THEN
						msg := msg || CASE WHEN acts = '{}' THEN '' ELSE '; ' END || 'failed: ' || a.error;
					END IF;
				END IF;
			ELSIF l.require_secure_aggregation THEN
				-- no downgrade: a coordinator that says secure aggregation
				-- is off gets nothing from this branch
				msg := msg || format('round %s: refused: the coordinator says secure aggregation is off and this link requires it (require_secure_aggregation): nothing trained or sent',
									 pulled.round);
			ELSIF pulled.have_update OR EXISTS (SELECT 1 FROM floral.outbox x
						  WHERE x.model = floral_branch_step.model AND x.round = pulled.round
						  AND x.sent_at IS NOT NULL AND s.sent > 0) THEN
				-- the coordinator had it already, or it went out just now
				msg := msg || format('round %s: already trained', pulled.round);
			ELSE
				-- 3. train the local tenants (local only, the model lock held shared)
				t := floral._branch_phase_train(model, pulled.round, false);
				COMMIT;
				IF t.error IS NOT NULL THEN
					msg := msg || format('round %s: training failed: %s', pulled.round, t.error);
				ELSE
					msg := msg || format('round %s: trained %s tenants on %s rows', pulled.round, t.tenants, t.examples);
					-- 4. send it
					s := floral._branch_phase_send(model);
					COMMIT;
					IF s.error IS NULL THEN
						msg := msg || ', update sent';
					ELSE
						msg := msg || ', update kept in the outbox: ' || s.error;
					END IF;
				END IF;
			END IF;
		END IF;
	END IF;

	status := msg;
	PERFORM floral._branch_note(model, false,
		CASE WHEN msg LIKE '%unreachable%' OR msg LIKE '%kept in the outbox%' OR msg LIKE '%failed%'
				  OR msg LIKE '%refused%'
			 THEN msg END, msg);
	PERFORM floral._branch_step_unlock(model);
	COMMIT;
END $$;
COMMENT ON PROCEDURE floral_branch_step(text, text) IS
	'branch job: send waiting updates, catch up, train the local tenants for a new round, send (phases commit in between; runs as the role that joined; CALL it outside a transaction block)';

CREATE VIEW floral.branch_status AS
SELECT l.model, l.branch, l.owner AS runs_as, m.round AS local_round, l.last_contact,
	   l.last_step, l.last_step_at, l.last_error, l.last_error_at,
	   (SELECT count(*) FROM floral.outbox o WHERE o.model = l.model AND o.sent_at IS NULL) AS waiting_updates,
	   (SELECT max(o.round) FROM floral.outbox o WHERE o.model = l.model AND o.sent_at IS NOT NULL) AS last_sent_round,
	   l.connect_timeout, l.statement_timeout
FROM floral.branch_links l LEFT JOIN floral.models m ON m.name = l.model;
COMMENT ON VIEW floral.branch_status IS 'branch: where this branch stands with each coordinator, and the role its steps run as';

------------------------------------------------------------------------
-- Secure aggregation (a federation option): the coordinator learns the
-- sum of the round's branch updates and nothing about any one of them.
--
-- Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
-- Machine Learning", CCS 2017, with double masking, run as extra stages of
-- a round.  Every message goes from a branch to the coordinator (branches
-- open every connection and never reach each other); what one branch says
-- to another travels sealed through the coordinator.  Per round and
-- attempt, with U1 >= U2 >= U3 the branches still there at each stage:
--
--   advertise  each selected branch sends two fresh X25519 public keys
--              (c: to seal shares, s: to agree pairwise masks); U1 = those
--              that did, t = floor(|U1| / 2) + 1 unless configured higher
--              (each branch refuses a lower t, and holds the coordinator
--              to the t it shared with at the later stages)
--   share      each branch of U1 splits its s key and a fresh self-mask
--              seed b into t-of-|U1| Shamir shares and sends each branch
--              of U1 its pair, sealed with ChaCha20-Poly1305; U2 = senders
--   mask       each branch of U2 sends its update in fixed point (step
--              2^-20, modulo 2^64) plus PRG(b) plus one pairwise mask per
--              other branch of U2; U3 = senders
--   unmask     each branch of U3 opens the shares it holds and reveals, for
--              every branch of U2, the share of b if it is in U3, else the
--              share of s; never both for one branch (it records its
--              answer first and never gives another)
--   ready      t reveals are in: the coordinator recovers the b of U3 and
--              the s of U2 \ U3, removes the masks and merges the sum
--
-- A stage closes when every branch expected has answered, or after the
-- federation's deadline with at least t (at least 2, and min_branches, for
-- advertise); with fewer than t past the deadline the round starts again
-- as a new attempt with fresh keys; a branch whose update went out masked
-- in the failed attempt sits the rest of the round out (one update is
-- never masked twice).  All cryptography is in src/secagg.c.
------------------------------------------------------------------------
CREATE FUNCTION floral._secagg_keypair(OUT private bytea, OUT public bytea)
	AS 'MODULE_PATHNAME', 'floral_secagg_keypair' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION floral._secagg_keypair() IS 'secure aggregation: a fresh X25519 key pair (raw 32-byte keys)';
CREATE FUNCTION floral._secagg_public(private bytea) RETURNS bytea
	AS 'MODULE_PATHNAME', 'floral_secagg_public' LANGUAGE C IMMUTABLE STRICT;
COMMENT ON FUNCTION floral._secagg_public(bytea) IS 'secure aggregation: the X25519 public key of a private key';
CREATE FUNCTION floral._secagg_seed() RETURNS bytea
	AS 'MODULE_PATHNAME', 'floral_secagg_seed' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION floral._secagg_seed() IS 'secure aggregation: 32 random bytes (a self-mask seed)';
CREATE FUNCTION floral._secagg_make_shares(model text, round int, attempt int, sender text,
		c_private bytea, s_private bytea, b_seed bytea, threshold int,
		recipients text[], c_publics bytea[]) RETURNS bytea[]
	AS 'MODULE_PATHNAME', 'floral_secagg_make_shares' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION floral._secagg_make_shares(text, int, int, text, bytea, bytea, bytea, int, text[], bytea[]) IS
	'secure aggregation: t-of-n Shamir shares of the s key and the self-mask seed, one sealed pair per recipient';
CREATE FUNCTION floral._secagg_open_share(model text, round int, attempt int, sender text,
		recipient text, c_private bytea, sender_c_public bytea, sealed bytea,
		OUT x int, OUT s_share bytea, OUT b_share bytea)
	AS 'MODULE_PATHNAME', 'floral_secagg_open_share' LANGUAGE C IMMUTABLE;
COMMENT ON FUNCTION floral._secagg_open_share(text, int, int, text, text, bytea, bytea, bytea) IS
	'secure aggregation: open a sealed share; an altered or replayed one fails with 28000';
CREATE FUNCTION floral._secagg_combine(xs int[], shares bytea[], threshold int) RETURNS bytea
	AS 'MODULE_PATHNAME', 'floral_secagg_combine' LANGUAGE C IMMUTABLE;
COMMENT ON FUNCTION floral._secagg_combine(int[], bytea[], int) IS
	'secure aggregation: the secret behind at least threshold Shamir shares';
CREATE FUNCTION floral._secagg_quantize(examples double precision, weights real[], sums floral.tensor,
		loss_sum double precision, tenants int) RETURNS bytea
	AS 'MODULE_PATHNAME', 'floral_secagg_quantize' LANGUAGE C IMMUTABLE STRICT;
COMMENT ON FUNCTION floral._secagg_quantize(double precision, real[], floral.tensor, double precision, int) IS
	'secure aggregation: an update in fixed point (step 2^-20, 64-bit words), before masking';
CREATE FUNCTION floral._secagg_mask(model text, round int, attempt int, branch text,
		s_private bytea, b_seed bytea, peers text[], s_publics bytea[], quantized bytea) RETURNS bytea
	AS 'MODULE_PATHNAME', 'floral_secagg_mask' LANGUAGE C IMMUTABLE;
COMMENT ON FUNCTION floral._secagg_mask(text, int, int, text, bytea, bytea, text[], bytea[], bytea) IS
	'secure aggregation: a quantized update plus its self mask and pairwise masks';
CREATE FUNCTION floral._secagg_unmask(model text, round int, attempt int, masked bytea[],
		senders text[], sender_s_publics bytea[], sender_b_seeds bytea[],
		dropped text[], dropped_s_privates bytea[], adaptors int,
		OUT examples double precision, OUT weights real[], OUT sums floral.tensor,
		OUT loss_sum double precision, OUT tenants int)
	AS 'MODULE_PATHNAME', 'floral_secagg_unmask' LANGUAGE C IMMUTABLE;
COMMENT ON FUNCTION floral._secagg_unmask(text, int, int, bytea[], text[], bytea[], bytea[], text[], bytea[], int) IS
	'secure aggregation: the sum of the masked updates, with the self masks and the dropped branches'' masks removed';

-- coordinator side -----------------------------------------------------
CREATE TABLE floral.secagg_rounds (
	model		text NOT NULL REFERENCES floral.federations ON DELETE CASCADE ON UPDATE CASCADE,
	round		int NOT NULL,
	attempt		int NOT NULL DEFAULT 1 CHECK (attempt >= 1),
	stage		text NOT NULL DEFAULT 'advertise'
				CHECK (stage IN ('advertise', 'share', 'mask', 'unmask', 'ready', 'merged')),
	threshold	int,
	participants text[],
	sharers		text[],
	senders		text[],
	stage_started_at timestamptz NOT NULL DEFAULT now(),
	bytes_in	bigint NOT NULL DEFAULT 0,
	bytes_out	bigint NOT NULL DEFAULT 0,
	note		text,
	merged_into	int,
	PRIMARY KEY (model, round)
);
COMMENT ON TABLE floral.secagg_rounds IS 'coordinator: the secure-aggregation state of each round (stage, threshold, the branches still in at each stage, bytes relayed)';
COMMENT ON COLUMN floral.secagg_rounds.participants IS 'U1: the branches whose keys were advertised in time';
COMMENT ON COLUMN floral.secagg_rounds.sharers IS 'U2: the branches of U1 that sent their sealed shares; masks are agreed among them';
COMMENT ON COLUMN floral.secagg_rounds.senders IS 'U3: the branches of U2 whose masked update arrived; their sum is merged';
COMMENT ON COLUMN floral.secagg_rounds.bytes_in IS 'bytes branches sent for this round''s secure aggregation (keys, shares, masked updates, reveals; hex and base64 as they travel)';

CREATE TABLE floral.secagg_keys (
	model		text NOT NULL,
	round		int NOT NULL,
	attempt		int NOT NULL,
	branch		text NOT NULL,
	c_public	bytea NOT NULL CHECK (octet_length(c_public) = 32),
	s_public	bytea NOT NULL CHECK (octet_length(s_public) = 32),
	PRIMARY KEY (model, round, attempt, branch),
	FOREIGN KEY (model, round) REFERENCES floral.secagg_rounds ON DELETE CASCADE ON UPDATE CASCADE
);
COMMENT ON TABLE floral.secagg_keys IS 'coordinator: the public keys each branch advertised, relayed to the others';

CREATE TABLE floral.secagg_shares (
	model		text NOT NULL,
	round		int NOT NULL,
	attempt		int NOT NULL,
	sender		text NOT NULL,
	recipient	text NOT NULL,
	sealed		bytea NOT NULL,
	PRIMARY KEY (model, round, attempt, sender, recipient),
	FOREIGN KEY (model, round) REFERENCES floral.secagg_rounds ON DELETE CASCADE ON UPDATE CASCADE
);
COMMENT ON TABLE floral.secagg_shares IS 'coordinator: sealed shares in transit from one branch to another (the coordinator cannot open them)';

CREATE TABLE floral.secagg_inputs (
	model		text NOT NULL,
	round		int NOT NULL,
	attempt		int NOT NULL,
	branch		text NOT NULL,
	masked		bytea NOT NULL,
	PRIMARY KEY (model, round, attempt, branch),
	FOREIGN KEY (model, round) REFERENCES floral.secagg_rounds ON DELETE CASCADE ON UPDATE CASCADE
);
COMMENT ON TABLE floral.secagg_inputs IS 'coordinator: each branch''s masked update (64-bit words, network order); alone it says nothing of the update';

CREATE TABLE floral.secagg_reveals (
	model		text NOT NULL,
	round		int NOT NULL,
	attempt		int NOT NULL,
	holder		text NOT NULL,
	owner		text NOT NULL,
	kind		text NOT NULL CHECK (kind IN ('self', 'pair')),
	x			int NOT NULL,
	share		bytea NOT NULL CHECK (octet_length(share) = 66),
	PRIMARY KEY (model, round, attempt, holder, owner),
	FOREIGN KEY (model, round) REFERENCES floral.secagg_rounds ON DELETE CASCADE ON UPDATE CASCADE
);
COMMENT ON TABLE floral.secagg_reveals IS 'coordinator: the shares survivors revealed: of the self-mask seed of a branch that sent (kind self), or of the mask key of one that dropped (kind pair)';
SELECT pg_catalog.pg_extension_config_dump('floral.secagg_rounds', '');
SELECT pg_catalog.pg_extension_config_dump('floral.secagg_keys', '');
SELECT pg_catalog.pg_extension_config_dump('floral.secagg_shares', '');
SELECT pg_catalog.pg_extension_config_dump('floral.secagg_inputs', '');
SELECT pg_catalog.pg_extension_config_dump('floral.secagg_reveals', '');

-- Bring the current round's secure aggregation as far as it can go (the
-- caller holds nothing; the round's row is locked here, which orders every
-- secure-aggregation call of the round).  Returns the round's row.
CREATE FUNCTION floral._secagg_advance(model text) RETURNS floral.secagg_rounds
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	f floral.federations;
	r floral.secagg_rounds;
	cur int;
	late boolean;
	names text[];
	n int;
	selected int;
	t int;
BEGIN
	SELECT * INTO f FROM floral.federations x WHERE x.model = _secagg_advance.model;
	SELECT m.round INTO cur FROM floral.models m WHERE m.name = model;
	INSERT INTO floral.secagg_rounds AS s (model, round) VALUES (model, cur)
		ON CONFLICT ON CONSTRAINT secagg_rounds_pkey DO NOTHING;
	SELECT * INTO r FROM floral.secagg_rounds x
		WHERE x.model = _secagg_advance.model AND x.round = cur FOR UPDATE;
	late := now() > r.stage_started_at + f.deadline;
	IF r.stage = 'advertise' THEN
		SELECT pg_catalog.array_agg(k.branch ORDER BY k.branch COLLATE "C") INTO names FROM floral.secagg_keys k
			WHERE k.model = r.model AND k.round = r.round AND k.attempt = r.attempt;
		n := coalesce(cardinality(names), 0);
		SELECT count(*) INTO selected FROM floral.branches b
			WHERE b.model = r.model AND b.active AND floral._selected(r.model, r.round, b.branch);
		IF n >= 2 AND (n >= selected OR (late AND n >= f.min_branches)) THEN
			t := least(n, greatest(coalesce(f.secagg_threshold, 0), n / 2 + 1));
			UPDATE floral.secagg_rounds x SET stage = 'share', participants = names, threshold = t,
				stage_started_at = now()
				WHERE x.model = r.model AND x.round = r.round RETURNING * INTO r;
		END IF;
	ELSIF r.stage IN ('share', 'mask', 'unmask') THEN
		IF r.stage = 'share' THEN
			SELECT pg_catalog.array_agg(DISTINCT s.sender COLLATE "C" ORDER BY s.sender COLLATE "C") INTO names
				FROM floral.secagg_shares s
				WHERE s.model = r.model AND s.round = r.round AND s.attempt = r.attempt;
			n := cardinality(r.participants);
		ELSIF r.stage = 'mask' THEN
			SELECT pg_catalog.array_agg(i.branch ORDER BY i.branch COLLATE "C") INTO names FROM floral.secagg_inputs i
				WHERE i.model = r.model AND i.round = r.round AND i.attempt = r.attempt;
			n := cardinality(r.sharers);
		ELSE
			SELECT pg_catalog.array_agg(DISTINCT v.holder COLLATE "C" ORDER BY v.holder COLLATE "C") INTO names
				FROM floral.secagg_reveals v
				WHERE v.model = r.model AND v.round = r.round AND v.attempt = r.attempt;
			n := cardinality(r.senders);
		END IF;
		-- the sum is merged only from at least min_branches updates, as
		-- without secure aggregation
		IF coalesce(cardinality(names), 0) >= n
		   OR (late AND coalesce(cardinality(names), 0) >=
			   CASE WHEN r.stage = 'mask' THEN greatest(r.threshold, f.min_branches) ELSE r.threshold END) THEN
			UPDATE floral.secagg_rounds x SET
				stage = CASE r.stage WHEN 'share' THEN 'mask' WHEN 'mask' THEN 'unmask' ELSE 'ready' END,
				sharers = CASE WHEN r.stage = 'share' THEN names ELSE x.sharers END,
				senders = CASE WHEN r.stage = 'mask' THEN names ELSE x.senders END,
				stage_started_at = now()
				WHERE x.model = r.model AND x.round = r.round RETURNING * INTO r;
		ELSIF late THEN
			-- too few are left to recover anything: start again with fresh
			-- keys (nothing of this attempt is ever revealed)
			DELETE FROM floral.updates u WHERE u.model = r.model AND u.round = r.round AND u.status = 'secure';
			UPDATE floral.secagg_rounds x SET attempt = x.attempt + 1, stage = 'advertise',
				threshold = NULL, participants = NULL, sharers = NULL, senders = NULL,
				stage_started_at = now(),
				note = format('attempt %s stopped at stage %s: %s of %s answered, the threshold is %s',
							  r.attempt, r.stage, coalesce(cardinality(names), 0), n, r.threshold)
				WHERE x.model = r.model AND x.round = r.round RETURNING * INTO r;
		END IF;
	END IF;
	RETURN r;
END $$;
COMMENT ON FUNCTION floral._secagg_advance(text) IS
	'coordinator, secure aggregation: close the current round''s stage when everyone expected answered or the deadline passed with enough; start a new attempt with too few';

-- The prologue of every remote call of secure aggregation: the caller may
-- act as the branch, the federation aggregates securely, the round is the
-- current one and the attempt its current one.  Returns the round's row,
-- locked and advanced.
CREATE FUNCTION floral._secagg_call(model text, branch text, round int, attempt int)
RETURNS floral.secagg_rounds
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	r floral.secagg_rounds;
	cur int;
BEGIN
	IF model IS NULL OR branch IS NULL OR round IS NULL THEN
		RAISE EXCEPTION 'model, branch and round must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM floral._fed_branch(model, branch);
	IF NOT (SELECT f.secure_aggregation FROM floral.federations f WHERE f.model = _secagg_call.model) THEN
		RAISE EXCEPTION 'model "%" does not aggregate securely', model
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	SELECT m.round INTO cur FROM floral.models m WHERE m.name = model;
	IF _secagg_call.round <> cur THEN
		RAISE EXCEPTION 'round % of model "%" is not the current round (%)', _secagg_call.round, model, cur
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	r := floral._secagg_advance(model);
	IF attempt IS NOT NULL AND attempt <> r.attempt THEN
		RAISE EXCEPTION 'attempt % of round % of model "%" is over (the round is at attempt %)',
				attempt, cur, model, r.attempt
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	RETURN r;
END $$;
COMMENT ON FUNCTION floral._secagg_call(text, text, int, int) IS
	'coordinator, secure aggregation: the checks every remote call makes (branch role, option on, current round and attempt); returns the round''s row, locked';

CREATE FUNCTION floral._secagg_count(model text, round int, bytes_in bigint, bytes_out bigint) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	UPDATE floral.secagg_rounds x SET bytes_in = x.bytes_in + $3, bytes_out = x.bytes_out + $4
		WHERE x.model = $1 AND x.round = $2
$$;
COMMENT ON FUNCTION floral._secagg_count(text, int, bigint, bigint) IS
	'coordinator, secure aggregation: count the bytes a round''s messages carried';

CREATE FUNCTION floral._secagg_hex(v text, len int, what text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
	b bytea;
BEGIN
	BEGIN
		b := pg_catalog.decode(v, 'hex');
	EXCEPTION WHEN OTHERS THEN
		b := NULL;
	END;
	IF b IS NULL OR (len IS NOT NULL AND pg_catalog.octet_length(b) <> len) THEN
		RAISE EXCEPTION '% must be % bytes in hex', what, len USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN b;
END $$;
COMMENT ON FUNCTION floral._secagg_hex(text, int, text) IS
	'secure aggregation: decode hex of an exact length, or raise 22023';

-- remote API, called by branches over dblink
CREATE FUNCTION floral.fed_secagg_state(model text, branch text, round int,
		OUT attempt int, OUT stage text, OUT threshold int, OUT participants text[],
		OUT sharers text[], OUT senders text[], OUT advertised boolean, OUT shared boolean,
		OUT sent boolean, OUT revealed boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	r floral.secagg_rounds := floral._secagg_call(model, branch, round, NULL);
BEGIN
	attempt := r.attempt;
	stage := r.stage;
	threshold := r.threshold;
	participants := r.participants;
	sharers := r.sharers;
	senders := r.senders;
	advertised := EXISTS (SELECT 1 FROM floral.secagg_keys k WHERE k.model = r.model AND k.round = r.round
						  AND k.attempt = r.attempt AND k.branch = fed_secagg_state.branch);
	shared := EXISTS (SELECT 1 FROM floral.secagg_shares s WHERE s.model = r.model AND s.round = r.round
					  AND s.attempt = r.attempt AND s.sender = fed_secagg_state.branch);
	sent := EXISTS (SELECT 1 FROM floral.secagg_inputs i WHERE i.model = r.model AND i.round = r.round
					AND i.attempt = r.attempt AND i.branch = fed_secagg_state.branch);
	revealed := EXISTS (SELECT 1 FROM floral.secagg_reveals v WHERE v.model = r.model AND v.round = r.round
						AND v.attempt = r.attempt AND v.holder = fed_secagg_state.branch);
END $$;
COMMENT ON FUNCTION floral.fed_secagg_state(text, text, int) IS
	'coordinator API, secure aggregation: the round''s attempt, stage, threshold, the branches in at each stage, and what this branch has sent';

CREATE FUNCTION floral.fed_secagg_advertise(model text, branch text, round int, attempt int,
		c_public text, s_public text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	r floral.secagg_rounds := floral._secagg_call(model, branch, round, attempt);
	c bytea := floral._secagg_hex(c_public, 32, 'c_public');
	s bytea := floral._secagg_hex(s_public, 32, 's_public');
BEGIN
	IF r.stage <> 'advertise' THEN
		RETURN 'closed';
	ELSIF NOT floral._selected(model, round, branch) THEN
		RETURN 'rejected';
	END IF;
	INSERT INTO floral.secagg_keys AS k (model, round, attempt, branch, c_public, s_public)
		VALUES (model, round, attempt, branch, c, s)
		ON CONFLICT ON CONSTRAINT secagg_keys_pkey DO NOTHING;
	IF NOT FOUND THEN
		RETURN 'duplicate';
	END IF;
	PERFORM floral._secagg_count(model, round, octet_length(c_public) + octet_length(s_public), 0);
	PERFORM floral._secagg_advance(model);
	RETURN 'accepted';
END $$;
COMMENT ON FUNCTION floral.fed_secagg_advertise(text, text, int, int, text, text) IS
	'coordinator API, secure aggregation: a branch''s two public keys for the round (hex)';

CREATE FUNCTION floral.fed_secagg_keys(model text, branch text, round int, attempt int)
RETURNS TABLE (peer text, c_public text, s_public text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	r floral.secagg_rounds := floral._secagg_call(model, branch, round, attempt);
BEGIN
	IF r.stage = 'advertise' OR NOT branch = ANY (r.participants) THEN
		RAISE EXCEPTION 'branch "%" has no keys to fetch in round % of model "%"', branch, round, model
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The round is at stage %s.', r.stage);
	END IF;
	PERFORM floral._secagg_count(model, round, 0, 130 * cardinality(r.participants));
	RETURN QUERY SELECT k.branch, encode(k.c_public, 'hex'), encode(k.s_public, 'hex')
		FROM floral.secagg_keys k
		WHERE k.model = r.model AND k.round = r.round AND k.attempt = r.attempt
		  AND k.branch = ANY (r.participants)
		ORDER BY k.branch COLLATE "C";
END $$;
COMMENT ON FUNCTION floral.fed_secagg_keys(text, text, int, int) IS
	'coordinator API, secure aggregation: the public keys of the round''s participants (hex), relayed';

CREATE FUNCTION floral.fed_secagg_share(model text, branch text, round int, attempt int,
		recipients text[], sealed text[]) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	r floral.secagg_rounds := floral._secagg_call(model, branch, round, attempt);
	b bytea[];
BEGIN
	IF r.stage <> 'share' OR NOT branch = ANY (r.participants) THEN
		RETURN 'closed';
	END IF;
	IF recipients IS DISTINCT FROM r.participants OR sealed IS NULL
	   OR cardinality(sealed) <> cardinality(recipients) THEN
		RAISE EXCEPTION 'shares must go to exactly the round''s participants, in their order'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT pg_catalog.array_agg(floral._secagg_hex(x, 162, 'a sealed share') ORDER BY i) INTO b
		FROM unnest(sealed) WITH ORDINALITY AS u(x, i);
	IF EXISTS (SELECT 1 FROM floral.secagg_shares s WHERE s.model = r.model AND s.round = r.round
			   AND s.attempt = r.attempt AND s.sender = fed_secagg_share.branch) THEN
		RETURN 'duplicate';
	END IF;
	INSERT INTO floral.secagg_shares (model, round, attempt, sender, recipient, sealed)
		SELECT model, round, attempt, branch, recipients[i], b[i]
		FROM generate_subscripts(recipients, 1) i;
	PERFORM floral._secagg_count(model, round, (SELECT sum(octet_length(x)) FROM unnest(sealed) x), 0);
	PERFORM floral._secagg_advance(model);
	RETURN 'accepted';
END $$;
COMMENT ON FUNCTION floral.fed_secagg_share(text, text, int, int, text[], text[]) IS
	'coordinator API, secure aggregation: a branch''s sealed shares, one per participant (hex)';

CREATE FUNCTION floral.fed_secagg_input(model text, branch text, round int, attempt int,
		masked text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	r floral.secagg_rounds := floral._secagg_call(model, branch, round, attempt);
	y bytea;
	words bigint;
BEGIN
	IF r.stage <> 'mask' OR NOT branch = ANY (r.sharers) THEN
		RETURN 'closed';
	END IF;
	SELECT 3 + m.adaptors + (SELECT sum(x.parameters) FROM @extschema@.floral_layers(model) x) INTO words
		FROM floral.models m WHERE m.name = model;
	-- bounded before decoding (base64: 4 characters per 3 bytes, and newlines)
	IF masked IS NULL OR octet_length(masked) > words * 8 * 4 / 3 * 1.02 + 1024 THEN
		RAISE EXCEPTION 'a masked update of model "%" must have % bytes', model, words * 8
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	BEGIN
		y := decode(masked, 'base64');
	EXCEPTION WHEN OTHERS THEN
		y := NULL;
	END;
	IF y IS NULL OR octet_length(y) <> words * 8 THEN
		RAISE EXCEPTION 'a masked update of model "%" must have % bytes', model, words * 8
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	INSERT INTO floral.secagg_inputs AS i (model, round, attempt, branch, masked)
		VALUES (model, round, attempt, branch, y)
		ON CONFLICT ON CONSTRAINT secagg_inputs_pkey DO NOTHING;
	IF NOT FOUND THEN
		RETURN 'duplicate';
	END IF;
	-- the round's record of who took part; the update itself is only the sum
	INSERT INTO floral.updates AS u (model, round, branch, status, reason, bytes)
		VALUES (model, round, branch, 'secure', 'masked: merged only as part of the secure sum', octet_length(masked))
		ON CONFLICT ON CONSTRAINT updates_pkey DO NOTHING;
	PERFORM floral._secagg_count(model, round, octet_length(masked), 0);
	PERFORM floral._secagg_advance(model);
	RETURN 'accepted';
END $$;
COMMENT ON FUNCTION floral.fed_secagg_input(text, text, int, int, text) IS
	'coordinator API, secure aggregation: a branch''s masked update (base64 of 64-bit words)';

CREATE FUNCTION floral.fed_secagg_inbox(model text, branch text, round int, attempt int)
RETURNS TABLE (sender text, sealed text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	r floral.secagg_rounds := floral._secagg_call(model, branch, round, attempt);
BEGIN
	IF r.stage <> 'unmask' OR NOT branch = ANY (r.senders) THEN
		RAISE EXCEPTION 'branch "%" has no shares to open in round % of model "%"', branch, round, model
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The round is at stage %s.', r.stage);
	END IF;
	PERFORM floral._secagg_count(model, round, 0, 324 * cardinality(r.sharers));
	RETURN QUERY SELECT s.sender, encode(s.sealed, 'hex') FROM floral.secagg_shares s
		WHERE s.model = r.model AND s.round = r.round AND s.attempt = r.attempt
		  AND s.recipient = fed_secagg_inbox.branch AND s.sender = ANY (r.sharers)
		ORDER BY s.sender COLLATE "C";
END $$;
COMMENT ON FUNCTION floral.fed_secagg_inbox(text, text, int, int) IS
	'coordinator API, secure aggregation: the sealed shares addressed to this branch (hex)';

CREATE FUNCTION floral.fed_secagg_reveal(model text, branch text, round int, attempt int,
		owners text[], kinds text[], xs int[], shares text[]) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	r floral.secagg_rounds := floral._secagg_call(model, branch, round, attempt);
	me int;
BEGIN
	IF r.stage <> 'unmask' OR NOT branch = ANY (r.senders) THEN
		RETURN 'closed';
	END IF;
	me := array_position(r.participants, branch);
	IF owners IS NULL OR kinds IS NULL OR xs IS NULL OR shares IS NULL
	   OR array_position(owners, NULL) IS NOT NULL OR array_position(kinds, NULL) IS NOT NULL
	   OR array_position(xs, NULL) IS NOT NULL OR array_position(shares, NULL) IS NOT NULL THEN
		RAISE EXCEPTION 'a reveal must not be or hold NULL'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF owners IS DISTINCT FROM r.sharers OR cardinality(kinds) <> cardinality(owners)
	   OR cardinality(xs) <> cardinality(owners) OR cardinality(shares) <> cardinality(owners)
	   OR EXISTS (SELECT 1 FROM generate_subscripts(owners, 1) i
				  WHERE kinds[i] IS DISTINCT FROM CASE WHEN owners[i] = ANY (r.senders) THEN 'self' ELSE 'pair' END
					 OR xs[i] IS DISTINCT FROM me) THEN
		RAISE EXCEPTION 'a reveal must hold one share for every branch that shared: of the self-mask seed of those that sent, of the mask key of the others'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF EXISTS (SELECT 1 FROM floral.secagg_reveals v WHERE v.model = r.model AND v.round = r.round
			   AND v.attempt = r.attempt AND v.holder = fed_secagg_reveal.branch) THEN
		RETURN 'duplicate';
	END IF;
	INSERT INTO floral.secagg_reveals (model, round, attempt, holder, owner, kind, x, share)
		SELECT model, round, attempt, branch, owners[i], kinds[i], xs[i], floral._secagg_hex(shares[i], 66, 'a share')
		FROM generate_subscripts(owners, 1) i;
	PERFORM floral._secagg_count(model, round, (SELECT sum(octet_length(x)) FROM unnest(shares) x), 0);
	PERFORM floral._secagg_advance(model);
	RETURN 'accepted';
END $$;
COMMENT ON FUNCTION floral.fed_secagg_reveal(text, text, int, int, text[], text[], int[], text[]) IS
	'coordinator API, secure aggregation: the shares a surviving branch reveals for the unmasking';

-- The coordinator's last stage: recover the self-mask seeds of the senders
-- and the mask keys of the branches that dropped, remove the masks, check
-- the sum like any update and record it as the round's one accepted
-- update.  The caller (floral_coordinator_step) holds the model lock.
CREATE FUNCTION floral._secagg_finish(model text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	r floral.secagg_rounds;
	f floral.federations;
	m floral.models;
	v text;
	kind text;
	xs int[];
	shares bytea[];
	secret bytea;
	pub bytea;
	b_seeds bytea[] := '{}';
	s_pubs bytea[] := '{}';
	masked bytea[] := '{}';
	dropped text[] := '{}';
	d_privs bytea[] := '{}';
	u record;
	norm double precision;
	why text;
BEGIN
	SELECT * INTO m FROM floral.models x WHERE x.name = model;
	SELECT * INTO f FROM floral.federations x WHERE x.model = _secagg_finish.model;
	SELECT * INTO r FROM floral.secagg_rounds x WHERE x.model = _secagg_finish.model AND x.round = m.round FOR UPDATE;
	IF NOT FOUND OR r.stage <> 'ready' THEN
		RETURN NULL;
	END IF;
	FOREACH v IN ARRAY r.sharers LOOP
		kind := CASE WHEN v = ANY (r.senders) THEN 'self' ELSE 'pair' END;
		SELECT pg_catalog.array_agg(x.x ORDER BY x.holder COLLATE "C"), pg_catalog.array_agg(x.share ORDER BY x.holder COLLATE "C")
			INTO xs, shares FROM floral.secagg_reveals x
			WHERE x.model = r.model AND x.round = r.round AND x.attempt = r.attempt
			  AND x.owner = v AND x.kind = kind;
		secret := floral._secagg_combine(coalesce(xs, '{}'), coalesce(shares, '{}'), r.threshold);
		SELECT k.s_public INTO pub FROM floral.secagg_keys k
			WHERE k.model = r.model AND k.round = r.round AND k.attempt = r.attempt AND k.branch = v;
		IF kind = 'self' THEN
			b_seeds := b_seeds || secret;
			s_pubs := s_pubs || pub;
			masked := masked || (SELECT i.masked FROM floral.secagg_inputs i
								 WHERE i.model = r.model AND i.round = r.round AND i.attempt = r.attempt
								   AND i.branch = v);
		ELSE
			-- the recovered key must be the one the branch advertised
			IF floral._secagg_public(secret) <> pub THEN
				RAISE EXCEPTION 'the revealed shares of branch "%" do not recover its key', v
					USING ERRCODE = 'data_corrupted';
			END IF;
			dropped := dropped || v;
			d_privs := d_privs || secret;
		END IF;
	END LOOP;
	SELECT * INTO u FROM floral._secagg_unmask(model, r.round, r.attempt, masked, r.senders, s_pubs, b_seeds,
											   dropped, d_privs, m.adaptors);
	-- the checks fed_submit makes of one update, made of the sum
	IF NOT (u.examples >= 1 AND u.examples < 'Infinity') OR u.tenants < 1 THEN
		why := format('the secure sum has %s examples and %s tenants', u.examples, u.tenants);
	ELSIF EXISTS (SELECT 1 FROM unnest(u.weights) w WHERE NOT (w >= -1e-5 AND w <= u.examples * 1.0001)) THEN
		why := 'the secure sum has weights outside 0 .. examples';
	ELSE
		norm := floral._update_norm(model, u.examples, u.weights, u.sums);
		IF NOT (norm < 'Infinity') THEN
			why := 'the secure sum averages to a non-finite model';
		ELSIF norm > f.max_update_norm THEN
			why := format('the secure sum''s norm %s exceeds the bound %s', round(norm::numeric, 3), f.max_update_norm);
		END IF;
	END IF;
	INSERT INTO floral.updates (model, round, branch, status, reason, examples, weights, sums, loss_sum, tenants)
		VALUES (model, r.round, '', CASE WHEN why IS NULL THEN 'accepted' ELSE 'rejected' END,
				coalesce(why, format('the secure sum of %s branches', cardinality(r.senders))),
				u.examples, coalesce((SELECT pg_catalog.array_agg(greatest(w, 0) ORDER BY i) FROM unnest(u.weights) WITH ORDINALITY AS x(w, i)), '{}'),
				u.sums, greatest(u.loss_sum, 0), u.tenants)
		ON CONFLICT ON CONSTRAINT updates_pkey DO UPDATE SET status = excluded.status, reason = excluded.reason,
			examples = excluded.examples, weights = excluded.weights, sums = excluded.sums,
			loss_sum = excluded.loss_sum, tenants = excluded.tenants;
	IF why IS NOT NULL THEN
		UPDATE floral.secagg_rounds x SET note = why WHERE x.model = r.model AND x.round = r.round;
	END IF;
	RETURN why;
END $$;
COMMENT ON FUNCTION floral._secagg_finish(text) IS
	'coordinator, secure aggregation: recover the seeds and dropped keys, unmask the sum, check it and record it as the round''s accepted update; returns why it was rejected, or NULL';

CREATE FUNCTION floral._secagg_merged(model text, round int, new_round int) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	UPDATE floral.secagg_rounds x SET stage = 'merged', merged_into = $3 WHERE x.model = $1 AND x.round = $2;
	UPDATE floral.updates u SET merged_into = $3 WHERE u.model = $1 AND u.round = $2 AND u.status = 'secure';
$$;
COMMENT ON FUNCTION floral._secagg_merged(text, int, int) IS
	'coordinator, secure aggregation: mark a round merged into new_round';

CREATE VIEW floral.federation_rounds AS
SELECT r.model, r.round,
	   r.created_at AS started_at,
	   n.created_at AS merged_at,
	   (SELECT array_agg(u.branch ORDER BY u.branch) FROM floral.updates u
		 WHERE u.model = r.model AND u.round = r.round AND u.branch <> ''
		   AND (u.status IN ('accepted', 'merged', 'secure'))) AS branches,
	   (SELECT array_agg(u.branch || ': ' || u.status ORDER BY u.branch) FROM floral.updates u
		 WHERE u.model = r.model AND u.round = r.round AND u.status IN ('stale', 'rejected')) AS not_used,
	   n.tenants, n.examples, n.loss,
	   (SELECT sum(u.bytes) FROM floral.updates u WHERE u.model = r.model AND u.round = r.round) AS bytes_received,
	   (SELECT s.bytes_in + s.bytes_out FROM floral.secagg_rounds s WHERE s.model = r.model AND s.round = r.round) AS secagg_bytes
FROM floral.rounds r
JOIN floral.federations f ON f.model = r.model
LEFT JOIN floral.rounds n ON n.model = r.model AND n.round = r.round + 1;
COMMENT ON VIEW floral.federation_rounds IS 'coordinator: each round, when it started and was merged, which branches made it, examples and loss';

CREATE VIEW floral.secagg_status AS
SELECT s.model, s.round, s.attempt, s.stage, s.threshold,
	   cardinality(s.participants) AS participants, cardinality(s.sharers) AS sharers,
	   cardinality(s.senders) AS senders,
	   (SELECT pg_catalog.array_agg(x ORDER BY x) FROM unnest(s.sharers) x WHERE NOT x = ANY (coalesce(s.senders, '{}'))) AS recovered,
	   s.bytes_in, s.bytes_out, s.stage_started_at, s.merged_into, s.note
FROM floral.secagg_rounds s;
COMMENT ON VIEW floral.secagg_status IS 'coordinator: each round''s secure aggregation: stage, threshold, how many branches were in at each stage, whose masks were recovered after they dropped, bytes relayed';

-- branch side ----------------------------------------------------------
-- The branch's secrets of a round: its two private keys and the self-mask
-- seed, and, once it has decided, what it reveals (recorded before it is
-- sent, and never replaced: a branch never reveals both secrets of one
-- peer).  Readable by floral's owner only.
CREATE TABLE floral.secagg_secrets (
	model		text NOT NULL REFERENCES floral.branch_links ON DELETE CASCADE,
	round		int NOT NULL,
	attempt		int NOT NULL,
	c_private	bytea NOT NULL,
	s_private	bytea NOT NULL,
	b_seed		bytea NOT NULL,
	threshold	int,
	mask_sharers text[],
	reveal_senders text[],
	reveal_owners text[],
	reveal_kinds text[],
	reveal_xs	int[],
	reveal_shares bytea[],
	created_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (model, round, attempt)
);
COMMENT ON TABLE floral.secagg_secrets IS 'branch: its secure-aggregation secrets of each round and what it revealed (only floral''s owner reads it)';
COMMENT ON COLUMN floral.secagg_secrets.threshold IS 'the threshold this branch split its secrets with: at least a majority of the participants, whatever the coordinator relays; the mask and unmask stages hold the coordinator to it';
COMMENT ON COLUMN floral.secagg_secrets.mask_sharers IS 'U2 as this branch masked with it (recorded before the masked update goes out); the unmask stage must name the same';

-- record the threshold this branch shares with; once recorded it never changes
CREATE FUNCTION floral._branch_secagg_threshold(model text, round int, attempt int, threshold int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	PERFORM floral._branch_check_caller(model);
	UPDATE floral.secagg_secrets x SET threshold = _branch_secagg_threshold.threshold
		WHERE x.model = _branch_secagg_threshold.model AND x.round = _branch_secagg_threshold.round
		  AND x.attempt = _branch_secagg_threshold.attempt AND x.threshold IS NULL;
END $$;
COMMENT ON FUNCTION floral._branch_secagg_threshold(text, int, int, int) IS
	'branch, secure aggregation: record the threshold this branch splits its secrets with in a round''s attempt; never replaced once recorded';

-- Record, before the masked update goes out, that the round's update is
-- masked in this attempt and with which U2.  An update masked in one
-- attempt is never masked in another: two masked sums of one round that
-- differ by this branch would give its update away.
CREATE FUNCTION floral._branch_secagg_masking(model text, round int, attempt int, sharers text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	done_in int;
BEGIN
	PERFORM floral._branch_check_caller(model);
	UPDATE floral.outbox x SET masked_attempt = _branch_secagg_masking.attempt
		WHERE x.model = _branch_secagg_masking.model AND x.round = _branch_secagg_masking.round
		  AND x.masked_attempt IS NULL;
	SELECT x.masked_attempt INTO done_in FROM floral.outbox x
		WHERE x.model = _branch_secagg_masking.model AND x.round = _branch_secagg_masking.round;
	IF done_in IS DISTINCT FROM attempt THEN
		RAISE EXCEPTION 'the update of round % of model "%" was masked in attempt % already: it is never masked again',
			round, model, done_in USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	UPDATE floral.secagg_secrets x SET mask_sharers = _branch_secagg_masking.sharers
		WHERE x.model = _branch_secagg_masking.model AND x.round = _branch_secagg_masking.round
		  AND x.attempt = _branch_secagg_masking.attempt AND x.mask_sharers IS NULL;
END $$;
COMMENT ON FUNCTION floral._branch_secagg_masking(text, int, int, text[]) IS
	'branch, secure aggregation: record, before it is sent, that the round''s update is masked in this attempt with these sharers (never in another attempt)';

CREATE FUNCTION floral._branch_secagg_keys(model text, round int, attempt int,
		OUT c_public bytea, OUT s_public bytea, OUT created boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	c record;
	s record;
BEGIN
	PERFORM floral._branch_check_caller(model);
	-- secrets of rounds that are over are of no use any more; keys older
	-- than the update they would mask are never used (the same masks on two
	-- different updates would give away their difference)
	DELETE FROM floral.secagg_secrets x WHERE x.model = _branch_secagg_keys.model
		AND (x.round < _branch_secagg_keys.round
			 OR (x.round = _branch_secagg_keys.round
				 AND x.created_at < (SELECT o.created_at FROM floral.outbox o
									 WHERE o.model = _branch_secagg_keys.model AND o.round = _branch_secagg_keys.round)));
	created := NOT EXISTS (SELECT 1 FROM floral.secagg_secrets x WHERE x.model = _branch_secagg_keys.model
						   AND x.round = _branch_secagg_keys.round AND x.attempt = _branch_secagg_keys.attempt);
	IF created THEN
		c := floral._secagg_keypair();
		s := floral._secagg_keypair();
		INSERT INTO floral.secagg_secrets (model, round, attempt, c_private, s_private, b_seed)
			VALUES (model, round, attempt, c.private, s.private, floral._secagg_seed());
	END IF;
	SELECT floral._secagg_public(x.c_private), floral._secagg_public(x.s_private) INTO c_public, s_public
		FROM floral.secagg_secrets x WHERE x.model = _branch_secagg_keys.model
		AND x.round = _branch_secagg_keys.round AND x.attempt = _branch_secagg_keys.attempt;
END $$;
COMMENT ON FUNCTION floral._branch_secagg_keys(text, int, int) IS
	'branch, secure aggregation: make (once) and return this branch''s public keys of a round''s attempt';

CREATE FUNCTION floral._branch_secagg_secret(model text, round int, attempt int) RETURNS floral.secagg_secrets
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	x floral.secagg_secrets;
BEGIN
	PERFORM floral._branch_check_caller(model);
	SELECT * INTO x FROM floral.secagg_secrets s WHERE s.model = _branch_secagg_secret.model
		AND s.round = _branch_secagg_secret.round AND s.attempt = _branch_secagg_secret.attempt;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'this branch has no keys for attempt % of round % of model "%"', attempt, round, model
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'The branch sits this attempt out; it takes part again in the next.';
	END IF;
	RETURN x;
END $$;
COMMENT ON FUNCTION floral._branch_secagg_secret(text, int, int) IS
	'branch, secure aggregation: this branch''s private keys and seed of a round''s attempt (for the role that joined only)';

-- record what the branch reveals; once recorded it never changes
CREATE FUNCTION floral._branch_secagg_decide(model text, round int, attempt int, senders text[],
		owners text[], kinds text[], xs int[], shares bytea[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	PERFORM floral._branch_check_caller(model);
	UPDATE floral.secagg_secrets x SET reveal_senders = senders, reveal_owners = owners,
		reveal_kinds = kinds, reveal_xs = xs, reveal_shares = shares
		WHERE x.model = _branch_secagg_decide.model AND x.round = _branch_secagg_decide.round
		  AND x.attempt = _branch_secagg_decide.attempt AND x.reveal_owners IS NULL;
END $$;
COMMENT ON FUNCTION floral._branch_secagg_decide(text, int, int, text[], text[], text[], int[], bytea[]) IS
	'branch, secure aggregation: record what this branch reveals in a round''s attempt; never replaced once recorded';

-- One action of secure aggregation for the branch, as far as the round's
-- stage allows: at most one message sent, or one local write.  more: the
-- step should call again at once.
CREATE FUNCTION floral._branch_phase_secagg(model text, round int,
		OUT action text, OUT more boolean, OUT error text)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	l floral.branch_links := floral._branch_link(model);
	st record;
	k record;
	sec floral.secagg_secrets;
	names text[];
	c_pubs bytea[];
	s_pubs bytea[];
	mine record;
	sealed bytea[];
	o floral.outbox;
	y bytea;
	answer text;
	q text;
	p record;
	owners text[] := '{}';
	kinds text[] := '{}';
	xs int[] := '{}';
	shares bytea[] := '{}';
	me int;
	done_in int;
	tmin int;
BEGIN
	more := false;
	PERFORM floral._branch_act_as(model);
	SELECT * INTO st FROM floral._remote(model,
		format('SELECT * FROM floral.fed_secagg_state(%L, %L, %s)', model, l.branch, round),
		'attempt int, stage text, threshold int, participants text[], sharers text[], senders text[], '
		'advertised boolean, shared boolean, sent boolean, revealed boolean')
		AS t(attempt int, stage text, threshold int, participants text[], sharers text[], senders text[],
			 advertised boolean, shared boolean, sent boolean, revealed boolean);
	-- an update that went out masked in one attempt is never masked in
	-- another of the same round (the two sums would differ by it): the
	-- branch sits the rest of the round out
	SELECT x.masked_attempt INTO done_in FROM floral.outbox x
		WHERE x.model = _branch_phase_secagg.model AND x.round = _branch_phase_secagg.round;
	IF done_in IS NOT NULL AND done_in IS DISTINCT FROM st.attempt THEN
		action := format('attempt %s: this branch''s update of round %s was masked in attempt %s already; it sits the rest of the round out',
						 st.attempt, round, done_in);
		RETURN;
	END IF;
	-- an attempt this branch already shared in never starts again: the
	-- coordinator restarted the numbering (floral_rollback of the current
	-- round), and advertising the same keys again would share the same
	-- secrets twice
	IF st.stage = 'advertise' AND EXISTS (SELECT 1 FROM floral.secagg_secrets x
			WHERE x.model = _branch_phase_secagg.model AND x.round = _branch_phase_secagg.round
			  AND x.attempt = st.attempt AND x.threshold IS NOT NULL) THEN
		action := format('attempt %s of round %s started again after this branch shared in it; it sits the rest of the round out',
						 st.attempt, round);
		RETURN;
	END IF;
	IF st.stage IN ('share', 'mask', 'unmask') AND l.branch = ANY (st.participants) THEN
		-- the keys as the coordinator relays them; this branch's own must be its own
		SELECT pg_catalog.array_agg(x.peer ORDER BY x.i), pg_catalog.array_agg(decode(x.c, 'hex') ORDER BY x.i),
			   pg_catalog.array_agg(decode(x.s, 'hex') ORDER BY x.i)
			INTO names, c_pubs, s_pubs
			FROM (SELECT t.*, row_number() OVER () AS i FROM floral._remote(model,
					format('SELECT * FROM floral.fed_secagg_keys(%L, %L, %s, %s)', model, l.branch, round, st.attempt),
					'peer text, c text, s text') AS t(peer text, c text, s text)) x;
		mine := floral._branch_secagg_keys(model, round, st.attempt);
		IF names IS DISTINCT FROM st.participants
		   OR (SELECT count(DISTINCT x) FROM unnest(names) x) <> cardinality(names)
		   OR c_pubs[array_position(names, l.branch)] IS DISTINCT FROM mine.c_public
		   OR s_pubs[array_position(names, l.branch)] IS DISTINCT FROM mine.s_public
		   OR (SELECT count(DISTINCT x) FROM unnest(c_pubs || s_pubs) x) <> 2 * cardinality(names) THEN
			RAISE EXCEPTION 'the coordinator relayed keys that are not the participants'' keys'
				USING ERRCODE = 'data_corrupted';
		END IF;
	END IF;

	IF st.stage = 'advertise' THEN
		IF st.advertised THEN
			action := format('attempt %s: keys advertised, waiting for the others', st.attempt);
			RETURN;
		END IF;
		mine := floral._branch_secagg_keys(model, round, st.attempt);
		IF mine.created THEN
			-- committed before the public keys go out
			action := format('attempt %s: keys made', st.attempt);
			more := true;
			RETURN;
		END IF;
		SELECT t.a INTO answer FROM floral._remote(model,
			format('SELECT floral.fed_secagg_advertise(%L, %L, %s, %s, %L, %L)', model, l.branch, round,
				   st.attempt, encode(mine.c_public, 'hex'), encode(mine.s_public, 'hex')),
			'a text') AS t(a text);
		action := format('attempt %s: keys advertised (%s)', st.attempt, answer);
		more := answer = 'accepted';
	ELSIF NOT l.branch = ANY (coalesce(st.participants, '{}')) THEN
		action := format('attempt %s: not a participant (keys not advertised in time)', st.attempt);
	ELSIF st.stage = 'share' THEN
		IF st.shared THEN
			action := format('attempt %s: shares sent, waiting for the others', st.attempt);
			RETURN;
		END IF;
		sec := floral._branch_secagg_secret(model, round, st.attempt);
		IF sec.threshold IS NULL THEN
			-- the threshold is this branch's, not the coordinator's: at
			-- least a majority of the participants (a coordinator that
			-- could ask fewer holders would get b from some and s from
			-- others of one branch), higher only if the coordinator asks
			tmin := greatest(2, cardinality(names) / 2 + 1);
			IF st.threshold IS NULL OR st.threshold < tmin OR st.threshold > cardinality(names) THEN
				RAISE EXCEPTION 'the coordinator relayed threshold % for % participants; this branch shares with at least %: nothing is shared',
					coalesce(st.threshold::text, 'NULL'), cardinality(names), tmin
					USING ERRCODE = 'data_corrupted';
			END IF;
			-- committed before any share goes out
			PERFORM floral._branch_secagg_threshold(model, round, st.attempt, st.threshold);
			action := format('attempt %s: threshold %s of %s', st.attempt, st.threshold, cardinality(names));
			more := true;
			RETURN;
		END IF;
		IF st.threshold IS DISTINCT FROM sec.threshold THEN
			RAISE EXCEPTION 'the coordinator now relays threshold % instead of %: nothing is shared',
				st.threshold, sec.threshold USING ERRCODE = 'data_corrupted';
		END IF;
		sealed := floral._secagg_make_shares(model, round, st.attempt, l.branch, sec.c_private, sec.s_private,
											 sec.b_seed, sec.threshold, names, c_pubs);
		SELECT t.a INTO answer FROM floral._remote(model,
			format('SELECT floral.fed_secagg_share(%L, %L, %s, %s, %L, %L)', model, l.branch, round, st.attempt,
				   names, (SELECT pg_catalog.array_agg(encode(x, 'hex') ORDER BY i) FROM unnest(sealed) WITH ORDINALITY AS u(x, i))),
			'a text') AS t(a text);
		action := format('attempt %s: %s shares sent (%s)', st.attempt, cardinality(names), answer);
		more := answer = 'accepted';
	ELSIF NOT l.branch = ANY (coalesce(st.sharers, '{}')) THEN
		action := format('attempt %s: not among the branches that shared', st.attempt);
	ELSIF st.stage = 'mask' THEN
		IF st.sent THEN
			action := format('attempt %s: masked update sent, waiting for the others', st.attempt);
			RETURN;
		END IF;
		SELECT * INTO o FROM floral.outbox x WHERE x.model = _branch_phase_secagg.model AND x.round = _branch_phase_secagg.round;
		IF NOT FOUND THEN
			action := format('attempt %s: no update for round %s', st.attempt, round);
			RETURN;
		END IF;
		sec := floral._branch_secagg_secret(model, round, st.attempt);
		IF sec.threshold IS NULL THEN
			RAISE EXCEPTION 'this branch recorded no threshold for attempt %: nothing is sent', st.attempt
				USING ERRCODE = 'object_not_in_prerequisite_state';
		END IF;
		IF sec.mask_sharers IS NULL THEN
			-- U2 as relayed: at least this branch's threshold of distinct
			-- participants, or the masks would hide too little
			IF cardinality(st.sharers) < sec.threshold
			   OR (SELECT count(DISTINCT x) FROM unnest(st.sharers) x) <> cardinality(st.sharers)
			   OR EXISTS (SELECT 1 FROM unnest(st.sharers) x WHERE x IS NULL OR NOT x = ANY (names)) THEN
				RAISE EXCEPTION 'the coordinator relayed % as the branches that shared: not % or more distinct participants (the threshold): nothing is sent',
					st.sharers, sec.threshold USING ERRCODE = 'data_corrupted';
			END IF;
			-- committed before the masked update goes out
			PERFORM floral._branch_secagg_masking(model, round, st.attempt, st.sharers);
			action := format('attempt %s: masking among %s branches', st.attempt, cardinality(st.sharers));
			more := true;
			RETURN;
		END IF;
		IF sec.mask_sharers IS DISTINCT FROM st.sharers THEN
			RAISE EXCEPTION 'the coordinator now relays other branches that shared (%) than it did (%): nothing is sent',
				st.sharers, sec.mask_sharers USING ERRCODE = 'data_corrupted';
		END IF;
		y := floral._secagg_mask(model, round, st.attempt, l.branch, sec.s_private, sec.b_seed, st.sharers,
			 (SELECT pg_catalog.array_agg(s_pubs[array_position(names, x)] ORDER BY i)
				FROM unnest(st.sharers) WITH ORDINALITY AS u(x, i)),
			 floral._secagg_quantize(o.examples, o.weights, o.sums, o.loss_sum, o.tenants));
		q := format('SELECT floral.fed_secagg_input(%L, %L, %s, %s, %L)', model, l.branch, round, st.attempt,
					encode(y, 'base64'));
		SELECT t.a INTO answer FROM floral._remote(model, q, 'a text') AS t(a text);
		PERFORM floral._branch_mark_sent(model, round, 'secure: ' || answer, length(q));
		action := format('attempt %s: masked update sent (%s)', st.attempt, answer);
		more := answer = 'accepted';
	ELSIF NOT l.branch = ANY (coalesce(st.senders, '{}')) THEN
		action := format('attempt %s: not among the branches whose update arrived', st.attempt);
	ELSIF st.stage = 'unmask' THEN
		IF st.revealed THEN
			action := format('attempt %s: shares revealed, waiting for the others', st.attempt);
			RETURN;
		END IF;
		sec := floral._branch_secagg_secret(model, round, st.attempt);
		IF sec.reveal_owners IS NULL THEN
			-- the paper's rule: too few survivors, and revealing could expose
			-- a branch's update
			IF sec.threshold IS NULL OR sec.mask_sharers IS NULL THEN
				RAISE EXCEPTION 'this branch did not mask in attempt %: nothing is revealed', st.attempt
					USING ERRCODE = 'object_not_in_prerequisite_state';
			END IF;
			IF st.sharers IS DISTINCT FROM sec.mask_sharers THEN
				RAISE EXCEPTION 'the coordinator now relays other branches that shared (%) than this branch masked with (%): nothing is revealed',
					st.sharers, sec.mask_sharers USING ERRCODE = 'data_corrupted';
			END IF;
			IF (SELECT count(DISTINCT x) FROM unnest(st.senders) x) <> cardinality(st.senders)
			   OR EXISTS (SELECT 1 FROM unnest(st.senders) x WHERE x IS NULL OR NOT x = ANY (sec.mask_sharers)) THEN
				RAISE EXCEPTION 'the coordinator names senders % that are not distinct branches that shared: nothing is revealed',
					st.senders USING ERRCODE = 'data_corrupted';
			END IF;
			-- the paper's rule, with this branch's own threshold
			IF cardinality(st.senders) < sec.threshold THEN
				RAISE EXCEPTION 'only % branches sent, the threshold is %: nothing is revealed',
					cardinality(st.senders), sec.threshold USING ERRCODE = 'object_not_in_prerequisite_state';
			END IF;
			me := array_position(st.participants, l.branch);
			FOR p IN SELECT t.sender, decode(t.sealed, 'hex') AS sealed FROM floral._remote(model,
						format('SELECT * FROM floral.fed_secagg_inbox(%L, %L, %s, %s)', model, l.branch, round, st.attempt),
						'sender text, sealed text') AS t(sender text, sealed text) LOOP
				IF NOT p.sender = ANY (st.sharers) OR p.sender = ANY (owners) THEN
					RAISE EXCEPTION 'the coordinator relayed a share from "%", which did not share in this attempt', p.sender
						USING ERRCODE = 'data_corrupted';
				END IF;
				-- fails with 28000 if it was altered or is a replay
				k := floral._secagg_open_share(model, round, st.attempt, p.sender, l.branch, sec.c_private,
											   c_pubs[array_position(names, p.sender)], p.sealed);
				IF k.x <> me THEN
					RAISE EXCEPTION 'the share from "%" is for another point', p.sender
						USING ERRCODE = 'data_corrupted';
				END IF;
				owners := owners || p.sender;
				kinds := kinds || CASE WHEN p.sender = ANY (st.senders) THEN 'self' ELSE 'pair' END;
				xs := xs || k.x;
				shares := shares || CASE WHEN p.sender = ANY (st.senders) THEN k.b_share ELSE k.s_share END;
			END LOOP;
			IF owners IS DISTINCT FROM st.sharers THEN
				RAISE EXCEPTION 'the coordinator relayed shares from %, not from every branch that shared (%)',
					owners, st.sharers USING ERRCODE = 'data_corrupted';
			END IF;
			PERFORM floral._branch_secagg_decide(model, round, st.attempt, st.senders, owners, kinds, xs, shares);
			action := format('attempt %s: %s shares opened', st.attempt, cardinality(owners));
			more := true;
			RETURN;
		END IF;
		IF sec.reveal_senders IS DISTINCT FROM st.senders THEN
			RAISE EXCEPTION 'the coordinator now names other senders (%) than it did (%): nothing more is revealed',
				st.senders, sec.reveal_senders USING ERRCODE = 'data_corrupted';
		END IF;
		SELECT t.a INTO answer FROM floral._remote(model,
			format('SELECT floral.fed_secagg_reveal(%L, %L, %s, %s, %L, %L, %L, %L)', model, l.branch, round, st.attempt,
				   sec.reveal_owners, sec.reveal_kinds, sec.reveal_xs,
				   (SELECT pg_catalog.array_agg(encode(x, 'hex') ORDER BY i) FROM unnest(sec.reveal_shares) WITH ORDINALITY AS u(x, i))),
			'a text') AS t(a text);
		action := format('attempt %s: shares revealed (%s)', st.attempt, answer);
		more := answer = 'accepted';
	ELSE
		action := format('attempt %s: waiting for the coordinator to merge', st.attempt);
	END IF;
EXCEPTION WHEN OTHERS THEN
	error := SQLERRM;
END $$;
COMMENT ON FUNCTION floral._branch_phase_secagg(text, int) IS
	'branch step, secure aggregation: one action of the round''s current stage (advertise keys, send shares, send the masked update, open and reveal shares)';


------------------------------------------------------------------------
-- Rollback at a coordinator
--
-- floral_rollback sets a model's round back (to an earlier round, or to the
-- current one to restart it) and then calls this, when it exists: at a
-- coordinator the undone rounds are collected again from scratch, so their
-- updates and secure aggregation state go, and the current round's deadline
-- starts anew.  It runs inside floral_rollback, as floral's owner, with the
-- model locked.
------------------------------------------------------------------------
CREATE FUNCTION floral._federation_rollback(model text, round int) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	DELETE FROM floral.updates u WHERE u.model = _federation_rollback.model AND u.round >= _federation_rollback.round;
	DELETE FROM floral.secagg_rounds s WHERE s.model = _federation_rollback.model AND s.round >= _federation_rollback.round;
	UPDATE floral.federations f SET round_started_at = now() WHERE f.model = _federation_rollback.model;
END $$;
COMMENT ON FUNCTION floral._federation_rollback(text, int) IS
	'called by floral_rollback: a coordinator forgets what the undone rounds collected';

------------------------------------------------------------------------
-- Privileges
--
-- As in floral (see the end of floral--1.0.sql): PUBLIC gets nothing.
-- floral_admin runs a coordinator or a branch and reads the federation's
-- tables, except a branch's secure-aggregation secrets, which only floral's
-- functions read.  It writes directly only the configuration it owns: a
-- coordinator's federations and branches.  A branch's link (its source
-- query and connection) and outbox change only through floral_branch_join,
-- floral_branch_leave and the step, which record and check the role that
-- joined.  A fourth role, floral_branch, is for the coordinator's side: the
-- remote API only; grant it to one role per branch and name that role in
-- floral_coordinator_add_branch().
------------------------------------------------------------------------
DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'floral_branch') THEN
		CREATE ROLE floral_branch NOLOGIN;
	END IF;
END $$;

DO $$
DECLARE
	f regprocedure;
	t regclass;
BEGIN
	FOR f IN SELECT r::regprocedure FROM floral._extension_members('floral_federation', 'pg_proc') r LOOP
		EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);
		EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO floral_admin', f);
	END LOOP;
	FOR t IN SELECT c.oid::regclass FROM pg_catalog.pg_class c
			 WHERE c.oid IN (SELECT floral._extension_members('floral_federation', 'pg_class'))
			   AND c.relkind IN ('r', 'v', 'p') AND c.oid <> 'floral.secagg_secrets'::regclass LOOP
		EXECUTE format('GRANT SELECT ON %s TO floral_admin', t);
	END LOOP;
END $$;
GRANT INSERT, UPDATE, DELETE ON floral.federations, floral.branches TO floral_admin;

-- a branch's update of its own calls: what its training role may compute
GRANT EXECUTE ON FUNCTION floral._branch_update(text, int, bigint[]) TO floral_trainer;

-- branches, at the coordinator: the remote API and nothing else
GRANT EXECUTE ON FUNCTION floral.fed_spec(text, text), floral.fed_round(text, text),
	floral.fed_params(text, text, int),
	floral.fed_submit(text, text, int, double precision, real[], text, double precision, int),
	floral.fed_goodbye(text, text),
	floral.fed_secagg_state(text, text, int), floral.fed_secagg_advertise(text, text, int, int, text, text),
	floral.fed_secagg_keys(text, text, int, int), floral.fed_secagg_share(text, text, int, int, text[], text[]),
	floral.fed_secagg_input(text, text, int, int, text), floral.fed_secagg_inbox(text, text, int, int),
	floral.fed_secagg_reveal(text, text, int, int, text[], text[], int[], text[])
	TO floral_branch;
