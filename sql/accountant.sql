-- The privacy accountant (floral_dp_epsilon, floral.privacy_ledger) against
-- values computed here independently.
CREATE EXTENSION IF NOT EXISTS floral;

-- Without sampling, T rounds of the Gaussian mechanism with noise
-- multiplier sigma have RDP(alpha) = T alpha / (2 sigma^2) exactly; the
-- conversion is eps = min_alpha RDP(alpha) + ln(1/delta) / (alpha - 1).
-- Closed form here, over the same integer orders 2..256:
WITH cfg(sigma, t, delta) AS (VALUES (1.0, 1, 1e-5), (0.8, 10, 1e-5), (1.1, 100, 1e-5),
                                     (2.0, 500, 1e-6), (5.0, 1000, 1e-5), (20.0, 3, 1e-3)),
closed AS (SELECT sigma, t, delta, min(t * a / (2 * sigma ^ 2) + ln(1 / delta) / (a - 1)) AS eps
             FROM cfg, generate_series(2, 256) a GROUP BY 1, 2, 3)
SELECT sigma, t, delta, round(eps::numeric, 6) AS closed_form,
       abs(e.epsilon - eps) < 1e-9 * greatest(1, eps) AS accountant_matches
  FROM closed, floral_dp_epsilon(sigma, 1.0, t, delta) e ORDER BY 1, 2;

-- With Poisson sampling q: RDP(alpha) = ln A_alpha / (alpha - 1), A_alpha =
-- sum_k C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 sigma^2))
-- (Mironov, Talwar, Zhang 2019), summed here in SQL (log-sum-exp, the
-- binomial from log-factorials), over orders 2..64
WITH cfg(q, sigma, t, delta) AS (VALUES (0.01, 4.0, 10000, 1e-5), (0.01, 1.1, 10000, 1e-5), (0.1, 2.0, 100, 1e-5)),
lf AS (SELECT n, sum(ln(greatest(n, 1)::float8)) OVER (ORDER BY n) AS lnfact FROM generate_series(0, 64) n),
terms AS (SELECT q, sigma, t, delta, a, k,
                 fa.lnfact - fk.lnfact - fr.lnfact
                   + (a - k) * ln(1 - q) + k * ln(q) + (k * k - k) / (2 * sigma ^ 2) AS x
            FROM cfg, generate_series(2, 64) a, generate_series(0, a) k, lf fa, lf fk, lf fr
           WHERE fa.n = a AND fk.n = k AND fr.n = a - k),
rdp AS (SELECT q, sigma, t, delta, a, (max(x) + ln(sum(CASE WHEN x - mx > -700 THEN exp(x - mx) ELSE 0 END))) / (a - 1) AS r
          FROM (SELECT *, max(x) OVER (PARTITION BY q, sigma, t, delta, a) AS mx FROM terms) z
         GROUP BY 1, 2, 3, 4, 5),
indep AS (SELECT q, sigma, t, delta, min(t * r + ln(1 / delta) / (a - 1)) AS eps FROM rdp GROUP BY 1, 2, 3, 4)
SELECT q, sigma, t, round(eps::numeric, 4) AS independent, round(e.epsilon::numeric, 4) AS accountant,
       abs(e.epsilon - eps) < 1e-9 * eps AS matches, e.best_order < 64 AS optimum_inside
  FROM indep, floral_dp_epsilon(sigma, q, t, delta) e ORDER BY 1, 2;

-- a published value: Abadi et al., "Deep Learning with Differential
-- Privacy" (CCS 2016), section 3.1: q = 0.01, sigma = 4, delta = 1e-5 and
-- 10000 steps give epsilon = 1.26 with their moments accountant
SELECT round(epsilon::numeric, 2) AS epsilon, best_order FROM floral_dp_epsilon(4, 0.01, 10000, 1e-5);

-- more noise or fewer rounds spend less; no noise is unbounded; no rounds nothing
SELECT (SELECT epsilon FROM floral_dp_epsilon(2, 1, 10)) < (SELECT epsilon FROM floral_dp_epsilon(1, 1, 10)) AS more_noise_less,
       (SELECT epsilon FROM floral_dp_epsilon(1, 1, 5)) < (SELECT epsilon FROM floral_dp_epsilon(1, 1, 10)) AS fewer_rounds_less,
       (SELECT epsilon FROM floral_dp_epsilon(1, 0.1, 10)) < (SELECT epsilon FROM floral_dp_epsilon(1, 1, 10)) AS sampling_less,
       (SELECT epsilon FROM floral_dp_epsilon(0, 1, 10)) = 'Infinity' AS no_noise_unbounded,
       (SELECT epsilon FROM floral_dp_epsilon(1, 1, 0)) = 0 AS no_rounds_nothing;
DO $$ BEGIN PERFORM floral_dp_epsilon(1, 0, 10);
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM floral_dp_epsilon(1, 1, 10, 1);
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM floral_dp_epsilon(-1, 1, 10);
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;

-- the ledger: a model with noise, after three rounds, claims exactly the
-- accountant's value for its own parameters (sampling 1, delta 1e-5); a
-- model without noise after a round has no bound
-- (the rounds are merged here in one database, which adds no noise: the
-- ledger speaks of what branches send)
CREATE TABLE acc_rows AS
SELECT 'shop' || (i % 3) AS tenant, ARRAY[sin(i), cos(i), 1]::real[] AS features, i % 3 AS label
FROM generate_series(1, 300) i;
SELECT floral_create_model('dp', '{3,8,3}', 'classification', 2, 1,
                           '{"seed": 1, "dp_clip": 1.0, "dp_noise": 1.5, "dp_max_examples": 100}');
SELECT floral_create_model('nodp', '{3,8,3}', 'classification', 2, 1, '{"seed": 1}');
DO $$ BEGIN
	FOR r IN 1 .. 3 LOOP
		PERFORM floral_train('dp', 'SELECT tenant, features, label FROM acc_rows');
		PERFORM floral_aggregate('dp');
	END LOOP;
	PERFORM floral_train('nodp', 'SELECT tenant, features, label FROM acc_rows');
	PERFORM floral_aggregate('nodp');
END $$;
SELECT model, dp_clip, dp_noise, dp_max_examples, round(sensitivity::numeric, 4) AS sensitivity,
       sampling, rounds, delta, round(epsilon::numeric, 4) AS epsilon, best_order, guarantee
  FROM floral.privacy_ledger ORDER BY model;
SELECT l.epsilon = e.epsilon AS ledger_is_the_accountant,
       abs(l.epsilon - (SELECT min(3 * a / (2 * 1.5 ^ 2) + ln(1e5) / (a - 1)) FROM generate_series(2, 256) a)) < 1e-9
           AS ledger_matches_closed_form
  FROM floral.privacy_ledger l, floral_dp_epsilon(1.5, 1, 3, 1e-5) e WHERE l.model = 'dp';

SELECT floral_drop_model(name) FROM floral.models ORDER BY name;
DROP TABLE acc_rows;
