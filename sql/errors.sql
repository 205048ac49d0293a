-- Bad input: a clear error with the right SQLSTATE, and no change to the model.
CREATE EXTENSION IF NOT EXISTS floral;
SET max_parallel_workers_per_gather = 0;

CREATE TABLE good AS
SELECT 'k' || (i % 2) AS tenant, ARRAY[i, i * 0.5, 1]::real[] AS features, i % 3 AS label
FROM generate_series(1, 40) i;
SELECT floral_create_model('e', '{3,5,3}', 'classification', 2, 1, '{"seed": 2}');
SELECT count(*) FROM floral_train('e', 'SELECT * FROM (SELECT tenant, features, label FROM good) s');
SELECT floral_aggregate('e');
SELECT count(*) FROM floral_train('e', 'SELECT tenant, features, label FROM good');
SELECT floral_create_model('er', '{3,1}', 'regression', 2, 1);

-- a digest of everything floral stores
CREATE FUNCTION state_digest() RETURNS text LANGUAGE sql AS $$
	SELECT md5(string_agg(x, '|' ORDER BY x)) FROM (
		SELECT m::text AS x FROM floral.models m
		UNION ALL SELECT r::text FROM floral.rounds r
		UNION ALL SELECT t::text FROM floral.tenants t
		UNION ALL SELECT c::text FROM floral.contributions c
		UNION ALL SELECT h::text FROM floral.history h) s $$;
CREATE TEMP TABLE digest AS SELECT state_digest() AS d;

-- try(stmt) reports a statement's SQLSTATE and message (setup.sql)
SELECT n, try(stmt) FROM (VALUES
 (1, $q$SELECT floral_train('e', 'SELECT tenant, features[1:2], label FROM good')$q$),
 (2, $q$SELECT floral_train('e', 'SELECT tenant, CASE WHEN label = 1 THEN ARRAY[1,''NaN'',2]::real[] ELSE features END, label FROM good')$q$),
 (3, $q$SELECT floral_train('e', 'SELECT tenant, ARRAY[1,''Infinity'',2]::real[], label FROM good')$q$),
 (4, $q$SELECT floral_train('e', 'SELECT tenant, features, NULL::int FROM good')$q$),
 (5, $q$SELECT floral_train('e', 'SELECT tenant, features, label + 1 FROM good')$q$),
 (6, $q$SELECT floral_train('e', 'SELECT tenant, features, -1 FROM good')$q$),
 (7, $q$SELECT floral_train('e', 'SELECT tenant, features, 0.5 FROM good')$q$),
 (8, $q$SELECT floral_train('e', 'SELECT NULL::text, features, label FROM good')$q$),
 (9, $q$SELECT floral_train('e', 'SELECT tenant, NULL::real[], label FROM good')$q$),
 (10, $q$SELECT floral_train('e', 'SELECT tenant, ARRAY[1,NULL,2]::real[], label FROM good')$q$),
 (11, $q$SELECT floral_train('e', 'SELECT tenant, features, label FROM good WHERE false')$q$),
 (12, $q$SELECT floral_train('e', 'SELECT tenant, features FROM good')$q$),
 (13, $q$SELECT floral_train('e', 'SELECT tenant, features, ''a''::text FROM good')$q$),
 (14, $q$SELECT floral_train('e', 'DELETE FROM good')$q$),
 (15, $q$SELECT floral_train('e', 'SELECT nonsense')$q$),
 (16, $q$SELECT floral_train('nope', 'SELECT tenant, features, label FROM good')$q$),
 (17, $q$SELECT floral_train('e', 'SELECT tenant, features, label FROM good', '{"bogus": 1}')$q$),
 (18, $q$SELECT floral_train('e', 'SELECT tenant, features, label FROM good', '{"lr": "fast"}')$q$),
 (19, $q$SELECT floral_train('e', 'SELECT tenant, features, label FROM good', '{"lr": -1}')$q$),
 (20, $q$SELECT floral_train('e', 'SELECT tenant, features, label FROM good', '{"epochs": 0}')$q$),
 (21, $q$SELECT floral_train('e', 'SELECT tenant, features, label FROM good', '{"batch_size": 2.5}')$q$),
 (22, $q$SELECT floral_train('e', 'SELECT tenant, features, label FROM good', '[1]')$q$),
 (23, $q$SELECT floral_train('er', 'SELECT tenant, features, label * 10 FROM good', '{"lr": 1000, "epochs": 20}')$q$),
 (24, $q$SELECT floral_aggregate('nope')$q$),
 (25, $q$SELECT floral_predict('nope', 'k0', '{1,2,3}')$q$),
 (26, $q$SELECT floral_predict('e', 'k0', '{1,2}')$q$),
 (27, $q$SELECT floral_predict('e', 'k0', '{1,NaN,2}')$q$),
 (28, $q$SELECT floral_predict('e', 'k0', '{1,NULL,2}')$q$),
 (29, $q$SELECT floral_predict('e', 'k0', '{{1,2,3}}')$q$),
 (30, $q$SELECT floral_evaluate('nope', 'SELECT tenant, features, label FROM good')$q$),
 (31, $q$SELECT floral_evaluate('e', 'SELECT tenant, features, label + 5 FROM good')$q$),
 (32, $q$SELECT floral_create_model('e', '{3,5,3}')$q$),
 (33, $q$SELECT floral_create_model('x', '{3}')$q$),
 (34, $q$SELECT floral_create_model('x', '{3,0,2}')$q$),
 (35, $q$SELECT floral_create_model('x', '{3,NULL,2}')$q$),
 (36, $q$SELECT floral_create_model('x', '{3,2}', 'clustering')$q$),
 (37, $q$SELECT floral_create_model('x', '{3,2}', 'classification', -1)$q$),
 (38, $q$SELECT floral_create_model('x', '{3,2}', 'classification', 4, 0)$q$),
 (39, $q$SELECT floral_create_model('x', '{3,2}', 'classification', 4, 0.1, '{"activation": "gelu"}')$q$),
 (40, $q$SELECT floral_create_model('x', '{3,2}', 'classification', 4, 0.1, '{"min_prob": 1.5}')$q$),
 (41, $q$SELECT floral_create_model('x', '{3,1}', 'classification')$q$),
 (42, $q$SELECT floral_create_model('', '{3,2}')$q$),
 (43, $q$SELECT floral_create_model('x', '{100000,100000}')$q$),
 (44, $q$SELECT floral_drop_model('nope')$q$),
 (45, $q$SELECT floral_set_mixture('e', 'k0', '{0.5,0.6}')$q$),
 (46, $q$SELECT floral_set_mixture('e', 'k0', '{1,0,0}')$q$),
 (47, $q$SELECT floral_mixture('nope', 'k0')$q$),
 (48, $q$SELECT floral_parameter('e', 'Q', 1)$q$),
 (49, $q$SELECT floral_parameter('e', 'U', 3, 1)$q$),
 (50, $q$SELECT floral_parameter('e', 'U', 1, 3)$q$),
 (51, $q$SELECT floral_rollback('e', 7)$q$),
 (52, $q$SELECT floral_personalize('e', 'SELECT tenant, features, label FROM good', '{"method": "guess"}')$q$),
 (53, $q$SELECT floral_train('e', repeat('x', 10) || ' SELECT 1')$q$),
 (54, $q$SELECT floral_train('e', 'SELECT repeat(''t'', 300), features, label FROM good')$q$)
) AS cases(n, stmt) ORDER BY n;

-- nothing changed
SELECT state_digest() = d AS state_unchanged FROM digest;

-- the same holds when the error comes after some tenants were trained:
-- tenant k0 is fine, tenant k1 has a bad label; k0's work is rolled back too
SELECT try($q$SELECT floral_train('e', 'SELECT tenant, features, CASE WHEN tenant = ''k1'' THEN 9 ELSE label END FROM good')$q$);
SELECT state_digest() = d AS state_unchanged FROM digest;

SELECT floral_drop_model(name) FROM floral.models ORDER BY name;
DROP TABLE good;
