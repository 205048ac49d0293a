#!/usr/bin/env bash
# bench/run.sh: floral speed benchmark on Fashion-MNIST (60,000 train images).
#
# Measures, in one run on one machine:
#   a. loading three tables by COPY: fmnist (features COMPRESSION lz4, 1 tenant),
#      fmnist_pglz (the same rows, COMPRESSION pglz) and fmnist300 (lz4,
#      300 tenants); each one's compression method is checked
#   b. the scan floor: reading every feature array once, on lz4 and on pglz
#   c. floral_train throughput, one tenant with all rows, 784-200-10, batch 32,
#      1 epoch, maintenance_work_mem = 1GB, on the lz4 table: without adaptors
#      and with 4 adaptors of rank 0.01; for information also adaptors=0 with
#      the default maintenance_work_mem (64MB: the rows spill to a temp file)
#      and adaptors=0 on the pglz table
#   d. the single-thread OpenBLAS roofline for that training (bench/sgemm_rate.c),
#      the fraction of it floral reaches (goal >= 0.5 on the lz4 table) and
#      floral.timing's split of the time into reading the source and computing
#   e. floral_predict over 300 tenants against the scan floor (goal <= 6x)
# and writes the report to bench/results/speed-<date>-<time>.txt as well as
# stdout; its last line is a machine-readable `summary key=value ...` line.
#
# Run as root (it starts PostgreSQL as the postgres user) after
# `bash scripts/install-deps.sh`:   bash bench/run.sh
# It always runs `make install` from the repository root first, so the
# benchmark measures the code in this tree.
#
# Environment knobs (defaults in brackets):
#   BENCH_REPS  [3]      repetitions of each timed statement, best is reported
#   BENCH_ROWS  [60000]  rows to load, smaller for a quick smoke run
#   BENCH_OUT   [bench/results/speed-<date>-<time>.txt]  report file
#   FLORAL_REPO [parent of bench/]  tree to build and install
#   PG_BINDIR   [/usr/lib/postgresql/15/bin]  PostgreSQL 15 to use (PGBIN, the old name, works too)
#   BENCH_PORT  [a free port]  port of the throw-away cluster
# (the cluster scaffolding is shared with the other benches: bench/lib.sh)
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init bench "speed-$(date +%Y-%m-%d-%H%M%S).txt"
bench_fmnist "${BENCH_ROWS:-60000}"
PREDICT_TENANTS=300
BATCH=32
# floral_train keeps the rows it reads in maintenance_work_mem and spills the
# rest to a temp file; 60,000 x 785 floats is ~190 MB, so 1GB keeps them all.
TRAIN_MWM=1GB

# --- build and install floral from this tree ---------------------------------
bench_install

# --- single-thread OpenBLAS rates (before the server starts: idle machine) ---
log "building and running sgemm_rate"
bench_build_sgemm_rate
"$WORK/sgemm_rate" all --batch "$BATCH" > "$WORK/sgemm.txt"
rate() { awk -v k="$1" '$1 == k { print $2 }' "$WORK/sgemm.txt"; }
ROOF_TRAIN_PER_SAMPLE=$(rate roofline_seconds_per_sample)
ROOF_PRED_PER_SAMPLE=$(rate roofline_predict_seconds_per_sample)

# --- start PostgreSQL ---------------------------------------------------------
bench_start_cluster 512MB

# Does this build have the floral.timing GUC?  -> TIMING_SETUP
bench_timing_setup
MWM_DEFAULT=$(q 'SHOW maintenance_work_mem')

# --- facts --------------------------------------------------------------------
bench_facts

bench_title speed
report "tree:        $REPO @ $GIT_REV"
report "cpu:         $CPU ($(nproc) cores online; ${SIMD:-no avx2/avx512})"
report "kernel:      $(uname -sr); load average at start: $LOAD_START (other work on the machine skews timings)"
report "postgresql:  $(q 'SELECT version()')"
report "openblas:    ${BLAS_PKGS:-unknown}; core $(rate corename); floral.so -> ${FLORAL_BLAS:-?}"
report "settings:    OPENBLAS_NUM_THREADS=1 in the server's environment (checked: /proc/$PM_PID/environ of the postmaster)"
report "             shared_buffers=512MB, fsync=off, synchronous_commit=off, full_page_writes=off (bench only),"
report "             max_parallel_workers_per_gather=0, jit=off, autovacuum=off, log_temp_files=0"
report "             training sessions: SET maintenance_work_mem = '$TRAIN_MWM' (server default $MWM_DEFAULT, one line below uses it)"
report "             training/prediction table: features real[] COMPRESSION lz4 (pglz copy for information)"
BLAS_THREADS_GUC=$(psql_ -At -c "LOAD 'floral'" -c "SELECT coalesce(max(setting), 'n/a') FROM pg_settings WHERE name = 'floral.blas_threads'")
report "             floral.blas_threads=$BLAS_THREADS_GUC, floral.timing=$([ -n "$TIMING_SETUP" ] && echo on || echo 'n/a (not in this build)')"
report "timing:      best of $REPS for every timed statement; psql \\timing, includes client round trip"
report ""

# --- a. load ------------------------------------------------------------------
# (gen_copy, load_table, check_compression, table_sizes: bench/lib.sh)
report "a. load by COPY ($ROWS rows, 784 real each; text generated once per tenant count, then COPYed into each table)"
# key|table|compression|tenants
TABLES=("lz4|fmnist|lz4|1" "pglz|fmnist_pglz|pglz|1" "t300|fmnist300|lz4|$PREDICT_TENANTS"
        "t300p|fmnist300_pglz|pglz|$PREDICT_TENANTS")
declare -A GEN_DONE
for spec in "${TABLES[@]}"; do
    IFS='|' read -r key table comp tenants <<<"$spec"
    file="$WORK/copy-$tenants.txt"
    if [ -z "${GEN_DONE[$tenants]:-}" ]; then
        log "generating COPY text, $tenants tenant(s)"
        gen_copy "$tenants" "$file"
        GEN_DONE[$tenants]=1
        report "   text generation, $tenants tenant(s): $GEN_S s ($(du -m "$file" | cut -f1) MB)"
    fi
    log "loading $table ($comp, $tenants tenant(s))"
    load_table "$table" "$comp" "$file"
    check_compression "$table" "$comp"
    report "   $table (COMPRESSION $comp, $tenants tenant(s)): COPY $COPY_S s, VACUUM ANALYZE $INDEX_S s"
    report "     $(table_sizes "$table")"
    report "     pg_column_compression(features): first row $COMP_FIRST; all rows: $COMP_DIST"
done
rm -f "$WORK"/copy-*.txt
report ""

# --- b. scan floor --------------------------------------------------------------
declare -A SCAN
report "b. scan floor: SELECT count(*), sum(cardinality(features)) FROM <table>  (detoasts every array)"
for spec in fmnist:lz4 fmnist_pglz:pglz; do
    t=${spec%%:*}
    log "scan floor $t"
    SCAN[$t]=$(time_sql "$WORK/scan-$t" '' "SELECT count(*), sum(cardinality(features)) FROM $t;")
    report "   $(printf '%-12s %-4s' "$t" "${spec##*:}"): ${SCAN[$t]} s  ($(calc 'r / s' -v r="$ROWS" -v s="${SCAN[$t]}" | awk '{ printf "%.0f", $1 }') rows/s)"
done
report ""

# --- c. training throughput -------------------------------------------------------
# One session per configuration: create, train one epoch (timed), drop; repeated.
# train_bench NAME ADAPTORS TABLE SETUP_SQL -> sets TRAIN_BEST, TRAIN_READ,
# TRAIN_COMPUTE (floral.timing split of the best run), TRAIN_RUNS (every run's
# seconds), TRAIN_SUMMARY,
# TRAIN_OTHER (notices other than the timing one), TRAIN_MWM_SEEN,
# TRAIN_THREADS (threads of the backend after training), TRAIN_TEMP ("files bytes" per run)
train_bench() {
    local name=$1 adaptors=$2 table=$3 setup=$4 i f="$WORK/train-$1" mark split
    mark=$(log_mark)
    {
        printf '%s\n' "LOAD 'floral';" "$TIMING_SETUP" "$setup" \
            "SELECT 'MWM ' || current_setting('maintenance_work_mem');"
        for ((i = 0; i < REPS; i++)); do
            printf '%s\n' "SELECT floral_create_model('$name', '$LAYERS', 'classification', $adaptors, 0.01, '{\"seed\":1, \"router\": \"paper\", \"reseed\": false}');" \
                '\timing on' \
                "SELECT count(*) AS tenants, sum(examples) AS examples, round(avg(loss)::numeric, 4) AS loss
                   FROM floral_train('$name', 'SELECT tenant, features, label FROM $table', '$TRAIN_OPTS');" \
                '\timing off' \
                "SELECT floral_drop_model('$name');"
        done
        # threads of this backend now that OpenBLAS has run in it (1: no workers)
        printf '%s\n' 'SELECT pg_backend_pid() AS bench_bpid \gset' '\setenv BENCH_BPID :bench_bpid' \
            "\\! awk '/^Threads:/ { print \"THREADS\", \$2 }' /proc/\$BENCH_BPID/status"
    } | psql_ -At -F ' ' -f - >"$f.out" 2>"$f.err" || { cat "$f.err" >&2; exit 1; }
    TRAIN_BEST=$(best_time "$f.out")
    TRAIN_RUNS=$(run_times "$f.out")
    # keep the floral.timing split of the fastest run
    split=$(fastest_split "$f")
    TRAIN_READ=${split%% *}
    TRAIN_COMPUTE=${split##* }
    [ -n "$split" ] || { TRAIN_READ=''; TRAIN_COMPUTE=''; }
    # lines "tenants examples loss" of the training queries (create/drop return void: empty lines)
    TRAIN_SUMMARY=$(awk 'NF == 3 && $1 ~ /^[0-9]+$/ { print "tenants=" $1 " examples=" $2 " loss=" $3; exit }' "$f.out")
    TRAIN_MWM_SEEN=$(awk '$1 == "MWM" { print $2; exit }' "$f.out")
    TRAIN_THREADS=$(awk '$1 == "THREADS" { print $2; exit }' "$f.out")
    TRAIN_NOTICES=$(grep -E 'NOTICE|WARNING' "$f.err" | sed -E 's/^psql:[^ ]* //' || true)
    TRAIN_OTHER=$(grep -v -E 'floral_train: [0-9]+ rows of' <<<"$TRAIN_NOTICES" | sort | uniq -c | sed 's/^ */      /' || true)
    TRAIN_TEMP=$(temp_files_since "$mark" | awk -v n="$REPS" '{ printf "%g %.0f", $1 / n, $2 / n }')
}

report "c. floral_train, 1 tenant x $ROWS rows, model 784-200-10, $TRAIN_OPTS"
# key|adaptors|table|label|session setup|main (checked against the 0.5 goal)
CONFIGS=(
    "a0|0|fmnist|adaptors=0 lz4|SET maintenance_work_mem = '$TRAIN_MWM';|main"
    "a4|4|fmnist|adaptors=4 lz4|SET maintenance_work_mem = '$TRAIN_MWM';|main"
    "a0_mwm|0|fmnist|adaptors=0 lz4 mwm=$MWM_DEFAULT||info"
    "a0_pglz|0|fmnist_pglz|adaptors=0 pglz|SET maintenance_work_mem = '$TRAIN_MWM';|info"
)
declare -A TRAIN_T TRAIN_R TRAIN_C TRAIN_TH
for cfg in "${CONFIGS[@]}"; do
    IFS='|' read -r key adaptors table label setup kind <<<"$cfg"
    log "training, $label"
    train_bench "bench_$key" "$adaptors" "$table" "$setup"
    TRAIN_T[$key]=$TRAIN_BEST
    TRAIN_R[$key]=$TRAIN_READ
    TRAIN_C[$key]=$TRAIN_COMPUTE
    TRAIN_TH[$key]=$TRAIN_THREADS
    read -r tf tb <<<"$TRAIN_TEMP"
    report "   $label (rank 0.01, table $table, maintenance_work_mem=$TRAIN_MWM_SEEN$([ "$kind" = info ] && echo ', for information')):"
    report "     $TRAIN_BEST s = $(calc 'r / t' -v r="$ROWS" -v t="$TRAIN_BEST" | awk '{ printf "%.0f", $1 }') samples/s  ($TRAIN_SUMMARY; runs: $TRAIN_RUNS s)"
    if [ -n "$TRAIN_READ" ]; then
        report "     floral.timing of that run: read $TRAIN_READ s, computed $TRAIN_COMPUTE s"
    fi
    report "     temp files per run: $tf ($(awk -v b="$tb" 'BEGIN { printf "%.1f", b / 1048576 }') MB); backend threads after training: ${TRAIN_THREADS:-?}"
    if [ -n "$TRAIN_OTHER" ]; then
        report "     other notices/warnings (count, message):"
        report "$TRAIN_OTHER"
    fi
done
[ -n "$TIMING_SETUP" ] || report "   (floral.timing GUC not present in this build: no read/compute split)"
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
report "   config                      measured_s  samples/s  roofline_s  fraction  read_s  compute_s  read_share  read<half  of_compute"
declare -A FRAC
for cfg in "${CONFIGS[@]}"; do
    IFS='|' read -r key adaptors table label setup kind <<<"$cfg"
    FRAC[$key]=$(calc 'rf / t' -v rf="$ROOF_TRAIN" -v t="${TRAIN_T[$key]}" | awk '{ printf "%.3f", $1 }')
    awk -v t="${TRAIN_T[$key]}" -v n="$ROWS" -v rf="$ROOF_TRAIN" -v r="${TRAIN_R[$key]}" -v c="${TRAIN_C[$key]}" \
        -v l="$label$([ "$kind" = info ] && echo ' *')" 'BEGIN {
        if (r != "" && c != "") {
            rs = sprintf("%.3f", r); cs = sprintf("%.3f", c);
            sh = sprintf("%.2f", r / (r + c)); half = (r < (r + c) / 2) ? "yes" : "no";
            oc = (c > 0) ? sprintf("%.3f", rf / c) : "n/a";
        } else { rs = cs = sh = half = oc = "n/a" }
        printf "   %-26s  %10.3f  %9.0f  %10.3f  %8.3f  %6s  %9s  %10s  %9s  %10s\n",
               l, t, n / t, rf, rf / t, rs, cs, sh, half, oc }' | tee -a "$OUT"
done
report "   * for information only (not checked against the goal)"
report "   fraction = roofline_s / measured_s (goal >= 0.5 for the two lz4 lines at maintenance_work_mem=$TRAIN_MWM):"
for key in a0 a4; do
    report "     adaptors=${key#a}: $(awk -v f="${FRAC[$key]}" 'BEGIN { print (f >= 0.5) ? "met" : "NOT met" }')"
done
report "   read_s / compute_s: floral.timing's split of the fastest run (read = executing the source query"
report "   and storing its rows; computed = the rest); read_share = read / (read + computed);"
report "   read<half: read does not dominate (read < half of read + computed);"
report "   of_compute = roofline_s / compute_s"
for key in a0 a4; do
    [ -n "${TRAIN_R[$key]}" ] || continue
    report "   read does not dominate (adaptors=${key#a}): $(awk -v r="${TRAIN_R[$key]}" -v c="${TRAIN_C[$key]}" 'BEGIN { print (r < (r + c) / 2) ? "yes" : "no" }')"
done
report ""

# --- e. prediction ------------------------------------------------------------------------
log "training model m (4 adaptors) 1 round + aggregate on fmnist300"
train_round m fmnist300 4 0.01 '{"seed":1, "router": "paper", "reseed": false}' \
    "LOAD 'floral';
$TIMING_SETUP
SET maintenance_work_mem = '$TRAIN_MWM';"
M_TRAIN=$ROUND_S
M_SUMMARY=$ROUND_SUMMARY

log "timing predict and scan floor"
# Same session for both, so that floral's per-backend model cache is warm
# after the first predict pass; best of REPS each.
{
    timed_section scan 'SELECT sum(cardinality(features)) FROM fmnist300;'
    timed_section predict "SELECT sum(floral_predict('m', tenant, features)) FROM fmnist300;"
    # the same rows stored with PostgreSQL's default compression (pglz)
    timed_section scanpglz 'SELECT sum(cardinality(features)) FROM fmnist300_pglz;'
    timed_section predpglz "SELECT sum(floral_predict('m', tenant, features)) FROM fmnist300_pglz;"
} | psql_ -f - >"$WORK/pred.out" 2>"$WORK/pred.err" || { cat "$WORK/pred.err" >&2; exit 1; }
P_SCAN=$(section_best "$WORK/pred.out" scan)
P_PRED=$(section_best "$WORK/pred.out" predict)
P_SCAN_PGLZ=$(section_best "$WORK/pred.out" scanpglz)
P_PRED_PGLZ=$(section_best "$WORK/pred.out" predpglz)
RATIO_PGLZ=$(calc 'p / s' -v p="$P_PRED_PGLZ" -v s="$P_SCAN_PGLZ" | awk '{ printf "%.2f", $1 }')
ROOF_PRED=$(calc 'p * r' -v p="$ROOF_PRED_PER_SAMPLE" -v r="$ROWS")
RATIO=$(calc 'p / s' -v p="$P_PRED" -v s="$P_SCAN" | awk '{ printf "%.2f", $1 }')
report "e. floral_predict, $ROWS rows of fmnist300 (lz4) over $PREDICT_TENANTS tenants (tenant changes every row)"
report "   model m: 4 adaptors rank 0.01, 1 round of floral_train (maintenance_work_mem=$TRAIN_MWM) + floral_aggregate"
report "   in $M_TRAIN s ($M_SUMMARY)"
M_NOTICES=$(grep -E 'NOTICE|WARNING' "$WORK/m.err" | sed -E 's/^(psql:[^ ]* )?/      /' || true)
[ -z "$M_NOTICES" ] || report "$M_NOTICES"
report "   scan floor  SELECT sum(cardinality(features)) FROM fmnist300:           $P_SCAN s"
report "   predict     SELECT sum(floral_predict('m', tenant, features)) FROM fmnist300: $P_PRED s ($(calc '1e6 * p / r' -v p="$P_PRED" -v r="$ROWS" | awk '{ printf "%.1f", $1 }') us/row)"
report "   ratio predict / scan floor: ${RATIO}x  (goal <= 6x: $(awk -v x="$RATIO" 'BEGIN { print (x <= 6) ? "met" : "NOT met" }'))"
report "   the same rows with PostgreSQL's default compression (fmnist300_pglz):"
report "   scan floor $P_SCAN_PGLZ s, predict $P_PRED_PGLZ s, ratio ${RATIO_PGLZ}x  (goal <= 6x: $(awk -v x="$RATIO_PGLZ" 'BEGIN { print (x <= 6) ? "met" : "NOT met" }'))"
report "   sgemv roofline (base 784-200-10 only): $ROOF_PRED_PER_SAMPLE s/row, $ROOF_PRED s for $ROWS rows"
report "   $(awk '$1 == "gemv" { printf "%s %dx%d %.1f GFLOP/s; ", $2, $3, $4, $7 }' "$WORK/sgemm.txt")"
report ""

# --- summary --------------------------------------------------------------------------------
read_share() { [ -n "${TRAIN_R[$1]}" ] && calc 'r / (r + c)' -v r="${TRAIN_R[$1]}" -v c="${TRAIN_C[$1]}" | awk '{ printf "%.2f", $1 }' || echo na; }
report "load average at end: $(loadavg) (at start: $LOAD_START; well above 0 means other work shared the 2 cores: compare the runs: lists in c)"
report "report written to $OUT"
report "summary rows=$ROWS reps=$REPS train_fraction_adaptors0=${FRAC[a0]} train_fraction_adaptors4=${FRAC[a4]}" \
       "train_fraction_adaptors0_mwm_default=${FRAC[a0_mwm]} train_fraction_adaptors0_pglz=${FRAC[a0_pglz]}" \
       "read_share_adaptors0=$(read_share a0) read_share_adaptors4=$(read_share a4)" \
       "scan_floor_lz4_s=${SCAN[fmnist]} scan_floor_pglz_s=${SCAN[fmnist_pglz]}" \
       "predict_ratio=$RATIO predict_ratio_pglz=$RATIO_PGLZ backend_threads=${TRAIN_TH[a0]:-na}"
