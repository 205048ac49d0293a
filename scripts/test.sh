#!/usr/bin/env bash
# The one test command for floral:   bash scripts/test.sh   (as root, or with sudo)
#
# 1. installs the Debian packages (scripts/install-deps.sh, idempotent);
# 2. builds and installs the extension as root (PGXS: make; make install);
# 3. copies the tree to a temporary directory owned by the `postgres` user
#    (PostgreSQL refuses to run as root, and pg_regress/prove write results/,
#    log/ and tmp_check/ into the build directory);
# 4. runs, as `postgres`, the pg_regress suite (REGRESS/REGRESS_OPTS from the
#    Makefile) on a private temporary instance, then the TAP suite (t/*.pl);
# 5. prints a summary whose last line is exactly "N passed, N failed".
#
# Counting: one unit per pg_regress test plus one unit per TAP test file
# (t/*.pl); the number of TAP assertions is printed on a separate line.
# A pg_regress test that was listed in REGRESS but never reported "ok" counts
# as failed, and so does a t/*.pl file that prove did not report as passed.
#
# Exit status is non-zero if the build fails, any test fails, or the TAP suite
# did not actually run.  No server is left running and no temporary directory
# is left behind (EXIT trap).  Nothing here uses port 5432 or listens on a
# network address: the test instances listen on Unix sockets in temporary
# directories only (pg_regress and PostgreSQL::Test::Cluster both set
# listen_addresses='' on Linux).
#
# Environment knobs (all optional):
#   KEEP_TEST_DIR=1   keep the temporary copy (results, logs) for inspection
#   PG_BINDIR=DIR     test against another PostgreSQL 15 installation (for
#                     example a relocated copy, so that two trees can be tested
#                     at once without sharing one `make install`)
set -euo pipefail

PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PG_BINDIR/pg_config

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# become_root, work_dir, free_port, as_pg_env; PG_USER (postgres) runs the tests
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

# Root is needed for apt-get, `make install` into the system PostgreSQL
# and for switching to the postgres user.
become_root "$ROOT/scripts/test.sh" "try: sudo bash scripts/test.sh" "$@"

log() { printf '\n=== %s ===\n' "$*"; }

# ---------------------------------------------------------------- deps
log "dependencies"
bash "$ROOT/scripts/install-deps.sh"

# ---------------------------------------------------------------- build
log "build and install"
make -C "$ROOT" PG_CONFIG="$PG_CONFIG" -j"$(nproc)"
make -C "$ROOT" PG_CONFIG="$PG_CONFIG" install

# ---------------------------------------------------------------- copy
# A private copy owned by the test user; without .git and without output of
# earlier test runs (a stale tmp_check/ or results/ would confuse the counts).
# At exit (scripts/lib.sh work_dir) any server that an interrupted run left
# behind is stopped: only servers whose data directory lies inside WORK, each
# by the pid in its own postmaster.pid; then WORK is removed.
work_dir test "${KEEP_TEST_DIR:-0}"
WORK_LEFTOVERS_NOTE=1
TREE=$WORK/tree
mkdir "$TREE"
tar -C "$ROOT" \
	--exclude=./.git --exclude=./results --exclude=./tmp_check \
	--exclude=./log --exclude=./regression.diffs --exclude=./regression.out \
	-cf - . | tar -C "$TREE" -xf -
chown -R "$PG_USER:" "$WORK"

# Run a command as the test user, with a small, explicit environment so that
# the results do not depend on the caller's shell (scripts/lib.sh as_pg_env).
as_test_user() { as_pg_env "$(getent passwd "$PG_USER" | cut -d: -f6)" "$@"; }

# The test names exactly as the Makefile defines them (no duplicate list here).
# shellcheck disable=SC2016  # $(REGRESS) is for make, not the shell
REGRESS_TESTS=$(make -s -C "$TREE" PG_CONFIG="$PG_CONFIG" -f Makefile -f - \
	floral-print-regress <<<'floral-print-regress: ; @echo $(REGRESS)')
read -r -a REGRESS_TESTS <<<"$REGRESS_TESTS"

# ---------------------------------------------------------------- pg_regress
log "pg_regress suite (${#REGRESS_TESTS[@]} tests)"
# A port for the pg_regress instance: not 5432 and nothing listening on it.
# (The instance only listens on a Unix socket in its own directory, but the
# port number names the socket and pg_regress probes it, so keep it unique.)
PORT=$(free_port 55432 55531)
# `make installcheck` runs pg_regress with the Makefile's REGRESS and
# REGRESS_OPTS; --temp-instance (via EXTRA_REGRESS_OPTS) makes pg_regress
# initdb and start its own server instead of using a running one.  TAP_TESTS
# is emptied here so that this step runs pg_regress only.
regress_rc=0
as_test_user make -C "$TREE" PG_CONFIG="$PG_CONFIG" installcheck TAP_TESTS= \
	EXTRA_REGRESS_OPTS="--temp-instance=$WORK/regress-instance --port=$PORT" \
	2>&1 | tee "$WORK/regress.log" || regress_rc=$?

regress_passed=0
regress_failed=0
failed_names=()
for t in "${REGRESS_TESTS[@]}"; do
	# pg_regress 15 prints "test NAME ... ok" or "     NAME ... ok" (in a
	# parallel group), "... FAILED" or "... failed (ignored)".
	if grep -Eq "^(test +| +)${t} +\.\.\. ok( |$)" "$WORK/regress.log"; then
		regress_passed=$((regress_passed + 1))
	else
		regress_failed=$((regress_failed + 1))
		failed_names+=("$t")
	fi
done
if [[ $regress_rc -ne 0 || $regress_failed -ne 0 ]]; then
	{
		echo "test.sh: pg_regress FAILED (exit $regress_rc; failed: ${failed_names[*]:-none})"
		if [[ -s $TREE/regression.diffs ]]; then
			echo "----- regression.diffs -----"
			cat "$TREE/regression.diffs"
		fi
		if [[ -f $WORK/regress-instance/log/postmaster.log ]]; then
			echo "----- postmaster.log (last 100 lines) -----"
			tail -n 100 "$WORK/regress-instance/log/postmaster.log"
		fi
	} >&2
	# If make failed but every test said ok, something else broke: count it.
	if [[ $regress_failed -eq 0 ]]; then
		regress_failed=1
	fi
fi

# ---------------------------------------------------------------- TAP
shopt -s nullglob
TAP_FILES=("$TREE"/t/*.pl)
shopt -u nullglob
log "TAP suite (${#TAP_FILES[@]} files)"
tap_rc=0
tap_files=0
tap_asserts=0
tap_failed=0
if [[ ${#TAP_FILES[@]} -eq 0 ]]; then
	echo "test.sh: no TAP tests found in t/*.pl" >&2
	tap_rc=1
	tap_failed=1
else
	# `make installcheck` with REGRESS emptied runs only PGXS's
	# prove_installcheck: prove -I <pgxs>/src/test/perl -I . t/*.pl with
	# TESTDIR, PATH and PG_REGRESS set the way PostgreSQL::Test::* expect.
	as_test_user make -C "$TREE" PG_CONFIG="$PG_CONFIG" installcheck REGRESS= \
		2>&1 | tee "$WORK/tap.log" || tap_rc=$?

	if grep -q 'TAP tests not enabled' "$WORK/tap.log"; then
		echo "test.sh: this PostgreSQL build has TAP tests disabled" >&2
		tap_rc=1
	fi
	# prove's closing lines: "Files=F, Tests=T, ..." then "Result: PASS|FAIL".
	files_line=$(grep -E '^Files=[0-9]+, Tests=[0-9]+' "$WORK/tap.log" | tail -n1 || true)
	if [[ -z $files_line ]]; then
		echo "test.sh: prove printed no summary: the TAP suite did not run" >&2
		tap_rc=1
	else
		tap_files=$(sed -E 's/^Files=([0-9]+).*/\1/' <<<"$files_line")
		tap_asserts=$(sed -E 's/^Files=[0-9]+, Tests=([0-9]+).*/\1/' <<<"$files_line")
		if [[ $tap_asserts -eq 0 ]]; then
			echo "test.sh: prove ran no TAP assertions" >&2
			tap_rc=1
		fi
	fi
	# Files prove lists under "Test Summary Report" are the failed ones.
	tap_failed=$(grep -Ec '^t/[^ ]+\.pl +\(Wstat:' "$WORK/tap.log" || true)
	# Any file prove did not run at all also counts as failed.
	if [[ $tap_files -lt ${#TAP_FILES[@]} ]]; then
		tap_failed=$((tap_failed + ${#TAP_FILES[@]} - tap_files))
		tap_files=${#TAP_FILES[@]}
	fi
	if [[ $tap_rc -ne 0 && $tap_failed -eq 0 ]]; then
		tap_failed=1
	fi
	if [[ $tap_rc -ne 0 || $tap_failed -ne 0 ]]; then
		if [[ $tap_rc -eq 0 ]]; then tap_rc=1; fi
		{
			echo "test.sh: TAP suite FAILED"
			for f in "$TREE"/tmp_check/log/regress_log_*; do
				[[ -f $f ]] || continue
				echo "----- $(basename "$f") (last 200 lines) -----"
				tail -n 200 "$f"
			done
		} >&2
	fi
fi
tap_passed=$((tap_files - tap_failed))
if [[ $tap_passed -lt 0 ]]; then tap_passed=0; fi

# ---------------------------------------------------------------- summary
passed=$((regress_passed + tap_passed))
failed=$((regress_failed + tap_failed))
log "summary"
echo "pg_regress: $regress_passed of ${#REGRESS_TESTS[@]} tests passed${failed_names:+ (failed: ${failed_names[*]})}"
echo "TAP: $tap_passed of $tap_files files passed ($tap_asserts assertions)"
echo "(counted: pg_regress tests + TAP test files)"
echo "$passed passed, $failed failed"

if [[ $regress_rc -ne 0 || $regress_failed -ne 0 || $tap_rc -ne 0 || $tap_failed -ne 0 ]]; then
	exit 1
fi
exit 0
