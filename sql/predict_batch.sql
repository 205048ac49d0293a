-- floral_predict_batch: prediction over a source, equal to per-row
-- floral_predict / floral_predict_proba to float rounding.
CREATE EXTENSION IF NOT EXISTS floral;
SET max_parallel_workers_per_gather = 0;

-- six tenants; more rows than one block of 256 for some of them
CREATE TABLE brows AS
SELECT i AS id, 't' || (i % 6) AS tenant,
       ARRAY[sin(i * 1.1), cos(i * 0.9), sin(i * 0.37) * 2, cos(i * 0.13)]::real[] AS features,
       ((CASE WHEN sin(i * 1.1) > 0.3 THEN 2 WHEN cos(i * 0.9) > 0 THEN 1 ELSE 0 END) + i % 2) % 3 AS label
FROM generate_series(1, 1800) i;

SELECT floral_create_model('b', '{4,16,3}', 'classification', 3, 2, '{"seed": 5}');
SELECT count(*) FROM floral_train('b', 'SELECT tenant, features, label FROM brows WHERE tenant <> ''t5''', '{"lr": 0.3}');
SELECT floral_aggregate('b');
SELECT count(*) FROM floral_train('b', 'SELECT tenant, features, label FROM brows WHERE tenant <> ''t5''', '{"lr": 0.3}');
SELECT floral_aggregate('b');
-- t4 pinned; t5 never trained (unknown: the uniform mixture); 'nobody' likewise
SELECT floral_set_mixture('b', 't4', '{0.7,0.2,0.1}');

-- the rows of every tenant, and rows of tenants nobody trained
CREATE TABLE bsrc AS
SELECT id, tenant, features FROM brows
UNION ALL
SELECT -id, 'nobody', features FROM brows WHERE id <= 300;

-- compare with per-row prediction: same rows, same predictions, same probabilities
CREATE FUNCTION compare_batch(model text) RETURNS TABLE (tenant text, rows bigint, same_prediction boolean, proba_close boolean)
LANGUAGE sql AS $$
	SELECT s.tenant, count(*), bool_and(b.prediction = floral_predict(model, s.tenant, s.features)),
	       bool_and((SELECT max(abs(x - y)) FROM unnest(b.proba, floral_predict_proba(model, s.tenant, s.features)) u(x, y)) < 1e-5)
	FROM floral_predict_batch(model, 'SELECT id, tenant, features FROM bsrc', with_proba => true) b
	JOIN bsrc s ON s.id = b.key::int AND s.tenant = b.tenant
	GROUP BY s.tenant ORDER BY s.tenant
$$;
SELECT * FROM compare_batch('b');
SELECT count(*) AS results, count(DISTINCT key) AS keys FROM floral_predict_batch('b', 'SELECT id, tenant, features FROM bsrc');

-- without with_proba, proba is NULL
SELECT bool_and(proba IS NULL) AS no_proba FROM floral_predict_batch('b', 'SELECT id, tenant, features FROM bsrc WHERE id < 10');

-- rows come out grouped by tenant
SELECT count(*) AS tenant_runs FROM (
	SELECT tenant, lag(tenant) OVER (ORDER BY ordinality) AS prev
	FROM floral_predict_batch('b', 'SELECT id, tenant, features FROM bsrc ORDER BY id % 7, id') WITH ORDINALITY
) s WHERE prev IS DISTINCT FROM tenant;

-- a small work_mem: many buffer flushes, tenants spanning several of them, same results
CREATE TEMP TABLE big_mem AS SELECT * FROM floral_predict_batch('b', 'SELECT id, tenant, features FROM bsrc ORDER BY id % 7, id', true);
SET work_mem = '64kB';
CREATE TEMP TABLE small_mem AS SELECT * FROM floral_predict_batch('b', 'SELECT id, tenant, features FROM bsrc ORDER BY id % 7, id', true);
RESET work_mem;
SELECT count(*) AS rows, bool_and(a.prediction = b.prediction) AS same_prediction,
       bool_and((SELECT max(abs(x - y)) FROM unnest(a.proba, b.proba) u(x, y)) < 1e-6) AS same_proba
FROM big_mem a JOIN small_mem b USING (key, tenant);

-- keys of any type, NULL keys pass through; integer tenants are read as text
SELECT key, tenant, prediction = floral_predict('b', 't1', '{1,2,3,4}') AS same
FROM floral_predict_batch('b', $$SELECT k, 't1', '{1,2,3,4}'::real[] FROM (VALUES ('a'::text), (NULL)) v(k)$$) ORDER BY key;
SELECT key, tenant FROM floral_predict_batch('b', $$SELECT now()::date = current_date, 7, '{1,2,3,4}'::float8[]$$);

-- an empty source returns no rows
SELECT count(*) FROM floral_predict_batch('b', 'SELECT id, tenant, features FROM bsrc WHERE false');

-- the results go into a table in one statement
CREATE TABLE scores (id int PRIMARY KEY, tenant text, predicted int, proba real[]);
INSERT INTO scores
SELECT key::int, tenant, prediction::int, proba
FROM floral_predict_batch('b', 'SELECT id, tenant, features FROM brows', with_proba => true);
SELECT count(*) AS scored, bool_and(predicted = floral_predict('b', s.tenant, r.features)) AS same_as_per_row
FROM scores s JOIN brows r USING (id);

-- Local Adaptor: private adaptors per tenant (their own blocks), strangers share the bank
SELECT floral_create_model('la', '{4,8,3}', 'classification', 2, 2, '{"seed": 2, "private_adaptors": true}');
SELECT count(*) FROM floral_train('la', 'SELECT tenant, features, label FROM brows WHERE tenant <> ''t5''', '{"lr": 0.3}');
SELECT floral_aggregate('la');
SELECT * FROM compare_batch('la');

-- regression: prediction is the first output, proba all of them
SELECT floral_create_model('rg', '{4,6,2}', 'regression', 2, 1, '{"seed": 4}');
SELECT count(*) FROM floral_train('rg', $$SELECT tenant, features, ARRAY[features[1] + features[2], features[3]]::real[] FROM brows$$, '{"lr": 0.05}');
SELECT floral_aggregate('rg');
SELECT tenant, rows, proba_close,
       (SELECT bool_and(abs(b.prediction - floral_predict('rg', s.tenant, s.features)) < 1e-5)
        FROM floral_predict_batch('rg', 'SELECT id, tenant, features FROM bsrc') b
        JOIN bsrc s ON s.id = b.key::int AND s.tenant = b.tenant WHERE s.tenant = c.tenant) AS prediction_close
FROM compare_batch('rg') c;

-- per-row prediction is PARALLEL SAFE: a parallel scan gives what a serial one does
CREATE TABLE serial AS SELECT id, tenant, floral_predict_proba('b', tenant, features) AS pr FROM bsrc;
\c
SET max_parallel_workers_per_gather = 2;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET force_parallel_mode = on;
SELECT proparallel FROM pg_proc WHERE proname IN ('floral_predict', 'floral_predict_proba');
EXPLAIN (COSTS OFF) SELECT id, floral_predict_proba('b', tenant, features) FROM bsrc;
CREATE TEMP TABLE parallel_run AS SELECT id, tenant, floral_predict_proba('b', tenant, features) AS pr FROM bsrc;
RESET force_parallel_mode;
RESET max_parallel_workers_per_gather;
SELECT count(*) AS rows, bool_and(s.pr = p.pr) AS parallel_equals_serial
FROM serial s JOIN parallel_run p USING (id, tenant);
-- and after the parallel scan, the leader's cache follows a new round again
SELECT count(*) FROM floral_train('b', 'SELECT tenant, features, label FROM brows WHERE tenant <> ''t5''', '{"lr": 0.3}');
SELECT floral_aggregate('b');
SELECT count(*) FILTER (WHERE s.pr <> floral_predict_proba('b', s.tenant, r.features)) > 0 AS follows_new_round
FROM serial s JOIN bsrc r USING (id, tenant);
SET max_parallel_workers_per_gather = 0;

-- errors
\set VERBOSITY sqlstate
SELECT * FROM floral_predict_batch('nope', 'SELECT 1, ''t'', ''{1,2,3,4}''::real[]');
SELECT * FROM floral_predict_batch('b', 'SELECT 1, ''t'', ''{1,2,3}''::real[]');
SELECT * FROM floral_predict_batch('b', 'SELECT 1, ''t'', NULL::real[]');
SELECT * FROM floral_predict_batch('b', 'SELECT 1, ''t'', ''{1,NULL,3,4}''::real[]');
SELECT * FROM floral_predict_batch('b', 'SELECT 1, ''t'', ''{1,NaN,3,4}''::real[]');
SELECT * FROM floral_predict_batch('b', 'SELECT 1, NULL::text, ''{1,2,3,4}''::real[]');
SELECT * FROM floral_predict_batch('b', 'SELECT 1, ''t''');
SELECT * FROM floral_predict_batch('b', 'SELECT 1, ''t'', ''x''::text');
SELECT * FROM floral_predict_batch('b', NULL);
-- a source that writes is refused, as for training
CREATE FUNCTION sneaky() RETURNS int LANGUAGE plpgsql AS $$ BEGIN INSERT INTO scores VALUES (-1, 'x', 0, NULL); RETURN 1; END $$;
SELECT * FROM floral_predict_batch('b', 'SELECT sneaky(), ''t'', ''{1,2,3,4}''::real[]');
CREATE SEQUENCE bseq;
SELECT * FROM floral_predict_batch('b', 'SELECT nextval(''bseq''), ''t'', ''{1,2,3,4}''::real[]');
SELECT count(*) AS untouched FROM scores WHERE id = -1;
\set VERBOSITY default

SELECT floral_drop_model(name) FROM floral.models ORDER BY name;
DROP TABLE brows, bsrc, scores, serial;
DROP FUNCTION compare_batch(text), sneaky();
DROP SEQUENCE bseq;
