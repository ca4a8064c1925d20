// Package report holds the bench's results: every sample, the machine it
// ran on, per-backend summaries (median and spread), and their renderings
// as a terminal table with ratios, JSON and an SVG chart.
package report

import (
	"encoding/json"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/bench/traffic"
)

// Workloads the bench runs per backend and repetition.
const (
	WorkloadTCP1  = "tcp1"  // TCP, 1 stream
	WorkloadTCP4  = "tcp4"  // TCP, 4 streams
	WorkloadUDP64 = "udp64" // 64-byte UDP payloads, flat out
	WorkloadRR    = "rr"    // 64-byte request/response
	// WorkloadRRLoaded is the same request/response beside four bulk TCP
	// streams on the same path: what a short exchange waits behind
	// bulk data in the tunnel's queues (docs/performance.md, "Latency
	// under load").
	WorkloadRRLoaded = "rr-loaded"
	// WorkloadUDP64Paced is 64-byte UDP paced at the rate kernel vxlan
	// delivered flat out in the same repetition: issue #7's goal is loss
	// under 1 % at that rate, which the flat-out figure cannot show (the
	// sender outruns a userspace tunnel, while kernel vxlan does its work
	// inside the sender's sendto and never loses).
	WorkloadUDP64Paced = "udp64-paced"
)

// WorkloadIperf3 is iperf3's TCP 1 stream, run as a cross-check of the
// built-in generator when iperf3 is installed.
const WorkloadIperf3 = "iperf3"

// Standard-tool workloads: the generator's kinds of figure measured by
// programs other than weft's own (issue 18: a result that only weft's
// generator shows is not a result).
const (
	// WorkloadIperf3UDP64 is `iperf3 -u -l 64 -b 0`: 64-byte UDP flat
	// out, the receiver's delivered rate and loss.
	WorkloadIperf3UDP64 = "iperf3-udp64"
	// WorkloadPing is `ping -i 0.01`: ICMP round trips at 100/s, so the
	// path is idle between them (unlike rr's back-to-back exchanges).
	WorkloadPing = "ping"
	// WorkloadPingLoaded is the same ping beside `iperf3 -P 4` on the
	// same path: rr-loaded's question asked with standard tools.
	WorkloadPingLoaded = "ping-loaded"
	// WorkloadSockperf is sockperf's ping-pong (UDP, 64-byte messages,
	// full round trips): rr's question asked by a standard tool.
	WorkloadSockperf = "sockperf"
)

// Workloads lists the default ones in run order: the built-in generator's,
// then the standard tools'. The paced workload runs for every backend
// after the others of its repetition, once kernel vxlan's flat-out rate
// is known.
var Workloads = []string{WorkloadTCP1, WorkloadTCP4, WorkloadUDP64, WorkloadRR, WorkloadRRLoaded, WorkloadUDP64Paced,
	WorkloadIperf3UDP64, WorkloadPing, WorkloadPingLoaded, WorkloadSockperf}

// StdToolWorkloads are the workloads run by standard tools rather than
// weft's generator, the iperf3 TCP cross-check among them.
var StdToolWorkloads = []string{WorkloadIperf3, WorkloadIperf3UDP64, WorkloadPing, WorkloadPingLoaded, WorkloadSockperf}

// Sample is one workload run on one backend in one repetition.
type Sample struct {
	Backend  string          `json:"backend"`
	Rep      int             `json:"rep"`
	Workload string          `json:"workload"`
	Result   *traffic.Result `json:"result,omitempty"`
	// CPUSeconds is the whole machine's busy CPU time (user, system, irq,
	// softirq) during the run: engines, kernel and the generator alike.
	CPUSeconds float64 `json:"cpu_seconds"`
	// EngineCPUSeconds is the CPU time of the backend's own processes
	// (weft run); 0 for kernel backends.
	EngineCPUSeconds float64 `json:"engine_cpu_seconds"`
	// PacedFrom says where a paced workload's rate (Result.TargetRate)
	// came from: PacedFromVXLAN or PacedFromFlag.
	PacedFrom string `json:"paced_from,omitempty"`
	// EngineMem is each engine's memory right after the run; EngineRSS
	// the engines' resident sets sampled during it. Weft backends only.
	EngineMem []EngineMem `json:"engine_mem,omitempty"`
	EngineRSS []MemPoint  `json:"engine_rss,omitempty"`
	// Skipped says why the workload did not run; it is not an error.
	Skipped string `json:"skipped,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Where a paced workload's rate came from.
const (
	PacedFromVXLAN = "vxlan"    // kernel vxlan's delivered rate, flat out, same rep
	PacedFromFlag  = "udp-rate" // the bench's --udp-rate
)

// Stat summarises one metric of one backend over the repetitions.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// Row is one backend's summary.
type Row struct {
	Backend string          `json:"backend"`
	Label   string          `json:"label"`
	Metrics map[string]Stat `json:"metrics"`
	Errors  int             `json:"errors"`
}

// Machine describes where the bench ran.
type Machine struct {
	Kernel      string `json:"kernel"`
	Arch        string `json:"arch"`
	CPUModel    string `json:"cpu_model"`
	CPUs        int    `json:"cpus"`
	MemTotalKB  int64  `json:"mem_total_kb"`
	GoVersion   string `json:"go_version"`
	WeftVersion string `json:"weft_version"`
}

// Params are the bench's settings.
type Params struct {
	Hosts       int      `json:"hosts"`
	Backends    []string `json:"backends"`
	Workloads   []string `json:"workloads"`
	DurationSec float64  `json:"duration_seconds"`
	Reps        int      `json:"reps"`
	Leases      string   `json:"leases"`
	UnderlayMTU int      `json:"underlay_mtu"`
	// UDPRate is the paced workload's rate (packets/s) when kernel
	// vxlan's is not known; 0: skip it then.
	UDPRate int `json:"udp_rate"`
	// MemEverySec is how often engine memory was read during a run.
	MemEverySec float64 `json:"mem_every_seconds"`
	// IPv6: the traffic was IPv6 (weft bench --ipv6).
	IPv6 bool `json:"ipv6,omitempty"`
	// LeftOut names the default workloads that did not run, each with
	// why (its tool is not installed, or takes no IPv6): a reader must
	// see that a standard tool's cross-check is missing, not find it
	// silently gone.
	LeftOut []string `json:"left_out,omitempty"`
}

// BackendInfo is what a backend looked like when measured.
type BackendInfo struct {
	Label string `json:"label"`
	// Lab is the prefix of the backend's lab (its namespaces' names).
	Lab string `json:"lab"`
	// WeftStats is `weft stats` of host 1's engine after setup (offload
	// state, MTU), for weft backends.
	WeftStats json.RawMessage `json:"weft_stats,omitempty"`
}

// Report is a whole bench run.
type Report struct {
	Command  string                 `json:"command"`
	Started  time.Time              `json:"started"`
	Finished time.Time              `json:"finished"`
	Machine  Machine                `json:"machine"`
	Params   Params                 `json:"params"`
	Backends map[string]BackendInfo `json:"backends"`
	Samples  []Sample               `json:"samples"`
	Summary  []Row                  `json:"summary"`
	// MemoryTrends are the engines' resident sets over runs long enough
	// to say whether memory stays flat (see MemTrends).
	MemoryTrends []MemTrend `json:"memory_trends,omitempty"`
}

// Metric is one figure the summary derives from samples.
type Metric struct {
	Key          string
	Title        string
	Unit         string
	HigherBetter bool
	Workload     string // "" for every workload's samples
	// Peak metrics are shown as their maximum over the samples, not the
	// median: a memory limit has to hold the peak.
	Peak  bool
	value func(s Sample) (float64, bool)
}

// Metrics lists the summary's figures, in table order.
var Metrics = []Metric{
	{Key: "tcp1_gbps", Title: "TCP 1 stream", Unit: "Gbit/s", HigherBetter: true, Workload: WorkloadTCP1,
		value: func(s Sample) (float64, bool) { return s.Result.BitsPerSecond / 1e9, true }},
	{Key: "tcp4_gbps", Title: "TCP 4 streams", Unit: "Gbit/s", HigherBetter: true, Workload: WorkloadTCP4,
		value: func(s Sample) (float64, bool) { return s.Result.BitsPerSecond / 1e9, true }},
	{Key: "udp64_kpps", Title: "64 B UDP delivered", Unit: "kpps", HigherBetter: true, Workload: WorkloadUDP64,
		value: func(s Sample) (float64, bool) { return s.Result.DeliveredPPS / 1e3, true }},
	{Key: "udp64_loss_pct", Title: "64 B UDP loss", Unit: "%", Workload: WorkloadUDP64,
		value: func(s Sample) (float64, bool) {
			if s.Result.Loss == nil {
				return 0, false
			}
			return *s.Result.Loss * 100, true
		}},
	{Key: "udp64_paced_kpps", Title: "64 B UDP paced", Unit: "kpps", HigherBetter: true, Workload: WorkloadUDP64Paced,
		value: func(s Sample) (float64, bool) { return s.Result.DeliveredPPS / 1e3, true }},
	{Key: "udp64_paced_loss_pct", Title: "paced loss", Unit: "%", Workload: WorkloadUDP64Paced,
		value: func(s Sample) (float64, bool) {
			if s.Result.Loss == nil {
				return 0, false
			}
			return *s.Result.Loss * 100, true
		}},
	{Key: "rr_p50_us", Title: "RR median", Unit: "µs", Workload: WorkloadRR,
		value: func(s Sample) (float64, bool) { return s.Result.RTTMedianUs, true }},
	{Key: "rr_p99_us", Title: "RR p99", Unit: "µs", Workload: WorkloadRR,
		value: func(s Sample) (float64, bool) { return s.Result.RTTP99Us, true }},
	{Key: "rr_loaded_p50_us", Title: "RR loaded median", Unit: "µs", Workload: WorkloadRRLoaded,
		value: func(s Sample) (float64, bool) { return s.Result.RTTMedianUs, true }},
	{Key: "rr_loaded_p99_us", Title: "RR loaded p99", Unit: "µs", Workload: WorkloadRRLoaded,
		value: func(s Sample) (float64, bool) { return s.Result.RTTP99Us, true }},
	{Key: "iperf3_tcp1_gbps", Title: "iperf3 TCP 1 stream", Unit: "Gbit/s", HigherBetter: true, Workload: WorkloadIperf3,
		value: func(s Sample) (float64, bool) { return s.Result.BitsPerSecond / 1e9, true }},
	{Key: "iperf3_udp64_kpps", Title: "iperf3 64 B UDP", Unit: "kpps", HigherBetter: true, Workload: WorkloadIperf3UDP64,
		value: func(s Sample) (float64, bool) { return s.Result.DeliveredPPS / 1e3, true }},
	{Key: "iperf3_udp64_loss_pct", Title: "iperf3 UDP loss", Unit: "%", Workload: WorkloadIperf3UDP64,
		value: func(s Sample) (float64, bool) {
			if s.Result.Loss == nil {
				return 0, false
			}
			return *s.Result.Loss * 100, true
		}},
	// What the path carried into the receiving namespace: delivered plus
	// what overflowed the receiver's socket there. Through a forwarder
	// that cannot slow the sender, the receiving iperf3, not the path,
	// can be what limits the delivered rate.
	{Key: "iperf3_udp64_into_pod_kpps", Title: "iperf3 64 B into pod", Unit: "kpps", HigherBetter: true, Workload: WorkloadIperf3UDP64,
		value: func(s Sample) (float64, bool) {
			r := s.Result
			if r.ReceiverOverflows == nil || r.Seconds <= 0 {
				return 0, false
			}
			return float64(r.Delivered+*r.ReceiverOverflows) / r.Seconds / 1e3, true
		}},
	{Key: "ping_p50_us", Title: "ping median", Unit: "µs", Workload: WorkloadPing,
		value: func(s Sample) (float64, bool) { return s.Result.RTTMedianUs, true }},
	{Key: "ping_p99_us", Title: "ping p99", Unit: "µs", Workload: WorkloadPing,
		value: func(s Sample) (float64, bool) { return s.Result.RTTP99Us, true }},
	{Key: "ping_loaded_p50_us", Title: "ping loaded median", Unit: "µs", Workload: WorkloadPingLoaded,
		value: func(s Sample) (float64, bool) { return s.Result.RTTMedianUs, true }},
	{Key: "ping_loaded_p99_us", Title: "ping loaded p99", Unit: "µs", Workload: WorkloadPingLoaded,
		value: func(s Sample) (float64, bool) { return s.Result.RTTP99Us, true }},
	{Key: "sockperf_p50_us", Title: "sockperf median", Unit: "µs", Workload: WorkloadSockperf,
		value: func(s Sample) (float64, bool) { return s.Result.RTTMedianUs, true }},
	{Key: "sockperf_p99_us", Title: "sockperf p99", Unit: "µs", Workload: WorkloadSockperf,
		value: func(s Sample) (float64, bool) { return s.Result.RTTP99Us, true }},
	{Key: "cpu_s_per_gb", Title: "CPU per GB (machine)", Unit: "s/GB", Workload: WorkloadTCP1,
		value: func(s Sample) (float64, bool) {
			if s.Result.Bytes == 0 {
				return 0, false
			}
			return s.CPUSeconds / (float64(s.Result.Bytes) / 1e9), true
		}},
	{Key: "engine_cpu_s_per_gb", Title: "CPU per GB (engines)", Unit: "s/GB", Workload: WorkloadTCP1,
		value: func(s Sample) (float64, bool) {
			if s.Result.Bytes == 0 || s.EngineCPUSeconds == 0 {
				return 0, false
			}
			return s.EngineCPUSeconds / (float64(s.Result.Bytes) / 1e9), true
		}},
	{Key: "engine_rss_peak_mib", Title: "engine RSS peak", Unit: "MiB", Peak: true,
		value: func(s Sample) (float64, bool) { return peakMiB(s.EngineMem) }},
}

// Summarize computes one Row per backend, in the given order.
func Summarize(samples []Sample, backends []string, label func(string) string) []Row {
	var rows []Row
	for _, b := range backends {
		row := Row{Backend: b, Label: label(b), Metrics: map[string]Stat{}}
		for _, m := range Metrics {
			var vals []float64
			for _, s := range samples {
				if s.Backend != b || (m.Workload != "" && s.Workload != m.Workload) {
					continue
				}
				// A failed run still says how much memory the engines
				// hold; its traffic figures say nothing.
				if m.Workload != "" && (s.Error != "" || s.Result == nil) {
					continue
				}
				if v, ok := m.value(s); ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
					vals = append(vals, v)
				}
			}
			if len(vals) > 0 {
				row.Metrics[m.Key] = stat(vals)
			}
		}
		for _, s := range samples {
			if s.Backend == b && s.Error != "" {
				row.Errors++
			}
		}
		rows = append(rows, row)
	}
	return rows
}

func stat(vals []float64) Stat {
	s := slices.Clone(vals)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stat{Median: med, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// DescribeMachine reads the machine's description.
func DescribeMachine() Machine {
	m := Machine{Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), WeftVersion: "(devel)"}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				m.MemTotalKB = atoi64(f[1])
			}
		}
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		m.WeftVersion = bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				m.WeftVersion += " " + s.Value
			case "vcs.modified":
				if s.Value == "true" {
					m.WeftVersion += "+dirty"
				}
			}
		}
	}
	return m
}

func atoi64(s string) int64 {
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
	}
	return n
}
