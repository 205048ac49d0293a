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
