-- bench/paper.sql: the FLoRAL paper's benchmark protocol, run entirely through
-- floral's SQL functions.  Loaded once into the benchmark database by
-- bench/paper.sh, after the data tables <task>_train / <task>_test exist
-- (task: rotate, label_shift).  Everything here is bookkeeping around the
-- public floral_* functions: a job queue, a results table and one procedure
-- that runs one (task, method, seed) job round by round.

-- The 300 tenants and their groups (tenant k is in group k mod 4).
CREATE TABLE paper_tenants (tenant text PRIMARY KEY, grp int NOT NULL);

-- Jobs: each worker session claims the next queued job (SKIP LOCKED).
CREATE TABLE paper_jobs (
	id			int PRIMARY KEY,
	task		text NOT NULL,
	method		text NOT NULL,
	seed		int NOT NULL,
	state		text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'failed')),
	worker		int,
	started_at	timestamptz,
	finished_at	timestamptz
);

-- One row per evaluation (round 0 = the initial model).
CREATE TABLE paper_results (
	task		text NOT NULL,
	method		text NOT NULL,
	seed		int NOT NULL,
	round		int NOT NULL,
	accuracy	double precision NOT NULL,	-- personalised test accuracy, %, weighted by test examples
	elapsed_s	double precision NOT NULL,	-- wall seconds since the job started (setup, training, evaluation)
	train_s		double precision NOT NULL,	-- wall seconds spent in floral_train + floral_aggregate so far
	train_loss	double precision,			-- mean training loss of the last round (weighted by examples)
	router_purity double precision,		-- share of trained tenants whose argmax adaptor is their group's majority adaptor
	router_adaptors int,				-- distinct majority adaptors over the 4 groups (4 = one adaptor per group)
	PRIMARY KEY (task, method, seed, round)
);

-- One row per finished job: sizes and costs.
CREATE TABLE paper_costs (
	task		text NOT NULL,
	method		text NOT NULL,
	seed		int NOT NULL,
	rounds		int NOT NULL,
	per_round	int NOT NULL,
	adaptors	int NOT NULL,
	ranks		int[] NOT NULL,
	private_adaptors boolean NOT NULL,
	base_parameters bigint NOT NULL,
	adaptor_parameters bigint NOT NULL,
	shared_parameters bigint NOT NULL,	-- federated: base (+ adaptor bank unless private)
	tenant_parameters bigint NOT NULL,	-- stored per tenant: C logits (+ private adaptor)
	round_tensor_bytes bigint NOT NULL,	-- octet_length(floral.tensor_send(params)) of the last round
	update_bytes bigint NOT NULL,		-- octet_length(floral.tensor_send(sums)) of the last round's branch update
	contribution_bytes bigint NOT NULL,	-- octet_length(sums) of the last round's floral.contributions row(s)
	train_s_per_round double precision NOT NULL,	-- mean wall seconds of floral_train + floral_aggregate
	wall_s		double precision NOT NULL,	-- the whole job, evaluations included
	PRIMARY KEY (task, method, seed)
);

-- Method name -> how floral builds it.
-- local: the paper's Local Adaptor, one private adaptor at the 1% budget
-- (ranks [1,1] for 784-200-10); ensemble: C = 4 full models mixed at the
-- output by the tenant's mixture.
CREATE FUNCTION paper_method(method text, OUT adaptors int, OUT rank real, OUT private boolean,
							 OUT oracle boolean, OUT options jsonb)
LANGUAGE sql IMMUTABLE AS $$
	SELECT m.a, m.r, m.p, m.o, m.x::jsonb
	FROM (VALUES ('fedavg',    0, 0.1::real, false, false, '{}'),
				 ('local',     1, 0.01::real, true, false, '{}'),
				 ('ensemble',  4, 0.1::real, false, false, '{"ensemble": true}'),
				 -- the paper's router, named: floral's default is the probe router
				 ('floral1',   4, 0.01::real, false, false, '{"router": "paper", "reseed": false}'),
				 ('floral10',  4, 0.1::real, false, false, '{"router": "paper", "reseed": false}'),
				 ('oracle10',  4, 0.1::real, false, true, '{"router": "paper", "reseed": false}'),
				 -- router variants (src/router.c, model.c): the probe router,
				 -- adaptors with V drawn at initialisation, and both
				 ('floral10p', 4, 0.1::real, false, false, '{"router": "probe", "reseed": false}'),
				 ('floral10v', 4, 0.1::real, false, false, '{"router": "paper", "reseed": false, "adaptor_init": "random"}'),
				 ('floral10pv', 4, 0.1::real, false, false, '{"router": "probe", "reseed": false, "adaptor_init": "random"}'),
				 ('floral1p',  4, 0.01::real, false, false, '{"router": "probe", "reseed": false}'),
				 ('floral1pv', 4, 0.01::real, false, false, '{"router": "probe", "reseed": false, "adaptor_init": "random"}'),
				 ('floral10pr', 4, 0.1::real, false, false, '{"router": "probe", "reseed": true}'),
				 ('floral10pvr', 4, 0.1::real, false, false, '{"router": "probe", "adaptor_init": "random", "reseed": true}'),
				 ('floral1pr', 4, 0.01::real, false, false, '{"router": "probe", "reseed": true}'),
				 ('floral1pvr', 4, 0.01::real, false, false, '{"router": "probe", "adaptor_init": "random", "reseed": true}')
			) AS m(n, a, r, p, o, x)
	WHERE m.n = method
$$;

-- How well the tenants' mixtures match the true groups: for each group the
-- most common argmax adaptor among its trained (or pinned) tenants;
-- purity = share of those tenants on their group's majority adaptor;
-- adaptors = how many distinct majority adaptors the 4 groups use.
CREATE FUNCTION paper_router(model text, OUT purity double precision, OUT adaptors int)
LANGUAGE sql STABLE AS $$
	WITH mix AS (
		SELECT t.tenant, p.grp, mx.mixture
		FROM floral.tenants t
		JOIN paper_tenants p USING (tenant)
		CROSS JOIN LATERAL (SELECT floral_mixture(t.model, t.tenant) AS mixture) mx
		WHERE t.model = paper_router.model AND (t.last_round IS NOT NULL OR t.pinned IS NOT NULL)
	), arg AS (
		SELECT m.tenant, m.grp,
			   (SELECT i FROM unnest(m.mixture) WITH ORDINALITY u(v, i) ORDER BY v DESC, i LIMIT 1) AS a
		FROM mix m
	), cnt AS (
		SELECT grp, a, count(*) AS n,
			   row_number() OVER (PARTITION BY grp ORDER BY count(*) DESC, a) AS rk
		FROM arg GROUP BY grp, a
	)
	SELECT sum(n) FILTER (WHERE rk = 1)::float8 / nullif(sum(n), 0),
		   (count(DISTINCT a) FILTER (WHERE rk = 1))::int
	FROM cnt
$$;

-- Run one job: create the model, (oracle: pin every tenant's mixture to the
-- one-hot of its group), then `rounds` rounds of
--   floral_train(model, <the round's sampled tenants>, {epochs 1, batch 32, lr 0.1, seed})
--   floral_aggregate(model)
-- each committed on its own, evaluating every eval_every rounds and at the
-- end.  The round's tenants: the first per_round of the 300 ordered by
-- md5(seed:round:tenant), a fresh seeded sample every round.
CREATE PROCEDURE paper_run(task text, method text, seed int, rounds int, per_round int,
						   eval_every int, lr real DEFAULT 0.1)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	model text := format('%s_%s_s%s', task, method, seed);
	spec record;
	train_opts jsonb := jsonb_build_object('epochs', 1, 'batch_size', 32, 'lr', lr, 'seed', seed);
	test_src text := format('SELECT tenant, features, label FROM %I ORDER BY id', task || '_test');
	t_job timestamptz := clock_timestamp();
	t0 timestamptz;
	train_s float8 := 0;
	loss float8;
	acc float8;
	purity float8;
	nadapt int;
	sel text[];
	upd_bytes bigint;
	contrib_bytes bigint;
	r int;
	s record;
BEGIN
	SELECT * INTO spec FROM paper_method(method);
	IF spec.adaptors IS NULL THEN
		RAISE EXCEPTION 'unknown method %', method;
	END IF;
	IF to_regclass(task || '_train') IS NULL THEN
		RAISE EXCEPTION 'unknown task %', task;
	END IF;
	IF EXISTS (SELECT 1 FROM floral.models m WHERE m.name = model) THEN
		PERFORM floral_drop_model(model);
	END IF;
	DELETE FROM paper_results x WHERE x.task = task AND x.method = method AND x.seed = seed;
	DELETE FROM paper_costs x WHERE x.task = task AND x.method = method AND x.seed = seed;

	PERFORM floral_create_model(model, '{784,200,10}', 'classification', spec.adaptors, spec.rank,
		jsonb_build_object('seed', seed, 'private_adaptors', spec.private) || spec.options);
	IF spec.oracle THEN
		-- the optimal router: tenant k pinned to the one-hot of group k mod 4
		PERFORM floral_set_mixture(model, p.tenant,
				   array(SELECT CASE WHEN c = p.grp THEN 1 ELSE 0 END::real FROM generate_series(0, 3) c))
			FROM paper_tenants p;
	END IF;
	COMMIT;

	FOR r IN 0 .. rounds LOOP
		IF r > 0 THEN
			SELECT array_agg(x.tenant ORDER BY x.tenant) INTO sel
				FROM (SELECT p.tenant FROM paper_tenants p
					  ORDER BY md5(seed || ':' || r || ':' || p.tenant) LIMIT per_round) x;
			t0 := clock_timestamp();
			SELECT sum(f.loss * f.examples) / sum(f.examples) INTO loss
				FROM floral_train(model,
					format('SELECT tenant, features, label FROM %I WHERE tenant = ANY (%L::text[]) ORDER BY id',
						   task || '_train', sel),
					train_opts) f;
			IF r = rounds THEN
				-- what the last round stores and would send as a branch:
				-- measured on the real rows, not computed from the layout
				SELECT sum(octet_length(c.sums)) INTO contrib_bytes
					FROM floral.contributions c WHERE c.model = model AND c.round = r - 1;
				SELECT octet_length(floral.tensor_send(u.sums)) INTO upd_bytes
					FROM floral._branch_update(model, r - 1) u;
			END IF;
			PERFORM floral_aggregate(model);
			-- keep only the newest round: 500 kept rounds per model would
			-- fill the disk for nothing
			PERFORM floral_prune(model, 1);
			COMMIT;
			train_s := train_s + extract(epoch FROM clock_timestamp() - t0);
		END IF;
		IF r % eval_every = 0 OR r = rounds THEN
			SELECT 100 * sum(e.accuracy * e.examples) / sum(e.examples) INTO acc
				FROM floral_evaluate(model, test_src) e;
			purity := NULL;
			nadapt := NULL;
			IF spec.adaptors > 1 THEN
				SELECT x.purity, x.adaptors INTO purity, nadapt FROM paper_router(model) x;
			END IF;
			INSERT INTO paper_results VALUES (task, method, seed, r, acc,
				extract(epoch FROM clock_timestamp() - t_job), train_s, loss,
				purity, nadapt);
			COMMIT;
			RAISE NOTICE 'paper: task=% method=% seed=% round=% accuracy=% elapsed=%s',
				task, method, seed, r, round(acc::numeric, 2),
				round(extract(epoch FROM clock_timestamp() - t_job)::numeric, 1);
		END IF;
	END LOOP;

	SELECT ms.* INTO s FROM floral.model_summary ms WHERE ms.name = model;
	INSERT INTO paper_costs VALUES (task, method, seed, rounds, per_round, s.adaptors, s.ranks, spec.private,
		s.base_parameters, s.adaptor_parameters,
		s.base_parameters + CASE WHEN spec.private THEN 0 ELSE s.adaptor_parameters END,
		s.adaptors + CASE WHEN spec.private THEN s.adaptor_parameters ELSE 0 END,
		(SELECT octet_length(floral.tensor_send(x.params)) FROM floral.rounds x
		  WHERE x.model = model ORDER BY x.round DESC LIMIT 1),
		coalesce(upd_bytes, 0), coalesce(contrib_bytes, 0),
		train_s / greatest(rounds, 1),
		extract(epoch FROM clock_timestamp() - t_job));
	PERFORM floral_drop_model(model);
	COMMIT;
END $$;

-- Claim the next queued job for a worker; NULLs when the queue is empty.
CREATE FUNCTION paper_claim(w int) RETURNS paper_jobs
LANGUAGE sql AS $$
	UPDATE paper_jobs j SET state = 'running', worker = w, started_at = clock_timestamp()
	WHERE j.id = (SELECT id FROM paper_jobs WHERE state = 'queued' ORDER BY id
				  FOR UPDATE SKIP LOCKED LIMIT 1)
	RETURNING j.*
$$;

-- A worker: one session that claims and runs jobs until the queue is empty.
-- One long-lived backend per worker loads floral.so once, so a reinstall of
-- the extension on this machine during a long run cannot mix versions
-- within a worker.  An error ends the session (the job stays 'running');
-- paper.sh marks it failed and starts the worker again.
CREATE PROCEDURE paper_worker(w int, rounds int, per_round int, eval_every int)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	j paper_jobs;
	n int;
BEGIN
	SELECT count(*) INTO n FROM paper_jobs;
	LOOP
		SELECT * INTO j FROM paper_claim(w);
		EXIT WHEN j.id IS NULL;
		COMMIT;
		RAISE NOTICE 'paper: w% starts job %/%: % % seed %', w, j.id, n, j.task, j.method, j.seed;
		CALL paper_run(j.task, j.method, j.seed, rounds, per_round, eval_every);
		UPDATE paper_jobs x SET state = 'done', finished_at = clock_timestamp() WHERE x.id = j.id;
		COMMIT;
	END LOOP;
END $$;
