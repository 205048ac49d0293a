#!/usr/bin/env bash
# bench/memory.sh: a backend's peak memory during floral_train on millions of
# rows and during floral_aggregate of many large contributions.
#
# A throw-away PostgreSQL 15 cluster (as postgres, own port, unix socket in a
# temp dir, stopped and removed at exit; shared_buffers 128MB).
#
#   train      BIG_ROWS (3,000,000) rows of 32 features in 10 tenants,
#              generated in SQL; model 32-64-4 (4 adaptors, rank 0.1), one
#              epoch, batch 32.  Sources of 1,000,000 and 3,000,000 rows, each
#              with maintenance_work_mem 64MB and 512MB.  floral keeps rows in
#              memory up to maintenance_work_mem and spills the rest to a
#              temporary file, so the peak should be about
#              min(rows' size, maintenance_work_mem) + a small constant, not
#              proportional to the rows.
#   aggregate  a model of about 1M parameters (1000-1000-10, 4 adaptors,
#              rank 0.01); 50, then 200 tenants (2 rows each) trained in a
#              round, then floral_aggregate: its peak must not grow with the
#              number of contributions (they are streamed through a cursor).
#
# Every measured call runs in a fresh session (a backend's VmHWM is a peak
# over its whole life).  Reported per call:
#   VmHWM       peak resident set of the backend (from /proc/<pid>/status,
#               read by the backend itself right after the call); it includes
#               the shared-buffer pages the backend touched (RssShmem)
#   RssShmem    shared memory resident at the end (shared buffers touched)
#   HWM-shmem   VmHWM minus RssShmem at the end: roughly the private peak
#   RssAnon pk  the largest RssAnon (private heap) seen by polling the
#               backend's /proc status every 20 ms from outside during the call
#   temp        temporary file bytes the call wrote (log_temp_files = 0)
#
# Run as root:  bash bench/memory.sh
# Knobs: BIG_ROWS [3000000], SMALL_ROWS [1000000], AGG_COUNTS ["50 200"],
#   BENCH_OUT [bench/results/memory-<date>.txt], SKIP_INSTALL [0],
#   PG_BINDIR (or PGBIN), BENCH_PORT.
# The cluster scaffolding and `measure` are shared with the other benches:
# bench/lib.sh.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init memory "memory-$(date +%Y-%m-%d).txt"
BIG_ROWS=${BIG_ROWS:-3000000}
SMALL_ROWS=${SMALL_ROWS:-1000000}
AGG_COUNTS=${AGG_COUNTS:-"50 200"}

bench_install
bench_start_cluster 128MB

# measure LABEL MWM SQL (bench/lib.sh) sets M_HWM M_SHMEM M_ANONPK (kB),
# M_SECONDS, M_TEMP (bytes) and their M_*_MB
row() {    # row LABEL MWM: one table line from the last measure
    printf '  %-34s %7s %9s %9s %9s %10s %9s %8s\n' "$1" "$2" "$M_HWM_MB" "$M_SHMEM_MB" \
        "$M_PRIV_MB" "$M_ANON_MB" "$M_TEMP_MB" "$M_SECONDS" | tee -a "$OUT"
}
header() {
    printf '  %-34s %7s %9s %9s %9s %10s %9s %8s\n' "$1" "mwm" "VmHWM" "RssShmem" "HWM-shmem" "RssAnon pk" "temp" "seconds" | tee -a "$OUT"
    printf '  %-34s %7s %9s %9s %9s %10s %9s %8s\n' "" "" "MB" "MB" "MB" "MB" "MB" "" | tee -a "$OUT"
}

bench_git_rev ' (+ uncommitted changes in %s)' src floral.c floral--1.0.sql
bench_title memory
report "tree:      $REPO @ $GIT_REV"
report "machine:   $(nproc) cores, $(mem_total); load: $(uptime_load)"
report "server:    PostgreSQL $PG_VERSION, shared_buffers 128MB, OPENBLAS_NUM_THREADS=1"
report ""

# --- baseline: a fresh backend that has run one floral call ------------------
measure base 64MB "SELECT floral.tensor_norm('[1,2]');"
BASE_HWM=$M_HWM
report "baseline: a fresh backend after one floral call: VmHWM $M_HWM_MB MB (RssShmem $M_SHMEM_MB MB)"
report ""

# --- training on millions of rows ---------------------------------------------
log "generating $BIG_ROWS rows of 32 features"
FEAT=$(for j in $(seq 1 32); do printf 'sin(i * %s + %s)%s' "0.00$j" "$j" "$([ "$j" -lt 32 ] && echo ,)"; done)
t0=$(date +%s)
psql_ >/dev/null <<EOF
CREATE TABLE big (id int NOT NULL, tenant text NOT NULL, x real[] NOT NULL, y int NOT NULL);
INSERT INTO big
SELECT i, 'k' || (i % 10), ARRAY[$FEAT]::real[],
       ((sin(i * 0.011) + sin(i * 0.023) > 0)::int + 2 * (i % 2))
FROM generate_series(1, $BIG_ROWS) i;
VACUUM (FREEZE, ANALYZE) big;
SELECT floral_create_model('t', '{32,64,4}', 'classification', 4, 0.1, '{"seed": 1}');
EOF
report "train: table big: $BIG_ROWS rows of 32 features, 10 tenants, $(q "SELECT pg_size_pretty(pg_table_size('big'))") on disk (generated in $(($(date +%s) - t0)) s);"
report "       model t 32-64-4, 4 adaptors, rank 0.1; one epoch, batch 32; a row is 33 floats = 132 bytes in floral's row store"
report "       (SMALL_ROWS source: WHERE id <= $SMALL_ROWS)"
report ""
header "floral_train source"
for rows in "$SMALL_ROWS" "$BIG_ROWS"; do
    for mwm in 64MB 512MB; do
        log "train: $rows rows, maintenance_work_mem $mwm"
        measure "train_${rows}_$mwm" "$mwm" \
            "SELECT count(*), sum(examples) FROM floral_train('t', 'SELECT tenant, x, y FROM big WHERE id <= $rows');"
        row "$rows rows (data $(awk -v r="$rows" 'BEGIN { printf "%.0f", r * 132 / 1048576 }') MB)" "$mwm"
        eval "HWM_${rows}_$mwm=$M_HWM ANON_${rows}_$mwm=$M_ANONPK"
    done
done
report ""
d64=$(( HWM_${BIG_ROWS}_64MB - HWM_${SMALL_ROWS}_64MB ))
report "  maintenance_work_mem 64MB: private peak (RssAnon pk) $(mb $(( ANON_${SMALL_ROWS}_64MB ))) MB with $SMALL_ROWS rows, $(mb $(( ANON_${BIG_ROWS}_64MB ))) MB with $BIG_ROWS rows"
report "  maintenance_work_mem 512MB: $(mb $(( ANON_${SMALL_ROWS}_512MB ))) MB and $(mb $(( ANON_${BIG_ROWS}_512MB ))) MB (the rows fit in 512MB, so they are held in memory)"
report "  VmHWM from $SMALL_ROWS to $BIG_ROWS rows at 64MB: +$(mb $d64) MB for +$(awk -v a="$SMALL_ROWS" -v b="$BIG_ROWS" 'BEGIN { printf "%.0f", (b - a) * 132 / 1048576 }') MB of row data" \
       "($(awk -v d="$d64" -v a="$SMALL_ROWS" -v b="$BIG_ROWS" 'BEGIN { printf "%.1f", d * 1024 / (b - a) }') bytes per extra row)"
report ""

# --- aggregation of many large contributions ------------------------------------
log "aggregation: model of ~1M parameters"
psql_ >/dev/null <<'EOF'
CREATE TABLE arows AS
SELECT t, 'a' || t AS tenant,
       ARRAY(SELECT sin(t * 1000 + r * 10 + j) FROM generate_series(1, 1000) j)::real[] AS x,
       (t + r) % 10 AS y
FROM generate_series(0, 199) t, generate_series(0, 1) r;
SELECT floral_create_model('a', '{1000,1000,10}', 'classification', 4, 0.01, '{"seed": 1}');
EOF
NP=$(q "SELECT sum(parameters) FROM floral_layers('a')")
report "aggregate: model a 1000-1000-10, 4 adaptors, rank 0.01: $NP parameters ($(mb $((NP * 4 / 1024))) MB per contribution)"
report ""
header "floral_aggregate of N contributions"
for n in $AGG_COUNTS; do
    log "aggregate: training $n tenants"
    measure "train_a_$n" 64MB \
        "SELECT count(*) FROM floral_train('a', 'SELECT tenant, x, y FROM arows WHERE t < $n', '{\"batch_size\": 2}');"
    TRAIN_HWM=$M_HWM
    TRAIN_S=$M_SECONDS
    CSIZE=$(q "SELECT pg_size_pretty(pg_total_relation_size('floral.contributions'))")
    measure "agg_$n" 64MB "SELECT floral_aggregate('a');"
    row "$n contributions ($CSIZE in the table)" 64MB
    eval "AGG_$n=$M_HWM AGGANON_$n=$M_ANONPK"
    report "    (training those $n tenants: VmHWM $(mb "$TRAIN_HWM") MB, $TRAIN_S s)"
done
report ""
set -- $AGG_COUNTS
first=$1; last=${*: -1}
report "  $first -> $last contributions: floral_aggregate VmHWM $(mb $(( AGG_$first ))) -> $(mb $(( AGG_$last ))) MB, RssAnon peak $(mb $(( AGGANON_$first ))) -> $(mb $(( AGGANON_$last ))) MB"
report ""
report "load at the end: $(uptime_load)"
log "report: $OUT"
