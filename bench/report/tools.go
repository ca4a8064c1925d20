package report

import (
	"fmt"
	"math"
	"strings"
)

// toolsLegend says under the standard tools' table what each ran.
const toolsLegend = "(standard tools, medians as above: iperf3 64 B UDP is `iperf3 -u -l 64 -b 0`, delivered rate and loss as the receiver counted them; " +
	"into pod is what reached the receiving namespace, delivered plus what overflowed the receiver's socket there (UdpRcvbufErrors); " +
	"ping is `ping -i 0.01` (100 echoes/s asked); ping loaded the same beside `iperf3 -P 4` on the same path; " +
	"sockperf is `sockperf ping-pong -m 64` (UDP), full round trips)"

// toolNotes say which default workloads were left out and why, and which
// standard-tool samples lost round trips: a lost echo has no time, so
// the median and p99 above are of the replies alone.
func (r *Report) toolNotes() []string {
	var notes []string
	if len(r.Params.LeftOut) > 0 {
		notes = append(notes, "left out of the default workloads: "+strings.Join(r.Params.LeftOut, "; "))
	}
	var lost []string
	slowest, fastest := math.Inf(1), 0.0
	for _, s := range r.Samples {
		if s.Error != "" || s.Result == nil {
			continue
		}
		switch s.Workload {
		case WorkloadPing, WorkloadPingLoaded:
			if pps := s.Result.SentPPS; pps > 0 {
				slowest, fastest = min(slowest, pps), max(fastest, pps)
			}
		case WorkloadSockperf:
		default:
			continue
		}
		if res := s.Result; res.Sent > res.Delivered {
			lost = append(lost, fmt.Sprintf("%s rep %d %s %d of %d", s.Backend, s.Rep, s.Workload, res.Sent-res.Delivered, res.Sent))
		}
	}
	// iputils waits in whole timer ticks: at HZ=250 it keeps about 63
	// echoes a second of the 100 asked.
	if fastest > 0 && slowest < 95 {
		notes = append(notes, fmt.Sprintf("ping kept %s to %s echoes/s of the 100 asked (iputils waits in whole timer ticks)",
			formatValue(slowest), formatValue(fastest)))
	}
	if len(lost) > 0 {
		notes = append(notes, "round trips without a reply (not in the medians and p99s): "+strings.Join(lost, ", "))
	}
	return notes
}
