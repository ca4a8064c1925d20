package userspace

import "runtime"

// MaxQueues is the most queues --queues takes: far more loop pairs than
// one host's flows to its peers keep busy (see docs/performance.md).
const MaxQueues = 16

// DefaultQueues is --queues when it is not given: one queue per four
// CPUs the process may use (GOMAXPROCS, which follows the affinity mask
// and the cgroup's CPU limit), at least 1 and at most 8. A queue is a
// loop pair, and busy loops compete with the pods for the same CPUs;
// on a host of up to 7 CPUs it is 1, the single-queue device of earlier
// releases, which measured no slower there (docs/performance.md, "Round
// 2: many cores").
func DefaultQueues() int { return defaultQueues(runtime.GOMAXPROCS(0)) }

func defaultQueues(cpus int) int { return min(max(cpus/4, 1), 8) }
