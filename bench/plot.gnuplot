# bench/plot.gnuplot: accuracy vs round, one line per method.
# Called by bench/paper.sh as
#   gnuplot -e "datafile='...'; outfile='....png'; plottitle='...'; nmethods=5" bench/plot.gnuplot
# datafile: a header line ("round" then one double-quoted method name per
# column), then whitespace-separated rows: round, one accuracy per method;
# '?' marks a missing value.
if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
	set terminal pngcairo size 1000,640 font "DejaVu Sans,11"
} else {
	set terminal png size 1000,640
}
set output outfile
set datafile missing "?"
set title plottitle noenhanced
set xlabel "round"
set ylabel "personalised test accuracy (%)"
set grid
set key bottom right noenhanced box opaque
# colours that stay apart on white, one per column in the order paper.sh writes them
set linetype 1 lc rgb "#555555" pt 7
set linetype 2 lc rgb "#1f77b4" pt 5
set linetype 3 lc rgb "#2ca02c" pt 9
set linetype 4 lc rgb "#d62728" pt 11
set linetype 5 lc rgb "#9467bd" pt 13
set linetype 6 lc rgb "#ff7f0e" pt 15
set linetype 7 lc rgb "#17becf" pt 3
set linetype 8 lc rgb "#8c564b" pt 1
set yrange [0:100]
plot for [i=2:nmethods+1] datafile using 1:i with linespoints pointsize 0.5 lw 2 title columnheader(i)
