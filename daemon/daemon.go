package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync/atomic"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/lease"
)

// daemon is one running host: its lease, its backend and the goroutines
// that keep them in step with the cluster.
type daemon struct {
	o       Options
	log     *slog.Logger
	ext     *extIface
	cfg     *lease.Config
	own     lease.Lease
	backend encap.Backend
	why     string // why this backend
	mtu     int
	gate    *admission.Gate
	ready   atomic.Bool // lease held, data path up, subnet file written
	obs     observability
}

// publicIPSource is a lease.Manager that knows this host's public IP.
type publicIPSource interface {
	PublicIPOverride(ctx context.Context) (netip.Addr, error)
}

// Run runs this host until ctx ends. On return the lease is kept (for the
// next start) and the kernel backends' state stays in place, as flanneld
// leaves them on SIGTERM.
func Run(ctx context.Context, o Options) error {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if err := o.Validate(); err != nil {
		return err
	}
	o.Datapath.Log = o.Log
	if o.Datapath.StateDir == "" {
		o.Datapath.StateDir = filepath.Dir(o.SubnetFile)
	}
	// A store may know this host's public IP better than the flags (the
	// Kubernetes store: the Node's public-ip-overwrite or node-public-ip
	// annotation); as in flanneld it wins over --public-ip, before the
	// interface is chosen.
	if p, ok := o.Store.(publicIPSource); ok {
		ip, err := p.PublicIPOverride(ctx)
		if err != nil {
			return err
		}
		if ip.IsValid() {
			o.Interface.PublicIP = ip
		}
	}
	d := &daemon{o: o, log: o.Log}
	log := d.log
	// The previous run's subnet, before this run rewrites the file: the
	// firewall names what it replaces.
	prevSubnet, err := lease.ReadSubnetFile(o.SubnetFile)
	if err != nil {
		log.Warn("cannot read the previous subnet file", "path", o.SubnetFile, "err", err)
	}
	if err := serveHealthz(ctx, o.HealthzIP, o.HealthzPort, &d.ready, log); err != nil {
		return err
	}
	if d.ext, err = findExtIface(o.Interface); err != nil {
		return err
	}
	log.Info("using interface", "iface", d.ext.Name, "addr", d.ext.Addr, "public-ip", d.ext.PublicIP, "mtu", d.ext.MTU)
	// The etcd store waits and retries (logging) while etcd or the config
	// key is missing; only a refused config comes back as an error.
	if d.cfg, err = o.Store.Config(ctx); err != nil {
		return err
	}
	log.Info("network config", "network", d.cfg.Network, "subnet-len", d.cfg.SubnetLen, "backend", d.cfg.BackendType)
	host := encap.Host{Iface: d.ext.Name, IfaceIndex: d.ext.Index, IfaceAddr: d.ext.Addr, PublicIP: d.ext.PublicIP, IfaceMTU: d.ext.MTU}
	if d.backend, d.why, err = selectBackend(ctx, &o, host, d.cfg, log); err != nil {
		return err
	}
	log.Info("backend chosen", "backend", d.backend.Type(), "why", d.why)
	attrs, err := d.backend.Attrs()
	if err != nil {
		return err
	}
	if d.own, err = o.Store.Acquire(ctx, attrs); err != nil {
		return err
	}
	log.Info("lease acquired", "subnet", d.own.Subnet, "public-ip", d.own.Attrs.PublicIP)
	d.gate = admission.NewGate(admission.Rule{Network: d.cfg.Network, SubnetLen: d.cfg.SubnetLen, Own: d.own, Accept: d.backend.Accept}, log)
	if d.mtu, err = d.backend.Start(ctx, d.own); err != nil {
		return err
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	runDone := make(chan error, 1)
	go func() { runDone <- d.backend.Run(ctx) }()

	if err := setupFirewall(ctx, &o, d.cfg, d.own.Subnet, prevSubnet, log); err != nil {
		cancel(err)
	}
	if o.Blackhole {
		if err := keepBlackhole(ctx, d.own.Subnet, o.IPTablesResync, log); err != nil {
			cancel(err)
		}
	}
	// The subnet file is the signal that this host is ready: it is written
	// only once the data path is up, as flanneld does.
	env := lease.SubnetEnv{Network: d.cfg.Network, Subnet: d.own.Subnet, MTU: d.mtu, IPMasq: o.IPMasq}
	if ctx.Err() == nil {
		if err := lease.WriteSubnetFile(o.SubnetFile, env); err != nil {
			cancel(err)
		} else {
			d.ready.Store(true)
			// systemd (Type=notify) starts dependent units now.
			if _, err := sddaemon.SdNotify(false, sddaemon.SdNotifyReady); err != nil {
				log.Warn("telling systemd we are ready", "err", err)
			}
			log.Info("subnet file written", "path", o.SubnetFile)
		}
	}

	snapshots := make(chan []lease.Lease, 1)
	go func() {
		if err := o.Store.Watch(ctx, snapshots); err != nil && ctx.Err() == nil {
			cancel(fmt.Errorf("watching leases: %w", err))
		}
	}()
	go func() {
		if err := o.Store.Keep(ctx, d.own); err != nil && ctx.Err() == nil {
			cancel(fmt.Errorf("keeping lease %s: %w", d.own.Subnet, err))
		}
	}()
	go d.follow(ctx, snapshots)
	if stopObs, err := d.obs.start(ctx, d); err != nil {
		cancel(err)
	} else {
		defer stopObs()
	}
	runErr := <-runDone
	cancel(nil)
	sddaemon.SdNotify(false, sddaemon.SdNotifyStopping)
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if runErr != nil {
		return runErr
	}
	log.Info("stopped; the lease is kept for the next start", "subnet", d.own.Subnet)
	return nil
}

// follow hands each lease snapshot, through admission, to the backend.
func (d *daemon) follow(ctx context.Context, snapshots <-chan []lease.Lease) {
	for {
		select {
		case <-ctx.Done():
			return
		case snap := <-snapshots:
			peers := d.gate.Admit(snap)
			d.obs.sawPeers(peers)
			d.backend.SetPeers(peers)
		}
	}
}
