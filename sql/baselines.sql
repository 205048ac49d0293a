-- The paper's baselines on a small synthetic task where the tenants of two
-- groups need different linear maps (as in synthetic.sql): FedAvg cannot fit
-- both, so Local Adaptor (a private rank-1 adaptor per tenant) and Ensemble
-- (two full models mixed at the output by each tenant's mixture) must each
-- beat it by a wide margin.  Also: a private adaptor never travels, and an
-- Ensemble predicts the same through every path.
CREATE EXTENSION IF NOT EXISTS floral_federation CASCADE;
SET max_parallel_workers_per_gather = 0;

-- y = (A + s * 2 u v^T) x + noise, s = +1 for even tenants, -1 for odd ones
-- (make_lowrank_task: see setup.sql), tenants 1 .. 8
SELECT make_lowrank_task('bl', 0.17, 8);

-- rows 1..100 train, 101..150 test
SELECT floral_create_model('bl_fedavg', '{8,4}', 'regression', 0, 1, '{"seed": 3}');
SELECT floral_create_model('bl_local', '{8,4}', 'regression', 1, 1, '{"seed": 3, "private_adaptors": true}');
SELECT floral_create_model('bl_ensemble', '{8,4}', 'regression', 2, 1, '{"seed": 3, "ensemble": true}');
-- an Ensemble's members are full models: no rank, no base, C times the layers
SELECT name, adaptors, ranks, base_parameters, adaptor_parameters, floral.shared_parameters(name) AS shared
FROM floral.model_summary WHERE name LIKE 'bl_%' ORDER BY name;
SELECT layer, part, adaptor, shape FROM floral_layers('bl_ensemble') ORDER BY adaptor, layer, part;

DO $$
BEGIN
	FOR k IN 1 .. 60 LOOP
		PERFORM floral_train(m, 'SELECT tenant, features, label FROM bl WHERE r <= 100', '{"lr": 0.1, "batch_size": 16}')
			FROM unnest('{bl_fedavg,bl_local,bl_ensemble}'::text[]) m;
		PERFORM floral_aggregate(m) FROM unnest('{bl_fedavg,bl_local,bl_ensemble}'::text[]) m;
	END LOOP;
END $$;

CREATE TABLE bl_mse AS
SELECT m AS model, (SELECT sum(loss * examples) / sum(examples)
                    FROM floral_evaluate(m, 'SELECT tenant, features, label FROM bl WHERE r > 100')) AS mse
FROM unnest('{bl_fedavg,bl_local,bl_ensemble}'::text[]) m;
SELECT (SELECT mse FROM bl_mse WHERE model = 'bl_fedavg') > 0.5 AS fedavg_cannot_fit,
       (SELECT mse FROM bl_mse WHERE model = 'bl_local') * 5
         < (SELECT mse FROM bl_mse WHERE model = 'bl_fedavg') AS local_five_times_better,
       (SELECT mse FROM bl_mse WHERE model = 'bl_ensemble') * 5
         < (SELECT mse FROM bl_mse WHERE model = 'bl_fedavg') AS ensemble_five_times_better;

-- Ensemble: each group's tenants lean to one member, the groups to different ones
CREATE TABLE bl_choice AS
SELECT t.tenant, s.grp, (SELECT k FROM unnest(t.mixture) WITH ORDINALITY u(p, k) ORDER BY p DESC LIMIT 1) AS member,
       (SELECT max(p) FROM unnest(t.mixture) p) AS weight
FROM floral.tenant_mixtures t JOIN (SELECT DISTINCT tenant, grp FROM bl) s USING (tenant)
WHERE t.model = 'bl_ensemble';
SELECT grp, count(*) AS tenants, count(DISTINCT member) AS members_chosen, min(weight) > 0.8 AS confident
FROM bl_choice GROUP BY grp ORDER BY grp;
SELECT count(DISTINCT member) AS groups_use_different_members FROM bl_choice;

-- Ensemble: per-row, batch and evaluation paths give the same outputs
CREATE TABLE bl_pred AS
SELECT b.tenant, b.r, floral_predict_proba('bl_ensemble', b.tenant, b.features) AS row_out, p.proba AS batch_out
FROM bl b
JOIN floral_predict_batch('bl_ensemble', 'SELECT r * 100 + substr(tenant, 7)::int, tenant, features FROM bl WHERE r > 100', true) p
  ON p.key = (b.r * 100 + substr(b.tenant, 7)::int)::text
WHERE b.r > 100;
SELECT count(*) AS rows,
       max((SELECT max(abs(x - y)) FROM unnest(row_out, batch_out) u(x, y))) < 1e-4 AS row_equals_batch
FROM bl_pred;
SELECT abs((SELECT avg((SELECT sum((o - l) ^ 2) FROM unnest(p.row_out, b.label) u(o, l)) / 4)
            FROM bl_pred p JOIN bl b USING (tenant, r))
           - (SELECT mse FROM bl_mse WHERE model = 'bl_ensemble')) < 1e-4 AS row_equals_evaluate;

-- Ensemble: a member's parameters are read by number; the factors do not exist
SELECT floral.tensor_shape(floral_parameter('bl_ensemble', 'W', 1, 2)) AS member_2_W;
SELECT floral_parameter('bl_ensemble', 'U', 1, 1);
SELECT floral_parameter('bl_ensemble', 'W', 1);
SELECT floral_create_model('bl_bad', '{8,4}', 'regression', 2, 1, '{"ensemble": true, "private_adaptors": true}');
SELECT floral_create_model('bl_bad', '{8,4}', 'regression', 0, 1, '{"ensemble": true}');
SELECT floral_create_model('bl_bad', '{8,4}', 'regression', 2, 1, '{"ensemble": "yes"}');

-- Local Adaptor: every tenant keeps its own adaptor on its row; what is
-- federated is the base alone, in the rounds, the contributions and a
-- branch's update (no private slot travels, as zeros or otherwise)
SELECT count(*) AS tenants, count(DISTINCT floral.tensor_to_real(adaptors)::text) AS distinct_private_adaptors,
       min(floral.tensor_shape(adaptors)) AS private_adaptor_shape
FROM floral.tenants WHERE model = 'bl_local';
SELECT (SELECT base_parameters FROM floral.model_summary WHERE name = 'bl_local') AS base_parameters,
       floral.shared_parameters('bl_local') AS shared,
       (SELECT floral.tensor_shape(params) FROM floral.rounds WHERE model = 'bl_local'
        ORDER BY round DESC LIMIT 1) AS round_shape;
SELECT count(*) FROM floral_train('bl_local', 'SELECT tenant, features, label FROM bl WHERE r <= 100');
SELECT octet_length(sums) / 8 AS contribution_values, weights
FROM floral.contributions WHERE model = 'bl_local';
SELECT floral.tensor_shape(sums) AS update_shape, weights, tenants
FROM floral._branch_update('bl_local', (SELECT round FROM floral.models WHERE name = 'bl_local'));
-- and the update merges: a coordinator accepts exactly the base
SELECT floral._update_norm('bl_local', u.examples, u.weights, u.sums) < 'Infinity' AS update_accepted_size
FROM floral._branch_update('bl_local', (SELECT round FROM floral.models WHERE name = 'bl_local')) u;
SELECT floral_aggregate('bl_local') > 0 AS aggregated;

-- The probe router with re-seeding (options router and reseed) on the same
-- task with three adaptors for two groups: each tenant's loss with each
-- adaptor alone picks its adaptor, the groups take different ones and fit
-- five times better than FedAvg; the adaptor left over is re-seeded as a
-- near copy of a used one.
SELECT floral_create_model('bl_probe', '{8,4}', 'regression', 3, 1,
                           '{"seed": 3, "router": "probe", "reseed": true}');
DO $$
BEGIN
	FOR k IN 1 .. 60 LOOP
		PERFORM floral_train('bl_probe', 'SELECT tenant, features, label FROM bl WHERE r <= 100', '{"lr": 0.1, "batch_size": 16}');
		PERFORM floral_aggregate('bl_probe');
	END LOOP;
END $$;
SELECT (SELECT sum(loss * examples) / sum(examples)
        FROM floral_evaluate('bl_probe', 'SELECT tenant, features, label FROM bl WHERE r > 100')) * 5
       < (SELECT mse FROM bl_mse WHERE model = 'bl_fedavg') AS probe_five_times_better;
CREATE TABLE bl_probe_choice AS
SELECT s.grp, (SELECT k FROM unnest(t.mixture) WITH ORDINALITY u(p, k) ORDER BY p DESC LIMIT 1) AS adaptor,
       (SELECT max(p) FROM unnest(t.mixture) p) AS weight
FROM floral.tenant_mixtures t JOIN (SELECT DISTINCT tenant, grp FROM bl) s USING (tenant)
WHERE t.model = 'bl_probe';
SELECT grp, count(*) AS tenants, count(DISTINCT adaptor) AS adaptors_chosen, min(weight) > 0.8 AS confident
FROM bl_probe_choice GROUP BY grp ORDER BY grp;
SELECT count(DISTINCT adaptor) AS groups_use_different_adaptors FROM bl_probe_choice;
-- the adaptor no group chose was re-seeded from a used one: it is near that
-- one, while unused it would stay far from both (here 0.04 of the largest
-- distance between two adaptors; about 1 with reseed off)
CREATE FUNCTION pg_temp.adaptor_vector(m text, c int) RETURNS real[] LANGUAGE sql AS $$
	SELECT array(SELECT unnest(floral.tensor_to_real(floral_parameter(m, 'U', 1, c))))
	       || array(SELECT unnest(floral.tensor_to_real(floral_parameter(m, 'V', 1, c))))
	       || array(SELECT unnest(floral.tensor_to_real(floral_parameter(m, 'beta', 1, c))))
$$;
CREATE TABLE bl_dist AS
SELECT a, b, (SELECT sqrt(sum((x - y) ^ 2)) FROM unnest(pg_temp.adaptor_vector('bl_probe', a),
                                                        pg_temp.adaptor_vector('bl_probe', b)) u(x, y)) AS d
FROM generate_series(1, 3) a, generate_series(1, 3) b WHERE a <> b;
SELECT count(*) AS spare_adaptors,
       min((SELECT min(d) FROM bl_dist WHERE a = s.c AND b IN (SELECT adaptor FROM bl_probe_choice)))
         < 0.2 * (SELECT max(d) FROM bl_dist) AS spare_was_reseeded
FROM generate_series(1, 3) s(c) WHERE s.c NOT IN (SELECT adaptor FROM bl_probe_choice);
SELECT floral_create_model('bl_bad', '{8,4}', 'regression', 2, 1, '{"router": "oracle"}');
SELECT floral_create_model('bl_bad', '{8,4}', 'regression', 2, 1, '{"adaptor_init": "gaussian"}');
SELECT floral_create_model('bl_bad', '{8,4}', 'regression', 1, 1, '{"reseed": true}');

DROP TABLE bl_a, bl_uv, bl_x, bl, bl_mse, bl_choice, bl_pred, bl_probe_choice, bl_dist;
SELECT floral_drop_model(name) FROM floral.models WHERE name LIKE 'bl_%' ORDER BY name;
