-- bench/pgbench/predict.sql: personalised predictions for 20 rows of one
-- random tenant.  Each probability vector must be finite, in [0, 1] and sum
-- to 1 (a torn model would break that); a transaction that sees a bad one
-- records it in bench_predict_bad.  Needs -D tenants=N -D classes=K.
\set t random(0, :tenants - 1)
SELECT count(*) AS n,
       count(*) FILTER (WHERE NOT coalesce(ok, false)) AS bad
FROM (SELECT (SELECT bool_and(v BETWEEN 0 AND 1) AND abs(sum(v) - 1) < 1e-3 AND count(v) = :classes
              FROM unnest(floral_predict_proba('m', r.tenant, r.features)) v) AS ok
      FROM rows r WHERE r.tenant = 't' || :t ORDER BY r.id LIMIT 20) p \gset
\if :bad > 0
INSERT INTO bench_predict_bad (tenant, n, bad) VALUES ('t' || :t, :n, :bad);
\endif
