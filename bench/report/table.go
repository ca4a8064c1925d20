package report

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"text/tabwriter"
)

// WriteJSON writes the whole report, indented.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ratioMetrics are the figures compared with the reference rows.
var ratioMetrics = []string{"tcp1_gbps", "tcp4_gbps", "udp64_kpps", "rr_p50_us", "rr_p99_us", "cpu_s_per_gb"}

func metric(key string) Metric {
	for _, m := range Metrics {
		if m.Key == key {
			return m
		}
	}
	return Metric{Key: key, Title: key}
}

// WriteTable writes the summary: medians with their spread, then ratios
// to the kernel vxlan and bare veth rows when those were measured.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "backend")
	for _, m := range Metrics {
		fmt.Fprintf(tw, "\t%s", m.Title)
	}
	fmt.Fprintf(tw, "\terrors\n")
	for _, m := range Metrics {
		fmt.Fprintf(tw, "\t%s", m.Unit)
	}
	fmt.Fprintf(tw, "\t\n")
	for _, row := range r.Summary {
		fmt.Fprintf(tw, "%s", row.Backend)
		for _, m := range Metrics {
			fmt.Fprintf(tw, "\t%s", formatStat(row.Metrics[m.Key]))
		}
		fmt.Fprintf(tw, "\t%d\n", row.Errors)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "(median of %d repetitions, ± half the min-max spread as %% of the median; backends interleaved)\n", r.Params.Reps)
	for _, ref := range []string{"vxlan", "veth"} {
		refRow := r.row(ref)
		if refRow == nil || len(refRow.Metrics) == 0 || len(r.Summary) < 2 {
			continue
		}
		fmt.Fprintf(w, "\nratio to %s (median / median; for latency and CPU lower is better):\n", ref)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "backend")
		for _, k := range ratioMetrics {
			fmt.Fprintf(tw, "\t%s", metric(k).Title)
		}
		fmt.Fprintln(tw)
		for _, row := range r.Summary {
			fmt.Fprintf(tw, "%s", row.Backend)
			for _, k := range ratioMetrics {
				a, okA := row.Metrics[k]
				b, okB := refRow.Metrics[k]
				if !okA || !okB || b.Median == 0 {
					fmt.Fprintf(tw, "\t-")
					continue
				}
				fmt.Fprintf(tw, "\t%.2fx", a.Median/b.Median)
			}
			fmt.Fprintln(tw)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(w)
	for _, row := range r.Summary {
		fmt.Fprintf(w, "%-14s %s\n", row.Backend+":", row.Label)
	}
	return nil
}

func (r *Report) row(backend string) *Row {
	for i := range r.Summary {
		if r.Summary[i].Backend == backend {
			return &r.Summary[i]
		}
	}
	return nil
}

func formatStat(s Stat) string {
	if s.N == 0 {
		return "-"
	}
	v := formatValue(s.Median)
	if s.N > 1 && s.Median != 0 {
		spread := (s.Max - s.Min) / 2 / math.Abs(s.Median) * 100
		v += fmt.Sprintf(" ±%.0f%%", spread)
	}
	return v
}

func formatValue(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}
