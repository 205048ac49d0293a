#!/usr/bin/env bash
# bench/concurrency.sh: floral under concurrent training, prediction and
# aggregation (pgbench), and checks that nothing was lost or torn.
#
# A throw-away PostgreSQL 15 cluster (as postgres, own port, unix socket in a
# temp dir, stopped and removed at exit) with one model m (default 128-64-10,
# 4 adaptors, rank 0.1) and TENANTS tenants of synthetic data (tenant t has
# 100 + 4t rows, so every tenant has a different number of examples).  After
# one warm-up round, pgbench runs CLIENTS clients for DURATION seconds,
# mixing (by weight) bench/pgbench/train.sql (train one random tenant, log
# what floral_train returned and the round it trained in, or that it skipped
# the tenant, which had contributed to the round already), predict.sql
# (personalised probabilities of 20 rows of a random tenant, checked) and
# aggregate.sql (floral_aggregate; "no contributions" is caught and counted).
#
# Checks afterwards:
#   deadlocks      "deadlock" in the server log = 0, pgbench failed
#                  transactions = 0, no pgbench client aborted
#   lost           for every round R trained during the run: the tenants
#                  logged as trained in R (each at most once: a tenant
#                  contributes once per round) and the sum of their examples
#                  equal floral.rounds.tenants/examples of round R+1, or, for
#                  the current round, exactly the pending calls of
#                  floral.contributions (one row per call, tenant by tenant
#                  through floral.tenants.contributed_call); a call that
#                  skipped its tenant did so only in a round where the log
#                  has the tenant trained already; every round created during
#                  the run came from a logged training
#   torn           every kept round has the full parameter count and finite
#                  values; every tenant's logits are finite; no prediction
#                  was non-finite or did not sum to 1; floral_evaluate over
#                  all rows gives finite losses
# The report (pgbench output, TPS and latency percentiles per script, the
# checks, the machine load) goes to stdout and bench/results/concurrency-<date>.txt.
# Exit status 1 if a check fails.
#
# Run as root:  bash bench/concurrency.sh
# Knobs (defaults in brackets): LAYERS [{128,64,10}], TENANTS [64],
#   DURATION [60] s, CLIENTS [8], THREADS [2], WEIGHTS ["4 4 1" for train,
#   predict, aggregate], BENCH_OUT [bench/results/concurrency-<date>.txt],
#   SKIP_INSTALL [0: run make install from this tree first], PG_BINDIR (or
#   PGBIN), BENCH_PORT.
# The cluster scaffolding is shared with the other benches: bench/lib.sh.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init concurrency "concurrency-$(date +%Y-%m-%d).txt"
LAYERS=${LAYERS:-'{128,64,10}'}
TENANTS=${TENANTS:-64}
DURATION=${DURATION:-60}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
read -r W_TRAIN W_PREDICT W_AGG <<<"${WEIGHTS:-4 4 1}"

bench_install
# bench/lib.sh's settings (durability off: nothing here needs to survive a
# crash, t/007_crash.pl covers that, and the disk is shared with other
# work), with floral preloaded, room for the clients and lock waits logged;
# autovacuum and max_wal_size stay at PostgreSQL's defaults, as this bench
# has always had them (the concurrent rounds leave dead rows behind).
bench_start_cluster 256MB "shared_preload_libraries = 'floral'
max_connections = 40
log_lock_waits = on
deadlock_timeout = 1s
autovacuum = on
max_wal_size = 1GB"

IN=$(q "SELECT ('$LAYERS'::int[])[1]")
CLASSES=$(q "SELECT ('$LAYERS'::int[])[cardinality('$LAYERS'::int[])]")
log "data: $TENANTS tenants, $IN features; model $LAYERS"
psql_ >/dev/null <<EOF
-- tenant t has 100 + 4t rows; 4 groups whose labels are shifted by the group
CREATE TABLE rows AS
SELECT i AS id, 't' || t AS tenant,
       ARRAY(SELECT sin(i * 0.37 * j + t) FROM generate_series(1, $IN) j)::real[] AS features,
       (floor((sin(i * 0.37) + sin(i * 0.74) + 2) * 2.49)::int + t % 4) % $CLASSES AS label
FROM generate_series(0, $TENANTS - 1) t,
     LATERAL generate_series(t * 1000000, t * 1000000 + 99 + 4 * t) i;
CREATE INDEX ON rows (tenant, id);
ANALYZE rows;
SELECT floral_create_model('m', '$LAYERS', 'classification', 4, 0.1, '{"seed": 1, "router": "paper", "reseed": false}');
-- warm-up round: every tenant once, so that predictions use a trained model
SELECT count(*) FROM floral_train('m', 'SELECT tenant, features, label FROM rows ORDER BY tenant, id',
                                  '{"epochs": 1, "batch_size": 32, "lr": 0.05}');
SELECT floral_aggregate('m');

CREATE TABLE bench_train_log (id bigserial PRIMARY KEY, xid bigint NOT NULL, round int,
                              tenant text NOT NULL, examples bigint NOT NULL, loss float8,
                              at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX ON bench_train_log (xid);
CREATE TABLE bench_skip_log (id bigserial PRIMARY KEY, round int, tenant text NOT NULL,
                             at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE bench_aggregate_log (id bigserial PRIMARY KEY, new_round int, ok boolean NOT NULL,
                                  at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE bench_predict_bad (id bigserial PRIMARY KEY, tenant text, n bigint, bad bigint,
                                at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE bench_errors (id bigserial PRIMARY KEY, script text, sqlstate text, message text,
                           at timestamptz NOT NULL DEFAULT clock_timestamp());
CHECKPOINT;
EOF
START_ROUND=$(q "SELECT round FROM floral.models WHERE name = 'm'")
NPARAMS=$(q "SELECT sum(parameters) FROM floral_layers('m')")
ROWS=$(q "SELECT count(*) FROM rows")

bench_git_rev ' (+ uncommitted changes in %s)' src floral.c floral--1.0.sql
bench_title concurrency
report "tree:      $REPO @ $GIT_REV"
report "machine:   $(nproc) cores, $(mem_total); $(uname -sr)"
report "load:      before the run: $(uptime_load)  (other engineers' work shares the machine)"
report "server:    PostgreSQL $PG_VERSION, OPENBLAS_NUM_THREADS=1, fsync/synchronous_commit off"
report "model:     m $LAYERS, 4 adaptors, rank 0.1: $NPARAMS parameters ($((NPARAMS * 4 / 1024)) KiB per round and per contribution)"
report "data:      $TENANTS tenants, $ROWS rows of $IN features (tenant t has 100 + 4t rows); train: 1 epoch, batch 32"
report "pgbench:   -c $CLIENTS -j $THREADS -T $DURATION  -f train.sql@$W_TRAIN -f predict.sql@$W_PREDICT -f aggregate.sql@$W_AGG"
report "           (start: round $START_ROUND after one warm-up round)"
report ""

log "pgbench for $DURATION s"
cp "$HERE/pgbench/train.sql" "$HERE/pgbench/predict.sql" "$HERE/pgbench/aggregate.sql" "$WORK/"
chown postgres: "$WORK"/*.sql 2>/dev/null || true
LOG_MARK=$(log_mark)
set +e
(cd "$WORK" && "${AS_PG[@]}" "$PGBIN/pgbench" -n -h "$WORK" -p "$PORT" \
    -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -P 10 -r --failures-detailed \
    -l --log-prefix="$WORK/pgb" \
    -D tenants="$TENANTS" -D classes="$CLASSES" \
    -f "$WORK/train.sql@$W_TRAIN" -f "$WORK/predict.sql@$W_PREDICT" -f "$WORK/aggregate.sql@$W_AGG" \
    "$BENCH_DB") >"$WORK/pgbench.out" 2>"$WORK/pgbench.err"
PGBENCH_RC=$?
set -e
LOAD_AFTER=$(uptime_load)

report "== pgbench output (exit status $PGBENCH_RC)"
sed 's/^/  /' "$WORK/pgbench.out" | tee -a "$OUT"
report "== pgbench stderr (progress, errors)"
grep -v '^pgbench: warning' "$WORK/pgbench.err" | sed 's/^/  /' | tee -a "$OUT" || true
report ""

# latency percentiles per script from the per-transaction logs
# (client_id transaction_no time_us script_no epoch epoch_us; time is "failed"
# for a failed transaction)
report "== per script (latencies in ms from the per-transaction logs; load after the run: $LOAD_AFTER)"
: >"$WORK/per_script_final.txt"
printf '  %-10s %8s %8s %8s %8s %8s %8s %8s %7s\n' script xacts tps avg_ms p50_ms p95_ms p99_ms max_ms failed >>"$WORK/per_script_final.txt"
for s in 0 1 2; do
    name=(train predict aggregate)
    cat "$WORK"/pgb.* 2>/dev/null | awk -v s="$s" '$4 == s && $3 ~ /^[0-9]+$/ { print $3 / 1000.0 }' | sort -n >"$WORK/lat.$s"
    failed=$(cat "$WORK"/pgb.* 2>/dev/null | awk -v s="$s" '$4 == s && $3 !~ /^[0-9]+$/' | wc -l)
    awk -v nm="${name[$s]}" -v dur="$DURATION" -v failed="$failed" '
        { a[NR] = $1; sum += $1 }
        END {
            if (NR == 0) { printf "  %-10s %8d %8s %8s %8s %8s %8s %8s %7d\n", nm, 0, "-", "-", "-", "-", "-", "-", failed; exit }
            p50 = a[int(0.50 * (NR - 1)) + 1]; p95 = a[int(0.95 * (NR - 1)) + 1]; p99 = a[int(0.99 * (NR - 1)) + 1]
            printf "  %-10s %8d %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %7d\n", nm, NR, NR / dur, sum / NR, p50, p95, p99, a[NR], failed
        }' "$WORK/lat.$s" >>"$WORK/per_script_final.txt"
done
tee -a "$OUT" <"$WORK/per_script_final.txt"
report "  (tps here = completed transactions / $DURATION s; pgbench's own per-script tps is above."
report "   A transaction whose floral call raised an error, caught and recorded in bench_errors, counts as completed:"
report "   $(q "SELECT count(*) FROM bench_train_log") training calls trained, $(q "SELECT count(*) FROM bench_skip_log") skipped a tenant that had contributed (+ $(q "SELECT count(*) FROM bench_errors WHERE script = 'train'") errors)," \
       "$(q "SELECT count(*) FROM bench_aggregate_log WHERE ok") aggregations made a round, $(q "SELECT count(*) FROM bench_aggregate_log WHERE NOT ok") found no contributions" \
       "(+ $(q "SELECT count(*) FROM bench_errors WHERE script = 'aggregate'") errors))"
report ""

# --- checks -------------------------------------------------------------------
FAIL=0
check() {    # check NAME OK(0/1) DETAIL
    if [ "$2" = 1 ]; then report "  PASS  $1: $3"; else report "  FAIL  $1: $3"; FAIL=1; fi
}
report "== checks"

DEADLOCKS=$(log_since "$LOG_MARK" | grep -ci deadlock || true)
FAILED_X=$(awk -F': ' '/^number of failed transactions/ { split($2, a, " "); print a[1] }' "$WORK/pgbench.out")
ABORTED=$(cat "$WORK/pgbench.err" "$WORK/pgbench.out" | { grep -c 'aborted' || true; })
check "deadlocks" "$([ "$DEADLOCKS" = 0 ] && echo 1 || echo 0)" "'deadlock' lines in the server log during the run: $DEADLOCKS"
check "pgbench failures" "$([ "${FAILED_X:-x}" = 0 ] && [ "$ABORTED" = 0 ] && [ "$PGBENCH_RC" = 0 ] && echo 1 || echo 0)" \
    "failed transactions: ${FAILED_X:-?}, aborted clients: $ABORTED, exit status $PGBENCH_RC"
NERR=$(q "SELECT count(*) FROM bench_errors")
check "no errors" "$([ "$NERR" = 0 ] && echo 1 || echo 0)" \
    "errors caught in train.sql/aggregate.sql (other than 'no contributions'): $NERR"
q "SELECT n || ' x ' || script || ' ' || sqlstate || ': ' || msg
   FROM (SELECT script, sqlstate, regexp_replace(message, '[0-9]+', 'N', 'g') AS msg, count(*) AS n
         FROM bench_errors GROUP BY 1, 2, 3) e ORDER BY n DESC" | sed 's/^/          /' | tee -a "$OUT"
ERRORS=$(log_since "$LOG_MARK" | grep -c ' ERROR: ' || true)
LOCKWAITS=$(log_since "$LOG_MARK" | grep -c 'still waiting for' || true)
report "        server log during the run: $ERRORS ERROR lines, $LOCKWAITS lock waits longer than deadlock_timeout (1 s)"
log_since "$LOG_MARK" | grep -E ' (ERROR|FATAL|PANIC): ' | sed 's/^[^]]*] //' | sort | uniq -c | sort -rn | head -5 | sed 's/^/          /' | tee -a "$OUT" || true

psql_ -At -F ' ' >"$WORK/lost.txt" <<EOF
WITH per AS (      -- a tenant contributes once per round: calls must be 1
    SELECT round, tenant, max(examples) AS examples, min(examples) AS min_examples, count(*) AS calls
    FROM bench_train_log GROUP BY round, tenant),
expect AS (SELECT round, count(*) AS tenants, sum(examples) AS examples, sum(calls) AS calls
           FROM per GROUP BY round),
cur AS (SELECT round FROM floral.models WHERE name = 'm'),
merged AS (        -- rounds R < current: compare with round R + 1
    SELECT e.round, e.tenants, e.examples, r.tenants AS got_tenants, r.examples AS got_examples
    FROM expect e JOIN cur ON e.round < cur.round
    LEFT JOIN floral.rounds r ON r.model = 'm' AND r.round = e.round + 1),
pending AS (       -- the current round: compare with the pending calls (each
                   -- trained one tenant), tenant by tenant through the tenant
                   -- state that points at its call
    SELECT coalesce(p.tenant, c.tenant) AS tenant, p.examples,
           CASE WHEN c.tenants = 1 AND c.chunk = 0 THEN c.examples END AS got
    FROM (SELECT per.* FROM per, cur WHERE per.round = cur.round) p
    FULL JOIN (SELECT t.tenant, c.tenants, c.chunk, c.examples
                 FROM floral.contributions c
                 JOIN cur ON c.round = cur.round
                 LEFT JOIN floral.tenants t ON t.model = c.model AND t.contributed_call = c.call
                                           AND t.start_round = c.round
                WHERE c.model = 'm') c
      ON c.tenant = p.tenant)
SELECT 'trains', (SELECT count(*) FROM bench_train_log)
UNION ALL SELECT 'trains_without_round', (SELECT count(*) FROM bench_train_log WHERE round IS NULL)
UNION ALL SELECT 'tenants_with_varying_examples', (SELECT count(*) FROM per WHERE examples <> min_examples)
UNION ALL SELECT 'rounds_trained', (SELECT count(*) FROM expect)
UNION ALL SELECT 'tenants_trained_twice', (SELECT count(*) FROM per WHERE calls > 1)
UNION ALL SELECT 'skips', (SELECT count(*) FROM bench_skip_log)
UNION ALL SELECT 'skips_without_training', (SELECT count(*) FROM bench_skip_log s
    WHERE s.round IS NULL OR NOT EXISTS (SELECT 1 FROM bench_train_log l WHERE l.round = s.round AND l.tenant = s.tenant))
UNION ALL SELECT 'rounds_merged_checked', (SELECT count(*) FROM merged)
UNION ALL SELECT 'rounds_merged_mismatch', (SELECT count(*) FROM merged
    WHERE got_tenants IS DISTINCT FROM tenants OR got_examples IS DISTINCT FROM examples)
UNION ALL SELECT 'examples_logged_merged', (SELECT coalesce(sum(examples), 0) FROM merged)
UNION ALL SELECT 'examples_in_rounds', (SELECT coalesce(sum(got_examples), 0) FROM merged)
UNION ALL SELECT 'pending_tenants', (SELECT count(*) FROM pending)
UNION ALL SELECT 'pending_calls', (SELECT count(*) FROM floral.contributions c, cur WHERE c.model = 'm' AND c.round = cur.round)
UNION ALL SELECT 'pending_mismatch', (SELECT count(*) FROM pending WHERE examples IS DISTINCT FROM got)
UNION ALL SELECT 'rounds_created', (SELECT count(*) FROM floral.rounds WHERE model = 'm' AND round > $START_ROUND)
UNION ALL SELECT 'rounds_created_without_training', (SELECT count(*) FROM floral.rounds r
    WHERE r.model = 'm' AND r.round > $START_ROUND AND NOT EXISTS (SELECT 1 FROM expect e WHERE e.round = r.round - 1))
UNION ALL SELECT 'aggregate_ok', (SELECT count(*) FROM bench_aggregate_log WHERE ok)
UNION ALL SELECT 'aggregate_no_contributions', (SELECT count(*) FROM bench_aggregate_log WHERE NOT ok)
UNION ALL SELECT 'rounds_merged_fewer', (SELECT count(*) FROM merged WHERE got_examples < examples)
UNION ALL SELECT 'rounds_merged_more', (SELECT count(*) FROM merged WHERE got_examples > examples)
UNION ALL SELECT 'current_round', (SELECT round FROM cur);
EOF
v() { awk -v k="$1" '$1 == k { print $2 }' "$WORK/lost.txt"; }
report "        $(awk '{ printf "%s%s=%s", (NR > 1 ? " " : ""), $1, $2 }' "$WORK/lost.txt" | fold -s -w 100 | sed '2,$s/^/        /')"
LOST_OK=1
for k in trains_without_round tenants_with_varying_examples tenants_trained_twice skips_without_training \
         rounds_merged_mismatch pending_mismatch rounds_created_without_training; do
    [ "$(v $k)" = 0 ] || LOST_OK=0
done
[ "$(v rounds_created)" = "$(v aggregate_ok)" ] || LOST_OK=0
[ "$(v pending_calls)" = "$(v pending_tenants)" ] || LOST_OK=0
[ "$(v examples_logged_merged)" = "$(v examples_in_rounds)" ] || LOST_OK=0
[ "$(v trains)" -gt 0 ] && [ "$(v aggregate_ok)" -gt 0 ] || LOST_OK=0
check "no lost contributions" "$LOST_OK" \
    "$(v trains) successful training calls in $(v rounds_trained) rounds ($(v tenants_trained_twice) tenants trained twice in a round; $(v skips) calls skipped a tenant that had contributed, $(v skips_without_training) of them without a logged training); $(v rounds_merged_checked) merged rounds compared with the log: examples merged $(v examples_in_rounds) of $(v examples_logged_merged) expected, $(v rounds_merged_mismatch) rounds differ ($(v rounds_merged_fewer) merged fewer, $(v rounds_merged_more) more); current round $(v current_round): $(v pending_tenants) tenants in $(v pending_calls) pending calls, mismatches $(v pending_mismatch); $(v rounds_created) rounds created, $(v aggregate_ok) successful aggregations ($(v aggregate_no_contributions) found no contributions)"

TORN=$(q "SELECT count(*) FROM floral.rounds WHERE model = 'm'
            AND (floral.tensor_shape(params) <> ARRAY[$NPARAMS]
                 OR NOT (floral.tensor_norm(params) < 'Infinity'::float8))")
KEPT=$(q "SELECT count(*) FROM floral.rounds WHERE model = 'm'")
BADLOGITS=$(q "SELECT count(*) FROM floral.tenants WHERE model = 'm'
                 AND NOT coalesce((SELECT bool_and(v > '-Infinity'::real AND v < 'Infinity'::real) FROM unnest(logits) v), false)")
BADPRED=$(q "SELECT coalesce(sum(bad), 0) || ' of ' || coalesce(sum(n), 0) FROM bench_predict_bad")
EVAL=$(q "SELECT count(*) || ' tenants, ' || count(*) FILTER (WHERE loss < 'Infinity'::float8 AND loss >= 0) || ' finite losses, mean accuracy ' || round((sum(accuracy * examples) / sum(examples))::numeric, 3)
          FROM floral_evaluate('m', 'SELECT tenant, features, label FROM rows')")
check "no torn models" "$([ "$TORN" = 0 ] && [ "$BADLOGITS" = 0 ] && [ "$BADPRED" = "0 of 0" ] && [[ "$EVAL" == "$TENANTS tenants, $TENANTS finite"* ]] && echo 1 || echo 0)" \
    "$TORN of $KEPT kept rounds with a wrong size or non-finite values; $BADLOGITS tenants with non-finite logits; bad predictions: $BADPRED; evaluate: $EVAL"

report ""
report "result: $([ "$FAIL" = 0 ] && echo 'all checks passed' || echo 'SOME CHECKS FAILED')"
log "report: $OUT"
exit "$FAIL"
