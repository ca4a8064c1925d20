package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/internal/exepages"
	"github.com/weft-net/weft/lease"
)

// daemon is one running host: its lease, its backend and the goroutines
// that keep them in step with the cluster.
type daemon struct {
	o     Options
	log   *slog.Logger
	ext   *extIface
	cfg   *lease.Config
	cur   atomic.Pointer[stage] // the running backend, its lease and gate
	auto  *autoState            // nil unless Backend.Type is auto
	ready atomic.Bool           // lease held, data path up, subnet file written
	obs   observability
}

// publicIPSource is a lease.Manager that knows this host's public IP.
type publicIPSource interface {
	PublicIPOverride(ctx context.Context) (netip.Addr, error)
}

// publicIPv6Source is a lease.Manager that knows this host's public IPv6
// (the Kubernetes store: node-public-ipv6, public-ipv6-overwrite).
type publicIPv6Source interface {
	PublicIPv6Override(ctx context.Context) (netip.Addr, error)
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
	prevSubnet, prevSubnet6, err := lease.ReadSubnetFile(o.SubnetFile)
	if err != nil {
		log.Warn("cannot read the previous subnet file", "path", o.SubnetFile, "err", err)
	}
	if err := serveHealthz(ctx, o.HealthzIP, o.HealthzPort, &d.ready, log); err != nil {
		return err
	}
	// The etcd store waits and retries (logging) while etcd or the config
	// key is missing; only a refused config comes back as an error. The
	// config comes first, as in flanneld: on an IPv6-only network the
	// interface is chosen by its IPv6 address.
	if d.cfg, err = o.Store.Config(ctx); err != nil {
		return err
	}
	if err := ValidateBackend(d.cfg); err != nil {
		return err
	}
	if d.cfg.EnableIPv6 {
		// As flanneld: the Node's node-public-ipv6 or public-ipv6-overwrite
		// wins over --public-ipv6, before the interface is chosen.
		if p, ok := o.Store.(publicIPv6Source); ok {
			ip, err := p.PublicIPv6Override(ctx)
			if err != nil {
				return err
			}
			if ip.IsValid() {
				o.Interface.PublicIPv6 = ip
			}
		}
	}
	if !d.cfg.EnableIPv4 {
		if o.Interface.PublicIP.IsValid() {
			log.Warn("--public-ip is ignored: the network config is IPv6-only (EnableIPv4 false); --public-ipv6 is the address peers reach this host at", "public-ip", o.Interface.PublicIP)
			o.Interface.PublicIP = netip.Addr{}
		}
		if d.ext, err = findExtIface(o.Interface, true, log); err != nil {
			return err
		}
		log.Info("using interface", "iface", d.ext.Name, "addr6", d.ext.Addr6, "public-ipv6", d.ext.PublicIPv6, "mtu", d.ext.MTU)
		log.Info("network config (IPv6-only)", "ipv6-network", d.cfg.IPv6Network, "ipv6-subnet-len", d.cfg.IPv6SubnetLen, "backend", d.cfg.BackendType)
	} else {
		if d.ext, err = findExtIface(o.Interface, false, log); err != nil {
			return err
		}
		log.Info("using interface", "iface", d.ext.Name, "addr", d.ext.Addr, "public-ip", d.ext.PublicIP, "mtu", d.ext.MTU)
	}
	if d.cfg.EnableIPv4 && d.cfg.EnableIPv6 {
		if err := d.ext.withIPv6(&netlink.Handle{}, o.Interface.PublicIPv6); err != nil {
			return err
		}
		log.Info("using interface for IPv6", "iface", d.ext.Name, "addr", d.ext.Addr6, "public-ipv6", d.ext.PublicIPv6)
		log.Info("network config", "network", d.cfg.Network, "subnet-len", d.cfg.SubnetLen,
			"ipv6-network", d.cfg.IPv6Network, "ipv6-subnet-len", d.cfg.IPv6SubnetLen, "backend", d.cfg.BackendType)
	} else if !d.cfg.EnableIPv6 {
		if o.Interface.PublicIPv6.IsValid() {
			log.Warn("--public-ipv6 is ignored: the network config has no IPv6 (EnableIPv6)", "public-ipv6", o.Interface.PublicIPv6)
		}
		log.Info("network config", "network", d.cfg.Network, "subnet-len", d.cfg.SubnetLen, "backend", d.cfg.BackendType)
	}
	host := d.ext.host()
	var b encap.Backend
	var why string
	if d.cfg.BackendType == "auto" {
		d.auto = &autoState{}
		typ, w := d.firstChoice(ctx)
		log.Info("auto: backend chosen", "backend", typ, "why", w)
		b, why, err = buildBackend(ctx, &o, host, d.cfg, typ, w, log)
	} else {
		b, why, err = selectBackend(ctx, &o, host, d.cfg, log)
	}
	if err != nil {
		return err
	}
	log.Info("backend chosen", "backend", b.Type(), "why", why)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	st, err := d.startStage(ctx, b, why, cancel)
	if err != nil {
		return err
	}
	d.cur.Store(st)

	if err := setupFirewall(ctx, &o, d.cfg, st.own, prevSubnet, prevSubnet6, log); err != nil {
		cancel(err)
	}
	if o.Blackhole {
		if err := keepBlackhole(ctx, ownSubnets(st.own), o.IPTablesResync, log); err != nil {
			cancel(err)
		}
	}
	// The subnet file is the signal that this host is ready: it is written
	// only once the data path is up, as flanneld does.
	if ctx.Err() == nil {
		if err := d.writeSubnetFile(st); err != nil {
			cancel(err)
		} else {
			d.ready.Store(true)
			// systemd (Type=notify) starts dependent units now.
			if _, err := sddaemon.SdNotify(false, sddaemon.SdNotifyReady); err != nil {
				log.Warn("telling systemd we are ready", "err", err)
			}
		}
	}

	changes := make(chan lease.Changes, 1)
	go func() {
		if err := lease.WatchChanges(ctx, o.Store, changes); err != nil && ctx.Err() == nil {
			cancel(fmt.Errorf("watching leases: %w", err))
		}
	}()
	if stopObs, err := d.obs.start(ctx, d); err != nil {
		cancel(err)
	} else {
		defer stopObs()
	}
	runErr := d.follow(ctx, changes, cancel)
	cancel(nil)
	runErr = errors.Join(runErr, d.cur.Load().stop())
	sddaemon.SdNotify(false, sddaemon.SdNotifyStopping)
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if runErr != nil {
		return runErr
	}
	log.Info("stopped; the lease is kept for the next start", "subnet", d.cur.Load().own.ID())
	return nil
}

// writeSubnetFile writes the subnet file for the stage's lease and MTU.
func (d *daemon) writeSubnetFile(st *stage) error {
	env := lease.SubnetEnv{Network: d.cfg.Network, Subnet: st.own.Subnet, MTU: st.mtu, IPMasq: d.o.IPMasq}
	if d.cfg.EnableIPv6 {
		env.IPv6Network, env.IPv6Subnet = d.cfg.IPv6Network, st.own.IPv6Subnet
	}
	if err := lease.WriteSubnetFile(d.o.SubnetFile, env); err != nil {
		return err
	}
	d.log.Info("subnet file written", "path", d.o.SubnetFile, "mtu", st.mtu)
	return nil
}

// follow hands each change of the leases, through admission, to the
// backend, and on an auto host moves the backend when the cluster asks
// for another. It returns when ctx ends (nil) or when the backend's Run
// ends by itself (its error).
func (d *daemon) follow(ctx context.Context, changes <-chan lease.Changes, fail context.CancelCauseFunc) error {
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	release := time.NewTimer(time.Hour)
	release.Stop()
	defer release.Stop()
	// An auto host keeps every lease: its rule, and a new backend after a
	// move, look at the whole set. The rule reads all of it (admission of
	// every lease, ~3-5 ms at 5,000), so it runs once per autoRecheck
	// after changes, not once per lease event: a host moves only after
	// an outcome has held autoSettle anyway.
	var all map[netip.Prefix]lease.Lease
	recheck := time.NewTimer(time.Hour)
	recheck.Stop()
	defer recheck.Stop()
	dirty := false
	if d.auto != nil {
		all = map[netip.Prefix]lease.Lease{}
	}
	for {
		st := d.cur.Load()
		select {
		case <-ctx.Done():
			return nil
		case err := <-st.runDone:
			st.ran = true
			return err
		case c := <-changes:
			d.apply(st, c)
			if d.auto != nil {
				c.ApplyTo(all)
				if !dirty {
					dirty = true
					recheck.Reset(autoRecheck)
				}
			}
			if c.Full {
				release.Reset(releaseAfterFull)
			}
		case <-release.C:
			// A full change (start, a relist) builds every peer's state
			// at once: the heap peaks, then most of it is garbage. Go
			// returns freed memory to the kernel only slowly, so the
			// peak would stay resident; hand it back now, once. The
			// same for the binary's pages that start-up touched and
			// steady work does not use (~25 MiB of RSS).
			debug.FreeOSMemory()
			if n, err := exepages.Release(); err != nil {
				d.log.Debug("releasing the binary's unused pages", "mappings", n, "err", err)
			}
		case <-recheck.C:
			dirty = false
			d.consider(snapshotOf(all), settle)
		case <-settle.C:
			d.auto.pending = ""
			last := snapshotOf(all)
			typ, why, ok := d.decide(last)
			if !ok || typ == st.backend.Type() {
				continue
			}
			if err := d.move(ctx, typ, why, last, fail); err != nil {
				if ctx.Err() != nil {
					return nil // stopped mid-move: a clean stop
				}
				return err
			}
		}
	}
}

// releaseAfterFull is how long after a full change the daemon returns
// freed memory and unused pages of its binary to the kernel: long enough
// for the backend to have programmed the state (the kernel backends do it
// in their own loop). Only after full changes: a release costs a GC, and
// each page of code in use a fault to map it again, too much to pay after
// every lease event.
var releaseAfterFull = 3 * time.Second

// snapshotOf is the leases sorted by ID, as a store's snapshot.
func snapshotOf(all map[netip.Prefix]lease.Lease) []lease.Lease {
	snap := slices.Collect(maps.Values(all))
	slices.SortFunc(snap, lease.CompareID)
	return snap
}
