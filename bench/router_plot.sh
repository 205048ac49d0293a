#!/usr/bin/env bash
# bench/router_plot.sh: one plot per task of accuracy and router purity per
# round, for the methods named, from the CSV files bench/paper.sh writes.
#
#   bash bench/router_plot.sh RESULTS.csv ROUTER.csv OUT-PREFIX "floral10 floral10pv oracle10" ["label ..."]
#
# writes OUT-PREFIX-<task>.png (mean over the seeds in the files).  Several
# result files can be given joined by commas (a run and a later run of more
# methods): RESULTS.csv and ROUTER.csv are then comma-separated lists.
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RES=$1 ROUTER=$2 OUT=$3 METHODS=$4 LABELS=${5:-}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
/usr/bin/python3 - "$RES" "$ROUTER" "$METHODS" "$LABELS" "$TMP" <<'PY'
import csv, sys, collections
res, router, methods, labels, tmp = sys.argv[1:6]
methods = methods.split()
labels = labels.split("|") if labels else methods
acc = collections.defaultdict(list)   # (task, method, round) -> [accuracy per seed]
pur = collections.defaultdict(list)
for f in res.split(","):
    for r in csv.DictReader(open(f)):
        acc[(r["task"], r["method"], int(r["round"]))].append(float(r["accuracy"]))
for f in router.split(","):
    for r in csv.DictReader(open(f)):
        if r["router_purity"]:
            pur[(r["task"], r["method"], int(r["round"]))].append(float(r["router_purity"]))
tasks = sorted({k[0] for k in acc})
for t in tasks:
    rounds = sorted({k[2] for k in acc if k[0] == t and k[1] in methods})
    with open(f"{tmp}/{t}.dat", "w") as out:
        out.write("round " + " ".join(f'"{l} accuracy" "{l} purity"' for l in labels) + "\n")
        for rd in rounds:
            cells = []
            for m in methods:
                a, p = acc.get((t, m, rd)), pur.get((t, m, rd))
                cells.append("%.2f" % (sum(a) / len(a)) if a else "?")
                cells.append("%.3f" % (sum(p) / len(p)) if p else "?")
            out.write(f"{rd} " + " ".join(cells) + "\n")
    print(t)
PY
for f in "$TMP"/*.dat; do
	t=$(basename "$f" .dat)
	gnuplot -e "datafile='$f'; outfile='$OUT-$t.png'; plottitle='Fashion-MNIST, $( [ "$t" = rotate ] && echo rotate || echo 'label shift'): the paper router against ours (mean over seeds)'; nmethods=$(wc -w <<<"$METHODS")" \
		"$HERE/router_plot.gnuplot"
	echo "wrote $OUT-$t.png"
done
