# bench/router_plot.gnuplot: accuracy (left axis) and router purity (right
# axis) against round, for a few methods.  Called by bench/router_plot.sh as
#   gnuplot -e "datafile='...'; outfile='....png'; plottitle='...'; nmethods=3" bench/router_plot.gnuplot
# datafile: a header ("round", then for each method "<name> accuracy" and
# "<name> purity", double-quoted), then rows: round, accuracy and purity of
# each method (mean over seeds); '?' where a method has no value.
if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
	set terminal pngcairo size 1000,640 font "DejaVu Sans,11"
} else {
	set terminal png size 1000,640
}
set output outfile
set datafile missing "?"
set title plottitle noenhanced
set xlabel "round"
set ylabel "personalised test accuracy (%), solid"
set y2label "router purity, dashed"
set yrange [0:100]
set y2range [0:1.05]
set ytics nomirror
set y2tics 0.1
set grid
set key bottom right noenhanced box opaque
set linetype 1 lc rgb "#d62728" lw 2
set linetype 2 lc rgb "#1f77b4" lw 2
set linetype 3 lc rgb "#9467bd" lw 2
set linetype 4 lc rgb "#2ca02c" lw 2
plot for [i=1:nmethods] datafile using 1:(column(2 * i)) with lines lt i title columnheader(2 * i), \
     for [i=1:nmethods] datafile using 1:(column(2 * i + 1)) axes x1y2 with lines lt i dt 2 title columnheader(2 * i + 1)
