-- FloralAvg by hand: p(k) = n_k / sum n_j, p(k|c) = p(k) pi_kc / sum_j p(j) pi_jc.
CREATE EXTENSION IF NOT EXISTS floral;

-- layers {1,1}, 2 adaptors of rank 1: parameters are
-- [W, b | U1, U2, V1, V2, beta1, beta2]
--
-- A training call leaves the hierarchical sums of its tenants
-- (N = sum n, M_c = sum n pi_c, sum n base, sum n pi_c adaptor_c).  This
-- makes the row a call over one tenant with n examples, mixture pi and the
-- trained parameters p would leave, so that FloralAvg can be checked by hand.
CREATE FUNCTION pg_temp.contribution(model text, call bigint, n float8, pi float8[], p float8[])
RETURNS void LANGUAGE sql AS $$
	INSERT INTO floral.contributions (model, round, call, chunk, tenants, examples, weights,
	                                  max_examples, loss_sum, sums)
	SELECT model, 0, call, 0, 1, n, ARRAY[n * pi[1], n * pi[2]], n, 0,
	       string_agg(float8send(CASE WHEN i <= 2 THEN n ELSE n * pi[1 + (i - 3) % 2] END * p[i]),
	                  ''::bytea ORDER BY i)
	FROM generate_subscripts(p, 1) i
$$;
SELECT floral_create_model('h', '{1,1}', 'regression', 2, 1, '{"seed": 1}');
SELECT floral.tensor_shape(params) FROM floral.rounds WHERE model = 'h';

-- tenant A: n = 1, pi = (0.75, 0.25), every parameter 1
-- tenant B: n = 3, pi = (0.25, 0.75), every parameter 5
-- p(A) = 0.25, p(B) = 0.75              base      = 0.25*1 + 0.75*5 = 4
-- p(A|1) = 0.1875/0.375 = 0.5           adaptor 1 = 0.5*1 + 0.5*5   = 3
-- p(A|2) = 0.0625/0.625 = 0.1           adaptor 2 = 0.1*1 + 0.9*5   = 4.6
SELECT pg_temp.contribution('h', 1, 1, '{0.75,0.25}', '{1,1,1,1,1,1,1,1}'),
       pg_temp.contribution('h', 2, 3, '{0.25,0.75}', '{5,5,5,5,5,5,5,5}');
SELECT floral_aggregate('h');
SELECT params FROM floral.rounds WHERE model = 'h' AND round = 1;
SELECT floral_parameter('h', 'W', 1) AS w, floral_parameter('h', 'U', 1, 1) AS u1,
       floral_parameter('h', 'V', 1, 2) AS v2, floral_parameter('h', 'beta', 1, 2) AS beta2;
SELECT round, tenants, examples FROM floral.rounds WHERE model = 'h' ORDER BY round;
-- merged contributions are gone; a second aggregation has nothing to merge
SELECT count(*) AS pending FROM floral.contributions WHERE model = 'h';
DO $$ BEGIN PERFORM floral_aggregate('h');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
SELECT round FROM floral.models WHERE name = 'h';

-- an adaptor nobody used keeps its value; server_lr = 0.5 moves half way
-- (reseed off: an unused adaptor keeps its value, FLORAL.md's formula)
SELECT floral_create_model('s', '{1,1}', 'regression', 2, 1, '{"seed": 1, "server_lr": 0.5, "reseed": false}');
UPDATE floral.rounds SET params = '[2,2,2,2,2,2,2,2]' WHERE model = 's';
SELECT pg_temp.contribution('s', 1, 4, '{1,0}', '{4,4,4,4,4,4,4,4}');
SELECT floral_aggregate('s');
-- base and adaptor 1: 2 - 0.5*(2 - 4) = 3; adaptor 2 unused: stays 2
SELECT params FROM floral.rounds WHERE model = 's' AND round = 1;
-- by default (reseed on) the unused adaptor 2 becomes a copy of the busiest,
-- adaptor 1 (3), each value scaled by 1 + 0.1 u: between 2.7 and 3.3, not 3
SELECT floral_create_model('s2', '{1,1}', 'regression', 2, 1, '{"seed": 1, "server_lr": 0.5}');
UPDATE floral.rounds SET params = '[2,2,2,2,2,2,2,2]' WHERE model = 's2';
SELECT pg_temp.contribution('s2', 1, 4, '{1,0}', '{4,4,4,4,4,4,4,4}');
SELECT floral_aggregate('s2');
SELECT p[1:3] || p[5] || p[7] AS base_and_adaptor_1,
       (SELECT bool_and(v BETWEEN 2.7 AND 3.3 AND v <> 3) FROM unnest(ARRAY[p[4], p[6], p[8]]) v) AS adaptor_2_reseeded
FROM (SELECT floral.tensor_to_real(params) AS p FROM floral.rounds WHERE model = 's2' AND round = 1) r;

-- hierarchical sums: the same calls added in another order give the same
-- round (the sums are double precision)
SELECT floral_create_model('o1', '{1,1}', 'regression', 2, 1);
SELECT floral_create_model('o2', '{1,1}', 'regression', 2, 1);
SELECT pg_temp.contribution(m, CASE WHEN m = 'o2' THEN 10 - k ELSE k END, n, ARRAY[p, 1 - p],
                            ARRAY[v, v+1, v+2, v+3, v+4, v+5, v+6, v+7])
FROM (VALUES ('o1'), ('o2')) mm(m),
     (VALUES (1, 2, 0.3, 1.5), (2, 5, 0.9, -2), (3, 1, 0.5, 7)) c(k, n, p, v);
SELECT floral_aggregate('o1'), floral_aggregate('o2');
SELECT (SELECT params::text FROM floral.rounds WHERE model = 'o1' AND round = 1) =
       (SELECT params::text FROM floral.rounds WHERE model = 'o2' AND round = 1) AS order_independent;

-- rollback and prune
SELECT floral_rollback('h', 0);
SELECT round FROM floral.models WHERE name = 'h';
SELECT count(*) AS rounds_kept FROM floral.rounds WHERE model = 'h';
SELECT floral_prune('o1', 1) AS pruned;
SELECT round FROM floral.rounds WHERE model = 'o1';
SELECT floral_drop_model(name) FROM floral.models ORDER BY name;
