package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/encap/udp"
	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/tunio"
	"golang.zx2c4.com/wireguard/tun"
)

// udpOverhead is what flannel's UDP encapsulation adds: outer IPv4 and UDP
// headers, so flannel0's MTU is the underlay's minus 28.
const udpOverhead = 20 + 8

// daemon is one running host: its lease, its data path and the goroutines
// that keep them in step with the cluster.
type daemon struct {
	f     *runFlags
	log   *slog.Logger
	ext   *extIface
	mgr   lease.Manager
	cfg   *lease.Config
	own   lease.Lease
	tun   *tunio.Device
	conn  *udp.Conn
	eng   *engine.Engine
	mtu   int
	port  uint16
	peers []lease.Lease // last snapshot, own lease excluded
}

func runDaemon(ctx context.Context, f *runFlags, log *slog.Logger) error {
	d := &daemon{f: f, log: log}
	var err error
	if d.ext, err = findExtIface(f); err != nil {
		return err
	}
	log.Info("using interface", "iface", d.ext.Name, "addr", d.ext.Addr, "public-ip", d.ext.PublicIP, "mtu", d.ext.MTU)
	if d.mgr, err = d.manager(); err != nil {
		return err
	}
	if err := retry(ctx, log, "fetching network config", func() (e error) {
		d.cfg, e = d.mgr.Config(ctx)
		return e
	}); err != nil {
		return err
	}
	switch d.cfg.BackendType {
	case "udp":
	default:
		return fmt.Errorf("network config: \"Backend.Type\": %q is not available in this version of weft (only \"udp\" is)", d.cfg.BackendType)
	}
	if d.port, err = udpPort(d.cfg); err != nil {
		return err
	}
	log.Info("network config", "network", d.cfg.Network, "subnet-len", d.cfg.SubnetLen, "backend", d.cfg.BackendType, "port", d.port)
	if err := retry(ctx, log, "acquiring a subnet lease", func() (e error) {
		d.own, e = d.mgr.Acquire(ctx, lease.Attrs{PublicIP: d.ext.PublicIP})
		return e
	}); err != nil {
		return err
	}
	log.Info("lease acquired", "subnet", d.own.Subnet, "public-ip", d.own.Attrs.PublicIP)

	if err := d.startDataPath(); err != nil {
		return err
	}
	// The subnet file is the signal that this host is ready: it is written
	// only once the data path is up, as flanneld does.
	env := lease.SubnetEnv{Network: d.cfg.Network, Subnet: d.own.Subnet, MTU: d.mtu, IPMasq: f.ipMasq}
	if err := lease.WriteSubnetFile(f.subnetFile, env); err != nil {
		d.eng.Run(canceled()) // closes the device and socket
		return err
	}
	log.Info("subnet file written", "path", f.subnetFile)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
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
	go d.applySnapshots(ctx, snapshots)
	if f.debugSocket != "" {
		stopDebug, err := serveDebug(f.debugSocket, d)
		if err != nil {
			cancel(err)
		} else {
			defer stopDebug()
		}
	}
	log.Info("forwarding", "tun", d.tun.Name, "mtu", d.mtu, "tso", d.tun.TSO, "uso", d.tun.USO,
		"udp-gso", d.conn.Stats().GSO, "udp-gro", d.conn.Stats().GRO, "batch", f.batchSize, "anti-spoof", f.antiSpoof)
	runErr := d.eng.Run(ctx)
	cause := context.Cause(ctx)
	if runErr != nil {
		return runErr
	}
	if cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	log.Info("stopped; the lease is kept for the next start", "subnet", d.own.Subnet)
	return nil
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func (d *daemon) manager() (lease.Manager, error) {
	if d.f.staticNetwork != "" {
		return d.f.staticManager()
	}
	return d.f.etcdManager()
}

func (d *daemon) startDataPath() error {
	d.mtu = d.ext.MTU - udpOverhead
	tun, err := tunio.Create(tunio.Options{Name: d.f.tunName, MTU: d.mtu, NoOffload: d.f.noTUNOffload})
	if err != nil {
		return err
	}
	go drainEvents(tun, d.mtu, d.log)
	// flannel0 carries the lease's network address as a /32 (10.5.42.0/32)
	// and a route for the whole cluster network.
	if err := tunio.Configure(tun.Name, d.own.Subnet.Addr(), d.cfg.Network); err != nil {
		tun.Close()
		return err
	}
	conn, err := udp.Listen(udp.Options{
		Local:     netip.AddrPortFrom(d.ext.PublicIP, d.port),
		BatchSize: d.f.batchSize,
		NoGSO:     d.f.noGSO,
		NoGRO:     d.f.noGRO,
	})
	if err != nil {
		tun.Close()
		return err
	}
	eng, err := engine.New(tun, conn, engine.Config{
		BatchSize:  d.f.batchSize,
		MTU:        d.mtu,
		AntiSpoof:  d.f.antiSpoof,
		ICMPSource: d.own.Subnet.Addr(),
		Logger:     d.log,
	})
	if err != nil {
		tun.Close()
		conn.Close()
		return err
	}
	d.tun, d.conn, d.eng = tun, conn, eng
	t, err := engine.NewTable(d.cfg.Network, d.cfg.SubnetLen, d.own.Subnet, nil, nil)
	if err != nil {
		return err
	}
	eng.SetTable(t)
	return nil
}

// drainEvents reads the device's events (the tun package blocks on a full
// channel) and reports an MTU someone else set.
func drainEvents(dev *tunio.Device, want int, log *slog.Logger) {
	for ev := range dev.Events() {
		if ev&tun.EventMTUUpdate != 0 {
			if mtu, err := dev.MTU(); err == nil && mtu != want {
				log.Warn("the TUN device's MTU was changed from outside; packets longer than it will not reach pods", "tun", dev.Name, "mtu", mtu, "want", want)
			}
		}
	}
}

// applySnapshots turns each lease snapshot into a new lookup table. A
// snapshot that cannot become a table is logged and skipped: the last good
// table stays in use.
func (d *daemon) applySnapshots(ctx context.Context, in <-chan []lease.Lease) {
	for {
		var snap []lease.Lease
		select {
		case <-ctx.Done():
			return
		case snap = <-in:
		}
		specs := make([]engine.PeerSpec, 0, len(snap))
		var peers []lease.Lease
		for _, l := range snap {
			if l.Subnet == d.own.Subnet {
				continue
			}
			if l.Attrs.BackendType != "" && l.Attrs.BackendType != "udp" {
				d.log.Warn("peer uses another backend; not reachable from the udp backend", "subnet", l.Subnet, "backend", l.Attrs.BackendType)
				continue
			}
			if !l.Attrs.PublicIP.Is4() || !d.cfg.Network.Contains(l.Subnet.Addr()) || l.Subnet.Bits() != d.cfg.SubnetLen {
				d.log.Warn("ignoring lease outside the network config", "subnet", l.Subnet, "public-ip", l.Attrs.PublicIP)
				continue
			}
			specs = append(specs, engine.PeerSpec{Subnet: l.Subnet, Endpoint: netip.AddrPortFrom(l.Attrs.PublicIP, d.port)})
			peers = append(peers, l)
		}
		t, err := engine.NewTable(d.cfg.Network, d.cfg.SubnetLen, d.own.Subnet, specs, d.eng.Table())
		if err != nil {
			d.log.Error("lease snapshot rejected; keeping the previous table", "err", err)
			continue
		}
		d.logChanges(peers)
		d.eng.SetTable(t)
	}
}

func (d *daemon) logChanges(now []lease.Lease) {
	key := func(l lease.Lease) string { return l.Subnet.String() + "=" + l.Attrs.PublicIP.String() }
	old := map[string]bool{}
	for _, l := range d.peers {
		old[key(l)] = true
	}
	cur := map[string]bool{}
	for _, l := range now {
		cur[key(l)] = true
		if !old[key(l)] {
			d.log.Info("subnet added", "subnet", l.Subnet, "public-ip", l.Attrs.PublicIP)
		}
	}
	for _, l := range d.peers {
		if !cur[key(l)] {
			d.log.Info("subnet removed", "subnet", l.Subnet, "public-ip", l.Attrs.PublicIP)
		}
	}
	d.peers = slices.Clone(now)
}
