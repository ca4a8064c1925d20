package harness

import (
	"fmt"
	"slices"

	"github.com/weft-net/weft/bench/report"
)

// tool is a program a workload runs besides weft, and the Debian package
// that has it (for the message when it is missing).
type tool struct{ cmd, pkg string }

var (
	toolIperf3   = tool{"iperf3", "iperf3"}
	toolPing     = tool{"ping", "iputils-ping"}
	toolSockperf = tool{"sockperf", "sockperf"}
)

// workloadTools are the programs each standard-tool workload runs.
var workloadTools = map[string][]tool{
	report.WorkloadIperf3:      {toolIperf3},
	report.WorkloadIperf3UDP64: {toolIperf3},
	report.WorkloadPing:        {toolPing},
	report.WorkloadPingLoaded:  {toolPing, toolIperf3},
	report.WorkloadSockperf:    {toolSockperf},
}

// needs reports whether one of the workloads runs t.
func needs(workloads []string, t tool) bool {
	for _, w := range workloads {
		if slices.Contains(workloadTools[w], t) {
			return true
		}
	}
	return false
}

// selectWorkloads checks that the standard tools the workloads run are
// installed (lookPath: exec.LookPath), as --iperf3 does for its
// cross-check. A workload named in --workloads (explicit) whose tool is
// missing fails the run with the package to install, as --iperf3=on does;
// from the default list it is left out, with why in leftOut, as
// --iperf3=auto leaves iperf3 out, so that `weft bench` still runs on a
// machine without them and says what it did not measure. Under IPv6 the
// default list also leaves out sockperf, whose Debian version (3.7) takes
// no IPv6 address; named, it runs, and fails per sample if it cannot.
func selectWorkloads(workloads []string, explicit, ipv6 bool, lookPath func(string) (string, error)) (kept, leftOut []string, err error) {
	for _, w := range workloads {
		var missing *tool
		for _, t := range workloadTools[w] {
			if _, err := lookPath(t.cmd); err != nil {
				missing = &t
				break
			}
		}
		switch {
		case missing != nil && explicit:
			return nil, nil, fmt.Errorf("--workloads %s: %s is not installed (apt-get install %s)", w, missing.cmd, missing.pkg)
		case missing != nil:
			leftOut = append(leftOut, fmt.Sprintf("%s: %s is not installed (apt-get install %s)", w, missing.cmd, missing.pkg))
		case w == report.WorkloadSockperf && ipv6 && !explicit:
			leftOut = append(leftOut, w+": sockperf 3.7 takes no IPv6 address (name it in --workloads to try this one)")
		default:
			kept = append(kept, w)
		}
	}
	return kept, leftOut, nil
}
