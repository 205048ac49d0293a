#!/usr/bin/env bash
# bench/run.sh: floral speed benchmark on Fashion-MNIST (60,000 train images).
#
# Measures, in one run on one machine:
#   a. load time of the table
#   b. the scan floor: reading every feature array once
#   c. floral_train throughput, one tenant with all rows, 784-200-10, batch 32,
#      1 epoch, without adaptors and with 4 adaptors of rank 0.01
#   d. the single-thread OpenBLAS roofline for that training (bench/sgemm_rate.c)
#      and the fraction of it floral reaches
#   e. floral_predict over 300 tenants against the scan floor (goal <= 6x)
# and writes the report to bench/results/speed-<date>.txt as well as stdout.
#
# Run as root (it starts PostgreSQL as the postgres user) after
# `bash scripts/install-deps.sh`:   bash bench/run.sh
# It always runs `make install` from the repository root first, so the
# benchmark measures the code in this tree.
#
# Environment knobs (defaults in brackets):
#   BENCH_REPS  [3]      repetitions of each timed statement, best is reported
#   BENCH_ROWS  [60000]  rows to load, smaller for a quick smoke run
#   BENCH_OUT   [bench/results/speed-<date>.txt]  report file
#   FLORAL_REPO [parent of bench/]  tree to build and install
#   PGBIN       [/usr/lib/postgresql/15/bin]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${FLORAL_REPO:-$(cd "$HERE/.." && pwd)}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PGBIN/pg_config
REPS=${BENCH_REPS:-3}
ROWS=${BENCH_ROWS:-60000}
STAMP=$(date +%Y-%m-%d-%H%M%S)
OUT=${BENCH_OUT:-$HERE/results/speed-$STAMP.txt}
PREDICT_TENANTS=300
LAYERS='{784,200,10}'
TRAIN_OPTS='{"epochs":1,"batch_size":32,"lr":0.1}'
BATCH=32

# The roofline is single-threaded, and floral runs inside one backend:
# keep OpenBLAS from spreading a call over both cores (in sgemm_rate and in
# the postmaster's children, which inherit this environment).
export OPENBLAS_NUM_THREADS=1

# PostgreSQL refuses to run as root: run the server and psql as postgres.
if [ "$(id -u)" -eq 0 ]; then
    AS_PG=(runuser -u postgres --)
else
    AS_PG=()
fi

log() { echo "[bench] $*" >&2; }
# report lines go to stdout and to the report file
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
report() { printf '%s\n' "$*" | tee -a "$OUT"; }
now() { date +%s.%N; }
# seconds between two `now` stamps, 3 decimals
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# awk arithmetic on shell values: calc 'expr' var=value ...
calc() { local e=$1; shift; awk "$@" "BEGIN { printf \"%s\", $e }"; }

# --- temporary cluster, always stopped and removed at exit -------------------
WORK=$(mktemp -d /tmp/floral-bench.XXXXXX)
chown postgres: "$WORK" 2>/dev/null || true
chmod 755 "$WORK"
cleanup() {
    if [ -f "$WORK/data/postmaster.pid" ]; then
        "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build and install floral from this tree ---------------------------------
log "make install in $REPO"
if ! make -C "$REPO" PG_CONFIG="$PG_CONFIG" install >"$WORK/make.log" 2>&1; then
    tail -n 40 "$WORK/make.log" >&2
    echo "bench: building floral failed (log above)" >&2
    exit 1
fi

# --- single-thread OpenBLAS rates (before the server starts: idle machine) ---
log "building and running sgemm_rate"
BLAS_CFLAGS=$(pkg-config --cflags openblas 2>/dev/null || true)
BLAS_LIBS=$(pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
# shellcheck disable=SC2086  # flag lists are meant to split
cc -O2 $BLAS_CFLAGS "$HERE/sgemm_rate.c" -o "$WORK/sgemm_rate" $BLAS_LIBS
"$WORK/sgemm_rate" all --batch "$BATCH" > "$WORK/sgemm.txt"
rate() { awk -v k="$1" '$1 == k { print $2 }' "$WORK/sgemm.txt"; }
ROOF_TRAIN_PER_SAMPLE=$(rate roofline_seconds_per_sample)
ROOF_PRED_PER_SAMPLE=$(rate roofline_predict_seconds_per_sample)

# --- start PostgreSQL ---------------------------------------------------------
# Any port works for a socket in our own directory; ask the kernel for an
# unused one anyway so that nothing else listening on it could be confused.
PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "initdb + start on port $PORT (socket in $WORK)"
"${AS_PG[@]}" "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log" >&2; exit 1; }
# Bench settings: durability off (nothing here needs to survive a crash), no
# parallel query and no JIT so that the scan floor and floral both run on one
# core without compile-time noise, no autovacuum firing mid-measurement.
cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$WORK'
shared_buffers = 512MB
max_wal_size = 16GB
fsync = off
synchronous_commit = off
full_page_writes = off
max_parallel_workers_per_gather = 0
jit = off
autovacuum = off
EOF
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 120 start >/dev/null \
    || { cat "$WORK/server.log" >&2; exit 1; }

psql_db() {
    local db=$1; shift
    "${AS_PG[@]}" "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -d "$db" "$@"
}
psql_() { psql_db bench "$@"; }
# one value from a query
q() { psql_ -At -c "$1"; }

psql_db postgres -c 'CREATE DATABASE bench'
psql_ -c 'CREATE EXTENSION floral'

# psql prints "Time: 123.456 ms" after each statement under \timing; this
# keeps the smallest, in seconds.
best_time() { awk '/^Time: / { ms = $2 + 0; if (best == "" || ms < best) best = ms }
                   END { if (best == "") exit 1; printf "%.4f", best / 1000 }' "$1"; }

# time_sql FILE_PREFIX SETUP_SQL STATEMENT: run STATEMENT $REPS times in one
# session after SETUP_SQL, result rows discarded; echoes the best seconds.
time_sql() {
    local f=$1 setup=$2 stmt=$3 i
    {
        printf '%s\n' "$setup" '\o /dev/null' '\timing on'
        for ((i = 0; i < REPS; i++)); do printf '%s\n' "$stmt"; done
    } | psql_ -f - >"$f.out" 2>"$f.err" || { cat "$f.err" >&2; return 1; }
    best_time "$f.out"
}

# Does this build have the floral.timing GUC (a NOTICE splitting source read
# from training time)?  The library must be loaded for its GUCs to show.
TIMING_SETUP=''
if [ "$(psql_ -At -c "LOAD 'floral'" -c "SELECT count(*) FROM pg_settings WHERE name = 'floral.timing'")" = 1 ]; then
    TIMING_SETUP="SET floral.timing = on;"
fi

# --- facts --------------------------------------------------------------------
CPU=$(lscpu 2>/dev/null | awk -F: '/^Model name/ { sub(/^[ \t]+/, "", $2); print $2; exit }')
[ -n "$CPU" ] || CPU=$(awk -F: '/^model name/ { sub(/^[ \t]+/, "", $2); print $2; exit }' /proc/cpuinfo)
SIMD=$(grep -o -w -E 'avx512f|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
BLAS_PKGS=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' 'libopenblas0*' 2>/dev/null \
            | awk '$1 == "ii" { printf "%s%s %s", sep, $2, $3; sep = "; " }' || true)
FLORAL_SO="$("$PG_CONFIG" --pkglibdir)/floral.so"
FLORAL_BLAS=$(ldd "$FLORAL_SO" 2>/dev/null | awk '/blas/ { print $3; exit }')
[ -n "$FLORAL_BLAS" ] && FLORAL_BLAS=$(readlink -f "$FLORAL_BLAS")
GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no commit")
if [ -n "$(git -C "$REPO" status --porcelain 2>/dev/null | head -n 1)" ]; then GIT_REV="$GIT_REV (+ uncommitted changes)"; fi

report "floral speed benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
report "tree:        $REPO @ $GIT_REV"
report "cpu:         $CPU ($(nproc) cores online; ${SIMD:-no avx2/avx512})"
report "kernel:      $(uname -sr); load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews timings)"
report "postgresql:  $(q 'SELECT version()')"
report "openblas:    ${BLAS_PKGS:-unknown}; core $(rate corename); floral.so -> ${FLORAL_BLAS:-?}"
report "settings:    OPENBLAS_NUM_THREADS=1, shared_buffers=512MB, fsync=off, synchronous_commit=off,"
report "             full_page_writes=off (bench only), max_parallel_workers_per_gather=0, jit=off, autovacuum=off"
BLAS_THREADS_GUC=$(psql_ -At -c "LOAD 'floral'" -c "SELECT coalesce(max(setting), 'n/a') FROM pg_settings WHERE name = 'floral.blas_threads'")
report "             floral.blas_threads=$BLAS_THREADS_GUC"
report "timing:      best of $REPS for every timed statement; psql \\timing, includes client round trip"
report ""

# --- a. load ------------------------------------------------------------------
load_table() {   # load_table TENANTS: (re)create fmnist with ROWS train images
    local tenants=$1 t0 t1 t2
    psql_ -c 'SET client_min_messages = warning' -c 'DROP TABLE IF EXISTS fmnist' \
          -c 'CREATE TABLE fmnist (id int, tenant text, features real[], label int)'
    t0=$(now)
    /usr/bin/python3 "$HERE/load_fashion_mnist.py" --split train --tenants "$tenants" --limit "$ROWS" \
        | psql_ -c 'COPY fmnist FROM STDIN'
    t1=$(now)
    # key and statistics after the bulk load (cheaper than maintaining the
    # index row by row); VACUUM also sets hint bits so that the first timed
    # scan does not pay for writing them.
    psql_ -c 'ALTER TABLE fmnist ADD PRIMARY KEY (id)' -c 'VACUUM (ANALYZE) fmnist'
    t2=$(now)
    LOAD_COPY=$(elapsed "$t0" "$t1")
    LOAD_INDEX=$(elapsed "$t1" "$t2")
    local n
    n=$(q 'SELECT count(*) FROM fmnist')
    [ "$n" = "$ROWS" ] || { echo "bench: loaded $n rows, expected $ROWS" >&2; exit 1; }
}

log "loading $ROWS rows, 1 tenant"
t0=$(now)
/usr/bin/python3 "$HERE/load_fashion_mnist.py" --split train --limit "$ROWS" >/dev/null
GEN_ONLY=$(elapsed "$t0" "$(now)")
load_table 1
SIZES=$(q "SELECT pg_size_pretty(pg_relation_size('fmnist')) || ' heap, ' ||
                  pg_size_pretty(pg_total_relation_size('fmnist') - pg_relation_size('fmnist')
                                 - pg_indexes_size('fmnist')) || ' toast, ' ||
                  pg_size_pretty(pg_indexes_size('fmnist')) || ' index'")
report "a. load ($ROWS rows, 784 real each; $SIZES)"
report "   generate + COPY:          $LOAD_COPY s   (text generation alone: $GEN_ONLY s)"
report "   primary key + VACUUM ANALYZE: $LOAD_INDEX s"
report ""

# --- b. scan floor --------------------------------------------------------------
log "scan floor"
SCAN=$(time_sql "$WORK/scan" '' 'SELECT count(*), sum(cardinality(features)) FROM fmnist;')
report "b. scan floor: SELECT count(*), sum(cardinality(features)) FROM fmnist"
report "   $SCAN s  ($(calc 'r / s' -v r="$ROWS" -v s="$SCAN" | awk '{ printf "%.0f", $1 }') rows/s)"
report ""

# --- c. training throughput -------------------------------------------------------
# One session per configuration: create, train one epoch (timed), drop; repeated.
train_bench() {   # train_bench NAME ADAPTORS [SETUP_SQL] -> sets TRAIN_BEST, TRAIN_SUMMARY, TRAIN_NOTICES
    local name=$1 adaptors=$2 setup=${3:-} i f="$WORK/train-$1"
    {
        printf '%s\n' "LOAD 'floral';" "$TIMING_SETUP" "$setup"
        for ((i = 0; i < REPS; i++)); do
            printf '%s\n' "SELECT floral_create_model('$name', '$LAYERS', 'classification', $adaptors, 0.01, '{\"seed\":1}');" \
                '\timing on' \
                "SELECT count(*) AS tenants, sum(examples) AS examples, round(avg(loss)::numeric, 4) AS loss
                   FROM floral_train('$name', 'SELECT tenant, features, label FROM fmnist', '$TRAIN_OPTS');" \
                '\timing off' \
                "SELECT floral_drop_model('$name');"
        done
    } | psql_ -At -F ' ' -f - >"$f.out" 2>"$f.err" || { cat "$f.err" >&2; exit 1; }
    TRAIN_BEST=$(best_time "$f.out")
    # lines "tenants examples loss" of the training queries (create/drop return void: empty lines)
    TRAIN_SUMMARY=$(awk 'NF == 3 && $1 ~ /^[0-9]+$/ { print "tenants=" $1 " examples=" $2 " loss=" $3; exit }' "$f.out")
    TRAIN_NOTICES=$(grep -E 'NOTICE|WARNING' "$f.err" | sed -E 's/^psql:[^ ]* //' | sort | uniq -c | sed 's/^ */      /' || true)
}

report "c. floral_train, 1 tenant x $ROWS rows, model 784-200-10, $TRAIN_OPTS"
# The third configuration repeats adaptors=0 with enough work_mem to keep the
# rows in memory (floral spills its copy of the source beyond work_mem): it
# shows what the default 4MB costs.
declare -A TRAIN_T
# key|adaptors|label suffix|session setup
CONFIGS=("a0|0||" "a4|4||" "a0_wm|0| work_mem=256MB|SET work_mem = '256MB';")
declare -A TRAIN_COMPUTE
for cfg in "${CONFIGS[@]}"; do
    IFS='|' read -r key adaptors suffix setup <<<"$cfg"
    label="adaptors=$adaptors rank=0.01$suffix"
    log "training, $label"
    train_bench "bench_$key" "$adaptors" "$setup"
    TRAIN_T[$key]=$TRAIN_BEST
    # smallest "computed X s" of floral.timing's notices, if it printed them
    TRAIN_COMPUTE[$key]=$(grep -o -E 'computed [0-9.]+ s' <<<"$TRAIN_NOTICES" | awk '{ if (b == "" || $2 < b) b = $2 } END { print b }')
    report "   $label: $TRAIN_BEST s = $(calc 'r / t' -v r="$ROWS" -v t="$TRAIN_BEST" | awk '{ printf "%.0f", $1 }') samples/s  ($TRAIN_SUMMARY)"
    if [ -n "$TRAIN_NOTICES" ]; then
        report "     notices (count, message):"
        report "$TRAIN_NOTICES"
    fi
done
[ -n "$TIMING_SETUP" ] || report "   (floral.timing GUC not present in this build: no read/train split)"
report ""

# --- d. roofline ----------------------------------------------------------------------
ROOF_TRAIN=$(calc 'p * r' -v p="$ROOF_TRAIN_PER_SAMPLE" -v r="$ROWS")
report "d. single-thread OpenBLAS roofline (bench/sgemm_rate.c, best of 5 x ~0.2 s per shape)"
report "   shape    M    N    K        flops   s/call       GFLOP/s"
awk '$1 == "shape" { printf "   %-5s %4d %4d %4d %12d   %.3e   %6.1f\n", $2, $3, $4, $5, $6, $7, $8 }' "$WORK/sgemm.txt" | tee -a "$OUT"
report "   train FLOPs/sample (base GEMMs): $(rate flops_per_sample_train); roofline $ROOF_TRAIN_PER_SAMPLE s/sample, $ROOF_TRAIN s for $ROWS samples"
report "   (counts the base model's GEMMs only: bias, activation, softmax, SGD update and the"
report "    adaptors are left out; 4 rank-1 adaptors would add ~4% FLOPs at these shapes)"
report ""
report "   config                      measured_s  samples/s  roofline_s  fraction  excl_scan  of_compute"
for cfg in "${CONFIGS[@]}"; do
    IFS='|' read -r key adaptors suffix setup <<<"$cfg"
    awk -v t="${TRAIN_T[$key]}" -v r="$ROWS" -v rf="$ROOF_TRAIN" -v s="$SCAN" -v c="${TRAIN_COMPUTE[$key]}" \
        -v l="adaptors=$adaptors$suffix" 'BEGIN {
        ex = (t > s) ? sprintf("%.3f", rf / (t - s)) : "n/a";
        oc = (c > 0) ? sprintf("%.3f", rf / c) : "n/a";
        printf "   %-26s  %10.3f  %9.0f  %10.3f  %8.3f  %9s  %10s\n", l, t, r / t, rf, rf / t, ex, oc }' | tee -a "$OUT"
done
report "   fraction = roofline_s / measured_s; excl_scan = roofline_s / (measured_s - scan floor b);"
report "   of_compute = roofline_s / the smallest 'computed' time of floral.timing's notice (n/a without it)"
report ""

# --- e. prediction ------------------------------------------------------------------------
log "reloading with $PREDICT_TENANTS tenants"
load_table "$PREDICT_TENANTS"
log "training model m (4 adaptors) 1 round + aggregate"
t0=$(now)
psql_ -At -F ' ' >"$WORK/m.out" 2>"$WORK/m.err" <<EOF || { cat "$WORK/m.err" >&2; exit 1; }
LOAD 'floral';
$TIMING_SETUP
SELECT floral_create_model('m', '$LAYERS', 'classification', 4, 0.01, '{"seed":1}');
SELECT count(*), sum(examples), round(avg(loss)::numeric, 4)
  FROM floral_train('m', 'SELECT tenant, features, label FROM fmnist', '$TRAIN_OPTS');
SELECT floral_aggregate('m');
EOF
M_TRAIN=$(elapsed "$t0" "$(now)")
M_SUMMARY=$(awk 'NF == 3 { print "tenants=" $1 " examples=" $2 " loss=" $3; exit }' "$WORK/m.out")

log "timing predict and scan floor"
# Same session for both, so that floral's per-backend model cache is warm
# after the first predict pass; best of REPS each.
{
    printf '%s\n' '\o /dev/null' '\timing on'
    for ((i = 0; i < REPS; i++)); do printf '%s\n' 'SELECT sum(cardinality(features)) FROM fmnist;'; done
    printf '%s\n' '\timing off' '\o' '\echo PREDICT' '\o /dev/null' '\timing on'
    for ((i = 0; i < REPS; i++)); do printf '%s\n' "SELECT sum(floral_predict('m', tenant, features)) FROM fmnist;"; done
} | psql_ -f - >"$WORK/pred.out" 2>"$WORK/pred.err" || { cat "$WORK/pred.err" >&2; exit 1; }
sed -n '1,/^PREDICT$/p' "$WORK/pred.out" >"$WORK/pred-scan.out"
sed -n '/^PREDICT$/,$p' "$WORK/pred.out" >"$WORK/pred-pred.out"
P_SCAN=$(best_time "$WORK/pred-scan.out")
P_PRED=$(best_time "$WORK/pred-pred.out")
ROOF_PRED=$(calc 'p * r' -v p="$ROOF_PRED_PER_SAMPLE" -v r="$ROWS")
RATIO=$(calc 'p / s' -v p="$P_PRED" -v s="$P_SCAN")
report "e. floral_predict, $ROWS rows over $PREDICT_TENANTS tenants (tenant changes every row)"
report "   model m: 4 adaptors rank 0.01, 1 round of floral_train + floral_aggregate in $M_TRAIN s ($M_SUMMARY)"
M_NOTICES=$(grep -E 'NOTICE|WARNING' "$WORK/m.err" | sed -E 's/^(psql:[^ ]* )?/      /' || true)
[ -z "$M_NOTICES" ] || report "$M_NOTICES"
report "   scan floor  SELECT sum(cardinality(features)) FROM fmnist:           $P_SCAN s"
report "   predict     SELECT sum(floral_predict('m', tenant, features)) FROM fmnist: $P_PRED s ($(calc '1e6 * p / r' -v p="$P_PRED" -v r="$ROWS" | awk '{ printf "%.1f", $1 }') us/row)"
report "   ratio predict / scan floor: $(awk -v x="$RATIO" 'BEGIN { printf "%.2f", x }')x  (goal <= 6x: $(awk -v x="$RATIO" 'BEGIN { print (x <= 6) ? "met" : "NOT met" }'))"
report "   sgemv roofline (base 784-200-10 only): $ROOF_PRED_PER_SAMPLE s/row, $ROOF_PRED s for $ROWS rows"
report "   $(awk '$1 == "gemv" { printf "%s %dx%d %.1f GFLOP/s; ", $2, $3, $4, $7 }' "$WORK/sgemm.txt")"
report ""
report "report written to $OUT"
