// Package memlimit gives the Go runtime a soft memory limit when
// GOMEMLIMIT does not set one: below the memory limit of the cgroup weft
// runs in, or, without one, a lean limit that follows the live heap.
// Without it the garbage collector lets the heap grow to twice what is
// live (plus the globals) before collecting, whatever the container
// allows: a pod limited to 50 MiB (kube-flannel.yml's limit) is OOM-killed
// by a heap peak that a collection would have avoided, and a host without
// a limit holds twice its live heap. With it the collector works harder
// only when the heap nears the limit.
package memlimit

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"
)

// Reserve is what the soft limit leaves of the cgroup's limit for what
// the cgroup counts and the Go runtime does not: the pages of the binary
// in use (code and read-only data, ~2.5 MiB in steady work, more while
// starting), page cache, page tables and socket buffers. Measured with
// vxlan at 5,000 peers in kube-flannel.yml's 50 MiB (weft bench --scale
// --scale-memory-max 50MiB, docs/scale.md): a soft limit of 40 MiB left
// too little for the code, and the kernel took back pages weft was running
// (10.9 ms of CPU per lease event); 30 MiB left the heap too little, and
// the collector ran all the time (13.8 ms); 36 MiB gave 2.1 ms. The soft
// limit is never below half the cgroup's limit.
const Reserve = 14 << 20

// Soft is the Go soft memory limit for a cgroup limit.
func Soft(cgroup int64) int64 { return max(cgroup-Reserve, cgroup/2) }

// LeanFloor is the soft limit while the live heap is small: what the Go
// runtime may hold (heap, stacks, its own metadata) before the collector
// runs, whatever the live heap. At 5,000 peers the live heap is 14-20 MB,
// so GOGC=100 alone lets the runtime hold ~45 MiB (docs/scale.md, "The
// binary's pages and a lean heap").
const LeanFloor = 32 << 20

// Lean is the soft limit for a live heap of live bytes under a ceiling
// (the cgroup's Soft; 0: none): LeanFloor, or twice the live heap once
// that is more, so that a larger cluster's heap keeps the collector's
// usual room (GOGC=100) instead of a collector that runs all the time;
// never above the ceiling.
func Lean(live uint64, ceiling int64) int64 {
	l := max(LeanFloor, 2*int64(min(live, 1<<61)))
	if ceiling > 0 {
		l = min(l, ceiling)
	}
	return l
}

// FollowLive keeps the soft limit at Lean of the live heap, read every
// period, under Apply's ceiling, until ctx ends. Run it when Apply set a
// limit.
func FollowLive(ctx context.Context, period time.Duration, ceiling int64) {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		// The first read, at once: it builds runtime/metrics' tables
		// (~9 ms of CPU), which belongs to the start, not to whatever
		// the daemon is doing a period later.
		metrics.Read(s)
		if s[0].Value.Kind() == metrics.KindUint64 {
			debug.SetMemoryLimit(Lean(s[0].Value.Uint64(), ceiling))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// unlimited is where cgroup v1 reports "no limit" (a page-rounded
// MaxInt64); anything this large is no limit.
const unlimited = 1 << 60

// Limit is the memory limit in bytes of the cgroup whose membership
// procCgroup (/proc/self/cgroup's text) gives, read under root
// (/sys/fs/cgroup): the smallest limit of that cgroup and its ancestors,
// cgroup v2 (memory.max) or v1 (memory.limit_in_bytes). ok is false when
// there is none.
func Limit(root, procCgroup string) (limit int64, ok bool) {
	sc := bufio.NewScanner(strings.NewReader(procCgroup))
	for sc.Scan() {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		var dir, file string
		switch {
		case parts[0] == "0" && parts[1] == "":
			dir, file = root, "memory.max"
		case hasController(parts[1], "memory"):
			dir, file = filepath.Join(root, "memory"), "memory.limit_in_bytes"
		default:
			continue
		}
		if l, found := smallest(dir, path.Clean("/"+parts[2]), file); found && (!ok || l < limit) {
			limit, ok = l, true
		}
	}
	return limit, ok
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// smallest reads file in dir/cg and each ancestor up to dir, and returns
// the smallest limit. Inside a container the cgroup's own directory is
// often mounted as dir itself, so dir/file counts as well.
func smallest(dir, cg, file string) (limit int64, ok bool) {
	for p := cg; ; p = path.Dir(p) {
		if l, found := read(filepath.Join(dir, p, file)); found && (!ok || l < limit) {
			limit, ok = l, true
		}
		if p == "/" {
			return limit, ok
		}
	}
}

func read(name string) (int64, bool) {
	b, err := os.ReadFile(name)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n >= unlimited {
		return 0, false
	}
	return n, true
}

// ErrSet is returned by Apply when GOMEMLIMIT already sets the limit.
var ErrSet = errors.New("GOMEMLIMIT is set")

// Apply sets the runtime's soft memory limit to Lean of an empty heap
// under the ceiling of this process's cgroup limit (Soft of it; 0 when
// there is none), and returns the limit, the ceiling and the cgroup's
// limit. Run FollowLive with the ceiling to keep the limit in step with
// the live heap. It sets nothing when GOMEMLIMIT is set (ErrSet;
// GOMEMLIMIT=off turns the limit off). A /proc/self/cgroup it cannot read
// is returned as an error, with the limit set as if there were no cgroup
// limit.
func Apply() (soft, ceiling, cgroup int64, err error) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0, 0, 0, ErrSet
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err == nil {
		if l, ok := Limit("/sys/fs/cgroup", string(b)); ok {
			cgroup, ceiling = l, Soft(l)
		}
	}
	soft = Lean(0, ceiling)
	debug.SetMemoryLimit(soft)
	return soft, ceiling, cgroup, err
}
