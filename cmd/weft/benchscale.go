package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/memcg"
	"github.com/weft-net/weft/bench/scale"
)

type scaleOpts struct {
	backends, rates *string
	events, join    *int
	binaries        *string
	profiles        *string
	cpuProfiles     *string
	memMax          *string
	timeout         *time.Duration
}

func scaleFlags(fs *flag.FlagSet) scaleOpts {
	return scaleOpts{
		backends:    fs.String("scale-backends", "udp,vxlan,host-gw", "with --scale: backends to measure: udp, vxlan, host-gw, uvxlan (vxlan from userspace)"),
		rates:       fs.String("scale-rates", "50,500", "with --scale: churn rates, lease events per second"),
		events:      fs.Int("scale-events", 200, "with --scale: lease events per churn (half new peers, half deletes)"),
		join:        fs.Int("scale-join-rate", 800, "with --scale: the hosts join one put at a time at this rate (0: skip)"),
		binaries:    fs.String("scale-binaries", "", "with --scale: comma-separated weft binaries to compare, interleaved per backend, each optionally followed by weft run flags of its own (\"bin/weft,bin/weft --route-nexthops\"; default: this one)"),
		memMax:      fs.String("scale-memory-max", "", "with --scale: run weft in a memory cgroup of this hard limit (e.g. 50MiB, kube-flannel.yml's), reporting its peak and OOM kills"),
		timeout:     fs.Duration("scale-timeout", 10*time.Minute, "with --scale: how long to wait for a correct state before a run counts as failed"),
		cpuProfiles: fs.String("scale-cpu-profiles", "", "with --scale: a directory for each weft's CPU profile (pprof) of a quiet 5 s window and of each churn"),
		profiles:    fs.String("scale-heap-profiles", "", "with --scale: a directory for each weft's heap profile (pprof) at the steady state and after the churn"),
	}
}

// runScale runs the scale benchmark with n hosts (--hosts; 1000 unless
// given) and prints issue 19's table.
func runScale(o scaleOpts, n int, jsonOut string) error {
	bins, err := scale.Binaries(*o.binaries)
	if err != nil {
		return err
	}
	var rates []int
	for _, s := range strings.Split(*o.rates, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || r <= 0 {
			return fmt.Errorf("--scale-rates: %q is not a positive number", s)
		}
		rates = append(rates, r)
	}
	var backends []string
	for _, b := range strings.Split(*o.backends, ",") {
		switch b = strings.TrimSpace(b); b {
		case "udp", "vxlan", "host-gw", "uvxlan":
			backends = append(backends, b)
		default:
			return fmt.Errorf("--scale-backends: %q: want udp, vxlan, host-gw or uvxlan", b)
		}
	}
	var memMax int64
	if *o.memMax != "" {
		if memMax, err = memcg.ParseSize(*o.memMax); err != nil || memMax < 16<<20 {
			return fmt.Errorf("--scale-memory-max %q: want a size of at least 16MiB, such as 50MiB", *o.memMax)
		}
	}
	ctx, guard := lab.NewGuard(context.Background(), 20*time.Second)
	defer guard.Stop()
	rs, err := scale.Run(ctx, scale.Options{
		Binaries: bins, Hosts: n, Backends: backends, Events: *o.events, Rates: rates, JoinRate: *o.join, ProfileDir: *o.profiles, CPUProfileDir: *o.cpuProfiles, MemoryMax: memMax, Timeout: *o.timeout,
		Progress: func(s string) { fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05.000"), s) },
	})
	scale.WriteTable(os.Stdout, rs)
	if jsonOut != "" && len(rs) > 0 {
		b, _ := json.MarshalIndent(rs, "", "  ")
		if werr := os.WriteFile(jsonOut, append(b, '\n'), 0o644); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}
