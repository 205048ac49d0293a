-- A source query can only read: whatever it calls runs as in a READ ONLY
-- transaction, for every role, in floral_train, floral_evaluate and
-- floral_personalize.  Each attempt fails with its SQLSTATE and writes
-- nothing.
CREATE EXTENSION IF NOT EXISTS floral;
SET max_parallel_workers_per_gather = 0;

CREATE TABLE ro_rows AS
SELECT 'shop' || (i % 2) AS tenant, ARRAY[sin(i), cos(i), 1]::real[] AS features, i % 3 AS label
FROM generate_series(1, 40) i;
CREATE TABLE ro_loot (n int);
CREATE SEQUENCE ro_seq;
CREATE FUNCTION sneaky() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	INSERT INTO ro_loot VALUES (1);
	RETURN true;
END $$;
CREATE FUNCTION sneaky_sql() RETURNS boolean LANGUAGE sql VOLATILE AS $$
	UPDATE ro_loot SET n = n + 1;
	SELECT true;
$$;
CREATE FUNCTION sneaky_ddl() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	CREATE TABLE ro_made (x int);
	RETURN true;
END $$;
-- writing a temporary table is what a READ ONLY transaction allows too
CREATE TEMP TABLE ro_scratch (x int);
CREATE FUNCTION scratch() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	INSERT INTO pg_temp.ro_scratch VALUES (1);
	RETURN true;
END $$;
SELECT floral_create_model('ro', '{3,4,3}', 'classification', 2, 1);

CREATE ROLE regress_ro_trainer IN ROLE floral_trainer;
GRANT SELECT ON ro_rows TO regress_ro_trainer;
GRANT ALL ON ro_loot, ro_seq, ro_scratch TO regress_ro_trainer;
GRANT EXECUTE ON FUNCTION sneaky(), sneaky_sql(), sneaky_ddl(), scratch() TO regress_ro_trainer;
GRANT CREATE ON SCHEMA public TO regress_ro_trainer;

CREATE TABLE ro_cases (n int, stmt text);
INSERT INTO ro_cases VALUES
 (1, $q$SELECT count(*) FROM floral_train('ro', 'SELECT tenant, features, label FROM ro_rows WHERE sneaky()')$q$),
 (2, $q$SELECT count(*) FROM floral_train('ro', 'SELECT tenant, features, label FROM ro_rows WHERE sneaky_sql()')$q$),
 (3, $q$SELECT count(*) FROM floral_train('ro', 'SELECT tenant, features, nextval(''ro_seq'') % 3 FROM ro_rows')$q$),
 (4, $q$SELECT count(*) FROM floral_train('ro', 'WITH w AS (INSERT INTO ro_loot VALUES (2) RETURNING n) SELECT tenant, features, label FROM ro_rows, w')$q$),
 (5, $q$SELECT count(*) FROM floral_train('ro', 'SELECT tenant, features, label FROM ro_rows WHERE sneaky_ddl()')$q$),
 (6, $q$SELECT count(*) FROM floral_evaluate('ro', 'SELECT tenant, features, label FROM ro_rows WHERE sneaky()')$q$),
 (7, $q$SELECT count(*) FROM floral_personalize('ro', 'SELECT tenant, features, label FROM ro_rows WHERE sneaky()')$q$),
 (8, $q$SELECT count(*) FROM floral_evaluate('ro', 'SELECT tenant, features, setval(''ro_seq'', 5) % 3 FROM ro_rows')$q$),
 (9, $q$SELECT count(*) FROM floral_train('ro', 'SELECT tenant, features, label FROM ro_rows WHERE scratch()')$q$);

-- each case as role who (NULL: the superuser), with try_as (setup.sql)
CREATE FUNCTION run_ro_cases(who text) RETURNS TABLE (n int, result text) LANGUAGE plpgsql AS $$
DECLARE
	c record;
BEGIN
	FOR c IN SELECT * FROM ro_cases ORDER BY ro_cases.n LOOP
		n := c.n;
		result := try_as(who, c.stmt);
		RETURN NEXT;
	END LOOP;
END $$;

-- as a trainer, then as a superuser
SELECT * FROM run_ro_cases('regress_ro_trainer');
SELECT * FROM run_ro_cases(NULL);

-- nothing was written: no row, no new table, the sequence never moved,
-- and the only training that ran was the one through a temporary table
SELECT count(*) AS loot FROM ro_loot;
SELECT to_regclass('ro_made') IS NULL AS no_table_made;
SELECT last_value, is_called FROM ro_seq;
SELECT sum(tenants) AS tenants_trained FROM floral.contributions WHERE model = 'ro';
SELECT count(*) > 0 AS scratch_written FROM ro_scratch;

-- and the transaction is read-write again afterwards
SELECT current_setting('transaction_read_only') AS read_only_after;
INSERT INTO ro_loot VALUES (3);
SELECT count(*) AS loot_after FROM ro_loot;

SELECT floral_drop_model('ro');
DROP TABLE ro_cases, ro_rows, ro_loot, ro_scratch;
DROP SEQUENCE ro_seq;
DROP FUNCTION run_ro_cases(text), sneaky(), sneaky_sql(), sneaky_ddl(), scratch();
REVOKE CREATE ON SCHEMA public FROM regress_ro_trainer;
DROP ROLE regress_ro_trainer;
