package etcdload

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// WriteTable prints r, one line per phase.
func WriteTable(w io.Writer, r *Result) {
	if r == nil {
		return
	}
	fmt.Fprintf(w, "weft etcd load: %d hosts, each one connection, one etcd lease (TTL %s, renewed every %s) and two watches (the subnets prefix, its own key)\n",
		r.Hosts, short(r.TTL), short(r.RenewEvery))
	if a := r.Alone; a.Window > 0 {
		fmt.Fprintf(w, "etcd alone:   %d leases, no host connected, %.0f s: etcd CPU %.3f s per minute, RSS %s\n",
			r.Hosts, a.Window.Seconds(), a.CPUPerMinute().Seconds(), mib(a.ServerRSS))
	}
	s := r.Storm
	fmt.Fprintf(w, "start storm:  every host listed after %.2f s (a host's Acquire %s median, %s max; listed after %s median), settled after %.2f s; etcd CPU %.2f s (%.0f %% system), RSS max %s; %s keys listed, %s watch events to hosts; etcd sent %s, received %s; requests %s (bench process CPU %.1f s)\n",
		s.Listed.Seconds(), ms(s.AcquireMedian), ms(s.AcquireMax), ms(s.HostListedMedian), s.Settled.Seconds(), s.ServerCPU.Seconds(), 100*share(s.ServerSys, s.ServerCPU), mib(s.ServerRSS), count(float64(s.KeysListed)), count(float64(s.Events)),
		bytes(s.BytesOut), bytes(s.BytesIn), methods(s.Requests, "%.0f"), s.ClientCPU.Seconds())
	if i := r.Idle; i.Window > 0 {
		writeIdle(w, r, i)
	}
	f := r.FanOut
	if f.Events > 0 {
		fmt.Fprintf(w, "fan-out:      %d events one at a time: at every host %s after the write (median), %s max; at the first %s (median: the commit, etcd's WAL fsync, is in both), first to last %s (median); etcd CPU %s per event over idle (%.0f %% system; bench process %.1f s)\n",
			f.Events, ms(f.AllMedian), ms(f.AllMax), ms(f.FirstMedian), ms(f.SpreadMedian), ms(f.CPUPerEvent), 100*f.SysShare, f.ClientCPU.Seconds())
	}
	if c := r.Churn; c != nil {
		fmt.Fprintf(w, "churn %d/s:   %d events over %.1f s: etcd CPU %.2f s (%.0f %% system), %s per event over idle; every host had every event %s after the last; per event at every host %s median, %s max; RSS max %s; %d claims lost to concurrent joins and made again (bench process %.1f s)\n",
			c.Rate, c.Events, c.Duration.Seconds(), c.ServerCPU.Seconds(), 100*share(c.ServerSys, c.ServerCPU), ms(c.CPUPerEvent), ms(c.After), ms(c.AllMedian), ms(c.AllMax),
			mib(c.ServerRSS), c.LostClaims, c.ClientCPU.Seconds())
	}
	fmt.Fprintf(w, "etcd peak RSS (VmHWM) %s; the hosts logged %d warnings\n", mib(r.ServerRSSPeak), r.Warnings)
	for _, l := range r.WarningLines {
		fmt.Fprintf(w, "  %s\n", l)
	}
}

func writeIdle(w io.Writer, r *Result, i Idle) {
	perHost := "-"
	if i.SegsIn > 0 {
		perHost = fmt.Sprintf("%.1f s", float64(r.Hosts)/i.SegsIn)
	}
	fmt.Fprintf(w, "idle %.0f s:    etcd CPU %.3f s per minute (%.0f %% system), RSS %s (anonymous %s; Go heap in use %s, stacks %s, %.0f goroutines); %d connections (the hosts', the driver's, the metrics scrape's), %.0f watch streams, %.0f watchers; requests/s %s; renewals %.3f/s (by design %.4f/s); TCP data segments in %.1f/s (one per host every %s), segments out %.1f/s\n",
		i.Window.Seconds(), i.CPUPerMinute().Seconds(), 100*share(i.ServerSys, i.ServerCPU), mib(i.ServerRSS), mib(i.ServerAnon),
		mib(uint64(i.HeapInuse)), mib(uint64(i.StackInuse)), i.Goroutines, i.Conns, i.WatchStreams, i.Watchers,
		methods(i.Requests, "%.3f"), i.Renewals, r.RenewalsPerSecond, i.SegsIn, perHost, i.SegsOut)
}

func short(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	}
	if d < time.Second {
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func mib(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func bytes(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	default:
		return fmt.Sprintf("%.0f KiB", b/(1<<10))
	}
}

func count(n float64) string {
	switch {
	case n >= 1e6:
		return fmt.Sprintf("%.2fM", n/1e6)
	case n >= 1e4:
		return fmt.Sprintf("%.0fk", n/1e3)
	default:
		return fmt.Sprintf("%.0f", n)
	}
}

// methods prints per-method figures, largest first.
func methods(m map[string]float64, format string) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			if m[a] > m[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + " " + fmt.Sprintf(format, m[k])
	}
	return strings.Join(parts, ", ")
}
