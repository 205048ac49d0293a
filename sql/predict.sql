-- Personalised prediction, evaluation and the per-backend model cache.
CREATE EXTENSION IF NOT EXISTS floral;
SET max_parallel_workers_per_gather = 0;

-- two groups of tenants: group 1 sees the labels of group 0 shifted by one
CREATE TABLE rows3 AS
SELECT 'g' || (t % 2) || '_t' || t AS tenant, t % 2 AS grp, i,
       ARRAY[sin(i * 1.1 + t), cos(i * 0.9), sin(i * 0.37) * 2]::real[] AS features,
       ((CASE WHEN sin(i * 1.1 + t) > 0.3 THEN 2 WHEN cos(i * 0.9) > 0 THEN 1 ELSE 0 END) + t % 2) % 3 AS label
FROM generate_series(0, 5) t, generate_series(1, 120) i;

SELECT floral_create_model('p', '{3,24,3}', 'classification', 2, 2, '{"seed": 3}');
DO $$
BEGIN
	FOR r IN 1 .. 25 LOOP
		PERFORM floral_train('p', 'SELECT tenant, features, label FROM rows3 WHERE i <= 90', '{"lr": 0.3}');
		PERFORM floral_aggregate('p');
	END LOOP;
END $$;

-- floral_evaluate and row-by-row floral_predict agree on every tenant
CREATE TEMP TABLE ev AS
SELECT * FROM floral_evaluate('p', 'SELECT tenant, features, label FROM rows3 WHERE i > 90');
SELECT e.tenant, e.examples,
       abs(e.accuracy - avg((floral_predict('p', r.tenant, r.features) = r.label)::int)) < 1e-9 AS agree
FROM ev e JOIN rows3 r ON r.tenant = e.tenant AND r.i > 90
GROUP BY e.tenant, e.examples, e.accuracy ORDER BY e.tenant;

-- evaluations can be recorded for a dashboard, per round and tenant group;
-- training records every tenant's loss by itself
INSERT INTO floral.tenant_groups SELECT DISTINCT 'p', tenant, 'group ' || grp FROM rows3;
SELECT count(*) FROM floral_evaluate('p', 'SELECT tenant, features, label FROM rows3 WHERE i > 90', 'test');
SELECT round, split, tenant_group, tenants, examples,
       abs(accuracy - (SELECT sum(accuracy * examples) / sum(examples) FROM ev
                       WHERE substr(tenant, 2, 1)::int = substr(tenant_group, 7)::int)) < 1e-9 AS matches_evaluate
FROM floral.history_by_group WHERE model = 'p' AND split = 'test' ORDER BY tenant_group;
SELECT split, count(DISTINCT round) AS rounds, count(DISTINCT tenant) AS tenants,
       bool_and(loss > 0) AS losses_recorded
FROM floral.history WHERE model = 'p' GROUP BY split ORDER BY split;
-- nothing is running, so the progress view is empty
SELECT count(*) AS running FROM floral.progress;

-- personalised accuracy beats the uniform mixture (what a stranger gets)
SELECT avg((floral_predict('p', tenant, features) = label)::int) >
       avg((floral_predict('p', 'stranger', features) = label)::int) + 0.1 AS personalised_beats_uniform
FROM rows3 WHERE i > 90;

-- probabilities: sum to one; the predicted class is the most probable one
SELECT bool_and(abs((SELECT sum(v) FROM unnest(pr) v) - 1) < 1e-5) AS sums_to_one,
       bool_and(floral_predict('p', tenant, features) =
                (SELECT k - 1 FROM unnest(pr) WITH ORDINALITY u(v, k) ORDER BY v DESC LIMIT 1)) AS argmax
FROM (SELECT tenant, features, floral_predict_proba('p', tenant, features) AS pr FROM rows3) s;

-- a stranger gets the uniform mixture, same as an explicit uniform pin
SELECT floral_set_mixture('p', 'pinned_uniform', '{0.5,0.5}');
SELECT bool_and(floral_predict_proba('p', 'stranger', features) =
                floral_predict_proba('p', 'pinned_uniform', features)) AS stranger_is_uniform
FROM rows3 WHERE i <= 5;

-- NULL in, NULL out
SELECT floral_predict('p', 'g0_t0', NULL) IS NULL AS null_features;

-- the cache follows the model: predict, aggregate a new round, predict again
CREATE TABLE before AS
SELECT i, tenant, floral_predict_proba('p', tenant, features) AS pr,
       floral_predict_proba('p', 'stranger', features) AS prs FROM rows3 WHERE i <= 20;
SELECT count(*) FROM floral_train('p', 'SELECT tenant, features, label FROM rows3 WHERE i <= 90', '{"lr": 0.5}');
SELECT floral_aggregate('p');
CREATE TABLE after AS
SELECT i, tenant, floral_predict_proba('p', tenant, features) AS pr FROM rows3 WHERE i <= 20;
SELECT count(*) FILTER (WHERE b.pr <> a.pr) > 0 AS predictions_changed
FROM before b JOIN after a USING (i, tenant);
-- a fresh backend (empty cache) predicts exactly what the warm cache does
\c
SELECT bool_and(floral_predict_proba('p', tenant, features) = a.pr) AS fresh_equals_cached
FROM rows3 JOIN after a USING (i, tenant);

-- rollback is seen by the cache too (shared parameters roll back; the
-- tenants' own mixtures are private state and stay, so compare a stranger)
SELECT floral_rollback('p', 25);
SELECT bool_and(floral_predict_proba('p', 'stranger', features) = b.prs) AS rolled_back
FROM rows3 JOIN before b USING (i, tenant);

-- regression: floral_predict is the first output, proba gives all of them
SELECT floral_create_model('reg', '{2,2}', 'regression', 0, 1, '{"seed": 1}');
UPDATE floral.rounds SET params = '[1,2,3,4,0.5,-1]' WHERE model = 'reg';
SELECT floral_predict('reg', 'x', '{1,1}') AS first, floral_predict_proba('reg', 'x', '{1,1}') AS outputs;
SELECT tenant, examples, round(loss::numeric, 4) AS mse, accuracy
FROM floral_evaluate('reg', 'SELECT ''x'', ARRAY[1,1]::real[], ARRAY[3.5, 6]::real[]');
SELECT floral_drop_model(name) FROM floral.models ORDER BY name;
DROP TABLE before, after;
