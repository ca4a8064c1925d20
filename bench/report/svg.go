package report

import (
	"bufio"
	"encoding/xml"
	"fmt"
	"io"
	"strings"
)

// chartMetrics are the panels of the SVG, one bar chart each: the
// generator's figures, then the standard tools' beside them. A metric no
// backend has (its workload did not run) gets no panel.
var chartMetrics = []string{"tcp1_gbps", "tcp4_gbps", "udp64_kpps", "rr_p50_us", "rr_p99_us", "cpu_s_per_gb",
	"iperf3_tcp1_gbps", "iperf3_udp64_kpps", "ping_p50_us", "ping_p99_us", "ping_loaded_p50_us", "ping_loaded_p99_us",
	"sockperf_p50_us", "sockperf_p99_us"}

var palette = []string{"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7"}

const (
	svgWidth   = 760
	labelWidth = 130
	barHeight  = 18
	barGap     = 6
	panelPad   = 34
)

func esc(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// WriteSVG draws one horizontal bar chart per metric: the bar is the
// median over the repetitions, the whisker the min-max spread.
func (r *Report) WriteSVG(w io.Writer) error {
	bw := bufio.NewWriter(w)
	n := len(r.Summary)
	var panels []string
	for _, key := range chartMetrics {
		if r.hasAny([]string{key}) {
			panels = append(panels, key)
		}
	}
	panelH := panelPad + n*(barHeight+barGap) + 10
	height := 70 + len(panels)*panelH
	fmt.Fprintf(bw, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		svgWidth, height, svgWidth, height)
	fmt.Fprintf(bw, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	title := fmt.Sprintf("weft bench: %d hosts, %d repetitions of %.0f s, %s", r.Params.Hosts, r.Params.Reps, r.Params.DurationSec, r.Machine.Kernel)
	fmt.Fprintf(bw, `<text x="10" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", esc(title))
	fmt.Fprintf(bw, `<text x="10" y="42" fill="#555">%s</text>`+"\n",
		esc(fmt.Sprintf("%s, %d CPUs; bars: median, whiskers: min-max; %s", r.Machine.CPUModel, r.Machine.CPUs, r.Started.UTC().Format("2006-01-02 15:04 MST"))))
	y := 60
	for _, key := range panels {
		m := metric(key)
		better := "lower is better"
		if m.HigherBetter {
			better = "higher is better"
		}
		fmt.Fprintf(bw, `<g class="panel" id="%s">`+"\n", esc(key))
		fmt.Fprintf(bw, `<text x="10" y="%d" font-weight="bold">%s</text>`, y+18, esc(fmt.Sprintf("%s (%s, %s)", m.Title, m.Unit, better)))
		fmt.Fprintln(bw)
		maxV := 0.0
		for _, row := range r.Summary {
			if s, ok := row.Metrics[key]; ok {
				maxV = max(maxV, s.Max, s.Median)
			}
		}
		plotW := float64(svgWidth - labelWidth - 90)
		for i, row := range r.Summary {
			by := y + panelPad + i*(barHeight+barGap)
			fmt.Fprintf(bw, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", labelWidth-8, by+barHeight-5, esc(row.Backend))
			s, ok := row.Metrics[key]
			if !ok || maxV == 0 {
				fmt.Fprintf(bw, `<text x="%d" y="%d" fill="#999">no data</text>`+"\n", labelWidth, by+barHeight-5)
				continue
			}
			scale := func(v float64) float64 { return float64(labelWidth) + v/maxV*plotW }
			color := palette[i%len(palette)]
			fmt.Fprintf(bw, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"><title>%s</title></rect>`+"\n",
				labelWidth, by, scale(s.Median)-labelWidth, barHeight, color,
				esc(fmt.Sprintf("%s: median %s %s (min %s, max %s, n=%d)", row.Backend, formatValue(s.Median), m.Unit, formatValue(s.Min), formatValue(s.Max), s.N)))
			if s.N > 1 {
				mid := by + barHeight/2
				fmt.Fprintf(bw, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#222" stroke-width="1.5"/>`+"\n", scale(s.Min), mid, scale(s.Max), mid)
				for _, v := range []float64{s.Min, s.Max} {
					fmt.Fprintf(bw, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#222" stroke-width="1.5"/>`+"\n", scale(v), mid-4, scale(v), mid+4)
				}
			}
			fmt.Fprintf(bw, `<text x="%.1f" y="%d">%s</text>`+"\n", max(scale(s.Median), scale(s.Max))+6, by+barHeight-5, esc(formatValue(s.Median)))
		}
		fmt.Fprintf(bw, "</g>\n")
		y += panelH
	}
	fmt.Fprintf(bw, "</svg>\n")
	return bw.Flush()
}
