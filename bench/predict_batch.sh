#!/usr/bin/env bash
# bench/predict_batch.sh: floral_predict_batch against the scan floor and
# against per-row floral_predict, and its peak memory for 10x the rows.
#
# A throw-away PostgreSQL 15 cluster (bench/lib.sh: as postgres, own port,
# unix socket in a temp dir, no parallel query, no JIT, stopped and removed
# at exit; shared_buffers 1GB so both tables stay cached).
#
#   table   fm: the 60,000 Fashion-MNIST training images as (id, tenant,
#           features real[] COMPRESSION lz4, label), tenant = id mod 300
#   model   m: 784-200-10, FLoRAL(10%): 4 adaptors, rank 0.1; one round of
#           floral_train (1 epoch, batch 32) + floral_aggregate, so all 300
#           tenants have their own mixture
#   speed   best of BENCH_REPS (3), all in one session (the model cache is
#           warm after the first call), default work_mem (4MB):
#             scan floor  SELECT sum(cardinality(features)) FROM fm
#             batch       SELECT count(*), sum(prediction)
#                           FROM floral_predict_batch('m', 'SELECT id, tenant, features FROM fm')
#             per row     SELECT sum(floral_predict('m', tenant, features)) FROM fm
#           floors: batch <= 2x the scan floor, per row / batch >= 4x
#   memory  the batch statement in a fresh session over fm and over fm600
#           (the 60,000 rows repeated 10 times, 600,000 rows): VmHWM and the
#           largest RssAnon seen (bench/lib.sh measure); floor: the same peak
#           (within 5% or 2 MB) for both
#
# Run as root:  bash bench/predict_batch.sh   (about 5 minutes)
# Knobs: BENCH_REPS [3], BENCH_OUT [bench/results/predict-batch-<date>.txt],
#   SKIP_INSTALL [0], PG_BINDIR (or PGBIN), BENCH_PORT.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init predict_batch "predict-batch-$(date +%Y-%m-%d).txt"
bench_fmnist 60000 300
REPEAT=10

bench_install
bench_build_sgemm_rate
bench_start_cluster 1GB
bench_facts

bench_title "batch prediction"
report "command:   bash bench/predict_batch.sh"
report "tree:      $REPO @ $GIT_REV"
report "machine:   $(nproc) cores, $CPU ($SIMD); load at start: $LOAD_START"
report "server:    PostgreSQL $PG_VERSION, shared_buffers 1GB, work_mem 4MB (default),"
report "           max_parallel_workers_per_gather 0, jit off, OPENBLAS_NUM_THREADS=1 ($BLAS_PKGS)"
report ""

# --- data and model -----------------------------------------------------------------
fmnist_table fm
report "table fm:    $ROWS rows, $TENANTS tenants (tenant = id mod $TENANTS), features lz4 ($COMP_DIST); $(table_sizes fm)"
# The copies keep the rows' lz4 datums as they are.
psql_ -c "CREATE TABLE fm600 (id int PRIMARY KEY, tenant text, features real[] COMPRESSION lz4, label int)" \
      -c "INSERT INTO fm600 SELECT id + k * $ROWS, tenant, features, label FROM fm, generate_series(0, $((REPEAT - 1))) k" \
      -c "VACUUM (ANALYZE) fm600"
check_compression fm600 lz4
report "table fm600: fm's rows repeated $REPEAT times ($((ROWS * REPEAT)) rows); $(table_sizes fm600)"

log "training model m: FLoRAL(10%), one round"
train_round m fm 4 0.1 '{"seed":1}' "SET maintenance_work_mem = '1GB';"
RANKS=$(q "SELECT array_to_string(ranks, ',') FROM floral.models WHERE name = 'm'")
NPARAMS=$(q "SELECT sum(parameters) FROM floral_layers('m')")
TRAINED=$(q "SELECT count(*) FROM floral.tenants WHERE model = 'm'")
report "model m:     784-200-10, 4 adaptors, rank 0.1 (ranks $RANKS), $NPARAMS parameters; one round in $ROUND_S s,"
report "             $TRAINED tenants with a mixture"
report ""

# --- speed ---------------------------------------------------------------------------
SCAN="SELECT sum(cardinality(features)) FROM fm;"
BATCH="SELECT count(*), sum(prediction) FROM floral_predict_batch('m', 'SELECT id, tenant, features FROM fm');"
PROBA="SELECT count(*), sum(proba[1]) FROM floral_predict_batch('m', 'SELECT id, tenant, features FROM fm', true);"
PERROW="SELECT sum(floral_predict('m', tenant, features)) FROM fm;"
INSERT="INSERT INTO scores SELECT key::int, tenant, prediction::int FROM floral_predict_batch('m', 'SELECT id, tenant, features FROM fm');"
log "timing scan floor, batch and per-row prediction (best of $REPS, one session)"
# sections of one session (bench/lib.sh timed_section)
{
    printf '%s\n' '\o /dev/null' "$BATCH" \
        'CREATE TABLE scores (id int, tenant text, predicted int);'
    timed_section scan "$SCAN"
    timed_section batch "$BATCH"
    timed_section perrow "$PERROW"
    timed_section proba "$PROBA"
    timed_section insert "TRUNCATE scores; $INSERT"
    timed_section batch2 "$BATCH" 'SET floral.blas_threads = 2;'
} | psql_ -f - >"$WORK/speed.out" 2>"$WORK/speed.err" || { cat "$WORK/speed.err" >&2; exit 1; }
T_SCAN=$(section_best "$WORK/speed.out" scan)
T_BATCH=$(section_best "$WORK/speed.out" batch)
T_PERROW=$(section_best "$WORK/speed.out" perrow)
T_PROBA=$(section_best "$WORK/speed.out" proba)
# the TRUNCATE shows a Time line too: keep only the INSERT's
T_INSERT=$(section_lines "$WORK/speed.out" insert | awk '/^Time: / { if (++i % 2 == 0) print }' | best_time)
T_BATCH2=$(section_best "$WORK/speed.out" batch2)
SCORED=$(q "SELECT count(*) FROM scores")
AGREE=$(q "SELECT count(*) FROM scores s JOIN fm USING (id) WHERE s.predicted = floral_predict('m', fm.tenant, fm.features)")

R_SCAN=$(calc 'b / s' -v b="$T_BATCH" -v s="$T_SCAN" | awk '{ printf "%.2f", $1 }')
R_ROW=$(calc 'p / b' -v p="$T_PERROW" -v b="$T_BATCH" | awk '{ printf "%.2f", $1 }')
us() { calc '1e6 * t / r' -v t="$1" -v r="$ROWS" | awk '{ printf "%.1f", $1 }'; }

# the GEMM roofline of the forward pass, blocks of 256 rows (bench/sgemm_rate.c)
"$WORK/sgemm_rate" train --layers 784,200,10 --batch 256 --adaptors 4 --ranks "$RANKS" >"$WORK/sgemm.txt"
ROOF=$(awk -v rows="$ROWS" '$1 == "shape" && ($2 ~ /^fwd/ || $2 ~ /^aU/ || $2 ~ /^aV/) {
           calls = (NF >= 9) ? $9 : 1; s += $7 * calls }
       END { printf "%.3f", s / 256 * rows }' "$WORK/sgemm.txt")
RATES=$(awk '$1 == "shape" && ($2 ~ /^fwd/ || $2 ~ /^aU/ || $2 ~ /^aV/) { printf "%s%s %dx%dx%d %.0f GFLOP/s", sep, $2, $3, $4, $5, $8; sep = ", " }' "$WORK/sgemm.txt")

report "speed, $ROWS rows of fm (best of $REPS):"
report "  scan floor   $SCAN"
report "               $T_SCAN s ($(us "$T_SCAN") us/row)"
report "  batch        $BATCH"
report "               $T_BATCH s ($(us "$T_BATCH") us/row)"
report "  per row      $PERROW"
report "               $T_PERROW s ($(us "$T_PERROW") us/row)"
report "  batch, with_proba => true: $T_PROBA s"
report "  batch with SET floral.blas_threads = 2 (both cores; for information, not a floor): $T_BATCH2 s"
report "  INSERT INTO scores SELECT ... FROM floral_predict_batch(...): $T_INSERT s ($SCORED rows; $AGREE agree with per-row floral_predict)"
report ""
report "  batch / scan floor: ${R_SCAN}x   floor <= 2x: $(pass "$R_SCAN <= 2")"
report "  per row / batch:    ${R_ROW}x   floor >= 4x: $(pass "$R_ROW >= 4")"
report "  GEMM roofline of the forward pass alone (no reading): $ROOF s for $ROWS rows"
report "    ($RATES, single thread)"
report "  scan floor + GEMM roofline: $(calc 's + r' -v s="$T_SCAN" -v r="$ROOF" | awk '{ printf "%.3f", $1 }') s"
report ""

# --- memory --------------------------------------------------------------------------
log "memory: batch over $ROWS and $((ROWS * REPEAT)) rows"
report "memory, fresh session per statement, work_mem 4MB:"
printf '  %-40s %9s %11s %9s %8s\n' "statement" "VmHWM MB" "RssAnon pk" "temp MB" "seconds" | tee -a "$OUT"
for t in fm fm600; do
    measure "batch_$t" 64MB "SELECT count(*), sum(prediction) FROM floral_predict_batch('m', 'SELECT id, tenant, features FROM $t');"
    printf '  %-40s %9s %11s %9s %8s\n' "batch over $t ($(q "SELECT count(*) FROM $t") rows)" \
        "$M_HWM_MB" "$M_ANON_MB" "$M_TEMP_MB" "$M_SECONDS" | tee -a "$OUT"
    eval "HWM_$t=$M_HWM; ANON_$t=$M_ANONPK"
done
D_ANON=$((ANON_fm600 - ANON_fm))
report "  600,000 vs 60,000 rows: VmHWM $(mb "$HWM_fm") -> $(mb "$HWM_fm600") MB, RssAnon peak $(mb "$ANON_fm") -> $(mb "$ANON_fm600") MB"
LIM=$(awk -v a="$ANON_fm" 'BEGIN { l = a * 0.05; if (l < 2048) l = 2048; printf "%d", l }')
report "  same peak (RssAnon within 5% or 2 MB): $(pass "($D_ANON) <= $LIM && -($D_ANON) <= $LIM")"
report "  (the results past work_mem go to the tuplestore's temporary file: temp MB above)"
report ""
report "load at the end: $(loadavg)"
log "report: $OUT"
