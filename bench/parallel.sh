#!/usr/bin/env bash
# bench/parallel.sh: floral_train, floral_evaluate and floral_personalize
# with 0 (serial), 1 and 2 parallel workers, on one cluster in one run.
#
# A throw-away PostgreSQL 15 cluster (bench/lib.sh: as postgres, own port,
# unix socket in a temp dir, no parallel query, no JIT, stopped and removed
# at exit; shared_buffers 1GB so the table stays cached).
#
#   table   fm: the 60,000 Fashion-MNIST training images as (id, tenant,
#           features real[] COMPRESSION lz4, label), tenant = id mod 300:
#           300 tenants x 200 rows
#   model   784-200-10, FLoRAL(10%): 4 adaptors, rank 0.1, seed 1
#   train   floral_train(..., '{"epochs":1,"batch_size":32,"lr":0.1}') on a
#           fresh model each time (a tenant contributes once per round),
#           with the default router (probe) and with the paper's
#           (trainpaper: '{"router":"paper","reseed":false}')
#   eval    floral_evaluate and floral_personalize on a model after one
#           round (every tenant has a mixture)
#   workers SET max_parallel_maintenance_workers = W (W = 0: serial), with
#           parallel_leader_participation on (the leader takes tenants too);
#           "off": floral.max_parallel_workers = 0 as well, so the rows are
#           read into private memory, as before parallel workers existed
#           (the cost of reading them into shared segments)
#   timing  best of BENCH_REPS (3) wall times of the statement in one
#           session; floral.timing splits a call into reading the source
#           (serial, in the leader) and the rest
#   train5  the same with 5 epochs (for information: more work per row read)
#   floor   train with 2 workers at least 1.7x faster than serial
#   check   the parallel calls store what the serial one stores, bit for bit
#
# Run as root:  bash bench/parallel.sh   (about 3 minutes)
# Knobs: BENCH_REPS [3], BENCH_OUT [bench/results/parallel-<date>.txt],
#   SKIP_INSTALL [0], PG_BINDIR (or PGBIN), BENCH_PORT.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init parallel "parallel-$(date +%Y-%m-%d).txt"
bench_fmnist 60000 300
WORKERS="0 off 1 2"

bench_install
bench_start_cluster 1GB "max_worker_processes = 8
max_parallel_workers = 8
maintenance_work_mem = 1GB"
bench_facts

bench_title "parallel workers"
report "command:   bash bench/parallel.sh"
report "tree:      $REPO @ $GIT_REV"
report "machine:   $(nproc) cores, $CPU ($SIMD); load at start: $LOAD_START"
report "server:    PostgreSQL $PG_VERSION, shared_buffers 1GB, maintenance_work_mem 1GB,"
report "           max_worker_processes 8, max_parallel_workers 8, OPENBLAS_NUM_THREADS=1 ($BLAS_PKGS)"
report ""

fmnist_table fm
report "table fm:  $ROWS rows, $TENANTS tenants (tenant = id mod $TENANTS), features lz4; $(table_sizes fm)"

log "model base: one round, for evaluation and personalisation"
train_round base fm 4 0.1 '{"seed":1}'
report "model:     784-200-10, FLoRAL(10%): 4 adaptors, rank 0.1 ($(q "SELECT sum(parameters) FROM floral_layers('base')") parameters)"
report ""

TRAIN="SELECT count(*) FROM floral_train(:'m', 'SELECT tenant, features, label FROM fm', '$TRAIN_OPTS');"
TRAIN5="SELECT count(*) FROM floral_train(:'m', 'SELECT tenant, features, label FROM fm', '{\"epochs\":5,\"batch_size\":32,\"lr\":0.1}');"
EVAL="SELECT count(*) FROM floral_evaluate('base', 'SELECT tenant, features, label FROM fm');"
PERS="SELECT count(*) FROM floral_personalize('base', 'SELECT tenant, features, label FROM fm');"

# one MARK-delimited section per (statement, workers); untimed setup in each
log "timing train, evaluate and personalise with $WORKERS workers (best of $REPS)"
{
    printf '%s\n' '\o /dev/null' 'SET floral.timing = on;'
    for op in train trainpaper evaluate personalize train5; do
        for w in $WORKERS; do
            if [ "$w" = off ]; then
                setw="SET max_parallel_maintenance_workers = 0; SET floral.max_parallel_workers = 0;"
            else
                setw="SET max_parallel_maintenance_workers = $w; SET floral.max_parallel_workers = 8;"
            fi
            section_mark "$op $w" "$setw"
            for ((i = 0; i < REPS; i++)); do
                case $op in
                    train)
                        printf '%s\n' '\timing off' "\\set m t_${w}_$i" \
                            "SELECT floral_create_model(:'m', '$LAYERS', 'classification', 4, 0.1, '{\"seed\":1}');" \
                            '\timing on' "$TRAIN" ;;
                    trainpaper)
                        printf '%s\n' '\timing off' "\\set m p_${w}_$i" \
                            "SELECT floral_create_model(:'m', '$LAYERS', 'classification', 4, 0.1, '{\"seed\":1,\"router\":\"paper\",\"reseed\":false}');" \
                            '\timing on' "$TRAIN" ;;
                    train5)
                        printf '%s\n' '\timing off' "\\set m e_${w}_$i" \
                            "SELECT floral_create_model(:'m', '$LAYERS', 'classification', 4, 0.1, '{\"seed\":1}');" \
                            '\timing on' "$TRAIN5" ;;
                    evaluate) printf '%s\n' '\timing on' "$EVAL" ;;
                    personalize) printf '%s\n' '\timing on' "$PERS" ;;
                esac
            done
        done
    done
} | psql_ -f - >"$WORK/speed.out" 2>"$WORK/speed.err" || { cat "$WORK/speed.err" >&2; exit 1; }

# the scan floor: reading and decompressing every row once, nothing else
T_SCAN=$(time_sql "$WORK/scan" "" "SELECT sum(cardinality(features)) FROM fm;")

# best seconds of the section for (op, workers)
best() { section_best "$WORK/speed.out" "$1 $2"; }
# the floral.timing NOTICEs, in order: "<op> <read s> <computed s> <workers>"
grep -E 'NOTICE: +floral_(train|evaluate|personalize):' "$WORK/speed.err" \
    | sed -E 's/.*floral_([a-z]+): .* read ([0-9.]+) s, computed ([0-9.]+) s; ([0-9]+) parallel workers?.*/\1 \2 \3 \4/' >"$WORK/notices"
# label each NOTICE with its section: they come in the order of the sections,
# $REPS per section -> "<op> <workers> <read s> <computed s> <launched>"
awk -v reps="$REPS" -v ws="$WORKERS" '
    BEGIN { split("train trainpaper evaluate personalize train5", ops, " "); nw = split(ws, wl, " ") }
    { sec = int((NR - 1) / reps); print ops[int(sec / nw) + 1], wl[sec % nw + 1], $2, $3, $4 }' \
    "$WORK/notices" >"$WORK/labelled"
# median of a column (3: read, 4: computed) over the calls of (op, workers), and the workers launched
median() { awk -v op="$1" -v w="$2" -v c="$3" '$1 == op && $2 == w { print $c }' "$WORK/labelled" | sort -n \
           | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
launched() { awk -v op="$1" -v w="$2" '$1 == op && $2 == w { l = $5 } END { print l }' "$WORK/labelled"; }

ratio() { calc 'a / b' -v a="$1" -v b="$2" | awk '{ printf "%.2f", $1 }'; }

report "wall seconds, best of $REPS (setting = max_parallel_maintenance_workers; launched = workers the"
report "call launched; read = the source query, in the leader; rest = locking, training or evaluating,"
report "summing and writing; read and rest: median of the $REPS calls):"
printf '  %-12s %8s %9s %8s %8s %8s %9s\n' "call" "setting" "launched" "seconds" "read" "rest" "speed-up" | tee -a "$OUT"
for op in train trainpaper evaluate personalize train5; do
    for w in $WORKERS; do
        t=$(best "$op" "$w")
        rd=$(median "$op" "$w" 3); cp=$(median "$op" "$w" 4); launched=$(launched "$op" "$w")
        eval "T_${op}_$w=$t; R_${op}_$w=$rd; C_${op}_$w=$cp"
        base=$(eval echo "\$T_${op}_0")
        printf '  %-12s %8s %9s %8s %8s %8s %8sx\n' "$op" "$w" "$launched" "$t" "$rd" "$cp" "$(ratio "$base" "$t")" | tee -a "$OUT"
    done
done
report ""

S_TRAIN=$(ratio "$T_train_0" "$T_train_2")
report "(off: floral.max_parallel_workers = 0, rows in private memory; 0: serial, rows in shared segments;"
report " train: the default router (probe, with re-seeding); trainpaper: the paper's router ('{\"router\":\"paper\",\"reseed\":false}');"
report " train5: the default training call with 5 epochs instead of 1, for information: more work per row read)"
report ""
S_TRAIN1=$(ratio "$T_train_0" "$T_train_1")
S_PAPER=$(ratio "$T_trainpaper_0" "$T_trainpaper_2")
S_PAPER1=$(ratio "$T_trainpaper_0" "$T_trainpaper_1")
report "floor: train with 2 workers at least 1.7x faster than serial:"
report "  default router  ${S_TRAIN}x (1 worker: ${S_TRAIN1}x): $(pass "$S_TRAIN >= 1.7")"
report "  paper's router  ${S_PAPER}x (1 worker: ${S_PAPER1}x): $(pass "$S_PAPER >= 1.7")"

# Amdahl: the read stays serial; what would P cores give?
report ""
report "where the time goes (serial train): read ${R_train_0} s of ${T_train_0} s (the scan floor,"
report "SELECT sum(cardinality(features)) FROM fm, takes $T_SCAN s); the rest scales with the"
report "cores (2 workers: ${C_train_0} s -> ${C_train_2} s, $(ratio "$C_train_0" "$C_train_2")x)."
report "bound on P cores with the read serial, T(P) = read + rest / P:"
for P in 2 4 8 16 32; do
    report "  P = $P: $(calc 't / (r + (t - r) / p)' -v t="$T_train_0" -v r="$R_train_0" -v p="$P" | awk '{ printf "%.1f", $1 }')x"
done
report ""

# the parallel calls store exactly what the serial call stored
SAME_SUMS=$(q "SELECT count(DISTINCT sums) = 1 AND count(*) = 3
                 FROM floral.contributions WHERE model IN ('t_0_0', 't_1_0', 't_2_0')")
SAME_TENANTS=$(q "SELECT count(*) FROM floral.tenants a JOIN floral.tenants b USING (tenant)
                   WHERE a.model = 't_0_0' AND b.model = 't_2_0' AND a.logits = b.logits")
SAME_LOSS=$(q "SELECT count(*) FROM floral.history a JOIN floral.history b USING (tenant, round, split)
                WHERE a.model = 't_0_0' AND b.model = 't_2_0' AND a.loss = b.loss")
report "same result: the call's sums (floral.contributions) of 0, 1 and 2 workers identical: $SAME_SUMS;"
report "             tenants with identical logits / losses, 2 workers vs serial: $SAME_TENANTS / $SAME_LOSS of $TENANTS"
report ""
report "load at the end: $(loadavg)"
log "report: $OUT"
