package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/lease"
)

// daemon is one running host: its lease, its backend and the goroutines
// that keep them in step with the cluster.
type daemon struct {
	f       *runFlags
	log     *slog.Logger
	ext     *extIface
	mgr     lease.Manager
	cfg     *lease.Config
	own     lease.Lease
	backend encap.Backend
	why     string // why this backend
	mtu     int
	ready   atomic.Bool // lease held, data path up, subnet file written
	obs     observability
}

func runDaemon(ctx context.Context, f *runFlags, log *slog.Logger) error {
	d := &daemon{f: f, log: log}
	var err error
	if err := serveHealthz(ctx, f, &d.ready, log); err != nil {
		return err
	}
	if d.ext, err = findExtIface(f); err != nil {
		return err
	}
	log.Info("using interface", "iface", d.ext.Name, "addr", d.ext.Addr, "public-ip", d.ext.PublicIP, "mtu", d.ext.MTU)
	if d.mgr, err = d.manager(); err != nil {
		return err
	}
	// The etcd store waits and retries (logging) while etcd or the config
	// key is missing; only a refused config comes back as an error.
	if d.cfg, err = d.mgr.Config(ctx); err != nil {
		return err
	}
	log.Info("network config", "network", d.cfg.Network, "subnet-len", d.cfg.SubnetLen, "backend", d.cfg.BackendType)
	host := encap.Host{Iface: d.ext.Name, IfaceIndex: d.ext.Index, IfaceAddr: d.ext.Addr, PublicIP: d.ext.PublicIP, IfaceMTU: d.ext.MTU}
	if d.backend, d.why, err = selectBackend(ctx, f, host, d.cfg, d.mgr, log); err != nil {
		return err
	}
	log.Info("backend chosen", "backend", d.backend.Type(), "why", d.why)
	attrs, err := d.backend.Attrs()
	if err != nil {
		return err
	}
	if d.own, err = d.mgr.Acquire(ctx, attrs); err != nil {
		return err
	}
	log.Info("lease acquired", "subnet", d.own.Subnet, "public-ip", d.own.Attrs.PublicIP)
	if d.mtu, err = d.backend.Start(ctx, d.own); err != nil {
		return err
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	runDone := make(chan error, 1)
	go func() { runDone <- d.backend.Run(ctx) }()

	if err := setupFirewall(ctx, f, f.forwardExplicit, d.cfg.Network, d.own.Subnet, log); err != nil {
		cancel(err)
	}
	if f.blackhole {
		if err := setupBlackhole(d.own.Subnet); err != nil {
			cancel(err)
		}
	}
	// The subnet file is the signal that this host is ready: it is written
	// only once the data path is up, as flanneld does.
	env := lease.SubnetEnv{Network: d.cfg.Network, Subnet: d.own.Subnet, MTU: d.mtu, IPMasq: f.ipMasq}
	if ctx.Err() == nil {
		if err := lease.WriteSubnetFile(f.subnetFile, env); err != nil {
			cancel(err)
		} else {
			d.ready.Store(true)
			// systemd (Type=notify) starts dependent units now.
			if err := sdNotify("READY=1"); err != nil {
				log.Warn("telling systemd we are ready", "err", err)
			}
			log.Info("subnet file written", "path", f.subnetFile)
		}
	}

	snapshots := make(chan []lease.Lease, 1)
	go func() {
		if err := d.mgr.Watch(ctx, snapshots); err != nil && ctx.Err() == nil {
			cancel(fmt.Errorf("watching leases: %w", err))
		}
	}()
	go func() {
		if err := d.mgr.Keep(ctx, d.own); err != nil && ctx.Err() == nil {
			cancel(fmt.Errorf("keeping lease %s: %w", d.own.Subnet, err))
		}
	}()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case snap := <-snapshots:
				d.obs.sawPeers(snap)
				d.backend.SetPeers(snap)
			}
		}
	}()
	if stopObs, err := d.obs.start(ctx, d); err != nil {
		cancel(err)
	} else {
		defer stopObs()
	}
	if f.debugSocket != "" {
		stopDebug, err := serveDebug(f.debugSocket, d)
		if err != nil {
			cancel(err)
		} else {
			defer stopDebug()
		}
	}
	runErr := <-runDone
	cancel(nil)
	sdNotify("STOPPING=1")
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if runErr != nil {
		return runErr
	}
	log.Info("stopped; the lease is kept for the next start", "subnet", d.own.Subnet)
	return nil
}

func (d *daemon) manager() (lease.Manager, error) {
	if d.f.staticNetwork != "" {
		return d.f.staticManager()
	}
	return d.f.etcdManager(d.log)
}
