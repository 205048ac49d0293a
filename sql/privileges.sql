-- Privileges: PUBLIC gets nothing; readers predict; trainers train their
-- tenants but never touch the shared parameters; admins do everything
-- through floral's functions; nobody but floral writes a model's tables
-- (contributions, rounds, tenants, history) directly; a branch role at a
-- coordinator can only submit for itself.
CREATE EXTENSION IF NOT EXISTS floral_federation CASCADE;
SET max_parallel_workers_per_gather = 0;

CREATE ROLE regress_nobody;
CREATE ROLE regress_reader IN ROLE floral_reader;
CREATE ROLE regress_trainer IN ROLE floral_trainer;
CREATE ROLE regress_admin IN ROLE floral_admin;
CREATE ROLE regress_branch_a IN ROLE floral_branch;
CREATE ROLE regress_branch_b IN ROLE floral_branch;

CREATE TABLE priv_rows AS
SELECT 'shop' || (i % 2) AS tenant, ARRAY[sin(i), cos(i), 1]::real[] AS features, i % 3 AS label
FROM generate_series(1, 60) i;
CREATE TABLE priv_secret AS SELECT * FROM priv_rows;
GRANT SELECT ON priv_rows TO regress_reader, regress_trainer, regress_admin;
SELECT floral_create_model('pm', '{3,4,3}', 'classification', 2, 1);

CREATE TABLE cases (n int, who text, stmt text, ord numeric);
INSERT INTO cases VALUES
 (1, 'regress_nobody', $q$SELECT floral_predict('pm', 'shop0', '{1,2,3}')$q$),
 (2, 'regress_nobody', $q$SELECT * FROM floral.models$q$),
 (3, 'regress_nobody', $q$SELECT floral_create_model('x', '{2,2}')$q$),
 (4, 'regress_nobody', $q$SELECT '[1,2]'::floral.tensor$q$),
 (5, 'regress_reader', $q$SELECT floral_predict('pm', 'shop0', '{1,2,3}')$q$),
 (6, 'regress_reader', $q$SELECT floral_mixture('pm', 'shop0')$q$),
 (7, 'regress_reader', $q$SELECT count(*) FROM floral_evaluate('pm', 'SELECT tenant, features, label FROM priv_rows')$q$),
 (8, 'regress_reader', $q$SELECT floral_train('pm', 'SELECT tenant, features, label FROM priv_rows')$q$),
 (9, 'regress_reader', $q$UPDATE floral.rounds SET params = '[0]'$q$),
 (10, 'regress_trainer', $q$SELECT floral_train('pm', 'SELECT tenant, features, label FROM priv_rows')$q$),
 (11, 'regress_trainer', $q$SELECT floral_train('pm', 'SELECT tenant, features, label FROM priv_secret')$q$),
 (12, 'regress_trainer', $q$SELECT floral_aggregate('pm')$q$),
 (13, 'regress_trainer', $q$SELECT floral_set_mixture('pm', 'shop0', '{1,0}')$q$),
 (14, 'regress_trainer', $q$UPDATE floral.tenants SET pinned = '{1,0}'$q$),
 (15, 'regress_trainer', $q$UPDATE floral.models SET round = 7$q$),
 (16, 'regress_trainer', $q$INSERT INTO floral.rounds (model, round, params) VALUES ('pm', 9, '[1]')$q$),
 (17, 'regress_trainer', $q$SELECT floral_drop_model('pm')$q$),
 (18, 'regress_trainer', $q$SELECT floral_rollback('pm', 0)$q$),
 (19, 'regress_trainer', $q$SELECT * FROM floral.fed_round('pm', 'a')$q$),
 (20, 'regress_admin', $q$SELECT floral_aggregate('pm')$q$),
 (21, 'regress_admin', $q$SELECT floral_set_mixture('pm', 'shop0', '{1,0}')$q$),
 (22, 'regress_branch_a', $q$SELECT * FROM floral.fed_round('pm', 'a')$q$),
 (23, 'regress_branch_a', $q$SELECT * FROM floral.fed_round('pm', 'b')$q$),
 (24, 'regress_branch_a', $q$SELECT floral.fed_submit('pm', 'a', 1, 10, '{5,5}', 'AAAA', 1, 2)$q$),
 (25, 'regress_branch_a', $q$SELECT floral.fed_submit('pm', 'b', 1, 10, '{5,5}', 'AAAA', 1, 2)$q$),
 (26, 'regress_branch_a', $q$SELECT * FROM floral.updates$q$),
 (27, 'regress_branch_a', $q$SELECT * FROM floral.rounds$q$),
 (28, 'regress_branch_a', $q$UPDATE floral.models SET round = 0$q$),
 (29, 'regress_branch_a', $q$SELECT floral_aggregate('pm')$q$),
 (30, 'regress_branch_a', $q$SELECT floral_coordinator_step('pm')$q$),
 -- forging the pending round (between case 10's training and case 20's merge)
 (31, 'regress_trainer', $q$UPDATE floral.contributions SET examples = 1000000000 WHERE model = 'pm'$q$),
 (32, 'regress_trainer', $q$INSERT INTO floral.contributions (model, round, call, chunk, tenants, examples, weights, max_examples, loss_sum, sums) VALUES ('pm', 0, -1, 0, 1, 1e9, '{1,1}', 1, 0, '\x00')$q$),
 (33, 'regress_trainer', $q$DELETE FROM floral.contributions$q$),
 (34, 'regress_trainer', $q$UPDATE floral.tenants SET logits = '{9,9}', contributed_call = NULL$q$),
 (35, 'regress_trainer', $q$INSERT INTO floral.history (model, round, split, tenant, examples) VALUES ('pm', 0, 'x', 'y', 1)$q$),
 (36, 'regress_trainer', $q$SELECT count(*) FROM floral.contributions$q$),
 (37, 'regress_admin', $q$UPDATE floral.contributions SET examples = 1000000000 WHERE model = 'pm'$q$),
 (38, 'regress_admin', $q$UPDATE floral.rounds SET params = '[0]'$q$),
 (39, 'regress_admin', $q$DELETE FROM floral.tenants$q$),
 (40, 'regress_trainer', $q$SELECT floral_discard('pm')$q$),
 (41, 'regress_admin', $q$SELECT floral_discard('pm')$q$),
 (42, 'regress_admin', $q$SELECT floral_prune('pm', 1)$q$);
UPDATE cases SET ord = CASE WHEN n BETWEEN 31 AND 40 THEN 10 + (n - 30) / 100.0 ELSE n END;

SELECT floral_coordinator_setup('pm');
SELECT floral_coordinator_add_branch('pm', 'a', 'regress_branch_a');
SELECT floral_coordinator_add_branch('pm', 'b', 'regress_branch_b');

-- run each case as its role (try_as, setup.sql), in order (case 20
-- aggregates what 10 trained)
CREATE FUNCTION run_cases() RETURNS TABLE (n int, who text, result text) LANGUAGE plpgsql AS $$
DECLARE
	c record;
BEGIN
	FOR c IN SELECT * FROM cases ORDER BY cases.ord LOOP
		n := c.n;
		who := c.who;
		result := try_as(c.who, c.stmt);
		RETURN NEXT;
	END LOOP;
END $$;
SELECT * FROM run_cases();

-- nothing forged reached the round: it holds exactly the 60 rows of case 10
SELECT round, tenants, examples FROM floral.rounds WHERE model = 'pm' ORDER BY round;

-- what the branch could do left exactly one record, its own, rejected
SELECT round, branch, status, reason LIKE 'sums:%' AS bad_sums FROM floral.updates;
SELECT round FROM floral.models WHERE name = 'pm';

-- every floral function runs as its caller, except the remote API and the
-- admin functions that write a model's tables, which run as the owner with
-- a fixed search_path
SELECT p.proname, p.prosecdef, p.proconfig
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname IN ('floral', 'floral_federation')
WHERE p.prosecdef ORDER BY 1;
-- and PUBLIC may execute only the tensor type's functions
SELECT p.proname
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname IN ('floral', 'floral_federation')
WHERE has_function_privilege('regress_nobody', p.oid, 'EXECUTE') ORDER BY 1;

-- floral's own statements, run as the owner, cannot be steered by the
-- caller's search_path: a trainer's now() and = ahead of pg_catalog would
-- run with the owner's rights (and could make their author a superuser)
CREATE SCHEMA regress_evil AUTHORIZATION regress_trainer;
CREATE TABLE pwned (who name, what text);
GRANT INSERT ON pwned TO PUBLIC;
SET ROLE regress_trainer;
CREATE FUNCTION regress_evil.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.pwned VALUES (current_user, 'now()');
	RETURN pg_catalog.now();
END $$;
CREATE FUNCTION regress_evil.texteq_evil(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.pwned VALUES (current_user, '=');
	RETURN pg_catalog.texteq($1, $2);
END $$;
CREATE OPERATOR regress_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil.texteq_evil);
SET search_path = regress_evil, pg_catalog, public;
SELECT count(*) FROM floral_train('pm', 'SELECT ''evil_'' || tenant, features, label FROM public.priv_rows');
SELECT count(*) FROM floral_evaluate('pm', 'SELECT tenant, features, label FROM public.priv_rows', 'test');
RESET search_path;
RESET ROLE;
-- nothing of the trainer's ran as the owner
SELECT count(*) AS ran_as_someone_else FROM pwned WHERE who <> 'regress_trainer';
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_trainer';
DROP TABLE pwned;
DROP SCHEMA regress_evil CASCADE;

SELECT floral_drop_model('pm');
DROP TABLE cases, priv_rows, priv_secret;
DROP FUNCTION run_cases();
DROP ROLE regress_nobody, regress_reader, regress_trainer, regress_admin, regress_branch_a, regress_branch_b;
