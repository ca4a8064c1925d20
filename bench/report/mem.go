package report

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// EngineMem is one engine's memory, from /proc/PID/status.
type EngineMem struct {
	Host   int   `json:"host"`    // 1-based, as the lab numbers hosts
	RSSKiB int64 `json:"rss_kib"` // VmRSS: resident now
	HWMKiB int64 `json:"hwm_kib"` // VmHWM: the most ever resident
}

// MemPoint is the engines' resident sets at one moment of a run.
type MemPoint struct {
	Seconds float64 `json:"t"` // since the run started
	// RSSKiB is VmRSS per engine, in host order; 0 for an engine that
	// was not running.
	RSSKiB []int64 `json:"rss_kib"`
}

const kibPerMiB = 1024

// peakMiB is the largest VmHWM among the engines.
func peakMiB(mem []EngineMem) (float64, bool) {
	var peak int64
	for _, m := range mem {
		peak = max(peak, m.HWMKiB)
	}
	return float64(peak) / kibPerMiB, peak > 0
}

// TrendMinSeconds is how long a run must be for a memory trend: a first
// and a last minute that do not overlap.
const TrendMinSeconds = 120

// flatSlackMiB and flatSlackFrac bound what still counts as flat: Go's
// heap breathes by a few hundred KiB as the collector runs, so the test
// is growth beyond the larger of 1 MiB and 5 %.
const (
	flatSlackMiB  = 1.0
	flatSlackFrac = 0.05
)

// MemTrend is one engine's resident set over one long run: whether it is
// flat is a matter of the last minute's maximum against the first's. An
// engine that is not flat may still have settled: it grew while it first
// touched its buffer pools and heap, then stopped. Growth in the second
// half of the run, from the minute before its middle to its last minute,
// tells that apart from a leak, which grows all the way.
type MemTrend struct {
	Backend  string  `json:"backend"`
	Rep      int     `json:"rep"`
	Workload string  `json:"workload"`
	Host     int     `json:"host"`
	Seconds  float64 `json:"seconds"` // the last reading's time
	Points   int     `json:"points"`
	// StartMiB is VmRSS when the run began; FirstMinuteMaxMiB and
	// LastMinuteMaxMiB the largest readings in its first and last 60 s;
	// PeakMiB VmHWM after it (the engine's peak since it started, between
	// readings too).
	StartMiB            float64 `json:"start_mib"`
	FirstMinuteMaxMiB   float64 `json:"first_minute_max_mib"`
	MidMinuteMaxMiB     float64 `json:"mid_minute_max_mib"` // the minute before the middle
	LastMinuteMaxMiB    float64 `json:"last_minute_max_mib"`
	PeakMiB             float64 `json:"peak_mib"`
	GrowthMiB           float64 `json:"growth_mib"`             // last minute's max - first minute's
	SecondHalfGrowthMiB float64 `json:"second_half_growth_mib"` // last minute's max - mid minute's
	Flat                bool    `json:"flat"`                   // GrowthMiB within the slack
	Settled             bool    `json:"settled"`                // SecondHalfGrowthMiB within the slack
}

// MemTrends derives a trend for each engine of each run that lasted at
// least TrendMinSeconds.
func MemTrends(samples []Sample) []MemTrend {
	var out []MemTrend
	for _, s := range samples {
		if len(s.EngineRSS) < 2 {
			continue
		}
		end := s.EngineRSS[len(s.EngineRSS)-1].Seconds
		if end < TrendMinSeconds {
			continue
		}
		for i := range s.EngineRSS[0].RSSKiB {
			t := MemTrend{Backend: s.Backend, Rep: s.Rep, Workload: s.Workload, Host: i + 1, Seconds: end, Points: len(s.EngineRSS)}
			var first, mid, last int64
			for _, p := range s.EngineRSS {
				if i >= len(p.RSSKiB) {
					continue
				}
				if p.Seconds <= 60 {
					first = max(first, p.RSSKiB[i])
				}
				if p.Seconds >= end/2-60 && p.Seconds <= end/2 {
					mid = max(mid, p.RSSKiB[i])
				}
				if p.Seconds >= end-60 {
					last = max(last, p.RSSKiB[i])
				}
			}
			if first == 0 || mid == 0 || last == 0 {
				continue // the engine was not running
			}
			t.StartMiB = float64(s.EngineRSS[0].RSSKiB[i]) / kibPerMiB
			t.FirstMinuteMaxMiB = float64(first) / kibPerMiB
			t.MidMinuteMaxMiB = float64(mid) / kibPerMiB
			t.LastMinuteMaxMiB = float64(last) / kibPerMiB
			for _, m := range s.EngineMem {
				if m.Host == i+1 {
					t.PeakMiB = float64(m.HWMKiB) / kibPerMiB
				}
			}
			t.GrowthMiB = t.LastMinuteMaxMiB - t.FirstMinuteMaxMiB
			t.SecondHalfGrowthMiB = t.LastMinuteMaxMiB - t.MidMinuteMaxMiB
			t.Flat = t.GrowthMiB <= max(flatSlackMiB, flatSlackFrac*t.FirstMinuteMaxMiB)
			t.Settled = t.SecondHalfGrowthMiB <= max(flatSlackMiB, flatSlackFrac*t.MidMinuteMaxMiB)
			out = append(out, t)
		}
	}
	return out
}

// writeMemTrends writes the trends as a table under the summary.
func writeMemTrends(w io.Writer, trends []MemTrend) error {
	if len(trends) == 0 {
		return nil
	}
	fmt.Fprintf(w, "\nengine memory over long runs (VmRSS, MiB; max of the readings in the first minute, the minute before the middle, the last minute):\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "backend\trep\tworkload\tengine\tseconds\tstart\tfirst min\tmid min\tlast min\tpeak (VmHWM)\tgrowth\t2nd half\t\n")
	for _, t := range trends {
		verdict := "flat"
		switch {
		case !t.Flat && t.Settled:
			verdict = "settled"
		case !t.Flat:
			verdict = "GROWS"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\thost %d\t%.0f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%+.1f\t%+.1f\t%s\n", t.Backend, t.Rep, t.Workload, t.Host,
			t.Seconds, t.StartMiB, t.FirstMinuteMaxMiB, t.MidMinuteMaxMiB, t.LastMinuteMaxMiB, t.PeakMiB, t.GrowthMiB, t.SecondHalfGrowthMiB, verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "(flat: the last minute within max(%.0f MiB, %.0f%%) of the first; settled: not flat, but the last minute within that of the mid minute)\n",
		flatSlackMiB, flatSlackFrac*100)
	return err
}
