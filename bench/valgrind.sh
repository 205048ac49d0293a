#!/usr/bin/env bash
# bench/valgrind.sh: run floral once under valgrind's memcheck and report
# what it finds in floral's own code.  Not part of CI (it takes minutes).
#
#   sudo bash bench/valgrind.sh
#
# 1. starts a temporary cluster (own directory, Unix socket only) with the
#    postmaster under
#      valgrind --trace-children=yes --error-exitcode=128 --leak-check=no
#               --suppressions=<PostgreSQL's valgrind.supp, else bench/valgrind.supp>
#    Every backend is a fork of the postmaster, so every backend runs under
#    memcheck; a backend that saw an error exits with code 128, which the
#    server log shows as "exited with exit code 128";
# 2. runs a small workload through floral: a short train / aggregate /
#    predict / evaluate / personalise run on three models (shared, private
#    adaptors, regression with differential privacy), a training source that
#    spills to a temporary file, the gradient check, a branch update and a
#    coordinator merge, and a small subset of t/006_fuzz.pl: malformed
#    tensor literals, every single-bit flip and every truncation of a binary
#    tensor, COPY FROM (FORMAT binary) of crafted files, bad sources, bad
#    arrays and bad options;
# 3. runs one two-session scenario: a prediction that loads its model while
#    another session commits a change to floral's tables, with two call
#    sites (floral_predict_proba twice) in one query;
# 4. stops the server and writes a summary to
#    bench/results/valgrind-<date>.txt: error counts per process and every
#    memcheck report with a frame in floral's code, with its stack.
#
# The packaged PostgreSQL is built without USE_VALGRIND (and without
# --enable-cassert), so memcheck sees palloc'd memory only as the malloc'd
# blocks of the memory contexts: reads past a palloc'd chunk inside its
# block, and use of pfree'd chunks, go unnoticed.  Memory given back to
# malloc (a deleted memory context) is checked.
#
# Environment knobs:
#   VALGRIND_OUT   [bench/results/valgrind-<date>.txt]  the report
#   KEEP_VALGRIND_DIR=1   keep the temporary directory (logs) for inspection
#   PG_BINDIR (or PGBIN) [/usr/lib/postgresql/15/bin], BENCH_PORT, SKIP_INSTALL,
#   FLORAL_REPO: see bench/lib.sh (which also runs the cluster: own port,
#   unix socket in the temporary directory, stopped and removed at exit)
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
	echo "valgrind.sh: run as root (it starts PostgreSQL as postgres)" >&2
	exit 1
fi
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed" >&2; exit 1; }

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BENCH_OUT=${VALGRIND_OUT:-${BENCH_OUT:-}}
BENCH_KEEP=${KEEP_VALGRIND_DIR:-${BENCH_KEEP:-0}}
bench_init valgrind "valgrind-$(date +%Y-%m-%d).txt"
bench_install

# PostgreSQL's own suppressions, when the development package has them
SUPP=$($PG_CONFIG --pgxs | sed 's|/src/makefiles/pgxs.mk$||')/src/tools/valgrind.supp
SUPP_NOTE="PostgreSQL's $SUPP"
if [[ ! -f $SUPP ]]; then
	SUPP_NOTE="bench/valgrind.supp (no valgrind.supp in postgresql-server-dev-15; $SUPP does not exist)"
	SUPP=$HERE/valgrind.supp
fi

cp "$SUPP" "$WORK/suppressions.supp"
chown "$PG_USER:" "$WORK/suppressions.supp"

# bench/lib.sh's cluster with floral preloaded, few processes, and commits,
# full-page writes and checkpoints at PostgreSQL's defaults (as this run has
# always had them); the server itself is started under valgrind below
DATA=$WORK/data
bench_initdb 128MB "shared_preload_libraries = 'floral'
max_connections = 10
max_worker_processes = 2
synchronous_commit = on
full_page_writes = on
max_wal_size = 1GB"
psql_vg() { psql_db postgres "$@"; }

VG_OPTS=(--trace-children=yes --error-exitcode=128 --leak-check=no --num-callers=30
	--read-var-info=no --fullpath-after= --suppressions="$WORK/suppressions.supp"
	--log-file="$WORK/vg.%p.log")
# OpenBLAS would pick AVX-512 kernels on this CPU, which valgrind cannot run:
# OPENBLAS_CORETYPE=Haswell keeps it on AVX2.  The postmaster runs with a
# small, explicit environment (scripts/lib.sh as_pg_env; HOME is $WORK).
echo "valgrind.sh: starting the postmaster under valgrind in $WORK (this is slow)" >&2
OPENBLAS_CORETYPE=Haswell as_pg_env "$WORK" valgrind "${VG_OPTS[@]}" "$PGBIN/postgres" -D "$DATA" >"$WORK/server.log" 2>&1 &
pg_ready() { "${AS_PG[@]}" "$PGBIN/pg_isready" -q -h "$WORK" -p "$PORT"; }
for _ in $(seq 1 600); do
	if pg_ready; then break; fi
	sleep 1
done
pg_ready || { echo "valgrind.sh: server did not start" >&2; cat "$WORK/server.log" >&2; exit 1; }
START=$(date +%s)

# ------------------------------------------------------------- workload
cat >"$WORK/workload.sql" <<'SQL'
\set ON_ERROR_STOP 0
\pset pager off
CREATE EXTENSION floral_federation CASCADE;
CREATE SCHEMA vg;
-- run one statement, return its first column or its SQLSTATE
CREATE FUNCTION vg.try(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
	EXECUTE q INTO r;
	RETURN coalesce(left(r, 60), 'ok');
EXCEPTION WHEN OTHERS THEN
	RETURN 'ERROR ' || SQLSTATE;
END $$;
CREATE FUNCTION vg.summary(outcomes text[]) RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(o || ' x' || n, ', ' ORDER BY o) FROM (
		SELECT CASE WHEN o LIKE 'ERROR%' THEN o ELSE 'ok' END AS o, count(*) AS n
		FROM unnest(outcomes) o GROUP BY 1) s
$$;
CREATE TABLE vg.rows AS
	SELECT 't' || (i % 3) AS t,
		   ARRAY[sin(i), cos(i), (i % 5) / 5.0, 1, i % 2, sin(2 * i), cos(3 * i), 0.5]::real[] AS f,
		   i % 3 AS y
	FROM generate_series(1, 60) i;
CREATE TABLE vg.tcopy (t floral.tensor);

\echo == a short training run
SELECT floral_create_model('vg', '{8,6,3}', 'classification', 2, 1, '{"seed": 1}');
SELECT floral_create_model('vgp', '{8,6,3}', 'classification', 1, 1, '{"seed": 2, "private_adaptors": true}');
SELECT floral_create_model('vgr', '{8,4,2}', 'regression', 2, 0.5,
	'{"seed": 3, "activation": "tanh", "dp_clip": 1, "dp_noise": 0.1, "dp_max_examples": 50}');
SELECT * FROM floral_train('vg', 'SELECT t, f, y FROM vg.rows', '{"epochs": 2, "batch_size": 8}');
SELECT floral_aggregate('vg');
SELECT * FROM floral_train('vg', 'SELECT t, f, y FROM vg.rows ORDER BY f::text');
SELECT * FROM floral_train('vg', 'SELECT t, f, y FROM vg.rows ORDER BY f::text');	-- a retry
SELECT floral_aggregate('vg');
SELECT * FROM floral_train('vgp', 'SELECT t, f, y FROM vg.rows');
SELECT floral_aggregate('vgp');
SELECT * FROM floral_train('vgr', 'SELECT t, f, ARRAY[sin(y), cos(y)]::real[] FROM vg.rows');
SELECT examples, tenants, floral.tensor_norm(sums) > 0 FROM floral._branch_update('vgr', 0);
SELECT floral_aggregate('vgr');
SELECT floral_predict('vg', t, f), floral_predict_proba('vg', t, f) FROM vg.rows LIMIT 6;
SELECT floral_predict('vgp', t, f), floral_predict_proba('vgr', t, f) FROM vg.rows LIMIT 4;
SELECT * FROM floral_evaluate('vg', 'SELECT t, f, y FROM vg.rows');
SELECT * FROM floral_evaluate('vgp', 'SELECT t, f, y FROM vg.rows', 'test');
SELECT * FROM floral_evaluate('vgr', 'SELECT t, f, ARRAY[sin(y), cos(y)]::real[] FROM vg.rows');
SELECT * FROM floral_personalize('vg', 'SELECT ''new'' || t, f, y FROM vg.rows', '{"epochs": 2}');
SELECT * FROM floral_personalize('vg', 'SELECT ''hot'' || t, f, y FROM vg.rows', '{"method": "one_hot"}');
SELECT floral_set_mixture('vg', 't1', '{1,0}');
SELECT floral_predict('vg', 't1', f) FROM vg.rows LIMIT 2;
SELECT floral_mixture('vg', 't0'), floral.tensor_shape(floral_parameter('vg', 'U', 1, 2)),
	   floral_parameter('vg', 'b', 2), floral_parameter('vg', 'V', 2, 1, 1);
SELECT count(*) FROM floral_layers('vg');
SELECT name, round, tenants FROM floral.model_summary ORDER BY name;
SELECT part, relative_error < 1e-2 FROM floral._gradient_check('vg',
	'{{1,2,3,4,5,6,7,8},{8,7,6,5,4,3,2,1}}', '{0,2}', '{0.5,-0.5}', 1, 1e-3);
SELECT floral_rollback('vg', 1), floral_prune('vg', 1);

\echo == rows that spill to a temporary file
SET maintenance_work_mem = '1MB';
SELECT floral_create_model('vgw', '{1000,2,2}', 'classification', 0, 1);
SELECT count(*) FROM floral_train('vgw',
	'SELECT i % 2, array_fill((i % 7)::real / 7, ARRAY[1000]), i % 2 FROM generate_series(1, 300) i');
SELECT count(*) FROM floral_evaluate('vgw',
	'SELECT i % 3, array_fill((i % 5)::real / 5, ARRAY[1000]), i % 2 FROM generate_series(1, 300) i');
RESET maintenance_work_mem;

\echo == malformed tensor literals
SELECT vg.summary(array_agg(vg.try(format('SELECT %L::floral.tensor::text', s)))) FROM unnest(ARRAY[
	'', '[', ']', '[]', '[[]]', '[1,]', '[,1]', '[1 2]', '[[1],[2,3]]', '[[1],2]', '[1,[2]]',
	'[[[[[[[[[1]]]]]]]]]', '[[[[[[[[1]]]]]]]]', '[nan]', '[inf]', '[-Infinity]', '[1e39]', '[-1e39]',
	'[1e-46]', '[1e-45]', '[0x1p3]', '[' || repeat('1', 400) || ']', '[0.' || repeat('0', 400) || '1]',
	'[１]', '[1' || chr(160) || ']', '[' || chr(8722) || '1]', '(1,2)', '{1,2}', '[1];', '[1]]', '[[1]',
	repeat('[', 5000) || '1' || repeat(']', 5000), '[1,2,3' || repeat(',4', 1000) || ']',
	'[[1,2],[3,4]]', E'[ 1 ,\t2 ,\n3 ]', '[-0]', '[3.4028235e38,-3.4028235e38]']) s;
SELECT vg.summary(array_agg(vg.try(format('SELECT %L::floral.tensor::text', left('[[1.5,-2e3],[3,4e-45]]', n)))))
	FROM generate_series(0, 22) n;

\echo == binary tensors: every bit flip and every truncation of a payload
SELECT vg.summary(array_agg(vg.try(format('SELECT floral.tensor_from_bytea(%L)::text',
		set_bit(b, k, 1 - get_bit(b, k))))))
	FROM (SELECT floral.tensor_send('[[1,2],[3,4]]') AS b) p, generate_series(0, 8 * 24 - 1) k;
SELECT vg.summary(array_agg(vg.try(format('SELECT floral.tensor_from_bytea(%L)::text', substr(b, 1, n)))))
	FROM (SELECT floral.tensor_send('[[1,2],[3,-4e-45]]') AS b) p, generate_series(0, 24) n;
SELECT vg.summary(array_agg(vg.try(format('SELECT floral.tensor_from_bytea(%L)::text', b)))) FROM unnest(ARRAY[
	'\x0000000000000001'::bytea, '\x0009000000000001', '\xffff000000000001', '\x0001000100000001',
	'\x0001000000000000', '\x00010000ffffffff', '\x0001000080000000', '\x000100007fffffff',
	'\x000200000001000000010000', '\x00020000ffffffffffffffff3f800000', '\x000800000000ffff0000ffff0000ffff0000ffff0000ffff0000ffff0000ffff0000ffff',
	'\x00010000000000017fc00000', '\x0001000000000001ff800000', '\x00010000000000013f800000ff',
	'\x', '\x00', '\x000100', '\x0001000000']) b;

\echo == COPY FROM (FORMAT binary) of crafted files
DO $$
DECLARE
	b bytea;
	f text := current_setting('data_directory') || '/vg_copy.bin';
	outcomes text[] := '{}';
BEGIN
	FOREACH b IN ARRAY ARRAY[floral.tensor_send('[[1,2],[3,4]]'), '\x0001000000000002'::bytea,
		'\x00010000000000017f800000', '\x0001000000000001', '\x0003000000000001', '\x000100000000000100000000ff',
		'\x00010000', '\x', '\x0001000000000000']
	LOOP
		-- a bytea column written in binary is the raw field a tensor reads
		EXECUTE format('COPY (SELECT %L::bytea) TO %L (FORMAT binary)', b, f);
		BEGIN
			EXECUTE format('COPY vg.tcopy FROM %L (FORMAT binary)', f);
			outcomes := outcomes || 'ok'::text;
		EXCEPTION WHEN OTHERS THEN
			outcomes := outcomes || ('ERROR ' || SQLSTATE);
		END;
	END LOOP;
	RAISE NOTICE 'COPY: %', vg.summary(outcomes);
END $$;
SELECT count(*), string_agg(t::text, ' ') FROM vg.tcopy;

\echo == bad sources, arrays and options
SELECT vg.summary(array_agg(vg.try(format('SELECT count(*) FROM floral_train(''vg'', %L)', s)))) FROM unnest(ARRAY[
	'SELECT NULL::text, f, y FROM vg.rows', 'SELECT '''', f, y FROM vg.rows', 'SELECT repeat(''x'', 256), f, y FROM vg.rows',
	'SELECT t, f[1:7], y FROM vg.rows', 'SELECT t, ARRAY[f, f], y FROM vg.rows', 'SELECT t, f || NULL::real, y FROM vg.rows',
	'SELECT t, NULL::real[], y FROM vg.rows', 'SELECT t, ''{}''::real[], y FROM vg.rows',
	'SELECT t, f, y + 3 FROM vg.rows', 'SELECT t, f, y - 0.5 FROM vg.rows', 'SELECT t, f, ''NaN''::float8 FROM vg.rows',
	'SELECT t, f, 1e300::float8 FROM vg.rows', 'SELECT t, f, NULL::int FROM vg.rows', 'SELECT t, f, y::text FROM vg.rows',
	'SELECT t, f FROM vg.rows', 'SELECT t, f, y, y FROM vg.rows', 'SELECT t, f, y FROM vg.rows WHERE false',
	'SELECT t, array_fill(1e38::real, ARRAY[8]), y FROM vg.rows', 'SELECT t, array_fill(''NaN''::real, ARRAY[8]), y FROM vg.rows',
	'SELECT t, array_fill(1e-45::real, ARRAY[8]), y FROM vg.rows', 'SELECT i::bigint * 1000000000000, f, y FROM vg.rows, generate_series(1, 2) i',
	'SELECT t, f, y FROM vg.rows) x; DROP TABLE vg.rows; --', 'garbage', '']) s;
SELECT vg.summary(array_agg(vg.try(format('SELECT count(*) FROM floral_evaluate(''vgr'', %L)', s)))) FROM unnest(ARRAY[
	'SELECT t, f, ARRAY[1]::real[] FROM vg.rows', 'SELECT t, f, ARRAY[[1,2]]::real[] FROM vg.rows',
	'SELECT t, f, ARRAY[1,NULL]::real[] FROM vg.rows', 'SELECT t, f, 1.0 FROM vg.rows',
	'SELECT t, f, ARRAY[1e39,1]::float8[] FROM vg.rows', 'SELECT t, f, ARRAY[1e30,-1e30]::real[] FROM vg.rows']) s;
SELECT vg.summary(array_agg(vg.try(format('SELECT floral_predict_proba(''vg'', %s, %s)::text', t, f))))
	FROM unnest(ARRAY['''t1''', '''nobody''', 'repeat(''x'', 256)', '''''']) t,
		 unnest(ARRAY['''{1,2,3,4,5,6,7,8}''::real[]', '''{1,2,3}''::real[]', '''{{1,2,3,4},{5,6,7,8}}''::real[]',
					  '''{1,2,3,4,5,6,7,NULL}''::real[]', '''{1,2,3,4,5,6,7,NaN}''::real[]', '''{}''::real[]',
					  'array_fill(3e38::real, ARRAY[8])']) f;
SELECT vg.summary(array_agg(vg.try(format('SELECT count(*) FROM floral_train(''vg'', ''SELECT t, f, y FROM vg.rows'', %L)', o))))
	FROM unnest(ARRAY['[]', 'null', '{"epochs": 0}', '{"epochs": 1.5}', '{"lr": 1e39}', '{"lr": -1}', '{"bogus": 1}',
		'{"batch_size": 65537}', '{"seed": 1e30}', '{"router_lr": "x"}', '{"epochs": {"a": 1}}', '{"batch_size": 1}']) o;
SELECT vg.summary(array_agg(vg.try(q))) FROM unnest(ARRAY[
	'SELECT floral._gradient_check(''vg'', ''{{1,2,3,4,5,6,7,8}}'', ''{0}'', ''{{0,0}}'', 0, 1e-3)::text',
	'SELECT floral._gradient_check(''vg'', ''{{1,2,3,4,5,6,7,8}}'', ''{3}'', ''{0,0}'', 0, 1e-3)::text',
	'SELECT floral_parameter(''vg'', ''U'', 3, 1)::text', 'SELECT floral_parameter(''vg'', ''beta'', 1, 3)::text',
	'SELECT floral_set_mixture(''vg'', ''t2'', ''{NaN,1}'')::text', 'SELECT floral.tensor(''[2:3]={1,2}''::real[])::text',
	'SELECT floral.tensor(''{{{{{{1}}}}}}''::real[])::text', 'SELECT ''[[[[[[[[1]]]]]]]]''::floral.tensor::real[]::text',
	'SELECT floral_create_model(''vgx'', ''{3,NULL}'', ''classification'')::text']) q;

\echo == federation: a coordinator merging branch updates
SELECT floral_coordinator_setup('vgr');
SELECT floral_coordinator_add_branch('vgr', 'b1');
SELECT floral_coordinator_add_branch('vgr', 'b2');
SELECT * FROM floral_train('vgr', 'SELECT t, f, ARRAY[sin(y), cos(y)]::real[] FROM vg.rows');
SELECT floral.fed_submit('vgr', 'b1', u.r, u.examples, u.weights, encode(floral.tensor_send(u.sums), 'base64'), u.loss_sum, u.tenants)
	FROM (SELECT m.round AS r, b.* FROM floral.models m, floral._branch_update('vgr', m.round) b WHERE m.name = 'vgr') u;
-- an update whose average overflows float4 although its norm is finite in double
SELECT floral.fed_submit('vgr', 'b2', m.round, 1, '{1e-30,1e-30}', encode(floral.tensor_send(array_fill(3e38::real,
	ARRAY[(SELECT sum(parameters)::int FROM floral_layers('vgr'))])::floral.tensor), 'base64'), 0, 1)
	FROM floral.models m WHERE m.name = 'vgr';
SELECT vg.try('SELECT floral_coordinator_step(''vgr'')');
SELECT vg.try('SELECT floral.fed_submit(''vgr'', ''b1'', 1, 1, ''{{1,1}}'', ''AAAA'', 0, 1)');
SQL

cat >"$WORK/race.sql" <<'SQL'
\echo == a prediction whose model loads while another session commits
SELECT floral_predict_proba('vgp', 't1', f)::text AS a, floral_predict_proba('vgp', 't1', f)::text AS b
FROM vg.rows LIMIT 4;
SQL
chown "$PG_USER:" "$WORK"/*.sql

echo "valgrind.sh: running the workload" >&2
psql_vg -f "$WORK/workload.sql" >"$WORK/workload.out" 2>&1 || true

# The two-session scenario: session 1 holds floral.models and changes
# floral.tenants; session 2 (a new backend, so nothing is cached) starts to
# load the model, waits for the lock, and takes the invalidation while it
# loads.  Its two call sites then share one cache entry.
psql_vg -c "BEGIN; LOCK TABLE floral.models IN ACCESS EXCLUSIVE MODE;
	UPDATE floral.tenants SET updated_at = now() WHERE model = 'vgp'; SELECT pg_sleep(20); COMMIT;" \
	>"$WORK/race-locker.out" 2>&1 &
LOCKER=$!
sleep 8
psql_vg -f "$WORK/race.sql" >"$WORK/race.out" 2>&1 || true
wait "$LOCKER" || true
psql_vg -c 'SELECT 1' >/dev/null 2>&1 || sleep 30

"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$DATA" stop -m fast -w -t 900 >/dev/null || true
END=$(date +%s)

# ------------------------------------------------------------- report
bench_git_rev ' (with uncommitted changes in src/)' src floral.c
{
	echo "floral under valgrind memcheck, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "commit:      $GIT_REV"
	echo "postgres:    $($PGBIN/postgres --version), configured $($PG_CONFIG --configure | grep -o "'--enable-[a-z-]*'" | tr '\n' ' ')"
	echo "             (no --enable-cassert, no USE_VALGRIND: memcheck sees memory contexts' malloc'd blocks,"
	echo "              not single palloc chunks; Debian has no assert-enabled PostgreSQL package:"
	echo "              'apt-cache search postgresql | grep -i assert' finds nothing)"
	echo "valgrind:    $(valgrind --version) ${VG_OPTS[*]//--log-file=*/--log-file=vg.%p.log}"
	echo "suppressions: $SUPP_NOTE"
	echo "workload:    $((END - START)) s under valgrind (bench/valgrind.sh, sections below)"
	echo
	echo "== workload output (abridged)"
	grep -E '^(==|NOTICE|ERROR)' "$WORK/workload.out" | sed 's/^/  /' | head -60
	grep -E 'ok x|ERROR [0-9A-Z]{5} x' "$WORK/workload.out" | sed 's/^/  /' | head -40
	echo "  race scenario:"
	sed 's/^/    /' "$WORK/race.out" | head -12
	echo
	echo "== processes (valgrind's error summary per process; postmaster children are forks)"
	perl -ne 'if (/^==(\d+)== ERROR SUMMARY: (\d+) errors from (\d+) contexts/) { $e{$1} = "$2 errors from $3 contexts"; }
		if (/^==(\d+)== Command: (.*)/) { $c{$1} = $2; }
		END { for (sort { $a <=> $b } keys %e) { printf "  pid %-8s %s\n", $_, $e{$_}; } }' "$WORK"/vg.*.log | sort -k4 -n -r | head -40
	echo
	echo "== server log: processes that exited with valgrind's error code, crashes"
	grep -E 'exit code 128|terminated by signal|was terminated|TRAP:|PANIC' "$WORK/server.log" | sed 's/^/  /' || echo "  (none)"
	echo
	echo "== memcheck reports with a frame in floral (src/*.c, floral.c or floral.so)"
	perl -e '
		my (%seen, %count, %example);
		for my $file (@ARGV) {
			open(my $fh, "<", $file) or next;
			my @block;
			my $flush = sub {
				return unless @block;
				my $text = join("", @block);
				@block = ();
				return unless $text =~ m{(/src/[a-z_]+\.c:\d+|/floral\.c:\d+|floral\.so)};
				(my $key = $text) =~ s/^==\d+== //mg;
				$key =~ s/0x[0-9A-F]+: //g;
				my @lines = split /\n/, $key;
				my $sig = join("\n", @lines[0 .. ($#lines < 8 ? $#lines : 8)]);
				$count{$sig}++;
				$example{$sig} //= $key;
			};
			while (my $l = <$fh>) {
				if ($l =~ /^==\d+== (Invalid|Conditional|Use of uninitialised|Syscall param|Source and destination|Mismatched|Argument|Process terminating)/) {
					$flush->();
					push @block, $l;
				} elsif (@block && $l =~ /^==\d+==\s+(at|by) 0x|^==\d+==  (Address|Uninitialised value|Block was)/) {
					push @block, $l;
				} else {
					$flush->();
				}
			}
			$flush->();
		}
		if (!%count) { print "  none\n"; exit 0; }
		for my $sig (sort { $count{$b} <=> $count{$a} } keys %count) {
			print "  -- seen $count{$sig} time(s):\n";
			print map { "  $_\n" } split /\n/, $example{$sig};
			print "\n";
		}' "$WORK"/vg.*.log
	echo
	echo "== diagnosis"
	if grep -q 'floral_cache_get (.*cache.c' "$WORK"/vg.*.log && grep -qE 'Invalid read.*' "$WORK"/vg.*.log &&
		grep -A3 'Invalid read' "$WORK"/vg.*.log | grep -q 'predict_row'; then
		echo "  predict_row reads a tenant entry (t->pi, t->bank) that floral_cache_get has freed:"
		echo "  the first call site loaded the model while an invalidation arrived (entry kept with"
		echo "  valid = false and the current generation), the second call site then deleted and"
		echo "  reloaded that entry, and the first call site's PredictCallCache still points into the"
		echo "  deleted memory context (use after free, src/cache.c + src/predict.c)."
	fi
	if ! grep -qE 'src/[a-z_]+\.c:[0-9]+|floral\.c:[0-9]+|floral\.so' "$WORK"/vg.*.log; then
		echo "  no memcheck report has a floral frame"
	fi
	echo
	echo "== all memcheck reports by kind (any process, any code)"
	cat "$WORK"/vg.*.log | grep -E '^==[0-9]+== (Invalid|Conditional|Use of uninitialised|Syscall param|Source and destination|Mismatched|Argument)' |
		sed -E 's/^==[0-9]+== //; s/0x[0-9A-F]+/ADDR/g' | sort | uniq -c | sort -rn | sed 's/^/  /' || true
	[[ -n $(cat "$WORK"/vg.*.log | grep -E '^==[0-9]+== (Invalid|Conditional|Use of uninitialised|Syscall param)') ]] || echo "  none"
} | tee -a "$OUT"
echo "valgrind.sh: report written to $OUT" >&2
