-- Local training: per-call sums, retries, determinism, Local Adaptor.
CREATE EXTENSION IF NOT EXISTS floral;
SET max_parallel_workers_per_gather = 0;

-- three tenants; labels depend on the features, so the task is learnable
CREATE TABLE train_rows AS
SELECT 'shop' || (i % 3) AS tenant, i,
       ARRAY[sin(i), cos(i * 0.7), sin(i * 1.3), (i % 3) - 1]::real[] AS features,
       CASE WHEN sin(i) + cos(i * 0.7) > 0.5 THEN 2 WHEN sin(i) > -0.3 THEN 1 ELSE 0 END AS label
FROM generate_series(1, 300) i;

SELECT floral_create_model('m', '{4,16,3}', 'classification', 2, 2, '{"seed": 5}');

-- one row per tenant, with its examples and the mean loss of its last epoch
SELECT tenant, examples, loss > 0 AND loss < 2 AS loss_sane
FROM floral_train('m', 'SELECT tenant, features, label FROM train_rows');

-- the call left one row of sums for round 0: all three tenants, 300 rows,
-- one weight per adaptor; the shared parameters did not move
SELECT round, tenants, examples, cardinality(weights) AS c,
       octet_length(sums) = 8 * (SELECT base_parameters + adaptor_parameters
                                 FROM floral.model_summary WHERE name = 'm') AS sums_sized_as_model
FROM floral.contributions WHERE model = 'm';
SELECT round FROM floral.models WHERE name = 'm';
SELECT count(*) AS rounds FROM floral.rounds WHERE model = 'm';
SELECT tenant, contributed_call = (SELECT call FROM floral.contributions WHERE model = 'm') AS in_the_call
FROM floral.tenants WHERE model = 'm' ORDER BY tenant;

-- a tenant contributes once per round: the same call again (a cron job
-- that runs twice) trains nobody and changes nothing
CREATE TEMP TABLE first_try AS
SELECT c.sums, c.examples, (SELECT array_agg(logits ORDER BY tenant) FROM floral.tenants WHERE model = 'm') AS logits
FROM floral.contributions c WHERE model = 'm';
SELECT tenant, examples FROM floral_train('m', 'SELECT tenant, features, label FROM train_rows');
SELECT count(*) AS contributions, bool_and(c.sums = f.sums) AS unchanged
FROM floral.contributions c, first_try f WHERE c.model = 'm';
-- a tenant that did not contribute yet is trained; the others are skipped
SELECT tenant, examples FROM floral_train('m',
	'SELECT tenant, features, label FROM train_rows UNION ALL SELECT ''late'', ARRAY[1,2,3,4]::real[], 1');
SELECT tenants, examples FROM floral.contributions WHERE model = 'm' ORDER BY call;
-- discarding the round's contributions lets its tenants train again, from
-- the state they had at the start of the round: the result is bit-identical
SELECT floral_discard('m') AS discarded_calls;
SELECT count(*) AS pending FROM floral.contributions WHERE model = 'm';
SELECT count(*) FROM floral_train('m', 'SELECT tenant, features, label FROM train_rows');
SELECT c.sums = f.sums AS same_sums, c.examples = f.examples AS same_examples,
       (SELECT array_agg(logits ORDER BY tenant) FROM floral.tenants WHERE model = 'm' AND tenant <> 'late') = f.logits AS same_logits
FROM floral.contributions c, first_try f WHERE c.model = 'm';

-- integer tenants, float8 features and numeric labels are accepted
SELECT tenant, examples
FROM floral_train('m', 'SELECT i % 2, features::float8[], label::numeric FROM train_rows WHERE i <= 10');
SELECT floral_aggregate('m');

-- training loss goes down over rounds
CREATE TEMP TABLE losses (round int, loss float8);
DO $$
BEGIN
	FOR r IN 1 .. 15 LOOP
		INSERT INTO losses
		SELECT r, avg(loss) FROM floral_train('m',
			'SELECT tenant, features, label FROM train_rows', '{"epochs": 2, "lr": 0.2}');
		PERFORM floral_aggregate('m');
	END LOOP;
END $$;
SELECT (SELECT loss FROM losses WHERE round = 15) < 0.7 * (SELECT loss FROM losses WHERE round = 1) AS loss_decreased;
SELECT round, tenants, examples FROM floral.rounds WHERE model = 'm' AND round IN (1, 2, 16) ORDER BY round;

-- determinism: the same seeds give bit-identical models after training
SELECT floral_create_model('d1', '{4,8,3}', 'classification', 3, 1, '{"seed": 9}');
SELECT floral_create_model('d2', '{4,8,3}', 'classification', 3, 1, '{"seed": 9}');
DO $$
BEGIN
	FOR r IN 1 .. 3 LOOP
		PERFORM floral_train('d1', 'SELECT tenant, features, label FROM train_rows ORDER BY i');
		PERFORM floral_aggregate('d1');
		PERFORM floral_train('d2', 'SELECT tenant, features, label FROM train_rows ORDER BY i');
		PERFORM floral_aggregate('d2');
	END LOOP;
	PERFORM floral_train('d2', 'SELECT tenant, features, label FROM train_rows ORDER BY i', '{"seed": 77}');
END $$;
SELECT (SELECT params::text FROM floral.rounds WHERE model = 'd1' AND round = 3) =
       (SELECT params::text FROM floral.rounds WHERE model = 'd2' AND round = 3) AS bit_identical,
       (SELECT array_agg(logits ORDER BY tenant) FROM floral.tenants WHERE model = 'd1') =
       (SELECT array_agg(start_logits ORDER BY tenant) FROM floral.tenants WHERE model = 'd2') AS same_mixtures,
       (SELECT tenants FROM floral.contributions WHERE model = 'd2') AS d2_pending_tenants;

-- rows beyond maintenance_work_mem go to a temporary file: the result is the
-- same, bit for bit, as with every row in memory
CREATE TABLE wide_rows AS
SELECT i, 'w' || (i % 3) AS tenant, ARRAY(SELECT sin(i * j) FROM generate_series(1, 64) j)::real[] AS features,
       i % 3 AS label
FROM generate_series(1, 6000) i;
SELECT floral_create_model('mem', '{64,8,3}', 'classification', 2, 1, '{"seed": 3}');
SELECT floral_create_model('spill', '{64,8,3}', 'classification', 2, 1, '{"seed": 3}');
SET maintenance_work_mem = '64MB';
SELECT count(*) FROM floral_train('mem', 'SELECT tenant, features, label FROM wide_rows ORDER BY i', '{"epochs": 2}');
SET maintenance_work_mem = '1MB';	-- about 3600 of the 6000 rows in memory
SELECT count(*) FROM floral_train('spill', 'SELECT tenant, features, label FROM wide_rows ORDER BY i', '{"epochs": 2}');
RESET maintenance_work_mem;
SELECT (SELECT sums FROM floral.contributions WHERE model = 'mem') =
       (SELECT sums FROM floral.contributions WHERE model = 'spill')
       AS spilled_equals_in_memory;
SELECT floral_drop_model('mem'), floral_drop_model('spill');
DROP TABLE wide_rows;

-- features the table stores compressed stay compressed until their tenant
-- is used, then are decompressed and checked: the same result as the same
-- rows stored uncompressed, in memory or spilled to the temporary file
CREATE TABLE z_rows (i int, tenant text, features real[] COMPRESSION lz4, label int);
ALTER TABLE z_rows ALTER features SET STORAGE MAIN;
INSERT INTO z_rows
SELECT i, 'z' || (i % 3),
       ARRAY(SELECT CASE WHEN j % 8 = i % 8 THEN sin(i * j) ELSE 0 END FROM generate_series(1, 600) j)::real[],
       i % 3
FROM generate_series(1, 2400) i;
CREATE TABLE p_rows (LIKE z_rows);
ALTER TABLE p_rows ALTER features SET STORAGE EXTERNAL;
INSERT INTO p_rows SELECT i, tenant, features || '{}'::real[], label FROM z_rows;
SELECT (SELECT count(*) FROM z_rows WHERE pg_column_compression(features) = 'lz4') AS compressed_rows,
       (SELECT count(*) FROM p_rows WHERE pg_column_compression(features) IS NULL) AS plain_rows;
SELECT floral_create_model('z_mem', '{600,8,3}', 'classification', 2, 1, '{"seed": 5}');
SELECT floral_create_model('z_spill', '{600,8,3}', 'classification', 2, 1, '{"seed": 5}');
SELECT floral_create_model('z_plain', '{600,8,3}', 'classification', 2, 1, '{"seed": 5}');
SELECT count(*) FROM floral_train('z_mem', 'SELECT tenant, features, label FROM z_rows ORDER BY i', '{"epochs": 2}');
SELECT count(*) FROM floral_train('z_plain', 'SELECT tenant, features, label FROM p_rows ORDER BY i', '{"epochs": 2}');
SET maintenance_work_mem = '1MB';	-- the compressed rows take about 1.4MB
SELECT count(*) FROM floral_train('z_spill', 'SELECT tenant, features, label FROM z_rows ORDER BY i', '{"epochs": 2}');
RESET maintenance_work_mem;
SELECT (SELECT sums FROM floral.contributions WHERE model = 'z_mem') =
       (SELECT sums FROM floral.contributions WHERE model = 'z_plain') AS compressed_equals_plain,
       (SELECT sums FROM floral.contributions WHERE model = 'z_mem') =
       (SELECT sums FROM floral.contributions WHERE model = 'z_spill') AS spilled_equals_in_memory;
-- a bad value in a compressed row is found when its tenant trains; a bad
-- length as the row is read; either way nothing is stored
UPDATE z_rows SET features[7] = 'NaN' WHERE i = 400;
UPDATE z_rows SET features = features[1:599] WHERE i = 500;
SELECT pg_column_compression(features) FROM z_rows WHERE i IN (400, 500) ORDER BY i;
SELECT count(*) FROM floral_train('z_mem', 'SELECT tenant, features, label FROM z_rows WHERE i <> 500');
SELECT count(*) FROM floral_train('z_mem', 'SELECT tenant, features, label FROM z_rows');
SELECT count(*) FROM floral_evaluate('z_mem', 'SELECT tenant, features, label FROM z_rows WHERE i <> 500');
SELECT tenants FROM floral.contributions WHERE model = 'z_mem';
SELECT floral_drop_model('z_mem'), floral_drop_model('z_spill'), floral_drop_model('z_plain');
DROP TABLE z_rows, p_rows;

-- Local Adaptor: each tenant keeps a private adaptor that is never aggregated
SELECT floral_create_model('local', '{4,16,3}', 'classification', 1, 2,
                           '{"seed": 5, "private_adaptors": true}');
SELECT count(*) FROM floral_train('local', 'SELECT tenant, features, label FROM train_rows');
SELECT floral_aggregate('local');
SELECT count(*) AS tenants_with_private_adaptors,
       count(DISTINCT adaptors::text) AS distinct_adaptors
FROM floral.tenants WHERE model = 'local' AND adaptors IS NOT NULL;
SELECT floral.tensor_norm(floral_parameter('local', 'V', 1, 1)) AS shared_v_untouched;

-- pinned mixtures (the oracle router) are used as given and not trained
SELECT floral_set_mixture('m', 'shop0', '{1,0}');
SELECT count(*) FROM floral_train('m', 'SELECT tenant, features, label FROM train_rows WHERE tenant = ''shop0''');
-- the call's weights are n * pi: all of shop0's 100 rows on adaptor 1
SELECT weights FROM floral.contributions WHERE model = 'm';
SELECT floral_mixture('m', 'shop0') AS pinned;
SELECT floral_set_mixture('m', 'shop0', NULL);
SELECT floral_mixture('m', 'shop0') <> '{1,0}' AS unpinned;
