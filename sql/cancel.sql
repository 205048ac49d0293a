-- A long training call can be cancelled and leaves the model as it was.
CREATE EXTENSION IF NOT EXISTS floral;

CREATE TABLE long_rows AS
SELECT 'c' || (i % 4) AS tenant, ARRAY[sin(i), cos(i), sin(i * 3), 1]::real[] AS features, i % 2 AS label
FROM generate_series(1, 2000) i;
SELECT floral_create_model('long', '{4,64,2}', 'classification', 4, 4, '{"seed": 4}');
SELECT count(*) FROM floral_train('long', 'SELECT tenant, features, label FROM long_rows WHERE tenant = ''c0''');
SELECT floral_aggregate('long');
SELECT count(*) FROM floral_train('long', 'SELECT tenant, features, label FROM long_rows WHERE tenant = ''c1''');

CREATE TABLE long_digest AS
SELECT md5(string_agg(x, '|' ORDER BY x)) AS d FROM (
	SELECT m::text AS x FROM floral.models m
	UNION ALL SELECT r::text FROM floral.rounds r
	UNION ALL SELECT t::text FROM floral.tenants t
	UNION ALL SELECT c::text FROM floral.contributions c) s;

-- 100000 epochs would take many minutes; the timeout stops it
\set VERBOSITY terse
SET statement_timeout = '300ms';
SELECT count(*) FROM floral_train('long', 'SELECT tenant, features, label FROM long_rows', '{"epochs": 100000}');
SELECT count(*) FROM floral_personalize('long', 'SELECT tenant, features, label FROM long_rows', '{"epochs": 100000}');
RESET statement_timeout;
\set VERBOSITY default

SELECT md5(string_agg(x, '|' ORDER BY x)) = (SELECT d FROM long_digest) AS state_unchanged FROM (
	SELECT m::text AS x FROM floral.models m
	UNION ALL SELECT r::text FROM floral.rounds r
	UNION ALL SELECT t::text FROM floral.tenants t
	UNION ALL SELECT c::text FROM floral.contributions c) s;
-- and the model still works
SELECT floral_aggregate('long');
DROP TABLE long_rows, long_digest;
SELECT floral_drop_model('long');
