-- Secure aggregation's building blocks (src/secagg.c): keys, sealed
-- shares, Shamir recovery, fixed point, masks that cancel, unmasking with
-- a dropped branch, and the checks at every entry point.  The protocol
-- between databases is tested in t/014_secure_aggregation.pl.
CREATE EXTENSION IF NOT EXISTS floral_federation CASCADE;

CREATE TYPE sa_kp AS (private bytea, public bytea);
CREATE TABLE sa_p AS
SELECT n, ROW(c.private, c.public)::sa_kp AS c, ROW(s.private, s.public)::sa_kp AS s, floral._secagg_seed() AS b
  FROM unnest('{a,b,c}'::text[]) n, LATERAL floral._secagg_keypair() c, LATERAL floral._secagg_keypair() s;
SELECT n, octet_length((c).private) AS priv, octet_length((c).public) AS pub,
       floral._secagg_public((c).private) = (c).public AS public_of_private,
       octet_length(b) AS seed, (c).private <> (s).private AS fresh
  FROM sa_p ORDER BY n;

-- a's secrets, 2-of-3 shared and sealed for a, b and c
CREATE TABLE sa_sh AS
SELECT floral._secagg_make_shares('m', 1, 1, 'a', (c).private, (s).private, b, 2,
         '{a,b,c}', (SELECT array_agg((c).public ORDER BY n) FROM sa_p)) AS sealed
  FROM sa_p WHERE n = 'a';
SELECT cardinality(sealed) AS shares, octet_length(sealed[1]) AS sealed_bytes FROM sa_sh;
CREATE TABLE sa_op AS
SELECT r.n, o.*
  FROM sa_sh, sa_p a, sa_p r,
       LATERAL floral._secagg_open_share('m', 1, 1, 'a', r.n, (r.c).private, (a.c).public,
                                         sa_sh.sealed[array_position('{a,b,c}'::text[], r.n)]) o
 WHERE a.n = 'a';
SELECT n, x FROM sa_op ORDER BY n;
-- any two shares recover each secret; they are not the secret themselves
SELECT floral._secagg_combine(ARRAY[x.x, y.x], ARRAY[x.s_share, y.s_share], 2) = (SELECT (s).private FROM sa_p WHERE n = 'a') AS key_from_two,
       floral._secagg_combine(ARRAY[x.x, y.x], ARRAY[x.b_share, y.b_share], 2) = (SELECT b FROM sa_p WHERE n = 'a') AS seed_from_two,
       floral._secagg_combine(ARRAY[1, 2, 3], (SELECT array_agg(b_share ORDER BY x) FROM sa_op), 2) = (SELECT b FROM sa_p WHERE n = 'a') AS seed_from_three,
       position((SELECT b FROM sa_p WHERE n = 'a') IN x.b_share) = 0 AS share_is_not_the_seed
  FROM sa_op x, sa_op y WHERE x.n = 'b' AND y.n = 'c';

-- masks cancel in the sum; with c dropped after masking, its masks are
-- removed from its recovered key
CREATE TABLE sa_x AS
SELECT n, floral._secagg_quantize(100 + i, ARRAY[1.5 * i, 2]::real[], ARRAY[i, -i, 0.25, 1e-6]::real[]::floral.tensor, 3.5, 2) AS q
  FROM sa_p, LATERAL (SELECT array_position('{a,b,c}'::text[], n) AS i) z;
SELECT octet_length(q) AS bytes FROM sa_x WHERE n = 'a';
CREATE TABLE sa_y AS
SELECT p.n, floral._secagg_mask('m', 1, 1, p.n, (p.s).private, p.b, '{a,b,c}',
                               (SELECT array_agg((s).public ORDER BY n) FROM sa_p), x.q) AS y
  FROM sa_p p JOIN sa_x x USING (n);
SELECT n, octet_length(y) = octet_length(q) AS same_size, y <> q AS masked FROM sa_y JOIN sa_x USING (n) ORDER BY n;
SELECT * FROM floral._secagg_unmask('m', 1, 1, (SELECT array_agg(y ORDER BY n) FROM sa_y), '{a,b,c}',
         (SELECT array_agg((s).public ORDER BY n) FROM sa_p), (SELECT array_agg(b ORDER BY n) FROM sa_p), '{}', '{}', 2);
SELECT * FROM floral._secagg_unmask('m', 1, 1, (SELECT array_agg(y ORDER BY n) FROM sa_y WHERE n <> 'c'), '{a,b}',
         (SELECT array_agg((s).public ORDER BY n) FROM sa_p WHERE n <> 'c'),
         (SELECT array_agg(b ORDER BY n) FROM sa_p WHERE n <> 'c'),
         '{c}', (SELECT array_agg((s).private) FROM sa_p WHERE n = 'c'), 2);
-- masks are bound to their round: unmasking as another round gives noise
-- (or a tenant count no int holds, refused with 22003)
DO $$
DECLARE
	u record;
BEGIN
	SELECT * INTO u FROM floral._secagg_unmask('m', 2, 1, (SELECT array_agg(y ORDER BY n) FROM sa_y), '{a,b,c}',
		(SELECT array_agg((s).public ORDER BY n) FROM sa_p), (SELECT array_agg(b ORDER BY n) FROM sa_p), '{}', '{}', 2);
	RAISE NOTICE 'other round is noise: %', (u.sums::real[])[1] <> 6;
EXCEPTION WHEN numeric_value_out_of_range THEN
	RAISE NOTICE 'other round is noise: true';
END $$;

-- the fixed point: step 2^-20, rounding to the nearest
SELECT (u.sums::real[])[1] AS quantised_back, (u.sums::real[])[1] = 1 * 2 ^ -20 AS one_step
  FROM sa_p p,
       LATERAL floral._secagg_unmask('m', 1, 1, ARRAY[floral._secagg_mask('m', 1, 1, 'a', (p.s).private, p.b, '{a}', ARRAY[(p.s).public],
         floral._secagg_quantize(1, '{}', '[0.0000012]', 0, 1))], '{a}', ARRAY[(p.s).public], ARRAY[p.b], '{}', '{}', 0) u
 WHERE p.n = 'a';

-- the bound is strict: 1024 branches of |v| < 2^33 stay below 2^63
SELECT octet_length(floral._secagg_quantize(1, '{}', '[8589933568]', 0, 1)) AS just_below_2_33;
-- a garbage sum (one masked word altered: the tenant count off by 2^42)
-- is refused, not wrapped into an int
DO $$
DECLARE
	p record := (SELECT x FROM sa_p x WHERE x.n = 'a');
	y bytea;
	u record;
BEGIN
	y := floral._secagg_mask('m', 1, 1, 'a', (p.s).private, p.b, '{a}', ARRAY[(p.s).public],
							 floral._secagg_quantize(1, '{}', '[1]', 0, 1));
	SELECT * INTO u FROM floral._secagg_unmask('m', 1, 1, ARRAY[y], '{a}', ARRAY[(p.s).public], ARRAY[p.b], '{}', '{}', 0);
	RAISE NOTICE 'intact: % tenant(s)', u.tenants;
	SELECT * INTO u FROM floral._secagg_unmask('m', 1, 1, ARRAY[set_byte(y, 8, get_byte(y, 8) # 64)], '{a}',
		ARRAY[(p.s).public], ARRAY[p.b], '{}', '{}', 0);
	RAISE NOTICE 'no error: % tenants', u.tenants;
EXCEPTION WHEN OTHERS THEN
	RAISE NOTICE 'altered: %: %', SQLSTATE, regexp_replace(SQLERRM, '-?[0-9.e+]+ is', 'N is');
END $$;

-- every entry point checks what it is given
DO $$
DECLARE
	k bytea := (SELECT (c).private FROM sa_p WHERE n = 'a');
	pub bytea := (SELECT (c).public FROM sa_p WHERE n = 'b');
	sealed bytea := (SELECT sealed[2] FROM sa_sh);
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY[
		'SELECT floral._secagg_public(''\x0102'')',
		'SELECT floral._secagg_public(NULL)',
		$q$SELECT floral._secagg_make_shares('m', 1, 1, 'a', $1, $1, $1, 4, '{a,b,c}', ARRAY[$2, $2, $2])$q$,
		$q$SELECT floral._secagg_make_shares('m', 1, 1, 'a', $1, $1, $1, 2, '{a,b,c}', ARRAY[$2, $2])$q$,
		$q$SELECT floral._secagg_make_shares('m', 1, 1, 'a', $1, $1, $1, 1, '{a}', ARRAY[$2])$q$,
		$q$SELECT floral._secagg_make_shares('m', 1, 1, 'a', $1, $1, NULL, 2, '{a,b}', ARRAY[$2, $2])$q$,
		$q$SELECT floral._secagg_make_shares('m', 1, 1, 'a', $1, $1, $1, 2, '{a,NULL}', ARRAY[$2, $2])$q$,
		$q$SELECT floral._secagg_make_shares('m', 1, 1, 'a', $1, $1, $1, 2, '{a,b}', ARRAY[$2, '\x00'::bytea])$q$,
		$q$SELECT floral._secagg_open_share('m', 1, 1, 'a', 'b', $1, $2, '\x00')$q$,
		$q$SELECT floral._secagg_combine('{1,1}', ARRAY['\x00'::bytea, '\x00'], 2)$q$,
		$q$SELECT floral._secagg_combine('{1}', ARRAY[$1], 2)$q$,
		$q$SELECT floral._secagg_combine('{0,2}', ARRAY[$1, $1], 2)$q$,
		$q$SELECT floral._secagg_combine('{1,2}', ARRAY[$1, $1], 2)$q$,
		$q$SELECT floral._secagg_combine(ARRAY[1, 2], ARRAY[decode(repeat('ff', 66), 'hex'), decode(repeat('ff', 66), 'hex')], 2)$q$,
		$q$SELECT floral._secagg_quantize(1e10, '{}', '[1]', 0, 1)$q$,
		$q$SELECT floral._secagg_quantize(1, '{}', '[8589934592]', 0, 1)$q$,
		$q$SELECT floral._secagg_quantize(1, '{}', '[-8589934592]', 0, 1)$q$,
		$q$SELECT floral._secagg_quantize(1, '{}', '[NaN]', 0, 1)$q$,
		$q$SELECT floral._secagg_quantize(1, '{NULL}', '[1]', 0, 1)$q$,
		$q$SELECT floral._secagg_mask('m', 1, 1, 'z', $1, $1, '{a,b}', ARRAY[$2, $2], '\x0000000000000000')$q$,
		$q$SELECT floral._secagg_mask('m', 1, 1, 'a', $1, $1, '{a,b}', ARRAY[$2, $2], '\x00')$q$,
		$q$SELECT floral._secagg_unmask('m', 1, 1, ARRAY['\x00'::bytea], '{a}', ARRAY[$2], ARRAY[$1], '{}', '{}', 0)$q$,
		$q$SELECT floral._secagg_unmask('m', 1, 1, ARRAY[$1], '{a}', ARRAY[$2], ARRAY[$1], '{a}', ARRAY[$1], 0)$q$,
		$q$SELECT floral._secagg_unmask('m', 1, 1, ARRAY[$1], '{a,b}', ARRAY[$2], ARRAY[$1], '{}', '{}', 0)$q$]
	LOOP
		BEGIN
			EXECUTE t USING k, pub;
			RAISE NOTICE 'no error: %', t;
		EXCEPTION WHEN OTHERS THEN
			RAISE NOTICE '%: %', SQLSTATE, SQLERRM;
		END;
	END LOOP;
	-- a sealed share altered in any one byte does not open
	FOR i IN 1 .. 162 BY 23 LOOP
		BEGIN
			PERFORM floral._secagg_open_share('m', 1, 1, 'a', 'b', (SELECT (c).private FROM sa_p WHERE n = 'b'),
				(SELECT (c).public FROM sa_p WHERE n = 'a'),
				overlay(sealed PLACING decode(lpad(to_hex(get_byte(sealed, i - 1) # 1), 2, '0'), 'hex') FROM i FOR 1));
			RAISE NOTICE 'byte %: opened', i;
		EXCEPTION WHEN OTHERS THEN
			RAISE NOTICE 'byte %: %', i, SQLSTATE;
		END;
	END LOOP;
END $$;
-- nor for another recipient, sender, round, attempt or model
DO $$
DECLARE
	sealed bytea := (SELECT sealed[2] FROM sa_sh);
	bpriv bytea := (SELECT (c).private FROM sa_p WHERE n = 'b');
	apub bytea := (SELECT (c).public FROM sa_p WHERE n = 'a');
	cpub bytea := (SELECT (c).public FROM sa_p WHERE n = 'c');
BEGIN
	BEGIN PERFORM floral._secagg_open_share('m', 1, 1, 'a', 'c', bpriv, apub, sealed); RAISE NOTICE 'recipient: opened';
	EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'recipient: %', SQLSTATE; END;
	BEGIN PERFORM floral._secagg_open_share('m', 1, 1, 'c', 'b', bpriv, cpub, sealed); RAISE NOTICE 'sender: opened';
	EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'sender: %', SQLSTATE; END;
	BEGIN PERFORM floral._secagg_open_share('m', 2, 1, 'a', 'b', bpriv, apub, sealed); RAISE NOTICE 'round: opened';
	EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'round: %', SQLSTATE; END;
	BEGIN PERFORM floral._secagg_open_share('m', 1, 2, 'a', 'b', bpriv, apub, sealed); RAISE NOTICE 'attempt: opened';
	EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'attempt: %', SQLSTATE; END;
	BEGIN PERFORM floral._secagg_open_share('n', 1, 1, 'a', 'b', bpriv, apub, sealed); RAISE NOTICE 'model: opened';
	EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'model: %', SQLSTATE; END;
	PERFORM floral._secagg_open_share('m', 1, 1, 'a', 'b', bpriv, apub, sealed);
	RAISE NOTICE 'the true context opens';
END $$;

-- the federation option, and the remote API of a federation without it
SELECT floral_create_model('sa', '{3,4,3}', 'classification', 2, 1, '{"seed": 1}');
SELECT floral_coordinator_setup('sa', '{"secure_aggregation": true, "secagg_threshold": 3}');
SELECT secure_aggregation, secagg_threshold FROM floral.federations WHERE model = 'sa';
DO $$ BEGIN PERFORM floral_coordinator_setup('sa', '{"secure_aggregation": true, "secagg_threshold": 1}');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM floral_coordinator_setup('sa', '{"secure_aggregation": "yes"}');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
SELECT floral_coordinator_add_branch('sa', 'x');
SELECT attempt, stage, threshold, participants, advertised FROM floral.fed_secagg_state('sa', 'x', 0);
DO $$ BEGIN PERFORM floral.fed_secagg_state('sa', 'x', 5);
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM floral.fed_secagg_advertise('sa', 'x', 0, 2, repeat('00', 32), repeat('00', 32));
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM floral.fed_secagg_advertise('sa', 'x', 0, 1, 'zz', repeat('00', 32));
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
SELECT floral.fed_secagg_advertise('sa', 'x', 0, 1, repeat('01', 32), repeat('02', 32)) AS first,
       floral.fed_secagg_advertise('sa', 'x', 0, 1, repeat('01', 32), repeat('02', 32)) AS again;
DO $$ BEGIN PERFORM floral.fed_secagg_keys('sa', 'x', 0, 1);
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
SELECT floral_coordinator_step('sa');
SELECT model, round, attempt, stage, participants FROM floral.secagg_status;
-- who may call what: a branch's role the remote API only, an admin never
-- a branch's secrets
CREATE ROLE regress_sa_branch IN ROLE floral_branch;
CREATE ROLE regress_sa_admin IN ROLE floral_admin;
SELECT floral_coordinator_add_branch('sa', 'y', 'regress_sa_branch');
SET ROLE regress_sa_branch;
SELECT stage, advertised FROM floral.fed_secagg_state('sa', 'y', 0);
DO $$ BEGIN PERFORM floral.fed_secagg_state('sa', 'x', 0);
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM * FROM floral.secagg_keys;
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM floral._secagg_advance('sa');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM floral._secagg_keypair();
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
RESET ROLE;
SET ROLE regress_sa_admin;
SELECT count(*) AS keys_visible_to_admin FROM floral.secagg_keys;
DO $$ BEGIN PERFORM * FROM floral.secagg_secrets;
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN INSERT INTO floral.secagg_inputs VALUES ('sa', 0, 1, 'x', '\x00');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
RESET ROLE;
DROP ROLE regress_sa_branch;
DROP ROLE regress_sa_admin;

SELECT floral_coordinator_setup('sa', '{}');
DO $$ BEGIN PERFORM floral.fed_secagg_state('sa', 'x', 0);
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM floral.fed_secagg_state('sa', 'nobody', 0);
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;

SELECT floral_drop_model(name) FROM floral.models ORDER BY name;
DROP TABLE sa_p, sa_sh, sa_op, sa_x, sa_y;
DROP TYPE sa_kp;

-- the federation is an extension of its own: it drops alone (and can come
-- back), while floral with its tables, and dblink, stay
DROP EXTENSION floral_federation;
SELECT to_regclass('floral.updates') IS NULL AS federation_tables_gone,
       to_regprocedure('floral._federation_rollback(text, integer)') IS NULL AS hook_gone,
       to_regclass('floral.models') IS NOT NULL AS floral_tables_stay,
       (SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension WHERE extname LIKE 'floral%' OR extname = 'dblink') AS extensions;
CREATE EXTENSION floral_federation;
SELECT to_regclass('floral.updates') IS NOT NULL AS federation_back;
