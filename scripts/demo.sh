#!/usr/bin/env bash
# The main job: a federated FLoRAL demo on real data (Fashion-MNIST).
#
#   bash scripts/demo.sh     (as root, or as a user with sudo: it restarts itself with sudo)
#
# It installs what floral needs (scripts/install-deps.sh), builds and
# installs the extension, then starts four temporary PostgreSQL clusters on
# 127.0.0.1 as the unprivileged postgres user: one coordinator and three
# branches.  Fashion-MNIST (Debian's dataset-fashion-mnist) is split into
# 24 tenants in 4 groups, 8 tenants per branch, in two of the paper's
# settings: "label shift" (group c sees label y as (y + c) mod 10) and
# "rotate" (group c sees images rotated by 90*c degrees).  For each setting
# it federates two models, FLoRAL (4 adaptors, 10% budget) and FedAvg (no
# adaptors), through floral's own machinery: branches open every
# connection (dblink to the coordinator), train their own tenants, and send
# one pre-aggregated update per round.  Raw rows never leave a branch.
#
# Every fifth round prints the personalised test accuracy of every model
# (each tenant predicts with its own mixture, weighted by test examples,
# summed over the branches) and the bytes that travelled; on a terminal one
# progress line says what runs in between.  At the end it writes a PNG plot
# of the accuracy per round (gnuplot) and prints its path; everything else
# is stopped and removed.
#
# Knobs: DEMO_ROUNDS [50], DEMO_TRAIN [24000 training images],
#        DEMO_TEST [10000 test images], DEMO_KEEP=1 keeps the work dir,
#        DEMO_PLOT [demo-accuracy.png in the repository] the PNG plot,
#        DEMO_SECURE=1 federates every model with secure aggregation (the
#        coordinator sees only each round's sum; a round then takes a few
#        passes of branch steps), DEMO_PGBIN [/usr/lib/postgresql/15/bin]
#        the PostgreSQL 15 to build against and run (e.g. a relocated copy).
set -euo pipefail

ROUNDS=${DEMO_ROUNDS:-50}
TRAIN=${DEMO_TRAIN:-24000}
TEST=${DEMO_TEST:-10000}
TENANTS=24
NGROUPS=4
PGBIN=${DEMO_PGBIN:-/usr/lib/postgresql/15/bin}
PG_BINDIR=$PGBIN
SECURE=${DEMO_SECURE:-0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PLOT=${DEMO_PLOT:-$ROOT/demo-accuracy.png}
# become_root, work_dir, free_port (shared with scripts/test.sh and the benchmarks)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

# Root is needed for apt-get, `make install` and switching to postgres.
become_root "$ROOT/scripts/demo.sh" "or as a user with sudo" "$@"

say() { printf '[demo] %s\n' "$*" >&2; }

bash "$ROOT/scripts/install-deps.sh" >&2
say "building and installing floral"
make -s -C "$ROOT" PG_CONFIG=$PGBIN/pg_config >/dev/null
make -s -C "$ROOT" PG_CONFIG=$PGBIN/pg_config install >/dev/null

# the clusters live in WORK; at exit they are stopped and WORK is removed
# (kept with DEMO_KEEP=1)
work_dir demo "${DEMO_KEEP:-0}"
NODES=(coord b1 b2 b3)
declare -A PORT

next=56100
for n in "${NODES[@]}"; do
	PORT[$n]=$(free_port $next 65535)
	next=$((PORT[$n] + 1))
done

# psql as postgres against one node: q NODE [psql args...]
q() {
	local n=$1
	shift
	runuser -u postgres -- $PGBIN/psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PORT[$n]}" -d postgres "$@"
}

say "starting a coordinator and three branches on 127.0.0.1 (ports ${PORT[coord]} ${PORT[b1]} ${PORT[b2]} ${PORT[b3]})"
for n in "${NODES[@]}"; do
	runuser -u postgres -- $PGBIN/initdb -D "$WORK/$n" -A trust -U postgres >/dev/null
	cat >>"$WORK/$n/postgresql.conf" <<-EOF
		listen_addresses = '127.0.0.1'
		port = ${PORT[$n]}
		unix_socket_directories = '$WORK'
		shared_buffers = 256MB
		maintenance_work_mem = 512MB
		max_wal_size = 4GB
		fsync = off                 # a throwaway demo cluster
		synchronous_commit = off
		full_page_writes = off
	EOF
	# one OpenBLAS thread per backend, and no idle worker threads
	runuser -u postgres -- env OPENBLAS_NUM_THREADS=1 $PGBIN/pg_ctl -D "$WORK/$n" \
		-l "$WORK/$n.log" -w start >/dev/null
done

COORD="host=127.0.0.1 port=${PORT[coord]} dbname=postgres user=postgres"
MODELS=(ls_floral ls_fedavg rot_floral rot_fedavg)

say "coordinator: creating the models and registering the branches"
q coord >/dev/null <<-'EOF'
	CREATE EXTENSION floral_federation CASCADE;
	SELECT floral_create_model('ls_floral',  '{784,200,10}', 'classification', 4, 0.1, '{"seed": 1}');
	SELECT floral_create_model('ls_fedavg',  '{784,200,10}', 'classification', 0, 0.1, '{"seed": 1}');
	SELECT floral_create_model('rot_floral', '{784,200,10}', 'classification', 4, 0.1, '{"seed": 1}');
	SELECT floral_create_model('rot_fedavg', '{784,200,10}', 'classification', 0, 0.1, '{"seed": 1}');
	SELECT floral_coordinator_setup(name, '{"min_branches": 2, "deadline": "10 minutes"}') FROM floral.models;
	SELECT floral_coordinator_add_branch(m.name, b) FROM floral.models m, unnest('{b1,b2,b3}'::text[]) b;
EOF
if [[ $SECURE == 1 ]]; then
	say "coordinator: secure aggregation on for every model"
	q coord >/dev/null -c "SELECT floral_coordinator_setup(name, '{\"min_branches\": 2, \"deadline\": \"10 minutes\", \"secure_aggregation\": true}') FROM floral.models"
fi

say "branches: loading their own share of Fashion-MNIST (tenant k lives in branch k mod 3, group k mod 4)"
load() {
	local node=$1 idx=$2 split=$3 task=$4 limit=$5 table=$6
	/usr/bin/python3 "$ROOT/bench/load_fashion_mnist.py" --split "$split" --limit "$limit" \
		--tenants $TENANTS --task "$task" --groups $NGROUPS |
		awk -F'\t' -v b="$idx" '{ k = substr($2, 2) + 0; if (k % 3 == b) print }' |
		q "$node" -c "\\copy $table FROM STDIN"
}
i=0
for n in b1 b2 b3; do
	q $n >/dev/null <<-'EOF'
		CREATE EXTENSION floral_federation CASCADE;
		CREATE TABLE ls_train  (id int PRIMARY KEY, tenant text, features real[] COMPRESSION lz4, label int);
		CREATE TABLE ls_test   (LIKE ls_train INCLUDING ALL);
		CREATE TABLE rot_train (LIKE ls_train INCLUDING ALL);
		CREATE TABLE rot_test  (LIKE ls_train INCLUDING ALL);
	EOF
	load $n $i train label_shift "$TRAIN" ls_train &
	load $n $i test label_shift "$TEST" ls_test &
	wait
	load $n $i train rotate "$TRAIN" rot_train &
	load $n $i test rotate "$TEST" rot_test &
	wait
	# lr 0.1, batch 32, one epoch per round (the paper's); the router's
	# step is larger: a tenant's mixture is only 4 numbers, and router_lr 1.0
	# lets it lock onto its group within tens of rounds instead of hundreds
	for task in ls rot; do
		q $n -o /dev/null -c "SELECT floral_branch_join('${task}_floral', '$n', '$COORD',
			'SELECT tenant, features, label FROM ${task}_train ORDER BY id',
			'{\"lr\": 0.1, \"batch_size\": 32, \"router_lr\": 1.0}')"
		q $n -o /dev/null -c "SELECT floral_branch_join('${task}_fedavg', '$n', '$COORD',
			'SELECT tenant, features, label FROM ${task}_train ORDER BY id',
			'{\"lr\": 0.1, \"batch_size\": 32}')"
	done
	i=$((i + 1))
done
q b1 -At -c "SELECT 'branch b1 holds ' || count(DISTINCT tenant) || ' tenants, ' || count(*) || ' training rows per task' FROM ls_train" >&2

# personalised accuracy of a model over all branches, weighted by examples
accuracy() {
	local model=$1 table=$2 sum=0 n=0 line
	for b in b1 b2 b3; do
		line=$(q $b -At -F' ' -c "SELECT sum(accuracy * examples), sum(examples)
			FROM floral_evaluate('$model', 'SELECT tenant, features, label FROM $table')")
		sum=$(awk -v a="$sum" -v b="${line% *}" 'BEGIN { print a + b }')
		n=$(awk -v a="$n" -v b="${line#* }" 'BEGIN { print a + b }')
	done
	awk -v s="$sum" -v n="$n" 'BEGIN { printf "%.1f", 100 * s / n }'
}

printf '\nPersonalised test accuracy (%%), %s tenants in %s groups over 3 branches; bytes per round for all four models\n' $TENANTS $NGROUPS
printf '%5s | %13s %13s | %13s %13s | %10s %10s | %6s\n' round "shift FLoRAL" "shift FedAvg" "rot FLoRAL" "rot FedAvg" "up (kB)" "down (kB)" "sec"
printf '%s\n' "------+-----------------------------+-----------------------------+-----------------------+-------"
START=$(date +%s)
# the evaluated rounds, for the plot (bench/plot.gnuplot's format)
printf 'round "label shift, FLoRAL" "label shift, FedAvg" "rotate, FLoRAL" "rotate, FedAvg"\n' >"$WORK/accuracy.dat"
# one line on the terminal that says what the demo is doing (none in a log)
progress() { [[ -t 2 ]] && printf '\r\033[K[demo] round %d of %d: %s' "$1" "$ROUNDS" "$2" >&2 || true; }
progress_done() { [[ -t 2 ]] && printf '\r\033[K' >&2 || true; }
for ((r = 1; r <= ROUNDS; r++)); do
	t0=$(date +%s.%N)
	progress "$r" "branches training, coordinator merging"
	# the three branches work at the same time, each on its own tenants;
	# with secure aggregation a round takes a few passes of steps
	for ((pass = 1; pass <= 8; pass++)); do
		for b in b1 b2 b3; do
			(for m in "${MODELS[@]}"; do q $b -At -c "CALL floral_branch_step('$m')"; done >"$WORK/$b.step") &
		done
		wait
		for m in "${MODELS[@]}"; do q coord -At -c "SELECT floral_coordinator_step('$m')" >"$WORK/coord.step"; done
		(($(q coord -At -c "SELECT min(round) FROM floral.models") >= r)) && break
	done
	if [[ $SECURE == 1 ]]; then
		up=$(q coord -At -c "SELECT coalesce(sum(bytes_in + bytes_out), 0) FROM floral.secagg_rounds WHERE round = $((r - 1))")
	else
		up=$(q coord -At -c "SELECT coalesce(sum(bytes), 0) FROM floral.updates WHERE round = $((r - 1))")
	fi
	down=$(q coord -At -c "SELECT 3 * sum(length(encode(floral.tensor_send(params), 'base64')))
		FROM floral.rounds WHERE round = $((r - 1))")
	# only every fifth round is evaluated and printed
	((r % 5 == 0 || r == 1 || r == ROUNDS)) || continue
	progress "$r" "evaluating every tenant"
	a1=$(accuracy ls_floral ls_test)
	a2=$(accuracy ls_fedavg ls_test)
	a3=$(accuracy rot_floral rot_test)
	a4=$(accuracy rot_fedavg rot_test)
	t1=$(date +%s.%N)
	progress_done
	printf '%5d | %13s %13s | %13s %13s | %10d %10d | %6.1f\n' "$r" "$a1" "$a2" "$a3" "$a4" \
		$((up / 1000)) $((down / 1000)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
	printf '%d %s %s %s %s\n' "$r" "$a1" "$a2" "$a3" "$a4" >>"$WORK/accuracy.dat"
done
progress_done

printf '\nCoordinator view of the last rounds (floral.federation_rounds):\n'
q coord -c "SELECT model, round, branches, tenants, examples, round(loss::numeric, 4) AS loss,
	pg_size_pretty(bytes_received) AS received
	FROM floral.federation_rounds WHERE round >= $ROUNDS - 2 AND merged_at IS NOT NULL ORDER BY model, round"
printf 'Mixtures of the label-shift tenants in branch b1 (one adaptor per group):\n'
q b1 -c "SELECT tenant, substr(tenant, 2)::int % 4 AS grp,
	array(SELECT round(p::numeric, 2) FROM unnest(mixture) p) AS mixture
	FROM floral.tenant_mixtures WHERE model = 'ls_floral' ORDER BY grp, tenant"
gnuplot -e "datafile='$WORK/accuracy.dat'; outfile='$PLOT'; nmethods=4; plottitle='floral demo: personalised test accuracy, $TENANTS tenants over 3 branches'" \
	"$ROOT/bench/plot.gnuplot"
printf 'Done in %d s. Plot of the accuracy per round: %s\n' $(($(date +%s) - START)) "$PLOT"
