#!/usr/bin/env bash
# bench/paper.sh: the FLoRAL paper's benchmark protocol on Fashion-MNIST, run
# entirely through floral's SQL functions in a temporary PostgreSQL 15 cluster.
#
# Protocol (FLORAL.md, last section): 300 tenants in 4 groups (tenant k in
# group k mod 4), the 60,000 training and 10,000 test images split IID across
# tenants (image i -> tenant i mod 300), two tasks:
#   rotate       group c sees its images rotated by 90*c degrees
#   label_shift  group c sees label y as (y + c) mod 10
# MLP 784-200-10 ReLU; every round a seeded sample of the tenants trains one
# local epoch (batch 32, lr 0.1, router_lr = lr) with floral_train, then
# floral_aggregate merges the round.  Methods:
#   fedavg    FedAvg                     adaptors 0
#   local     Local Adaptor              adaptors 1, rank 0.01 (ranks 1/1), private_adaptors
#   ensemble  Ensemble                   adaptors 4, ensemble: 4 full models mixed at the output
#   floral1   FLoRAL(1%)                 adaptors 4, rank 0.01
#   floral10  FLoRAL(10%)                adaptors 4, rank 0.1
#   oracle10  FLoRAL(10%), oracle router adaptors 4, rank 0.1, every tenant's
#                                        mixture pinned to its group's one-hot
#   floral10pr, floral1pr                FLoRAL(10%) / FLoRAL(1%) with router "probe"
#                                        and reseed (README, "A router that closes the
#                                        oracle gap"); more variants in paper.sql
# Metric: personalised test accuracy over all 300 tenants weighted by test
# examples (floral_evaluate), every --eval-every rounds and at the end.
#
# Usage (as root; installs the Debian packages and floral itself first):
#   bash bench/paper.sh --quick     # start here: 100 rounds, 1 seed, 20% of tenants per round,
#                                   # every method but floral1pr (about 10 min on 2 free cores)
#   bash bench/paper.sh --full      # 500 rounds, seeds 1 and 2, 10% of tenants per round
#   bash bench/paper.sh --measure   # 10 rounds of every job, extrapolated to --full
# Knobs (override the mode's defaults):
#   --rounds N  --seeds "1 2"  --per-round K  --eval-every E  --workers W
#   --methods "fedavg local ensemble floral1 floral10 oracle10"  --tasks "rotate label_shift"
#   --tag NAME (file name part, default the mode)  --no-deps (skip install-deps.sh)
# Environment: PAPER_PORT (or BENCH_PORT) [a free port], MIN_FREE_GB [10],
#   BENCH_RESULTS [bench/results]; PG_BINDIR (or PGBIN), SKIP_INSTALL,
#   FLORAL_REPO: see bench/lib.sh
#
# Jobs (task, method, seed) run in --workers (2) parallel sessions of one
# database, each session single-threaded (OPENBLAS_NUM_THREADS=1).
# Outputs in bench/results/ (BENCH_RESULTS):
#   paper-<tag>-<date>.csv          task,method,seed,round,accuracy,elapsed_s
#   paper-<tag>-<date>-router.csv   router purity per evaluation (FLoRAL methods)
#   paper-<tag>-<date>.md           summary: accuracy mean and spread, costs, reference numbers
#   paper-<tag>-<task>.png          accuracy vs round, mean over seeds, one line per method
# Progress: one line per evaluation on stderr.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DATE=$(date +%Y-%m-%d)

MODE=full
ROUNDS= SEEDS= PER_ROUND= EVAL_EVERY=10 WORKERS=2 TAG= DEPS=1
METHODS=
TASKS="rotate label_shift"
TENANTS=300
GROUPS_N=4
TRAIN_MWM=256MB
while [ $# -gt 0 ]; do
	case $1 in
		--quick) MODE=quick ;;
		--full) MODE=full ;;
		--measure) MODE=measure ;;
		--rounds) ROUNDS=$2; shift ;;
		--seeds) SEEDS=$2; shift ;;
		--per-round) PER_ROUND=$2; shift ;;
		--eval-every) EVAL_EVERY=$2; shift ;;
		--workers) WORKERS=$2; shift ;;
		--methods) METHODS=$2; shift ;;
		--tasks) TASKS=$2; shift ;;
		--tag) TAG=$2; shift ;;
		--no-deps) DEPS=0 ;;
		-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
		*) echo "paper.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done
case $MODE in
	quick)   : "${ROUNDS:=100}" "${SEEDS:=1}" "${PER_ROUND:=60}"
	         : "${METHODS:=ensemble floral10pr oracle10 floral10 local floral1 fedavg}" ;;
	full)    : "${ROUNDS:=500}" "${SEEDS:=1 2}" "${PER_ROUND:=30}" ;;
	measure) : "${ROUNDS:=10}" "${SEEDS:=1}" "${PER_ROUND:=30}" ;;
esac
: "${METHODS:=ensemble floral10pr floral1pr oracle10 floral10 local floral1 fedavg}"
: "${TAG:=$MODE}"
for m in $METHODS; do
	case $m in fedavg|local|ensemble|floral1|floral10|oracle10|floral10p|floral10v|floral10pv|floral1p|floral1pv|floral10pr|floral10pvr|floral1pr|floral1pvr) ;;
		*) echo "paper.sh: unknown method $m" >&2; exit 2 ;; esac
done
for t in $TASKS; do
	case $t in rotate|label_shift) ;; *) echo "paper.sh: unknown task $t" >&2; exit 2 ;; esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $PER_ROUND =~ ^[1-9][0-9]*$ && $PER_ROUND -le $TENANTS
   && $EVAL_EVERY =~ ^[1-9][0-9]*$ && $WORKERS =~ ^[1-9][0-9]*$ ]] \
	|| { echo "paper.sh: bad --rounds/--per-round/--eval-every/--workers" >&2; exit 2; }
for s in $SEEDS; do [[ $s =~ ^[0-9]+$ ]] || { echo "paper.sh: bad seed $s" >&2; exit 2; }; done

[ "$(id -u)" -eq 0 ] || { echo "paper.sh: run as root (it installs packages and starts PostgreSQL as postgres)" >&2; exit 1; }
# the cluster, its temporary directory and the cleanup at exit: bench/lib.sh
# (PAPER_PORT, else BENCH_PORT, picks the port: the socket is in $WORK and
# nothing listens on TCP, but the port number names the socket file and the
# shared memory key); the database is "paper"
BENCH_DB=paper
BENCH_PORT=${PAPER_PORT:-${BENCH_PORT:-}}
bench_init paper
log() { printf '[paper %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { echo "paper.sh: $*" >&2; exit 1; }
T_START=$(date +%s)

# --- packages and floral from this tree ------------------------------------
if [ "$DEPS" = 1 ]; then
	bash "$REPO/scripts/install-deps.sh" >&2
fi
mkdir -p "$RESULTS"
bench_install

# --- temporary cluster, stopped and removed at exit --------------------------
# bench/lib.sh's throwaway settings (durability off), but for autovacuum.
# Every round leaves a lot of dead rows behind: floral.contributions (a
# whole trained model per tenant, about 26 MB per round of 30 FLoRAL(10%)
# tenants), the pruned floral.rounds row and the trained tenants' rows.
# Throttled autovacuum cannot keep up with that (a first full run grew the
# contributions' TOAST to 67 GB), so autovacuum runs unthrottled and a
# janitor session VACUUMs those tables every few seconds during the run
# (below).
bench_start_cluster 1GB "max_wal_size = 2GB
autovacuum = on
autovacuum_naptime = 10s
autovacuum_vacuum_cost_delay = 0"
# the update sizes are measured with the federation's floral._branch_update
psql_ -c 'CREATE EXTENSION floral_federation CASCADE'

# --- data ------------------------------------------------------------------
log "loading Fashion-MNIST: $TENANTS tenants, $GROUPS_N groups, tasks: $TASKS"
for t in $TASKS; do
	psql_ -c "CREATE TABLE ${t}_train (id int PRIMARY KEY, tenant text NOT NULL, features real[] COMPRESSION lz4 NOT NULL, label int NOT NULL)" \
		  -c "CREATE TABLE ${t}_test (LIKE ${t}_train INCLUDING ALL)"
done
load() {   # load SPLIT TASK
	/usr/bin/python3 "$HERE/load_fashion_mnist.py" --split "$1" --tenants $TENANTS --task "$2" --groups $GROUPS_N \
		| psql_ -c "COPY ${2}_${1} FROM STDIN"
}
for t in $TASKS; do
	load train "$t" & p1=$!
	load test "$t" & p2=$!
	wait $p1 || die "loading ${t}_train failed"
	wait $p2 || die "loading ${t}_test failed"
	psql_ -c "CREATE INDEX ON ${t}_train (tenant)" -c "CREATE INDEX ON ${t}_test (tenant)" \
		  -c "VACUUM ANALYZE ${t}_train" -c "VACUUM ANALYZE ${t}_test"
	n=$(q "SELECT (SELECT count(*) FROM ${t}_train) || ' ' || (SELECT count(*) FROM ${t}_test) || ' '
	          || (SELECT count(DISTINCT tenant) FROM ${t}_train) || ' '
	          || (SELECT count(*) FROM ${t}_train WHERE pg_column_compression(features) IS DISTINCT FROM 'lz4')")
	[ "$n" = "60000 10000 $TENANTS 0" ] || die "${t}: rows/test rows/tenants/non-lz4 = $n, expected 60000 10000 $TENANTS 0"
done

psql_ -f "$HERE/paper.sql" >/dev/null
q "INSERT INTO paper_tenants SELECT tenant, substr(tenant, 2)::int % $GROUPS_N
     FROM (SELECT DISTINCT tenant FROM $(set -- $TASKS; echo "$1")_train) s" >/dev/null
# Job order: seed by seed, the costlier methods first within a seed, so that
# the two queues finish close together.
id=0
for s in $SEEDS; do
	for m in $METHODS; do
		for t in $TASKS; do
			id=$((id + 1))
			q "INSERT INTO paper_jobs (id, task, method, seed) VALUES ($id, '$t', '$m', $s)" >/dev/null
		done
	done
done
NJOBS=$id
log "mode $MODE: $ROUNDS rounds, $PER_ROUND of $TENANTS tenants per round, seeds {$SEEDS}, evaluation every $EVAL_EVERY rounds;" \
	"$NJOBS jobs on $WORKERS workers; data loaded in $(( $(date +%s) - T_START )) s"

# --- workers -----------------------------------------------------------------
worker() {
	local w=$1
	while [ "$(q "SELECT count(*) FROM paper_jobs WHERE state = 'queued'")" != 0 ]; do
		psql_ -c "SET maintenance_work_mem = '$TRAIN_MWM'" \
			  -c "CALL paper_worker($w, $ROUNDS, $PER_ROUND, $EVAL_EVERY)" 2>&1 >/dev/null \
			| sed -u "s/^NOTICE:  paper: /[paper w$w] /" >&2 || true
		q "UPDATE paper_jobs SET state = 'failed', finished_at = clock_timestamp()
		   WHERE state = 'running' AND worker = $w RETURNING 'w$w: job ' || id || ' (' || task || ' ' || method
		   || ' seed ' || seed || ') FAILED'" >&2
	done
}
# The janitor: VACUUM the tables that every round fills with dead rows, and
# stop the run (not the machine's disk) if free space falls below
# MIN_FREE_GB.  Records the largest database size seen.
MIN_FREE_GB=${MIN_FREE_GB:-10}
echo 0 >"$WORK/peak_db_bytes"
janitor() {
	local avail size
	while :; do
		sleep 3
		psql_ -c 'VACUUM (SKIP_LOCKED) floral.contributions' -c 'VACUUM (SKIP_LOCKED) floral.rounds' \
			  -c 'VACUUM (SKIP_LOCKED) floral.tenants' >/dev/null 2>&1 || true
		size=$(q "SELECT pg_database_size('paper')" 2>/dev/null || echo 0)
		[ "$size" -gt "$(cat "$WORK/peak_db_bytes")" ] && echo "$size" >"$WORK/peak_db_bytes"
		avail=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
		if [ "$avail" -lt $((MIN_FREE_GB * 1024 * 1024)) ]; then
			log "janitor: only $((avail / 1024)) MB free on $WORK's file system: stopping the jobs"
			q "UPDATE paper_jobs SET state = 'failed' WHERE state = 'queued'" >/dev/null || true
			q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			   WHERE datname = 'paper' AND pid <> pg_backend_pid() AND query LIKE 'CALL paper_worker%'" >/dev/null || true
		fi
	done
}
janitor &
JANITOR_PID=$!
WORK_PIDS+=("$JANITOR_PID")   # ended at exit (scripts/lib.sh), like the workers

T_RUN=$(date +%s)
bench_git_rev ' + uncommitted changes' . ':(exclude)bench'
SO_SUM=$(sha256sum "$("$PG_CONFIG" --pkglibdir)/floral.so" | cut -c1-12)
WORKER_PIDS=()
for ((w = 1; w <= WORKERS; w++)); do
	worker $w &
	WORKER_PIDS+=($!)
done
WORK_PIDS+=("${WORKER_PIDS[@]}")
for p in "${WORKER_PIDS[@]}"; do wait "$p" || true; done
kill "$JANITOR_PID" 2>/dev/null || true
wait "$JANITOR_PID" 2>/dev/null || true
WORK_PIDS=()
PEAK_DB_MB=$(( $(cat "$WORK/peak_db_bytes") / 1024 / 1024 ))
RUN_S=$(( $(date +%s) - T_RUN ))
FAILED=$(q "SELECT count(*) FROM paper_jobs WHERE state <> 'done'")
log "jobs finished in $RUN_S s ($FAILED not done)"

# --- outputs -----------------------------------------------------------------
BASE=$RESULTS/paper-$TAG-$DATE
psql_ -c "\\copy (SELECT task, method, seed, round, round(accuracy::numeric, 2) AS accuracy,
                         round(elapsed_s::numeric, 1) AS elapsed_s
                  FROM paper_results ORDER BY task, method, seed, round) TO '$WORK/out.csv' CSV HEADER"
cp "$WORK/out.csv" "$BASE.csv"
psql_ -c "\\copy (SELECT task, method, seed, round, round(router_purity::numeric, 3) AS router_purity,
                         router_adaptors, round(train_loss::numeric, 4) AS train_loss
                  FROM paper_results WHERE router_purity IS NOT NULL
                  ORDER BY task, method, seed, round) TO '$WORK/router.csv' CSV HEADER"
cp "$WORK/router.csv" "$BASE-router.csv"

# Reference numbers (FLORAL.md): paper on MNIST, and a PyTorch
# reimplementation on Fashion-MNIST (500 rounds, mean of 2 seeds).
q "CREATE TABLE paper_reference (method text PRIMARY KEY, label text, ord int,
     mnist_rotate real, mnist_label_shift real, fmnist_rotate real, fmnist_label_shift real);
   INSERT INTO paper_reference VALUES
     ('fedavg',   'FedAvg',                      1, 91.5, 25.8, 79.4, 22.9),
     ('local',    'Local Adaptor',               2, 86.6, 84.5, 80.6, 80.1),
     ('ensemble', 'Ensemble',                    3, 92.0, 93.8, 82.4, 82.8),
     ('floral1',  'FLoRAL(1%)',                  4, 91.3, 89.7, 82.6, 83.6),
     ('floral10', 'FLoRAL(10%)',                 5, 91.8, 93.1, 82.7, 84.1),
     ('oracle10', 'FLoRAL(10%), oracle router',  6, NULL, NULL, 85.2, 85.1),
     ('floral10p',  'FLoRAL(10%), probe router',                7, NULL, NULL, NULL, NULL),
     ('floral10v',  'FLoRAL(10%), random V',                    8, NULL, NULL, NULL, NULL),
     ('floral10pv', 'FLoRAL(10%), probe router + random V',     9, NULL, NULL, NULL, NULL),
     ('floral1p',   'FLoRAL(1%), probe router',                10, NULL, NULL, NULL, NULL),
     ('floral1pv',  'FLoRAL(1%), probe router + random V',     11, NULL, NULL, NULL, NULL),
     ('floral10pr', 'FLoRAL(10%), probe router + reseed',      12, NULL, NULL, NULL, NULL),
     ('floral10pvr', 'FLoRAL(10%), probe + random V + reseed', 13, NULL, NULL, NULL, NULL),
     ('floral1pr',  'FLoRAL(1%), probe router + reseed',       14, NULL, NULL, NULL, NULL),
     ('floral1pvr', 'FLoRAL(1%), probe + random V + reseed',   15, NULL, NULL, NULL, NULL)" >/dev/null

# accuracy cell for (method, task): mean over seeds of the final round,
# "mean (min-max)" with more than one seed
CELL="CASE WHEN count(*) = 0 THEN 'n/a'
           WHEN count(*) = 1 THEN to_char(avg(accuracy), 'FM990.0')
           ELSE to_char(avg(accuracy), 'FM990.0') || ' (' || to_char(min(accuracy), 'FM990.0') || '–'
                || to_char(max(accuracy), 'FM990.0') || ')' END"
FINAL="SELECT r.* FROM paper_results r JOIN paper_costs c USING (task, method, seed) WHERE r.round = c.rounds"
SEEDS_N=$(wc -w <<<"$SEEDS")
{
	echo "# floral: the FLoRAL paper's protocol on Fashion-MNIST ($MODE mode, $DATE)"
	echo
	echo "Run by \`bash bench/paper.sh $( [ "$MODE" = full ] && echo --full || echo "--$MODE")\` through floral's SQL functions only" \
	     "(\`floral_create_model\`, \`floral_set_mixture\`, \`floral_train\`, \`floral_aggregate\`, \`floral_evaluate\`)."
	echo "$TENANTS tenants in $GROUPS_N groups (tenant k in group k mod 4), train and test images split IID over tenants" \
	     "(image i → tenant i mod $TENANTS); MLP 784-200-10 ReLU; **$ROUNDS rounds**, $PER_ROUND tenants per round" \
	     "($(awk -v k="$PER_ROUND" -v n="$TENANTS" 'BEGIN { printf "%g", 100 * k / n }')%, a seeded hash sample per round)," \
	     "1 local epoch, batch 32, lr 0.1, router_lr = lr; seeds: $SEEDS (model seed = training seed = the seed)."
	echo "Metric: personalised test accuracy (%) over all $TENANTS tenants, weighted by test examples, after the last round" \
	     "(tenants never sampled predict with the uniform mixture)."
	if [ "$ROUNDS" -lt 500 ]; then
		echo "**Not the paper's budget** ($ROUNDS rounds instead of 500): on label shift FLoRAL sits at FedAvg's level" \
		     "until the tenants' mixtures lock onto their groups, so a short run under-states it; compare methods on \`--full\`."
	fi
	if [ "$SEEDS_N" -gt 1 ]; then echo "Cells: mean over the $SEEDS_N seeds (min–max)."; else echo "Cells: one seed."; fi
	echo
	echo "| method | rotate | label shift | paper, MNIST (rotate / label shift) | PyTorch reimpl., Fashion-MNIST (rotate / label shift) | wall s per job | train+aggregate s per round |"
	echo "|---|---|---|---|---|---|---|"
	q "SELECT '| ' || ref.label || ' | '
	          || coalesce((SELECT $CELL FROM ($FINAL) f WHERE f.method = ref.method AND f.task = 'rotate'), 'n/a') || ' | '
	          || coalesce((SELECT $CELL FROM ($FINAL) f WHERE f.method = ref.method AND f.task = 'label_shift'), 'n/a') || ' | '
	          || coalesce(to_char(ref.mnist_rotate, 'FM990.0') || ' / ' || to_char(ref.mnist_label_shift, 'FM990.0'),
	                      CASE WHEN ref.method = 'oracle10' THEN '93.9 / 93.7 (oracle with FLoRAL(1%))' ELSE 'n/a' END) || ' | '
	          || coalesce(to_char(ref.fmnist_rotate, 'FM990.0') || ' / ' || to_char(ref.fmnist_label_shift, 'FM990.0'), 'n/a') || ' | '
	          || to_char(avg(c.wall_s), 'FM99990') || ' | ' || to_char(avg(c.train_s_per_round), 'FM990.000') || ' |'
	     FROM paper_reference ref JOIN paper_costs c USING (method)
	     GROUP BY ref.method, ref.label, ref.ord, ref.mnist_rotate, ref.mnist_label_shift, ref.fmnist_rotate, ref.fmnist_label_shift
	     ORDER BY ref.ord"
	echo
	echo "Accuracy over rounds (mean over seeds; plots: \`paper-$TAG-rotate.png\`, \`paper-$TAG-label_shift.png\`):"
	echo
	CHECK=$(q "SELECT string_agg(DISTINCT round::text, ',') FROM (SELECT round FROM paper_results
	             WHERE round IN (0, 50, 100, 200, 300, 400, 500) OR round = $ROUNDS ORDER BY 1) s")
	echo "| task | method | $(q "SELECT string_agg('round ' || r, ' | ' ORDER BY r) FROM unnest('{$CHECK}'::int[]) r") |"
	echo "|---|---|$(q "SELECT string_agg('---', '|') FROM unnest('{$CHECK}'::int[]) r")|"
	q "SELECT '| ' || t.task || ' | ' || ref.label || ' | '
	          || (SELECT string_agg(coalesce((SELECT to_char(avg(accuracy), 'FM990.0') FROM paper_results x
	                                           WHERE x.task = t.task AND x.method = ref.method AND x.round = r), ''), ' | ' ORDER BY r)
	              FROM unnest('{$CHECK}'::int[]) r) || ' |'
	     FROM (SELECT DISTINCT task FROM paper_costs) t, paper_reference ref
	     WHERE EXISTS (SELECT 1 FROM paper_costs c WHERE c.task = t.task AND c.method = ref.method)
	     ORDER BY t.task DESC, ref.ord"
	echo
	echo "Router (FLoRAL methods, last round, mean over seeds): *purity* = share of the trained tenants whose largest" \
	     "mixture weight is on their group's majority adaptor; *adaptors* = distinct majority adaptors of the 4 groups" \
	     "(4 = every group has its own adaptor)."
	echo
	echo "| task | method | purity | adaptors |"
	echo "|---|---|---|---|"
	q "SELECT '| ' || f.task || ' | ' || ref.label || ' | ' || to_char(avg(f.router_purity), 'FM0.00') || ' | '
	          || string_agg(f.router_adaptors::text, ', ' ORDER BY f.seed) || ' |'
	     FROM ($FINAL) f JOIN paper_reference ref USING (method)
	     WHERE f.router_purity IS NOT NULL
	     GROUP BY f.task, ref.label, ref.ord ORDER BY f.task DESC, ref.ord"
	echo
	echo "Cost per method (784-200-10; *shared* = federated parameters: base, plus the adaptor bank unless private" \
	     "(an Ensemble has no base: its bank is its C full models); *per tenant* = parameters each tenant keeps:" \
	     "C mixture logits, plus its private adaptor for Local Adaptor;" \
	     "*round tensor* = \`octet_length(floral.tensor_send(params))\` of the last stored round (what a branch downloads per round, before base64);" \
	     "*update* = \`octet_length(floral.tensor_send(sums))\` of \`floral._branch_update\` over the last round's" \
	     "contributions (what a branch uploads per round, before base64, besides N, the C weights M_c and two scalars);" \
	     "*contribution* = bytes of the last round's \`floral.contributions.sums\` (float8 sums, one row per training call);" \
	     "all three measured on the stored rows;" \
	     "*train s/round* = mean wall seconds of \`floral_train\` + \`floral_aggregate\` for $PER_ROUND tenants," \
	     "with $WORKERS jobs running at once on $(nproc) cores):"
	echo
	echo "| method | adaptors | ranks | shared parameters | per tenant | round tensor bytes | update bytes | contribution bytes | train s/round |"
	echo "|---|---|---|---|---|---|---|---|---|"
	q "SELECT '| ' || ref.label || ' | ' || c.adaptors || CASE WHEN c.private_adaptors THEN ' (private)' ELSE '' END || ' | '
	          || array_to_string(c.ranks, '/') || ' | ' || c.shared_parameters || ' | ' || c.tenant_parameters || ' | '
	          || c.round_tensor_bytes || ' | ' || c.update_bytes || ' | ' || c.contribution_bytes || ' | '
	          || to_char(avg(c.train_s_per_round), 'FM990.000') || ' |'
	     FROM paper_costs c JOIN paper_reference ref USING (method)
	     GROUP BY ref.label, ref.ord, c.adaptors, c.private_adaptors, c.ranks, c.shared_parameters, c.tenant_parameters,
	              c.round_tensor_bytes, c.update_bytes, c.contribution_bytes
	     ORDER BY ref.ord"
	echo
	echo "Tree: $REPO @ $GIT_REV; installed floral.so sha256 $SO_SUM at the start of the jobs" \
	     "(each worker is one long-lived session, so it keeps the library it loaded first)."
	echo
	echo "Wall time: data load and setup $(( T_RUN - T_START )) s; jobs $RUN_S s ($NJOBS jobs on $WORKERS workers);" \
	     "machine: $(nproc) cores, $(awk -F: '/^model name/ { sub(/^[ \t]+/, "", $2); print $2; exit }' /proc/cpuinfo)," \
	     "load average at the end $(loadavg) (other work on the machine skews timings);" \
	     "largest database size during the run $PEAK_DB_MB MB (a janitor session VACUUMs the contributions every 3 s)."
	if [ "$FAILED" != 0 ]; then
		echo
		echo "**$FAILED job(s) did not finish:** $(q "SELECT string_agg(task || ' ' || method || ' seed ' || seed || ' (' || state || ')', '; ') FROM paper_jobs WHERE state <> 'done'")"
	fi
} >"$BASE.md"

# Extrapolation to the full protocol from the measured per-round cost.
if [ "$MODE" = measure ]; then
	{
		echo
		echo "Extrapolation to --full (500 rounds x 2 seeds x these tasks, $WORKERS workers, same per-round cost):"
		q "SELECT '  ' || rpad(method, 9) || ' train+aggregate ' || to_char(avg(train_s_per_round), 'FM990.000')
		          || ' s/round, eval ' || to_char(avg((wall_s - train_s_per_round * rounds) / (rounds / $EVAL_EVERY + 1)), 'FM990.000')
		          || ' s -> ' || to_char(avg(train_s_per_round * 500 + (wall_s - train_s_per_round * rounds) / (rounds / $EVAL_EVERY + 1) * 51), 'FM99990')
		          || ' s per 500-round job'
		     FROM paper_costs GROUP BY method ORDER BY method"
		q "SELECT 'total: ' || to_char(sum(j) * 2 / $WORKERS / 60, 'FM9990.0') || ' min of jobs for the full table (2 seeds)'
		     FROM (SELECT avg(train_s_per_round * 500 + (wall_s - train_s_per_round * rounds) / (rounds / $EVAL_EVERY + 1) * 51) AS j
		           FROM paper_costs GROUP BY task, method) s"
	} | tee -a "$BASE.md" >&2
fi

# --- plots -----------------------------------------------------------------
for t in $(q "SELECT DISTINCT task FROM paper_results ORDER BY 1"); do
	# wide table: a header of quoted method names, then round and one column
	# per method (mean over seeds); '?' where a method has no value
	q "SELECT 'round ' || string_agg('\"' || label || '\"', ' ' ORDER BY ord) FROM paper_reference
	   WHERE method IN (SELECT method FROM paper_results WHERE task = '$t')" >"$WORK/plot-$t.dat"
	psql_ -At -F' ' -c "SELECT r.round, string_agg(coalesce(to_char(x.acc, 'FM990.00'), '?'), ' ' ORDER BY ref.ord)
		FROM (SELECT DISTINCT round FROM paper_results WHERE task = '$t') r
		CROSS JOIN (SELECT * FROM paper_reference WHERE method IN (SELECT method FROM paper_results WHERE task = '$t')) ref
		LEFT JOIN (SELECT method, round, avg(accuracy) AS acc FROM paper_results WHERE task = '$t' GROUP BY 1, 2) x
		       ON x.method = ref.method AND x.round = r.round
		GROUP BY r.round ORDER BY r.round" >>"$WORK/plot-$t.dat"
	nm=$(q "SELECT count(DISTINCT method) FROM paper_results WHERE task = '$t'")
	title="Fashion-MNIST, $( [ "$t" = rotate ] && echo rotate || echo 'label shift'), $TENANTS tenants, $PER_ROUND per round, mean of $SEEDS_N seed(s)"
	gnuplot -e "datafile='$WORK/plot-$t.dat'; outfile='$RESULTS/paper-$TAG-$t.png'; plottitle='$title'; nmethods=$nm" \
		"$HERE/plot.gnuplot" || log "gnuplot failed for $t"
done

cat "$BASE.md"
log "wrote $BASE.csv, $BASE-router.csv, $BASE.md, $RESULTS/paper-$TAG-*.png; total $(( $(date +%s) - T_START )) s"
[ "$FAILED" = 0 ] || die "$FAILED job(s) failed"
