package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/weft-net/weft/bench/etcdload"
)

type etcdLoadOpts struct {
	events, rate, par *int
	churn, idle       *time.Duration
	renew, wait       *time.Duration
	racingJoins       *bool
}

func etcdLoadFlags(fs *flag.FlagSet) etcdLoadOpts {
	return etcdLoadOpts{
		events:      fs.Int("etcd-load-events", 50, "with --etcd-load: lease events fanned out to every host one at a time"),
		par:         fs.Int("etcd-load-start-parallel", 50, "with --etcd-load: hosts in their start at a time in the start storm (0: all at once; the simulation's own CPU then holds requests up past weft's 10 s timeout)"),
		rate:        fs.Int("etcd-load-churn-rate", 50, "with --etcd-load: lease events per second of the churn (0: no churn)"),
		churn:       fs.Duration("etcd-load-churn-duration", 20*time.Second, "with --etcd-load: length of the churn"),
		idle:        fs.Duration("etcd-load-idle", time.Minute, "with --etcd-load: how long the hosts idle, connected and watching"),
		renew:       fs.Duration("etcd-load-renew-every", 0, "with --etcd-load: the hosts renew their etcd leases this often (TTL twice it), to measure renewals (default: weft's, a 24h TTL renewed 60 min before it runs out)"),
		racingJoins: fs.Bool("etcd-load-concurrent-joins", false, "with --etcd-load: the churn's joins claim as they are due and race each other, as hosts joining at once do (default: one claim at a time)"),
		wait:        fs.Duration("etcd-load-timeout", 10*time.Minute, "with --etcd-load: the longest wait for the hosts in any phase"),
	}
}

// runEtcdLoad runs the etcd load benchmark with n simulated hosts (--hosts;
// 5000 unless given) against this binary's `weft etcd`.
func runEtcdLoad(o etcdLoadOpts, n int, jsonOut string) error {
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the weft binary: %w", err)
	}
	// Ctrl-C ends the run; its deferred cleanup stops weft etcd.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := etcdload.Run(ctx, etcdload.Options{
		Binary: bin, Hosts: n, FanOutEvents: *o.events, ChurnRate: *o.rate, ChurnDuration: *o.churn, Idle: *o.idle,
		RenewEvery: *o.renew, StartParallel: *o.par, ConcurrentJoins: *o.racingJoins, Timeout: *o.wait,
		Progress: func(s string) { fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05.000"), s) },
	})
	etcdload.WriteTable(os.Stdout, r)
	if jsonOut != "" && r != nil {
		b, _ := json.MarshalIndent(r, "", "  ")
		if werr := os.WriteFile(jsonOut, append(b, '\n'), 0o644); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}
