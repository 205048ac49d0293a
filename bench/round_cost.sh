#!/usr/bin/env bash
# bench/round_cost.sh: what one floral_train call costs as the number of
# tenants grows, side by side with the floors it is held to.
#
#   1. the same Fashion-MNIST training rows (60,000) in ONE floral_train call,
#      784-200-10, batch 32, 1 epoch, maintenance_work_mem 1GB, for
#      FLoRAL(10%) (4 adaptors, rank 0.1), FLoRAL(1%) (4, 0.01) and FedAvg
#      (0 adaptors), as 1 tenant x 60,000 rows, 300 x 200 and 3,000 x 20:
#      time ratios 300/1 (floor <= 1.15) and 3000/1 (floor <= 1.6)
#   2. right after each of those calls (no VACUUM, no ANALYZE, before any
#      floral_aggregate): pg_total_relation_size of floral.contributions,
#      floral.tenants and floral.history, against the model's size
#      (floor: contributions <= 3 x model bytes, i.e. O(model size), not
#      O(tenants x model size); tenants + history <= 1 KiB per tenant + 128 KiB)
#   3. the 1-tenant call against its roofline: the single-thread sgemm time
#      of every GEMM of forward + backward, adaptors included
#      (bench/sgemm_rate.c at the exact shapes), plus the scan floor
#      SELECT sum(cardinality(features)) FROM the same table (floor <= 1.3x)
#   4. the paper protocol, 20 rounds of 30 tenants x 200 rows (floral_train +
#      floral_aggregate per round) against bench/torch_floral.py, the same
#      local SGD and FloralAvg in PyTorch (one thread, data in memory):
#      speed-up floors >= 4x FLoRAL(10%), >= 2x FLoRAL(1%), >= 1.3x FedAvg;
#      both personalised test accuracies as a check that they do the same work
#   5. a backend's peak memory in one floral_train call over the same 100,000
#      rows as 10 tenants and as 100,000 tenants (floor: RssAnon peak with
#      100,000 tenants <= 1.25 x the peak with 10)
#
# Features are stored the way a user gets them: real[] with the default
# compression (pglz).  The report goes to stdout and to
# bench/results/round-cost-<date>.txt; each floor line starts with PASS, FAIL
# or SKIP, and the last line is a machine-readable `summary key=value ...`.
#
# Run as root (PostgreSQL runs as the postgres user in a throw-away cluster,
# see bench/lib.sh):   bash bench/round_cost.sh
# It runs `make install` first (SKIP_INSTALL=1 to skip), and installs
# Debian's python3-torch with apt-get if /usr/bin/python3 cannot import torch
# (part 4 only; torch is never a dependency of the extension).
#
# Environment knobs (defaults in brackets):
#   BENCH_REPS       [2]      best of this many calls in part 1 (and scans)
#   BENCH_ROWS       [60000]  rows of parts 1-3 (a multiple of every tenant count)
#   COST_TENANTS     ["300 3000"]  tenant counts compared with 1 tenant
#   BENCH_METHODS    ["floral10 floral1 fedavg"]
#   BENCH_PARTS      ["train proto memory"]  train = parts 1-3, proto = 4, memory = 5
#   PROTO_ROUNDS     [20]     PROTO_TENANTS [300]  PROTO_PER_ROUND [30]
#   PROTO_ROWS       [200]    rows per tenant   PROTO_TASK [rotate] (or label_shift: after 20
#                    rounds every method is still near chance there, a weaker check)
#   MEM_ROWS         [100000] MEM_FEW [10]  MEM_MANY [100000]  tenants of part 5
#   MEM_METHOD       [floral1]  MEM_LAYERS [784,16,10]  (see bench/README.md: with
#                    the old storage 100,000 tenants of 784-200-10 would write 66 GB)
#   SGEMM_SECONDS    [0.2]    sgemm_rate --seconds per timing loop
#   BENCH_OUT        [bench/results/round-cost-<date>.txt]
#   PG_BINDIR, BENCH_PORT, SKIP_INSTALL, FLORAL_REPO: see bench/lib.sh
#
# Smoke run (a couple of minutes):
#   BENCH_ROWS=6000 BENCH_REPS=1 PROTO_ROUNDS=2 MEM_ROWS=6000 MEM_MANY=6000 \
#   BENCH_OUT=/tmp/round-cost-smoke.txt bash bench/round_cost.sh
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init round-cost "round-cost-$(date +%Y-%m-%d).txt"

REPS=${BENCH_REPS:-2}
ROWS=${BENCH_ROWS:-60000}
COST_TENANTS=${COST_TENANTS:-"300 3000"}
METHODS=${BENCH_METHODS:-"floral10 floral1 fedavg"}
PARTS=${BENCH_PARTS:-"train proto memory"}
PROTO_ROUNDS=${PROTO_ROUNDS:-20}
PROTO_TENANTS=${PROTO_TENANTS:-300}
PROTO_PER_ROUND=${PROTO_PER_ROUND:-30}
PROTO_ROWS=${PROTO_ROWS:-200}
PROTO_TASK=${PROTO_TASK:-rotate}
PROTO_GROUPS=4
MEM_ROWS=${MEM_ROWS:-100000}
MEM_FEW=${MEM_FEW:-10}
MEM_MANY=${MEM_MANY:-100000}
MEM_METHOD=${MEM_METHOD:-floral1}
MEM_LAYERS=${MEM_LAYERS:-784,16,10}
SGEMM_SECONDS=${SGEMM_SECONDS:-0.2}

LAYERS=784,200,10
BATCH=32
TRAIN_OPTS='{"epochs":1,"batch_size":32,"lr":0.1}'
TRAIN_MWM=1GB

# method -> adaptors, rank, name, PyTorch speed-up floor
declare -A M_ADAPTORS=([floral10]=4 [floral1]=4 [fedavg]=0)
declare -A M_RANK=([floral10]=0.1 [floral1]=0.01 [fedavg]=0.01)
declare -A M_NAME=([floral10]='FLoRAL(10%)' [floral1]='FLoRAL(1%)' [fedavg]='FedAvg')
declare -A M_SPEEDUP=([floral10]=4 [floral1]=2 [fedavg]=1.3)
# floors of part 1 by tenant count (other counts are reported without one)
declare -A TENANT_FLOOR=([300]=1.15 [3000]=1.6)
CONTRIB_FACTOR=3          # part 2: contributions <= 3 x model bytes
PER_TENANT_BYTES=1024     # part 2: tenants + history <= 1 KiB per tenant ...
FIXED_BYTES=131072        # ... + 128 KiB (empty pages, indexes, TOAST tables)
ROOF_FLOOR=1.3            # part 3
MEM_FLOOR=1.25            # part 5

has_part() { [[ " $PARTS " == *" $1 "* ]]; }
for m in $METHODS; do [ -n "${M_ADAPTORS[$m]:-}" ] || die "unknown method '$m' in BENCH_METHODS"; done
[ -n "${M_ADAPTORS[$MEM_METHOD]:-}" ] || die "unknown MEM_METHOD '$MEM_METHOD'"
for t in $COST_TENANTS; do
    [ $((ROWS % t)) -eq 0 ] || die "BENCH_ROWS=$ROWS is not a multiple of $t tenants"
done
[ $((PROTO_TENANTS % PROTO_PER_ROUND)) -eq 0 ] || die "PROTO_TENANTS must be a multiple of PROTO_PER_ROUND"
[ $((PROTO_TENANTS * PROTO_ROWS)) -le 60000 ] || die "PROTO_TENANTS x PROTO_ROWS exceeds the 60,000 training images"
[ "$ROWS" -le 60000 ] || die "BENCH_ROWS is at most 60000 (the training images)"

# ranks of a layer list for rank rho (FLORAL.md "Rank", as floral_create_model)
ranks_for() {
    awk -v layers="$1" -v rho="$2" 'BEGIN {
        n = split(layers, w, ",");
        for (i = 1; i < n; i++) {
            if (rho < 1) { r = int(rho * w[i] * w[i + 1] / (w[i] + w[i + 1])); if (r < 1) r = 1 }
            else r = int(rho + 0.5);
            printf "%s%d", (i > 1 ? "," : ""), r
        } }'
}

# --- PyTorch for part 4 --------------------------------------------------------
if has_part proto && ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
        log "installing python3-torch (Debian) for the PyTorch reference"
        DEBIAN_FRONTEND=noninteractive apt-get install -y python3-torch >"$WORK/apt.log" 2>&1 \
            || { tail -n 20 "$WORK/apt.log" >&2; die "apt-get install python3-torch failed"; }
    else
        die "/usr/bin/python3 cannot import torch; run as root or apt-get install python3-torch"
    fi
fi

bench_install

# --- single-thread sgemm rates (before the server starts: idle machine) ---------
declare -A ROOF_PER_SAMPLE FLOPS_PER_SAMPLE RANKS
if has_part train; then
    log "building and running sgemm_rate"
    bench_build_sgemm_rate
    for m in $METHODS; do
        args=()
        if [ "${M_ADAPTORS[$m]}" -gt 0 ]; then
            RANKS[$m]=$(ranks_for "$LAYERS" "${M_RANK[$m]}")
            args=(--adaptors "${M_ADAPTORS[$m]}" --ranks "${RANKS[$m]}")
        else
            RANKS[$m]=-
        fi
        "$WORK/sgemm_rate" train --layers "$LAYERS" --batch "$BATCH" --seconds "$SGEMM_SECONDS" "${args[@]}" \
            >"$WORK/sgemm-$m.txt"
        ROOF_PER_SAMPLE[$m]=$(awk '$1 == "roofline_seconds_per_sample" { print $2 }' "$WORK/sgemm-$m.txt")
        FLOPS_PER_SAMPLE[$m]=$(awk '$1 == "flops_per_sample_train" { print $2 }' "$WORK/sgemm-$m.txt")
    done
fi

bench_start_cluster 512MB
bench_facts

bench_timing_setup

bench_title round-cost
report "tree:        $REPO @ $GIT_REV"
report "cpu:         $CPU ($(nproc) cores online; ${SIMD:-no avx2/avx512}); load average at start: $LOAD_START"
report "postgresql:  $(q 'SELECT version()') ($PGBIN)"
report "openblas:    ${BLAS_PKGS:-unknown}; floral.so -> ${FLORAL_BLAS:-?}"
report "settings:    OPENBLAS_NUM_THREADS=1 for the server (checked), shared_buffers=512MB, fsync=off,"
report "             synchronous_commit=off, full_page_writes=off, max_parallel_workers_per_gather=0, jit=off,"
report "             autovacuum=off; features real[] with the default compression (pglz)"
report "parts:       $PARTS; methods: $METHODS"
report ""

NPASS=0 NFAIL=0 NSKIP=0
SUMMARY=()
# floor_line LABEL VALUE OP LIMIT DETAIL: one PASS/FAIL/SKIP line
floor_line() {
    local label=$1 value=$2 op=$3 limit=$4 detail=${5:-} verdict
    if [ -z "$value" ] || [ "$value" = na ]; then
        verdict=SKIP; NSKIP=$((NSKIP + 1)); value=na
    else
        verdict=$(awk -v v="$value" -v l="$limit" -v op="$op" \
            'BEGIN { ok = (op == "<=") ? (v + 0 <= l + 0) : (v + 0 >= l + 0); print ok ? "PASS" : "FAIL" }')
        if [ "$verdict" = PASS ]; then NPASS=$((NPASS + 1)); else NFAIL=$((NFAIL + 1)); fi
    fi
    report "   $verdict  $label: $value $op $limit${detail:+  ($detail)}"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "na"; else printf "%.3f", a / b }'; }
kib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1024 }'; }

# Empty floral's per-call tables, so that sizes measured after a call are
# that call's alone (dropping a model leaves dead rows; TRUNCATE gives the
# tables fresh files, no VACUUM involved).
RESET_SQL="SELECT floral_drop_model(name) FROM floral.models WHERE name LIKE 'rc\\_%';
TRUNCATE floral.contributions, floral.tenants, floral.history CASCADE;"

# --- tables ---------------------------------------------------------------------
# tenant name of row id for N tenants, as load_fashion_mnist.py writes them
tenant_expr() {
    local last=$(($1 - 1)) w
    w=${#last}
    [ "$w" -ge 3 ] || w=3
    echo "'t' || lpad((id % $1)::text, $w, '0')"
}
if has_part train || has_part memory; then
    log "generating and loading $ROWS training rows (1 tenant)"
    gen_copy 1 "$WORK/copy-1.txt"
    load_table fm_1 default "$WORK/copy-1.txt"
    check_compression fm_1 pglz
    rm -f "$WORK/copy-1.txt"
    report "tables:      fm_1 ($ROWS rows, 1 tenant, COPY in $COPY_S s): $(table_sizes fm_1); compression $COMP_DIST"
    for t in $COST_TENANTS; do
        has_part train || break
        # the same rows (the same stored pglz datums) in T tenants: row id -> tenant id mod T
        psql_ -c "CREATE TABLE fm_$t AS SELECT id, $(tenant_expr "$t") AS tenant, features, label FROM fm_1" \
              -c "ALTER TABLE fm_$t ADD PRIMARY KEY (id)" -c "VACUUM (ANALYZE) fm_$t"
        check_compression "fm_$t" pglz
        n=$(q "SELECT count(DISTINCT tenant) || ' tenants x ' || min(c) || '-' || max(c) || ' rows'
                 FROM (SELECT tenant, count(*) c FROM fm_$t GROUP BY tenant) s")
        report "             fm_$t (the rows of fm_1, $n): $(table_sizes "fm_$t")"
    done
fi
if has_part proto; then
    log "loading the protocol tables ($PROTO_TENANTS tenants, $PROTO_TASK)"
    gen_copy "$PROTO_TENANTS" "$WORK/copy-proto.txt" --limit $((PROTO_TENANTS * PROTO_ROWS)) \
        --task "$PROTO_TASK" --groups "$PROTO_GROUPS"
    load_table proto_load default "$WORK/copy-proto.txt" $((PROTO_TENANTS * PROTO_ROWS))
    # Laid out the way a user would keep rounds apart: the rows of a round's
    # cohort together, with an index, so that a round's source query reads
    # its own rows only (the stored pglz datums are kept as they are).
    COHORTS=$((PROTO_TENANTS / PROTO_PER_ROUND))
    psql_ -c "CREATE TABLE proto AS SELECT id, tenant, features, label, (id % $PROTO_TENANTS) % $COHORTS AS cohort
                FROM proto_load ORDER BY cohort, id" \
          -c "ALTER TABLE proto ADD PRIMARY KEY (id)" -c "CREATE INDEX ON proto (cohort)" \
          -c "DROP TABLE proto_load" -c "VACUUM (ANALYZE) proto"
    check_compression proto pglz
    PROTO_PLAN=$(q "EXPLAIN (COSTS OFF) SELECT tenant, features, label FROM proto WHERE cohort = 0" | head -n 1 | sed 's/^ *//')
    gen_copy "$PROTO_TENANTS" "$WORK/copy-proto-test.txt" --split test --limit 10000 \
        --task "$PROTO_TASK" --groups "$PROTO_GROUPS"
    load_table proto_test default "$WORK/copy-proto-test.txt" 10000
    rm -f "$WORK"/copy-proto*.txt
    report "             proto ($PROTO_TENANTS tenants x $PROTO_ROWS training rows, $PROTO_TASK, $PROTO_GROUPS groups; sorted by"
    report "               round cohort, indexed on it; a round's source runs as: $PROTO_PLAN): $(table_sizes proto)"
    report "             proto_test (10000 test rows, the same tenants and groups): $(table_sizes proto_test)"
fi
if has_part memory; then
    log "building the memory table ($MEM_ROWS rows)"
    psql_ -c "CREATE TABLE mem AS
                SELECT i AS id, 'f' || (i % $MEM_FEW) AS tenant_few,
                       'm' || lpad((i % $MEM_MANY)::text, 6, '0') AS tenant_many, features, label
                  FROM generate_series(0, $MEM_ROWS - 1) i JOIN fm_1 ON fm_1.id = i % $ROWS" \
          -c "VACUUM (ANALYZE) mem"
    report "             mem ($MEM_ROWS rows: fm_1's rows repeated; tenant_few: $MEM_FEW tenants, tenant_many: $MEM_MANY): $(q "SELECT pg_size_pretty(pg_total_relation_size('mem'))")"
fi
report ""

# --- parts 1-3: one call over many tenants ---------------------------------------------
# train_cost METHOD TENANTS: REPS calls on fm_TENANTS, each after RESET_SQL
# and a fresh model; sets C_BEST C_RUNS C_TENANTS C_EXAMPLES C_LOSS
# C_CONTRIB C_TENANTS_B C_HISTORY (bytes after the last call) C_PARAMS
# C_RANKS C_READ C_COMPUTE (floral.timing split of the fastest call)
train_cost() {
    local m=$1 t=$2 f="$WORK/cost-$1-$2" i split
    {
        printf '%s\n' "LOAD 'floral';" "$TIMING_SETUP" "SET maintenance_work_mem = '$TRAIN_MWM';"
        for ((i = 0; i < REPS; i++)); do
            printf '%s\n' "$RESET_SQL" \
                "SELECT floral_create_model('rc_$m', '{$LAYERS}', 'classification', ${M_ADAPTORS[$m]}, ${M_RANK[$m]}, '{\"seed\":1, \"router\": \"paper\", \"reseed\": false}');" \
                '\timing on' \
                "SELECT 'TRAIN', count(*), sum(examples), round((sum(examples * loss) / sum(examples))::numeric, 4)
                   FROM floral_train('rc_$m', 'SELECT tenant, features, label FROM fm_$t', '$TRAIN_OPTS');" \
                '\timing off' \
                "SELECT 'SIZES', pg_total_relation_size('floral.contributions'),
                        pg_total_relation_size('floral.tenants'), pg_total_relation_size('floral.history');"
        done
        printf '%s\n' "SELECT 'MODEL', base_parameters + adaptor_parameters, array_to_string(ranks, ',')
                         FROM floral.model_summary WHERE name = 'rc_$m';" "$RESET_SQL"
    } | psql_ -At -F ' ' -f - >"$f.out" 2>"$f.err" || { cat "$f.err" >&2; exit 1; }
    C_BEST=$(best_time "$f.out")
    C_RUNS=$(run_times "$f.out")
    read -r C_TENANTS C_EXAMPLES C_LOSS < <(awk '$1 == "TRAIN" { v = $2 " " $3 " " $4 } END { print v }' "$f.out")
    read -r C_CONTRIB C_TENANTS_B C_HISTORY < <(awk '$1 == "SIZES" { v = $2 " " $3 " " $4 } END { print v }' "$f.out")
    read -r C_PARAMS C_RANKS < <(awk '$1 == "MODEL" { print $2, $3 }' "$f.out")
    split=$(fastest_split "$f")
    C_READ=${split%% *}; C_COMPUTE=${split##* }
    [ -n "$split" ] || { C_READ=na; C_COMPUTE=na; }
    if [ "$C_TENANTS" != "$t" ] || [ "$C_EXAMPLES" != "$ROWS" ]; then
        die "fm_$t with $m: floral_train reported $C_TENANTS tenants and $C_EXAMPLES examples, expected $t and $ROWS"
    fi
}

declare -A T_BEST MODEL_BYTES
if has_part train; then
    report "1.+2. one floral_train call over the same $ROWS rows of fm_<tenants>, model $LAYERS, $TRAIN_OPTS,"
    report "      maintenance_work_mem=$TRAIN_MWM; best of $REPS calls (psql \\timing), each after TRUNCATE of floral's"
    report "      per-call tables and a fresh model (seed 1); sizes: pg_total_relation_size right after the call,"
    report "      before any floral_aggregate, no VACUUM/ANALYZE"
    report ""
    report "   method        tenants  rows/tenant  best_s   read_s  compute_s  runs_s            loss    contributions  tenants   history   model"
    report "                                                                                               kB             kB        kB        kB"
    for m in $METHODS; do
        for t in 1 $COST_TENANTS; do
            log "part 1: ${M_NAME[$m]}, $t tenant(s)"
            train_cost "$m" "$t"
            T_BEST[$m,$t]=$C_BEST
            SUMMARY+=("train_s${t}_$m=$C_BEST")
            MODEL_BYTES[$m]=$((C_PARAMS * 4))
            eval "SZ_C_${m}_$t=$C_CONTRIB SZ_T_${m}_$t=$C_TENANTS_B SZ_H_${m}_$t=$C_HISTORY"
            report "$(printf '   %-12s %8d %12d %7.3f %8s %10s  %-16s %6s %14s %8s %9s %7s' \
                "${M_NAME[$m]}" "$t" $((ROWS / t)) "$C_BEST" "$C_READ" "$C_COMPUTE" "$C_RUNS" "$C_LOSS" \
                "$(kib "$C_CONTRIB")" "$(kib "$C_TENANTS_B")" "$(kib "$C_HISTORY")" "$(kib "${MODEL_BYTES[$m]}")")"
        done
        report "   ${M_NAME[$m]}: $C_PARAMS parameters (floral.model_summary base + adaptor), ranks {${C_RANKS}}, model ${MODEL_BYTES[$m]} bytes as float4"
        [ "${M_ADAPTORS[$m]}" -eq 0 ] || [ "$C_RANKS" = "${RANKS[$m]}" ] \
            || report "   NOTE: floral's ranks {$C_RANKS} differ from the roofline's {${RANKS[$m]}}"
    done
    [ -n "$TIMING_SETUP" ] || report "   (no floral.timing GUC in this build: read_s/compute_s are na)"
    report ""

    report "1. time of one call over T tenants / time over 1 tenant (same rows, same method)"
    for m in $METHODS; do
        for t in $COST_TENANTS; do
            r=$(ratio "${T_BEST[$m,$t]}" "${T_BEST[$m,1]}")
            SUMMARY+=("ratio${t}_$m=$r")
            if [ -n "${TENANT_FLOOR[$t]:-}" ]; then
                floor_line "${M_NAME[$m]} $t/1 tenants" "$r" '<=' "${TENANT_FLOOR[$t]}" \
                    "${T_BEST[$m,$t]} s / ${T_BEST[$m,1]} s"
            else
                report "   info  ${M_NAME[$m]} $t/1 tenants: $r (no floor for $t tenants)"
            fi
        done
    done
    report ""

    report "2. bytes in floral's tables right after the call, against the model (float4 bytes = 4 x parameters)"
    report "   floors: floral.contributions <= $CONTRIB_FACTOR x model bytes (O(model size), whatever the tenants);"
    report "           floral.tenants + floral.history <= $PER_TENANT_BYTES bytes per tenant + $FIXED_BYTES (O(tenants), not O(tenants x model))"
    for m in $METHODS; do
        for t in 1 $COST_TENANTS; do
            eval "c=\$SZ_C_${m}_$t th=\$(( SZ_T_${m}_$t + SZ_H_${m}_$t ))"
            mbytes=${MODEL_BYTES[$m]}
            SUMMARY+=("contrib_bytes${t}_$m=$c" "state_bytes${t}_$m=$th")
            floor_line "${M_NAME[$m]} $t tenant(s), contributions / model bytes" "$(ratio "$c" "$mbytes")" '<=' "$CONTRIB_FACTOR" \
                "$c / $mbytes bytes; $(ratio "$c" "$((mbytes * t))") of tenants x model"
            floor_line "${M_NAME[$m]} $t tenant(s), tenants+history bytes" "$th" '<=' "$((PER_TENANT_BYTES * t + FIXED_BYTES))" \
                "$(awk -v b="$th" -v t="$t" 'BEGIN { printf "%.0f", b / t }') bytes per tenant"
        done
        SUMMARY+=("model_bytes_$m=${MODEL_BYTES[$m]}")
    done
    report ""

    log "part 3: scan floor on fm_1"
    # the floor is cheap to time: at least 3 scans, whatever BENCH_REPS says
    SCAN_REPS=$((REPS > 3 ? REPS : 3))
    SCAN=$(REPS=$SCAN_REPS time_sql "$WORK/scan" '' 'SELECT sum(cardinality(features)) FROM fm_1;')
    SUMMARY+=("scan_floor_s=$SCAN")
    report "3. 1 tenant x $ROWS rows against its floor = single-thread sgemm roofline + scan floor"
    report "   scan floor: SELECT sum(cardinality(features)) FROM fm_1 (pglz): $SCAN s (best of $SCAN_REPS)"
    report "   roofline: every GEMM of a training step (forward, weight and input gradients, adaptors"
    report "   included; bias, activation, softmax, preconditioning solves and SGD update left out) at the"
    report "   single-thread OpenBLAS rate bench/sgemm_rate.c measures at exactly those shapes (batch $BATCH)"
    for m in $METHODS; do
        report "   ${M_NAME[$m]} (adaptors ${M_ADAPTORS[$m]}, ranks {${RANKS[$m]}}): per shape  M N K flops s/call GFLOP/s [calls/step]"
        awk '$1 == "shape" { printf "       %-5s %4d %4d %4d %10d  %.3e  %6.1f%s\n", $2, $3, $4, $5, $6, $7, $8, (NF >= 9 ? "  x" $9 : "") }' \
            "$WORK/sgemm-$m.txt" | tee -a "$OUT"
        roof=$(calc 'p * r' -v p="${ROOF_PER_SAMPLE[$m]}" -v r="$ROWS")
        fl=$(calc 'a + b' -v a="$roof" -v b="$SCAN")
        report "     ${FLOPS_PER_SAMPLE[$m]} GEMM FLOPs/sample, ${ROOF_PER_SAMPLE[$m]} s/sample: roofline $(printf '%.3f' "$roof") s + scan $SCAN s = floor $(printf '%.3f' "$fl") s"
        r=$(ratio "${T_BEST[$m,1]}" "$fl")
        SUMMARY+=("roofline_ratio_$m=$r")
        floor_line "${M_NAME[$m]} 1 tenant, measured / (roofline + scan)" "$r" '<=' "$ROOF_FLOOR" \
            "${T_BEST[$m,1]} s / $(printf '%.3f' "$fl") s"
    done
    report ""
fi

# --- part 4: the paper protocol against PyTorch --------------------------------------
if has_part proto; then
    report "4. paper protocol: $PROTO_ROUNDS rounds of $PROTO_PER_ROUND tenants x $PROTO_ROWS rows ($PROTO_TASK, $PROTO_GROUPS groups,"
    report "   $PROTO_TENANTS tenants; round r trains the tenants k with k mod $COHORTS = r mod $COHORTS), model $LAYERS,"
    report "   $TRAIN_OPTS, router_lr 0.1, noise 1.0, min_prob 0.01, alpha 1, preconditioning eps 1e-5"
    report "   floral: per round floral_train(..., 'SELECT tenant, features, label FROM proto WHERE cohort = <r mod $COHORTS>')"
    report "           + floral_aggregate, wall time by psql"
    report "           \\timing summed over the rounds (default maintenance_work_mem; model created untimed)"
    report "   PyTorch: bench/torch_floral.py, /usr/bin/python3, torch.set_num_threads(1), OPENBLAS_NUM_THREADS=1,"
    report "           the same local SGD and FloralAvg, data in memory as tensors, after one untimed warm-up tenant"
    report "   accuracy/loss: personalised, on the $PROTO_TASK test split of all $PROTO_TENANTS tenants (floral_evaluate /"
    report "           the same in PyTorch); train loss: the last round's, weighted by examples"
    report ""
    report "   method        floral_s  (train   aggregate)  torch_s  speed-up  floral acc/loss   torch acc/loss   last-round train loss floral/torch"
    declare -A SPEEDUP P_TORCH_S P_FLORAL_S
    for m in $METHODS; do
        log "part 4: ${M_NAME[$m]}, floral"
        f="$WORK/proto-$m"
        {
            printf '%s\n' "LOAD 'floral';" "$RESET_SQL" \
                "SELECT floral_create_model('rc_p$m', '{$LAYERS}', 'classification', ${M_ADAPTORS[$m]}, ${M_RANK[$m]}, '{\"seed\":1, \"router\": \"paper\", \"reseed\": false}');"
            for ((r = 0; r < PROTO_ROUNDS; r++)); do
                printf '%s\n' '\timing on' \
                    "SELECT 'TRAIN', count(*), sum(examples), sum(examples * loss)
                       FROM floral_train('rc_p$m', 'SELECT tenant, features, label FROM proto WHERE cohort = $((r % COHORTS))', '$TRAIN_OPTS');" \
                    "SELECT 'AGG', floral_aggregate('rc_p$m');" '\timing off'
            done
            printf '%s\n' "SELECT 'EVAL', sum(examples), sum(examples * loss) / sum(examples), sum(examples * accuracy) / sum(examples)
                             FROM floral_evaluate('rc_p$m', 'SELECT tenant, features, label FROM proto_test');" "$RESET_SQL"
        } | psql_ -At -F ' ' -f - >"$f.out" 2>"$f.err" || { cat "$f.err" >&2; exit 1; }
        # Time lines alternate: floral_train, floral_aggregate
        read -r P_TRAIN P_AGG < <(awk '/^Time: / { n++; if (n % 2) tr += $2; else ag += $2 }
                                       END { printf "%.3f %.3f\n", tr / 1000, ag / 1000 }' "$f.out")
        P_FLORAL=$(calc 'a + b' -v a="$P_TRAIN" -v b="$P_AGG")
        P_TENANTS=$(awk '$1 == "TRAIN" { print $2; exit }' "$f.out")
        P_LAST=$(awk '$1 == "TRAIN" { v = $4 / $3 } END { printf "%.4f", v }' "$f.out")
        read -r P_ACC P_LOSS < <(awk '$1 == "EVAL" { printf "%.4f %.4f\n", $4, $3 }' "$f.out")
        [ "$P_TENANTS" = "$PROTO_PER_ROUND" ] || die "protocol round trained $P_TENANTS tenants, expected $PROTO_PER_ROUND"

        log "part 4: ${M_NAME[$m]}, PyTorch"
        /usr/bin/python3 "$HERE/torch_floral.py" --layers "$LAYERS" --adaptors "${M_ADAPTORS[$m]}" --rank "${M_RANK[$m]}" \
            --rounds "$PROTO_ROUNDS" --tenants "$PROTO_TENANTS" --per-round "$PROTO_PER_ROUND" \
            --rows-per-tenant "$PROTO_ROWS" --task "$PROTO_TASK" --groups "$PROTO_GROUPS" --batch "$BATCH" \
            --lr 0.1 --router-lr 0.1 --noise 1.0 --min-prob 0.01 --alpha 1 --eps 1e-5 --seed 1 --test \
            >"$WORK/torch-$m.txt" 2>"$WORK/torch-$m.err" || { cat "$WORK/torch-$m.err" >&2; die "torch_floral.py failed"; }
        T_S=$(awk '$1 == "train_seconds" { print $2 }' "$WORK/torch-$m.txt")
        T_LAST=$(awk '$1 == "final_round_loss" { print $2 }' "$WORK/torch-$m.txt")
        read -r T_LOSS T_ACC < <(awk '$1 == "test_examples" { print $4, $6 }' "$WORK/torch-$m.txt")
        SPEEDUP[$m]=$(ratio "$T_S" "$P_FLORAL")
        P_TORCH_S[$m]=$T_S; P_FLORAL_S[$m]=$P_FLORAL
        report "$(printf '   %-12s %8.3f  (%6.3f  %8.3f)  %7.3f  %7sx  %.4f / %.4f  %.4f / %.4f  %.4f / %.4f' \
            "${M_NAME[$m]}" "$P_FLORAL" "$P_TRAIN" "$P_AGG" "$T_S" "${SPEEDUP[$m]}" "$P_ACC" "$P_LOSS" "$T_ACC" "$T_LOSS" "$P_LAST" "$T_LAST")"
        SUMMARY+=("proto_floral_s_$m=$P_FLORAL" "proto_torch_s_$m=$T_S" "speedup_$m=${SPEEDUP[$m]}"
                  "acc_floral_$m=$P_ACC" "acc_torch_$m=$T_ACC")
    done
    report "   ($(awk '$1 == "torch" { print "torch " $2 } $1 == "threads" { print "threads " $2 }' "$WORK/torch-$m.txt" | paste -sd ' '))"
    for m in $METHODS; do
        floor_line "${M_NAME[$m]} speed-up over PyTorch" "${SPEEDUP[$m]}" '>=' "${M_SPEEDUP[$m]}" \
            "PyTorch ${P_TORCH_S[$m]} s / floral ${P_FLORAL_S[$m]} s"
    done
    report ""
fi

# --- part 5: peak memory, few tenants against many ---------------------------------
if has_part memory; then
    mm=$MEM_METHOD
    report "5. peak memory of one floral_train call over the same $MEM_ROWS rows (table mem), ${M_NAME[$mm]},"
    report "   model {$MEM_LAYERS}, $TRAIN_OPTS, maintenance_work_mem=$TRAIN_MWM, a fresh session per call"
    report "   (bench/lib.sh measure: VmHWM and RssShmem read by the backend right after the call, RssAnon"
    report "   polled every 20 ms from outside during it)"
    mem_call() {   # mem_call LABEL TENANT_COLUMN
        psql_ -q -c "$RESET_SQL" >/dev/null
        q "SELECT floral_create_model('rc_mem', '{$MEM_LAYERS}', 'classification', ${M_ADAPTORS[$mm]}, ${M_RANK[$mm]}, '{\"seed\":1, \"router\": \"paper\", \"reseed\": false}')" >/dev/null
        MEM_PARAMS=$(q "SELECT base_parameters + adaptor_parameters FROM floral.model_summary WHERE name = 'rc_mem'")
        measure "$1" "$TRAIN_MWM" "SELECT 'TRAIN', count(*), sum(examples) FROM floral_train('rc_mem', 'SELECT $2, features, label FROM mem', '$TRAIN_OPTS');"
        MEM_TEN=$(awk '$1 == "TRAIN" { print $2 }' "$WORK/out.$1")
    }
    printf '   %-26s %9s %9s %9s %10s %8s %8s\n' "" VmHWM RssShmem HWM-shmem "RssAnon pk" temp seconds | tee -a "$OUT"
    printf '   %-26s %9s %9s %9s %10s %8s\n' "" MB MB MB MB MB | tee -a "$OUT"
    declare -A MEM_ANON MEM_HWM
    for spec in "few:tenant_few:$MEM_FEW" "many:tenant_many:$MEM_MANY"; do
        IFS=: read -r key col n <<<"$spec"
        log "part 5: $n tenants"
        mem_call "mem_$key" "$col"
        [ "$MEM_TEN" = "$n" ] || die "memory run: floral_train reported $MEM_TEN tenants, expected $n"
        MEM_ANON[$key]=$M_ANONPK; MEM_HWM[$key]=$M_HWM
        printf '   %-26s %9s %9s %9s %10s %8s %8s\n' "$n tenants x $((MEM_ROWS / n)) rows" "$M_HWM_MB" "$M_SHMEM_MB" \
            "$M_PRIV_MB" "$M_ANON_MB" "$M_TEMP_MB" "$M_SECONDS" | tee -a "$OUT"
    done
    psql_ -q -c "$RESET_SQL" >/dev/null
    report "   model: $MEM_PARAMS parameters, $((MEM_PARAMS * 4)) bytes as float4"
    report "   rows in floral's row store: $MEM_ROWS x $(( ${MEM_LAYERS%%,*} + 1 )) floats = $(awk -v r="$MEM_ROWS" -v f="${MEM_LAYERS%%,*}" 'BEGIN { printf "%.0f", r * (f + 1) * 4 / 1048576 }') MB"
    report "   growth: $(awk -v a="${MEM_ANON[few]}" -v b="${MEM_ANON[many]}" -v n="$MEM_MANY" -v f="$MEM_FEW" \
        'BEGIN { printf "%+.1f MB RssAnon peak, %.0f bytes per extra tenant", (b - a) / 1024, (b - a) * 1024 / (n - f) }')"
    SUMMARY+=("mem_rssanon_kb_$MEM_FEW=${MEM_ANON[few]}" "mem_rssanon_kb_$MEM_MANY=${MEM_ANON[many]}"
              "mem_vmhwm_kb_$MEM_FEW=${MEM_HWM[few]}" "mem_vmhwm_kb_$MEM_MANY=${MEM_HWM[many]}")
    floor_line "RssAnon peak $MEM_MANY tenants / $MEM_FEW tenants" "$(ratio "${MEM_ANON[many]}" "${MEM_ANON[few]}")" '<=' "$MEM_FLOOR" \
        "$(mb "${MEM_ANON[many]}") MB / $(mb "${MEM_ANON[few]}") MB"
    report ""
fi

report "load average at end: $(loadavg) (at start: $LOAD_START; other work on the 2 shared cores skews timings)"
report "floors: $NPASS PASS, $NFAIL FAIL, $NSKIP SKIP; report written to $OUT"
report "summary date=$(date -u +%Y-%m-%d) rev=${GIT_REV%% *} rows=$ROWS reps=$REPS pass=$NPASS fail=$NFAIL skip=$NSKIP ${SUMMARY[*]}"
