package scale

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// WriteTable prints results as issue 19's table (markdown), then the join
// runs.
func WriteTable(w io.Writer, rs []Result) {
	fmt.Fprintln(w, "| binary | backend | N | start → full state | RSS steady (anonymous) | idle: CPU per second | churn | churn: CPU per event | churn: state correct after the last event | RSS during churn (anonymous) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rs {
		if r.Error != "" && len(r.Churn) == 0 {
			msg := r.Error
			if len(msg) > 160 {
				msg = msg[:160] + "…"
			}
			fmt.Fprintf(w, "| %s | %s | %d | failed: %s | | | | | | |\n", r.Binary, r.Backend, r.N, strings.ReplaceAll(msg, "|", "/"))
		}
		for _, c := range r.Churn {
			fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s | %d events at %d/s | %s | %s | %s |\n", r.Binary, r.Backend, r.N, secs(r.Start), mib(r.RSSSteady)+" ("+mib(r.RSSSteadyAnon)+")",
				ms(r.IdleCPU), c.Events, c.Rate, ms(c.CPUPerEvent), secs(c.After), mib(c.RSSMax)+" ("+mib(c.RSSMaxAnon)+")")
		}
	}
	sep := "\n"
	for _, r := range rs {
		if r.CgroupLimit > 0 {
			fmt.Fprintf(w, "%s%s %s N=%d: in a memory cgroup limited to %s: charged at most %s, OOM kills %d\n", sep, r.Binary, r.Backend, r.N, mib(uint64(r.CgroupLimit)), mib(r.CgroupPeak), r.OOMKills)
			sep = ""
		}
	}
	for _, r := range rs {
		if r.CheckCPU > 0 {
			fmt.Fprintf(w, "%s%s %s N=%d: one check of the state (a /status of every peer) cost weft %s of CPU; the churn's CPU per event leaves out the checks before the state was correct\n", sep, r.Binary, r.Backend, r.N, ms(r.CheckCPU))
			sep = ""
		}
	}
	for _, r := range rs {
		if r.Repair > 0 {
			fmt.Fprintf(w, "%s%s %s N=%d: a peer's kernel entries deleted by hand were back after %s\n", sep, r.Binary, r.Backend, r.N, secs(r.Repair))
			sep = ""
		}
	}
	for _, r := range rs {
		if r.Restart != nil {
			changed := ""
			if kernelBackend(r.Backend) {
				changed = fmt.Sprintf("; kernel entries the restart changed: %d", r.Restart.KernelChanges)
			}
			fmt.Fprintf(w, "%s%s %s N=%d: restarted, every peer's state held again after %s%s\n", sep, r.Binary, r.Backend, r.N, secs(r.Restart.Took), changed)
			sep = ""
		}
	}
	var joins []Result
	for _, r := range rs {
		if r.Join != nil {
			joins = append(joins, r)
		}
	}
	if len(joins) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| binary | backend | N | join: puts at rate | puts took | state correct after the last put | CPU | RSS max |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, r := range joins {
		j := r.Join
		fmt.Fprintf(w, "| %s | %s | %d | %d at %d/s | %s | %s | %s | %s |\n", r.Binary, r.Backend, r.N, j.Puts, j.Rate, secs(j.PutTime), secs(j.After), secs(j.CPU), mib(j.RSSMax))
	}
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func ms(d time.Duration) string {
	return strings.TrimSuffix(fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)), "0") + " ms"
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
