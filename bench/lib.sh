# shellcheck shell=bash disable=SC2034,SC2153  # (variables set here are for the callers)
# bench/lib.sh: what the benchmarks share.  Sourced, never run:
#
#   set -euo pipefail
#   # shellcheck source=bench/lib.sh
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   bench_init speed speed-<date>.txt   # paths, temp dir, cleanup at exit, report file
#   report "..."                     # to stdout and to the report file
#   bench_install                    # make install into $PG_BINDIR's tree
#   bench_build_sgemm_rate           # $WORK/sgemm_rate
#   bench_start_cluster 512MB        # initdb + start + CREATE DATABASE $BENCH_DB + EXTENSION floral
#                                    # (bench_initdb + bench_pg_start: its two halves)
#   bench_facts                      # CPU, BLAS, git revision, load (for the report's head)
#   psql_ ... / q 'SELECT ...'       # talk to it
#   time_sql / timed_section ...     # best of $REPS under psql's \timing
#   measure LABEL MWM SQL            # a backend's peak memory during SQL
#
# Everything runs on a throw-away cluster: initdb into a temporary
# directory, as the postgres user (PostgreSQL refuses to run as root), a
# port of its own, a unix socket in that directory and no TCP listener; it
# is stopped (by the pid in its own postmaster.pid) and removed at exit
# (scripts/lib.sh, shared with scripts/test.sh).  Nothing here touches
# another cluster.
#
# Environment read here (defaults in brackets):
#   PG_BINDIR   [$PGBIN, else /usr/lib/postgresql/15/bin]  PostgreSQL 15 to
#               build against and run, e.g. a relocated copy
#   PGBIN       older name of PG_BINDIR, still honoured
#   FLORAL_REPO [parent of bench/]  tree to build and install
#   SKIP_INSTALL [0]  1: do not run make install (measure what is installed)
#   BENCH_PORT  [a free port the kernel picks]  port of the cluster (only
#               names the socket file: listen_addresses is empty)
#   BENCH_RESULTS [bench/results]  where reports go unless told otherwise
#   BENCH_OUT   [$BENCH_RESULTS/<the bench's file name>]  the report file
#   BENCH_REPS  [3]  timed statements run this many times, the best is kept
#   BENCH_KEEP  [0]  1: keep the temporary directory (logs) for inspection

BENCH_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$BENCH_LIB_DIR/../scripts/lib.sh"

# bench_init NAME [REPORT]: sets HERE (bench/), REPO, PG_BINDIR, PGBIN,
# PG_CONFIG, PG_VERSION, RESULTS, REPS, LOG_TAG and WORK (a temporary
# directory, removed at exit together with the cluster in it, unless
# BENCH_KEEP=1); with REPORT, report() writes to $BENCH_OUT, by default the
# file REPORT in $RESULTS.
bench_init() {
    LOG_TAG=$1
    HERE=$BENCH_LIB_DIR
    REPO=${FLORAL_REPO:-$(cd "$HERE/.." && pwd)}
    RESULTS=${BENCH_RESULTS:-$HERE/results}
    PG_BINDIR=${PG_BINDIR:-${PGBIN:-/usr/lib/postgresql/15/bin}}
    PGBIN=$PG_BINDIR
    PG_CONFIG=$PG_BINDIR/pg_config
    [ -x "$PGBIN/postgres" ] || die "no PostgreSQL server in $PGBIN (set PG_BINDIR)"
    PG_VERSION=$("$PGBIN/postgres" --version | awk '{ print $3 }')
    BENCH_DB=${BENCH_DB:-bench}
    REPS=${BENCH_REPS:-3}

    # The rooflines are single-threaded and floral runs inside one backend:
    # keep OpenBLAS from spreading a call over both cores, and from starting
    # idle worker threads in every backend that loads floral (the server is
    # started with this set, and bench_pg_start checks it).
    export OPENBLAS_NUM_THREADS=1

    work_dir "$LOG_TAG" "${BENCH_KEEP:-0}"
    [ -z "${2:-}" ] || bench_report_file "${BENCH_OUT:-$RESULTS/$2}"
}

log() { echo "[${LOG_TAG:-bench}] $*" >&2; }
die() { echo "${LOG_TAG:-bench}: $*" >&2; exit 1; }

# bench_report_file FILE: report lines go to stdout and to FILE (emptied)
bench_report_file() {
    OUT=$1
    mkdir -p "$(dirname "$OUT")"
    : >"$OUT"
}
report() { printf '%s\n' "$*" | tee -a "$OUT"; }
# bench_title NAME: the report's first line
bench_title() { report "floral $1 benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"; }

now() { date +%s.%N; }
# seconds between two `now` stamps, 3 decimals
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# awk arithmetic on shell values: calc 'expr' var=value ...
calc() { local e=$1; shift; awk "$@" "BEGIN { printf \"%s\", $e }"; }
# PASS or FAIL: pass 'awk condition'
pass() { awk "BEGIN { print ($1) ? \"PASS\" : \"FAIL\" }"; }
# bytes -> whole MB
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
# the load average now, as /proc/loadavg ("0.51 0.40 0.33") and as uptime
# prints it ("load average: 0.51, 0.40, 0.33")
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
uptime_load() { uptime | sed 's/.*load average/load average/'; }

# make install from $REPO into the installation of $PG_CONFIG
bench_install() {
    if [ "${SKIP_INSTALL:-0}" = 1 ]; then
        log "SKIP_INSTALL=1: measuring the floral installed in $("$PG_CONFIG" --pkglibdir)"
        return
    fi
    log "make install in $REPO (PG_CONFIG=$PG_CONFIG)"
    if ! make -C "$REPO" PG_CONFIG="$PG_CONFIG" install >"$WORK/make.log" 2>&1; then
        tail -n 40 "$WORK/make.log" >&2
        die "building floral failed (log above)"
    fi
}

# compile bench/sgemm_rate.c to $WORK/sgemm_rate
bench_build_sgemm_rate() {
    local cflags libs
    cflags=$(pkg-config --cflags openblas 2>/dev/null || true)
    libs=$(pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
    # shellcheck disable=SC2086  # flag lists are meant to split
    cc -O2 $cflags "$HERE/sgemm_rate.c" -o "$WORK/sgemm_rate" $libs
}

# --- the cluster -------------------------------------------------------------------
# bench_initdb SHARED_BUFFERS [EXTRA_CONF]: initdb into $WORK/data and write
# its settings; sets PORT.  EXTRA_CONF comes last: a setting in it overrides
# the one above (PostgreSQL keeps the last).
bench_initdb() {
    local shared_buffers=$1 extra=${2:-}
    # Any port works for a socket in our own directory; unless one is given,
    # ask the kernel for an unused one so that nothing listening on it could
    # be confused.
    # shellcheck disable=SC2119  # no range: the kernel picks
    PORT=${BENCH_PORT:-$(free_port)}
    log "initdb + start on port $PORT (socket in $WORK)"
    "${AS_PG[@]}" "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$WORK/initdb.log" 2>&1 \
        || { cat "$WORK/initdb.log" >&2; exit 1; }
    # Bench settings: durability off (nothing here needs to survive a
    # crash), no parallel query and no JIT so that floral and the floors it
    # is compared with run on one core without compile-time noise, no
    # autovacuum firing mid-measurement.  log_temp_files = 0 logs every temp
    # file at its deletion (counted by temp_files_since), in English.
    cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$WORK'
shared_buffers = $shared_buffers
max_wal_size = 16GB
fsync = off
synchronous_commit = off
full_page_writes = off
max_parallel_workers_per_gather = 0
jit = off
autovacuum = off
lc_messages = 'C'
log_line_prefix = '%m [%p] '
log_temp_files = 0
$extra
EOF
}

# bench_pg_start: start the cluster of bench_initdb with OPENBLAS_NUM_THREADS=1
# in its environment (checked in the postmaster's); sets PM_PID
bench_pg_start() {
    local blas_env
    "${AS_PG[@]}" env OPENBLAS_NUM_THREADS=1 "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 120 start >/dev/null \
        || { cat "$WORK/server.log" >&2; exit 1; }
    PM_PID=$(head -n 1 "$WORK/data/postmaster.pid")
    blas_env=$(tr '\0' '\n' <"/proc/$PM_PID/environ" | grep '^OPENBLAS_NUM_THREADS=' || true)
    [ "$blas_env" = "OPENBLAS_NUM_THREADS=1" ] \
        || die "postmaster $PM_PID environment has '${blas_env:-no OPENBLAS_NUM_THREADS}', expected OPENBLAS_NUM_THREADS=1"
}

# bench_start_cluster SHARED_BUFFERS [EXTRA_CONF]: initdb, start, create the
# database $BENCH_DB (bench) with floral in it; sets PORT and PM_PID.
bench_start_cluster() {
    bench_initdb "$@"
    bench_pg_start
    psql_db postgres -c "CREATE DATABASE $BENCH_DB"
    psql_ -c 'CREATE EXTENSION floral'
}

psql_db() {
    local db=$1; shift
    "${AS_PG[@]}" "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -d "$db" "$@"
}
psql_() { psql_db "$BENCH_DB" "$@"; }
# one value from a query
q() { psql_ -At -c "$1"; }

# bench_timing_setup: TIMING_SETUP is 'SET floral.timing = on;' when this
# build has the floral.timing GUC (a NOTICE splitting a call's time into
# reading the source and the rest), else empty.  The library must be loaded
# for its GUCs to show.
bench_timing_setup() {
    TIMING_SETUP=''
    if [ "$(psql_ -At -c "LOAD 'floral'" -c "SELECT count(*) FROM pg_settings WHERE name = 'floral.timing'")" = 1 ]; then
        TIMING_SETUP="SET floral.timing = on;"
    fi
}

# --- timing --------------------------------------------------------------------------
# psql prints "Time: 123.456 ms" after each statement under \timing; this
# keeps the smallest, in seconds (of FILE, or of stdin).
best_time() { awk '/^Time: / { ms = $2 + 0; if (best == "" || ms < best) best = ms }
                   END { if (best == "") exit 1; printf "%.4f", best / 1000 }' "${1:--}"; }
# every "Time:" of FILE in seconds, 3 decimals, space-separated
run_times() { awk '/^Time: / { printf "%s%.3f", sep, $2 / 1000; sep = " " }' "$1"; }
# fastest_split PREFIX: "<read s> <computed s>" of the fastest statement in
# PREFIX.out, from the floral.timing NOTICEs in PREFIX.err (the i-th "Time:"
# line and the i-th NOTICE belong to the same statement); empty without them
fastest_split() {
    paste -d ' ' <(awk '/^Time: / { print $2 }' "$1.out") \
                 <(grep -o -E 'read [0-9.]+ s, computed [0-9.]+ s' "$1.err" | awk '{ print $2, $5 }') \
        | awk 'NF == 3 && (b == "" || $1 + 0 < b) { b = $1 + 0; r = $2; c = $3 } END { if (b != "") print r, c }'
}

# Sections of one psql script: section_mark NAME [SETUP] prints the psql lines
# that start a section (a "MARK NAME" line in the output, SETUP untimed,
# \timing on); timed_section NAME STATEMENT [SETUP] adds STATEMENT $REPS
# times.  Output off (\o /dev/null) but for the marks.
section_mark() { printf '%s\n' '\timing off' '\o' "\\echo MARK $1" '\o /dev/null' "${2:-}" '\timing on'; }
timed_section() {
    local i
    section_mark "$1" "${3:-}"
    for ((i = 0; i < REPS; i++)); do printf '%s\n' "$2"; done
}
# section_lines FILE NAME: the output lines of section NAME
section_lines() { awk -v k="MARK $2" '/^MARK / { on = ($0 == k); next } on' "$1"; }
# section_best FILE NAME: best seconds of section NAME
section_best() { section_lines "$1" "$2" | best_time; }

# time_sql FILE_PREFIX SETUP_SQL STATEMENT: run STATEMENT $REPS times in one
# session after SETUP_SQL, result rows discarded; echoes the best seconds.
time_sql() {
    local f=$1
    timed_section t "$3" "$2" | psql_ -f - >"$f.out" 2>"$f.err" || { cat "$f.err" >&2; return 1; }
    best_time "$f.out"
}

# Server log lines written from now on (for counting temp files).
log_mark() { stat -c %s "$WORK/server.log"; }
# log_since MARK: the server log written since MARK
log_since() { tail -c +"$(($1 + 1))" "$WORK/server.log"; }
# temp_files_since MARK: "<files> <bytes>" logged by log_temp_files since MARK
temp_files_since() {
    log_since "$1" \
        | awk '/temporary file: path/ { n++; for (i = 1; i < NF; i++) if ($i == "size") b += $(i + 1) }
               END { printf "%d %d", n, b }'
}

# --- Fashion-MNIST tables ------------------------------------------------------
# bench_fmnist [ROWS [TENANTS]]: the benchmarks' model and data: LAYERS
# 784-200-10, TRAIN_OPTS one epoch of batch 32 at lr 0.1, ROWS training
# images (all 60,000) in TENANTS (1) tenants
bench_fmnist() {
    ROWS=${1:-60000}
    TENANTS=${2:-1}
    LAYERS='{784,200,10}'
    TRAIN_OPTS='{"epochs":1,"batch_size":32,"lr":0.1}'
}

# The COPY text of a tenant count is generated once into a file, then COPYed
# into each table that needs it: every table compresses its own datums
# (INSERT ... SELECT from another table would keep that table's compressed
# datums as they are).

# gen_copy TENANTS FILE [load_fashion_mnist.py options]: COPY text of
# $ROWS training images -> sets GEN_S
gen_copy() {
    local tenants=$1 file=$2 t0
    shift 2
    t0=$(now)
    /usr/bin/python3 "$HERE/load_fashion_mnist.py" --split train --tenants "$tenants" --limit "$ROWS" "$@" >"$file"
    GEN_S=$(elapsed "$t0" "$(now)")
}

# load_table TABLE COMPRESSION FILE [ROWS]: (id, tenant, features, label),
# COMPRESSION default leaves the column at default_toast_compression (pglz,
# what a user gets) -> sets COPY_S, INDEX_S
load_table() {
    local t=$1 comp=$2 file=$3 want=${4:-$ROWS} t0 t1 t2 n clause=''
    [ "$comp" = default ] || clause="COMPRESSION $comp"
    psql_ -c 'SET client_min_messages = warning' -c "DROP TABLE IF EXISTS $t" \
          -c "CREATE TABLE $t (id int PRIMARY KEY, tenant text, features real[] $clause, label int)"
    t0=$(now)
    psql_ -c "COPY $t FROM STDIN" <"$file"
    t1=$(now)
    # statistics, and hint bits set so that the first timed scan does not
    # pay for writing them
    psql_ -c "VACUUM (ANALYZE) $t"
    t2=$(now)
    COPY_S=$(elapsed "$t0" "$t1")
    INDEX_S=$(elapsed "$t1" "$t2")
    n=$(q "SELECT count(*) FROM $t")
    [ "$n" = "$want" ] || die "$t: loaded $n rows, expected $want"
}

# check_compression TABLE METHOD -> sets COMP_FIRST, COMP_DIST; dies unless
# the first row's features use METHOD and no row uses another method (rows
# too small to compress, or that did not compress, report NULL: 'none')
check_compression() {
    local t=$1 want=$2 other
    COMP_FIRST=$(q "SELECT coalesce(pg_column_compression(features), 'none') FROM $t LIMIT 1")
    COMP_DIST=$(q "SELECT string_agg(m || ' ' || n, ', ' ORDER BY n DESC)
                     FROM (SELECT coalesce(pg_column_compression(features), 'none') AS m, count(*) AS n
                             FROM $t GROUP BY 1) s")
    other=$(q "SELECT count(*) FROM $t WHERE pg_column_compression(features) <> '$want'")
    if [ "$COMP_FIRST" != "$want" ] || [ "$other" != 0 ]; then
        die "$t: features compression is '$COMP_FIRST' on the first row ($COMP_DIST), expected $want"
    fi
}

# fmnist_table TABLE: TABLE with $ROWS training images in $TENANTS tenants
# (tenant = id mod TENANTS), features lz4 (checked)
fmnist_table() {
    log "loading $ROWS rows, $TENANTS tenants"
    gen_copy "$TENANTS" "$WORK/copy.txt"
    load_table "$1" lz4 "$WORK/copy.txt"
    check_compression "$1" lz4
}

table_sizes() {
    q "SELECT pg_size_pretty(pg_relation_size('$1')) || ' heap, ' ||
              pg_size_pretty(pg_total_relation_size('$1') - pg_relation_size('$1')
                             - pg_indexes_size('$1')) || ' toast, ' ||
              pg_size_pretty(pg_indexes_size('$1')) || ' index; features avg ' ||
              round(avg(pg_column_size(features))) || ' bytes stored'
         FROM $1"
}

# train_round MODEL TABLE ADAPTORS RANK OPTIONS [SETUP]: one session runs
# SETUP, floral_create_model(MODEL, $LAYERS, 'classification', ADAPTORS,
# RANK, OPTIONS), one floral_train over TABLE's (tenant, features, label)
# with $TRAIN_OPTS and floral_aggregate; output in $WORK/MODEL.out and
# .err; sets ROUND_S (wall seconds) and ROUND_SUMMARY ("tenants=N
# examples=N loss=X" of the training).
train_round() {
    local m=$1 table=$2 adaptors=$3 rank=$4 opts=$5 setup=${6:-} t0
    t0=$(now)
    psql_ -At -F ' ' >"$WORK/$m.out" 2>"$WORK/$m.err" <<EOF || { cat "$WORK/$m.err" >&2; exit 1; }
$setup
SELECT floral_create_model('$m', '$LAYERS', 'classification', $adaptors, $rank, '$opts');
SELECT count(*), sum(examples), round(avg(loss)::numeric, 4)
  FROM floral_train('$m', 'SELECT tenant, features, label FROM $table', '$TRAIN_OPTS');
SELECT floral_aggregate('$m');
EOF
    ROUND_S=$(elapsed "$t0" "$(now)")
    ROUND_SUMMARY=$(awk 'NF == 3 { print "tenants=" $1 " examples=" $2 " loss=" $3; exit }' "$WORK/$m.out")
}

# --- facts about the machine and the build ----------------------------------------
# bench_git_rev NOTE PATHSPEC...: GIT_REV is the short commit of $REPO ("no
# commit" outside git), followed by NOTE when a file of PATHSPEC has
# uncommitted changes; a %s in NOTE is replaced by those files' names.
bench_git_rev() {
    local note=$1 dirty
    shift
    GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no commit")
    dirty=$(git -C "$REPO" status --porcelain -- "$@" 2>/dev/null | awk '{ printf "%s%s", sep, $2; sep = " " }' || true)
    # shellcheck disable=SC2059  # NOTE is the format
    [ -z "$dirty" ] || GIT_REV="$GIT_REV$(printf "$note" "$dirty")"
}

# total memory of the machine, "N GB"
mem_total() { awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo; }

# bench_facts: sets CPU, SIMD, BLAS_PKGS, FLORAL_BLAS, GIT_REV, LOAD_START
bench_facts() {
    CPU=$(lscpu 2>/dev/null | awk -F: '/^Model name/ { sub(/^[ \t]+/, "", $2); print $2; exit }')
    [ -n "$CPU" ] || CPU=$(awk -F: '/^model name/ { sub(/^[ \t]+/, "", $2); print $2; exit }' /proc/cpuinfo)
    SIMD=$(grep -o -w -E 'avx512f|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
    BLAS_PKGS=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' 'libopenblas0*' 2>/dev/null \
                | awk '$1 == "ii" { printf "%s%s %s", sep, $2, $3; sep = "; " }' || true)
    FLORAL_BLAS=$(ldd "$("$PG_CONFIG" --pkglibdir)/floral.so" 2>/dev/null | awk '/blas/ { print $3; exit }')
    [ -n "$FLORAL_BLAS" ] && FLORAL_BLAS=$(readlink -f "$FLORAL_BLAS")
    # (bench/results is left out: this run's own report is already there)
    bench_git_rev ' (+ uncommitted changes)' . ':(exclude)bench/results'
    LOAD_START=$(loadavg)
}

# --- a backend's memory during one statement -------------------------------------
kb() { awk -v k="$1:" '$1 == k { print $2 }' "$2"; }
mb() { awk -v v="$1" 'BEGIN { if (v == "") print "-"; else printf "%.1f", v / 1024 }'; }

# measure LABEL MWM SQL: run SQL in a fresh session (a backend's VmHWM is a
# peak over its whole life) with maintenance_work_mem = MWM; sets (kB)
#   M_HWM     VmHWM of the backend, read by the backend itself right after SQL
#   M_SHMEM   RssShmem at that moment (shared buffers it touched)
#   M_ANONPK  the largest RssAnon (private heap) seen by polling the
#             backend's /proc status every 20 ms from outside during SQL
# and M_SECONDS (SQL's wall time), M_TEMP (bytes of temporary files written);
# for the report, in MB: M_HWM_MB, M_SHMEM_MB, M_PRIV_MB (VmHWM - RssShmem),
# M_ANON_MB and M_TEMP_MB (whole MB).  SQL's output is in $WORK/out.LABEL.
measure() {
    local label=$1 mwm=$2 sql=$3 pidf="$WORK/pid.$1" statf="$WORK/status.$1" outf="$WORK/out.$1"
    : >"$pidf"; chown postgres: "$pidf" 2>/dev/null || true
    local mark; mark=$(log_mark)
    {
        printf '%s\n' "SET maintenance_work_mem = '$mwm';" \
            "\\o $pidf" "SELECT pg_backend_pid();" "\\o" \
            "SELECT pg_sleep(0.2);" \
            "SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset" \
            "$sql" \
            "SELECT 'seconds', round((extract(epoch FROM clock_timestamp()) - :t0)::numeric, 2);" \
            "SELECT 'status', pg_read_file('/proc/self/status');"
    } | psql_ -At -F ' ' -f - >"$outf" 2>"$outf.err" &
    local client=$!
    local pid="" anon=0 a
    while kill -0 "$client" 2>/dev/null; do
        [ -z "$pid" ] && pid=$(tr -dc '0-9' <"$pidf" 2>/dev/null || true)
        if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
            a=$(awk '$1 == "RssAnon:" { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
            [ -n "$a" ] && [ "$a" -gt "$anon" ] && anon=$a
        fi
        sleep 0.02
    done
    wait "$client" || { cat "$outf.err" >&2; exit 1; }
    sed -n '/^status /,$p' "$outf" | sed 's/^status //' >"$statf"
    M_HWM=$(kb VmHWM "$statf"); M_SHMEM=$(kb RssShmem "$statf"); M_ANONPK=$anon
    M_SECONDS=$(awk '$1 == "seconds" { print $2 }' "$outf")
    M_TEMP=$(temp_files_since "$mark" | awk '{ print $2 }')
    M_HWM_MB=$(mb "$M_HWM"); M_SHMEM_MB=$(mb "$M_SHMEM"); M_PRIV_MB=$(mb $((M_HWM - M_SHMEM)))
    M_ANON_MB=$(mb "$M_ANONPK"); M_TEMP_MB=$(mib "$M_TEMP")
}
