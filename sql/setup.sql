-- Helpers that later tests share (like PostgreSQL's own test_setup): this
-- test runs first.  They need no extension (tensor creates floral).  Run a
-- single later test as   make installcheck REGRESS="setup <test>"

-- run a statement, report its SQLSTATE and message (errors, privileges,
-- readonly)
CREATE FUNCTION try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE stmt;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
GRANT EXECUTE ON FUNCTION try(text) TO PUBLIC;

-- the same as role who (NULL: as the session's user), which is then reset
-- (privileges, readonly)
CREATE FUNCTION try_as(who text, stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	result text;
BEGIN
	IF who IS NOT NULL THEN
		EXECUTE format('SET ROLE %I', who);
	END IF;
	result := try(stmt);
	RESET ROLE;
	RETURN result;
END $$;

-- The paper's synthetic linear task (synthetic, baselines), as table name:
-- tenants 'tenant1' .. 'tenant' || tenants in group t % 2, rows r = 1 .. 150
-- of 8 features and a 4-valued label
--   y = (A + s * 2 u v^T) x + noise, s = +1 for even tenants, -1 for odd ones
-- drawn with random() after setseed(seed); A, u v and x are kept in tables
-- name_a, name_uv and name_x.
CREATE FUNCTION make_lowrank_task(name text, seed float8, tenants int) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM setseed(seed);
	EXECUTE format($q$
		CREATE TABLE %I AS
		SELECT i, j, (random() * 2 - 1)::real AS a FROM generate_series(1, 4) i, generate_series(1, 8) j
	$q$, name || '_a');
	EXECUTE format($q$
		CREATE TABLE %I AS
		SELECT (SELECT array_agg((random() * 2 - 1)::real ORDER BY k) FROM generate_series(1, 4) k) AS u,
		       (SELECT array_agg((random() * 2 - 1)::real ORDER BY k) FROM generate_series(1, 8) k) AS v
	$q$, name || '_uv');
	EXECUTE format($q$
		CREATE TABLE %I AS
		SELECT t, r, (SELECT array_agg((random() * 2 - 1)::real ORDER BY j)
		              FROM generate_series(1, 8) j WHERE r > 0) AS x
		FROM generate_series(1, %s) t, generate_series(1, 150) r
	$q$, name || '_x', tenants);
	EXECUTE format($q$
		CREATE TABLE %I AS
		SELECT 'tenant' || t AS tenant, t %% 2 AS grp, r, x AS features,
		       (SELECT array_agg((s + 0.01 * (random() * 2 - 1))::real ORDER BY i)
		        FROM (SELECT sa.i, sum((sa.a + CASE WHEN t %% 2 = 0 THEN 2 ELSE -2 END
		                                  * uv.u[sa.i] * uv.v[sa.j]) * x[sa.j]) AS s
		              FROM %I sa GROUP BY sa.i) q) AS label
		FROM %I, %I AS uv
	$q$, name, name || '_a', name || '_x', name || '_uv');
END $$;
