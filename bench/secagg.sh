#!/usr/bin/env bash
# bench/secagg.sh: what secure aggregation adds to a federated round, in
# bytes and seconds, for 3 and 30 branches.
#
# One throw-away cluster (bench/lib.sh) holds the coordinator (database
# coord) and every branch (databases br1..brN): simulated branches that
# share the machine, each a database of its own that reaches the
# coordinator over dblink and the cluster's unix socket, as a real branch
# would over the network.  Two models of the same specification are
# federated side by side: "plain" (fed_submit) and "secure"
# (secure_aggregation on).  Every branch holds one tenant of SA_ROWS
# synthetic rows of the model's input width.  A round is driven the way a
# scheduler would: every branch steps (CALL floral_branch_step), then the
# coordinator steps, until the round merges; branches step one after
# another here, so a round's seconds are the sum of all their steps (on a
# real federation they run in parallel, and a secure round needs about
# four passes of steps where a plain one needs one).
#
# Reported per round (the median over SA_ROUNDS rounds, round 0 excluded
# from the timing as warm-up):
#   - payload bytes up: what branches sent (plain: the base64 sums of
#     fed_submit, floral.updates.bytes; secure: keys, sealed shares, masked
#     updates and reveals as they travel, floral.secagg_rounds.bytes_in)
#   - payload bytes down that secure aggregation adds (relayed keys and
#     sealed shares, floral.secagg_rounds.bytes_out); the round's
#     parameters go down in both and are not counted
#   - seconds from the round's first branch step to the merge
#
# Run as root:   bash bench/secagg.sh
# Knobs: SA_BRANCHES ["3 30"], SA_ROUNDS [3], SA_LAYERS [{784,200,10}],
#        SA_ADAPTORS [4], SA_RANK [0.1], SA_ROWS [50],
#        BENCH_OUT [bench/results/secagg-<date>.txt]; PG_BINDIR,
#        SKIP_INSTALL, BENCH_PORT: see bench/lib.sh
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init secagg "secagg-$(date -u +%F).txt"
SA_BRANCHES=${SA_BRANCHES:-"3 30"}
SA_ROUNDS=${SA_ROUNDS:-3}
SA_LAYERS=${SA_LAYERS:-'{784,200,10}'}
SA_ADAPTORS=${SA_ADAPTORS:-4}
SA_RANK=${SA_RANK:-0.1}
SA_ROWS=${SA_ROWS:-50}
bench_install
bench_start_cluster 256MB "max_connections = 200"
psql_db postgres -c 'CREATE DATABASE coord'
psql_db coord -c 'CREATE EXTENSION floral_federation CASCADE'

IN=$(sed -E 's/^\{([0-9]+),.*/\1/' <<<"$SA_LAYERS")
OUTW=$(sed -E 's/.*,([0-9]+)\}$/\1/' <<<"$SA_LAYERS")
qc() { psql_db coord -At -c "$1"; }
qb() { local b=$1; shift; psql_db "br$b" -At -c "$1"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.10g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

bench_git_rev ''
report "# secure aggregation: cost per round ($(date -u '+%F %T') UTC, commit $GIT_REV)"
report "# model $SA_LAYERS, $SA_ADAPTORS adaptors, rank $SA_RANK; one tenant of $SA_ROWS rows per branch"
report "# machine: $(nproc) cores, load $(loadavg); simulated branches in one cluster, stepped one after another"

for N in $SA_BRANCHES; do
    log "$N branches: setting up"
    qc "SELECT floral_drop_model(name) FROM floral.models" >/dev/null
    qc "SELECT floral_create_model(m, '$SA_LAYERS', 'classification', $SA_ADAPTORS, $SA_RANK, '{\"seed\": 1}') FROM unnest('{plain,secure}'::text[]) m" >/dev/null
    qc "SELECT floral_coordinator_setup('plain', '{\"deadline\": \"1 hour\"}'); SELECT floral_coordinator_setup('secure', '{\"secure_aggregation\": true, \"deadline\": \"1 hour\"}')" >/dev/null
    for ((b = 1; b <= N; b++)); do
        psql_db postgres -c "DROP DATABASE IF EXISTS br$b" -c "CREATE DATABASE br$b" >/dev/null
        qc "SELECT floral_coordinator_add_branch(m, 'b$b') FROM unnest('{plain,secure}'::text[]) m" >/dev/null
        qb "$b" "CREATE EXTENSION floral_federation CASCADE;
                 CREATE TABLE rows AS SELECT 't$b' AS tenant, i,
                     (SELECT array_agg(sin(i * 0.7 + j * 1.3 + $b)::real) FROM generate_series(1, $IN) j) AS features,
                     (i + $b) % $OUTW AS label
                   FROM generate_series(1, $SA_ROWS) i;" >/dev/null
        for m in plain secure; do
            qb "$b" "SELECT floral_branch_join('$m', 'b$b', 'host=$WORK port=$PORT dbname=coord',
                         'SELECT tenant, features, label FROM rows ORDER BY i')" >/dev/null
        done
    done
    params=$(qc "SELECT sum(parameters) FROM floral_layers('secure')")

    for m in plain secure; do
        : >"$WORK/$m-$N.rows"
        for ((r = 0; r < SA_ROUNDS; r++)); do
            t0=$(now)
            passes=0
            merged=
            while [ -z "$merged" ] && [ $passes -lt 12 ]; do
                passes=$((passes + 1))
                for ((b = 1; b <= N; b++)); do
                    qb "$b" "CALL floral_branch_step('$m')" >>"$WORK/steps.log"
                done
                ans=$(qc "SELECT floral_coordinator_step('$m')")
                [[ $ans == *merged* ]] && merged=$ans
            done
            secs=$(elapsed "$t0" "$(now)")
            [ -n "$merged" ] || die "$m, $N branches: round $r did not merge: $ans (see $WORK/steps.log)"
            if [ "$m" = plain ]; then
                up=$(qc "SELECT sum(bytes) FROM floral.updates WHERE model = 'plain' AND round = $r")
                down=0
            else
                up=$(qc "SELECT bytes_in FROM floral.secagg_rounds WHERE model = 'secure' AND round = $r")
                down=$(qc "SELECT bytes_out FROM floral.secagg_rounds WHERE model = 'secure' AND round = $r")
            fi
            log "$m, $N branches, round $r: $secs s, $passes passes, up $up B, down $down B: $merged"
            echo "$r $secs $up $down $passes" >>"$WORK/$m-$N.rows"
        done
    done
    # the two federations must agree (exactness), reported with the costs
    diff=$(qc "WITH a AS (SELECT * FROM unnest((SELECT params FROM floral.rounds WHERE model = 'plain' AND round = $SA_ROUNDS)::real[]) WITH ORDINALITY a(v, k)),
                    b AS (SELECT * FROM unnest((SELECT params FROM floral.rounds WHERE model = 'secure' AND round = $SA_ROUNDS)::real[]) WITH ORDINALITY b(v, k))
               SELECT max(abs(a.v::float8 - b.v::float8)) FROM a JOIN b USING (k)")
    for m in plain secure; do
        eval "${m}_s=\$(awk '\$1 > 0 { print \$2 }' \"\$WORK/\$m-\$N.rows\" | median)"
        eval "${m}_up=\$(awk '{ print \$3 }' \"\$WORK/\$m-\$N.rows\" | median)"
        eval "${m}_down=\$(awk '{ print \$4 }' \"\$WORK/\$m-\$N.rows\" | median)"
        eval "${m}_passes=\$(awk '{ print \$5 }' \"\$WORK/\$m-\$N.rows\" | median)"
    done
    # shellcheck disable=SC2154  # set by the eval above
    {
        report ""
        report "## $N branches ($params parameters, $SA_ROUNDS rounds each)"
        report "plain : $(calc 'u / n' -v u="$plain_up" -v n="$N") B up per branch, $plain_up B up per round, $plain_s s per round ($plain_passes pass of steps)"
        report "secure: $(calc 'u / n' -v u="$secure_up" -v n="$N") B up per branch, $secure_up B up + $secure_down B down per round, $secure_s s per round ($secure_passes passes of steps)"
        report "extra : $(calc 'su + sd - pu' -v su="$secure_up" -v sd="$secure_down" -v pu="$plain_up") B per round ($(calc 'sprintf("%.2f", (su + sd) / pu)' -v su="$secure_up" -v sd="$secure_down" -v pu="$plain_up")x the plain bytes), $(calc 'sprintf("%.3f", s - p)' -v s="$secure_s" -v p="$plain_s") s per round ($(calc 'sprintf("%.2f", s / p)' -v s="$secure_s" -v p="$plain_s")x)"
        report "exact : max |secure - plain| over the round-$SA_ROUNDS parameters = $diff"
        report "summary branches=$N params=$params plain_bytes=$plain_up secure_bytes_up=$secure_up secure_bytes_down=$secure_down plain_s=$plain_s secure_s=$secure_s max_param_diff=$diff"
    }
    for ((b = 1; b <= N; b++)); do
        qb "$b" "SELECT floral_branch_leave(m) FROM unnest('{plain,secure}'::text[]) m" >/dev/null 2>&1 || true
    done
done
