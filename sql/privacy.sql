-- Differential privacy of branch updates: each tenant's update is clipped
-- to dp_clip and its weight capped at dp_max_examples, and Gaussian noise of
-- std dp_noise * dp_max_examples * sqrt(2 + dp_clip^2) is added to N, M and
-- the sums' distance from the round (aggregate.c, add_dp_noise).  Also: an
-- update holds sums, no tenant's values.
CREATE EXTENSION IF NOT EXISTS floral_federation CASCADE;
SET max_parallel_workers_per_gather = 0;

CREATE TABLE dp_rows AS
SELECT 'shop' || (i % 3) AS tenant, ARRAY[sin(i), cos(i), 1]::real[] AS features, i % 3 AS label
FROM generate_series(1, 300) i;

-- distance of each tenant's trained model from the round it started from:
-- every tenant is trained in a call of its own, so the call's sums average
-- to exactly that tenant's model
CREATE FUNCTION update_norms(m text) RETURNS TABLE (tenant text, norm double precision)
LANGUAGE sql AS $$
	SELECT t.tenant, sqrt(sum((a - b)::float8 ^ 2))
	FROM floral.tenants t
	JOIN floral.rounds r ON r.model = t.model AND r.round = t.start_round,
	LATERAL unnest(floral._call_average(m, t.contributed_call)::real[], r.params::real[]) AS u(a, b)
	WHERE t.model = m GROUP BY t.tenant ORDER BY t.tenant $$;

SELECT floral_create_model('plain', '{3,16,3}', 'classification', 2, 2, '{"seed": 1}');
SELECT floral_create_model('clipped', '{3,16,3}', 'classification', 2, 2, '{"seed": 1, "dp_clip": 0.05}');
SELECT floral_create_model('noisy', '{3,16,3}', 'classification', 2, 2,
                           '{"seed": 1, "dp_clip": 0.05, "dp_noise": 1.0, "dp_max_examples": 100}');
SELECT m, count(*) FROM unnest('{plain,clipped,noisy}'::text[]) m,
	unnest('{shop0,shop1,shop2}'::text[]) t,
	LATERAL floral_train(m, format('SELECT tenant, features, label FROM dp_rows WHERE tenant = %L', t),
	                     '{"lr": 0.5, "epochs": 3}')
GROUP BY m ORDER BY m;
SELECT model, count(*) AS calls FROM floral.contributions GROUP BY model ORDER BY model;

-- without a clip the updates are larger than 0.05; with it, none is
SELECT 'plain' AS model, min(norm) > 0.05 AS all_above_clip FROM update_norms('plain');
SELECT 'clipped' AS model, max(norm) <= 0.05 * 1.0001 AS clip_holds,
       min(norm) > 0.049 AS clipped_to_the_bound FROM update_norms('clipped');

-- no noise: a branch's update is the same every time it is computed
SELECT a.sums::text = b.sums::text AS deterministic
FROM floral._branch_update('clipped', 0) a, floral._branch_update('clipped', 0) b;

-- noise: two computations differ by noise of std sqrt(2) * 1.0 * 100 *
-- sqrt(2 + 0.05^2) = sqrt(2) * 141.51 on N, on every weight M_c and on
-- every sum's distance from the round (S - N g for the base); the loss and
-- the tenant count are not sent
-- (N is sent as a whole count, at least 1: two draws of std 141.5 around
-- N = 300 are equal about one time in 500, so one pair could fail by
-- chance; 20 draws all equal cannot happen in practice)
CREATE TABLE dp_draws AS
SELECT (SELECT count(DISTINCT u.examples) > 1
		  FROM generate_series(1, 20) g, LATERAL floral._branch_update('noisy', 0 * g) u) AS noisy_examples,
	   (SELECT count(DISTINCT u.weights) > 1
		  FROM generate_series(1, 20) g, LATERAL floral._branch_update('noisy', 0 * g) u) AS noisy_weights,
	   a.loss_sum AS loss_sent, a.tenants AS tenants_sent,
	   (SELECT stddev_samp((x - a.examples * g) - (y - b.examples * g)) / sqrt(2)
		  FROM unnest(a.sums::real[], b.sums::real[], r.params::real[]) WITH ORDINALITY AS u(x, y, g, i)
		 WHERE i <= 115) AS noise_std,
	   (SELECT count(*) FROM unnest(a.sums::real[]) x) AS coordinates
FROM floral._branch_update('noisy', 0) a, floral._branch_update('noisy', 0) b, floral.rounds r
WHERE r.model = 'noisy' AND r.round = 0;
SELECT noisy_examples, noisy_weights, loss_sent, tenants_sent, coordinates,
	   noise_std BETWEEN 141.51 * 0.75 AND 141.51 * 1.25 AS noise_std_is_141_5
FROM dp_draws;
-- the weights stay between 0 and the noisy examples, which stay >= 1
SELECT bool_and(w BETWEEN 0 AND u.examples) AND bool_and(u.examples >= 1) AS weights_in_range
FROM generate_series(1, 20) g, LATERAL floral._branch_update('noisy', 0 * g) u, unnest(u.weights) w;

-- the noise averages out in the merged model only as much as the privacy allows:
-- a noisy round still aggregates to finite parameters
SELECT floral_aggregate('clipped') AS clipped_round;

-- what a branch sends has no tenant in it: one row of sums and weights
SELECT examples, cardinality(weights) AS weights, tenants,
	   floral.tensor_shape(sums) = ARRAY[(SELECT sum(parameters)::int FROM floral_layers('plain'))] AS parameter_shaped
FROM floral._branch_update('plain', 0);

-- a real update of a model of some size passes the coordinator's checks,
-- base64's newlines included (its size is bounded before it is decoded)
SELECT floral_create_model('wide', '{64,256,10}', 'classification', 2, 4, '{"seed": 1}');
SELECT count(*) FROM floral_train('wide', 'SELECT tenant, array_fill(0.5::real, ARRAY[64]), label FROM dp_rows');
SELECT floral_coordinator_setup('wide');
SELECT floral_coordinator_add_branch('wide', 'solo');
SELECT floral.fed_submit('wide', 'solo', 0, u.examples, u.weights,
                         encode(floral.tensor_send(u.sums), 'base64'), u.loss_sum, u.tenants) AS answer,
       octet_length(encode(floral.tensor_send(u.sums), 'base64')) > 4 * octet_length(floral.tensor_send(u.sums)) / 3
           AS has_newlines
FROM floral._branch_update('wide', 0) u;

-- options are checked
DO $$ BEGIN PERFORM floral_create_model('bad', '{3,3}', 'classification', 2, 1, '{"dp_noise": 1}');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM floral_create_model('bad', '{3,3}', 'classification', 2, 1, '{"dp_clip": -1}');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM floral_create_model('bad', '{3,3}', 'classification', 2, 1, '{"dp_clip": 1, "dp_noise": 1}');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM floral_create_model('bad', '{3,3}', 'classification', 2, 1, '{"dp_max_examples": 0}');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;

SELECT floral_drop_model(name) FROM floral.models ORDER BY name;
DROP TABLE dp_rows, dp_draws;
DROP FUNCTION update_norms(text);
