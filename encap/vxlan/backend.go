// Package vxlan is weft's kernel vxlan backend, flanneld's vxlan backend
// over netlink: it creates the device flannel.<VNI> and, per peer lease, a
// permanent neighbour (peer subnet's network address -> peer VtepMAC), an
// FDB entry (VtepMAC -> peer public IP) and an onlink route for the peer
// subnet; the kernel does the encapsulation. A reconcile loop keeps that
// state in place.
package vxlan

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/lease"
)

// Options configure New.
type Options struct {
	Host   encap.Host
	Config Config
	NL     *kernel.Netlink
	Log    *slog.Logger
	// Interval is the reconcile period; default kernel.DefaultInterval.
	Interval time.Duration
	// Sysctl writes a key under /proc/sys in the backend's namespace;
	// default: the calling process's.
	Sysctl func(key, value string) error
	// PrevMAC is the VtepMAC of this host's previous lease, if the store
	// kept it: a device created anew takes it, as flanneld does, so the
	// peers' neighbour and FDB entries for this host stay right.
	PrevMAC net.HardwareAddr
}

// Backend is the kernel vxlan backend.
type Backend struct {
	cfg    Config
	host   encap.Host
	nl     *kernel.Netlink
	log    *slog.Logger
	sysctl func(key, value string) error
	spec   deviceSpec
	rec    *kernel.Reconciler
	leases LeaseCache
	accept func(lease.Attrs) error

	prevMAC net.HardwareAddr

	mu      sync.Mutex
	mac     net.HardwareAddr
	own     lease.Lease
	started bool
	peers   []peer // nil until the first snapshot
	ready   bool
}

type peer struct {
	Subnet   netip.Prefix `json:"subnet"`
	PublicIP netip.Addr   `json:"public_ip"`
	VtepMAC  string       `json:"vtep_mac"`
	Direct   bool         `json:"direct,omitempty"` // DirectRouting: a plain route
	mac      net.HardwareAddr
}

var (
	_ encap.Backend = (*Backend)(nil)
	_ encap.Status  = (*Backend)(nil)
)

// New checks the options; the device is made by Attrs.
func New(o Options) (*Backend, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Sysctl == nil {
		o.Sysctl = func(key, value string) error { return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644) }
	}
	if !o.Host.IfaceAddr.Is4() {
		return nil, fmt.Errorf("vxlan: interface %s has no IPv4 address", o.Host.Iface)
	}
	mtu := DeviceMTU(o.Host, o.Config, o.Log)
	b := &Backend{
		cfg: o.Config, host: o.Host, nl: o.NL, log: o.Log, sysctl: o.Sysctl, prevMAC: o.PrevMAC,
		spec: deviceSpec{
			name: DeviceName(o.Config.VNI), vni: o.Config.VNI, port: o.Config.Port, gbp: o.Config.GBP,
			learning: o.Config.Learning, vtepIndex: o.Host.IfaceIndex, vtepAddr: o.Host.IfaceAddr, mtu: mtu,
		},
	}
	b.accept = AcceptLeaseCached(o.Config.VNI, &b.leases)
	b.rec = &kernel.Reconciler{NL: o.NL, Log: o.Log.With("backend", "vxlan"), Interval: o.Interval, Desired: b.desired}
	b.log.Info("vxlan config", "vni", o.Config.VNI, "port", o.Config.Port, "gbp", o.Config.GBP,
		"learning", o.Config.Learning, "direct-routing", o.Config.DirectRouting, "mtu", mtu)
	return b, nil
}

// Device is the vxlan device's name.
func (b *Backend) Device() string { return b.spec.name }

func (b *Backend) Type() string { return "vxlan" }

// Attrs creates (or reuses) the device, since the lease carries its MAC:
// flanneld too sets the device up before it acquires the lease.
func (b *Backend) Attrs() (lease.Attrs, error) {
	dev, created, err := b.ensureDevice()
	if err != nil {
		return lease.Attrs{}, fmt.Errorf("vxlan: %w", err)
	}
	if created {
		b.log.Info("vxlan device created", "device", dev.Name, "mac", dev.HardwareAddr.String())
	} else {
		b.log.Info("vxlan device already exists; reusing it and its MAC", "device", dev.Name, "mac", dev.HardwareAddr.String())
	}
	// No router advertisements on the overlay device, as flanneld sets
	// (net.ipv6.conf.flannel/1.accept_ra = 0). A kernel without IPv6 has
	// no such key.
	if err := b.sysctl("net/ipv6/conf/"+dev.Name+"/accept_ra", "0"); err != nil && !os.IsNotExist(err) {
		b.log.Warn("cannot disable router advertisements on the vxlan device", "device", dev.Name, "err", err)
	}
	data, err := MarshalLeaseData(b.cfg.VNI, dev.HardwareAddr)
	if err != nil {
		return lease.Attrs{}, err
	}
	b.mu.Lock()
	b.mac = dev.HardwareAddr
	b.mu.Unlock()
	return lease.Attrs{PublicIP: b.host.PublicIP, BackendType: "vxlan", BackendData: data}, nil
}

// Start gives the device the lease's address and brings it up.
func (b *Backend) Start(_ context.Context, own lease.Lease) (int, error) {
	b.mu.Lock()
	b.own = own
	b.started = true
	b.mu.Unlock()
	dev, _, err := b.ensureDevice()
	if err != nil {
		return 0, fmt.Errorf("vxlan: %w", err)
	}
	if err := b.configure(dev, own.Subnet.Addr()); err != nil {
		return 0, fmt.Errorf("vxlan: %w", err)
	}
	b.log.Info("vxlan backend up", "device", dev.Name, "address", netip.PrefixFrom(own.Subnet.Addr(), 32), "mtu", dev.MTU)
	return dev.MTU, nil
}

// Accept admits vxlan leases of this VNI (see admission).
func (b *Backend) Accept(a lease.Attrs) error { return b.accept(a) }

// SetPeers records the admitted peers and asks the loop to program them.
func (b *Backend) SetPeers(leases []lease.Lease) {
	connected, err := b.nl.Connected(b.host.IfaceIndex)
	if err != nil && b.cfg.DirectRouting {
		b.log.Warn("cannot read the underlay's subnets; DirectRouting off for this snapshot", "err", err)
	}
	peers := make([]peer, 0, len(leases))
	macs := b.leases.Snapshot(leases)
	for i, l := range leases {
		mac := macs[i]
		if mac == nil {
			continue // admission checked it; never program a peer without a MAC
		}
		peers = append(peers, peer{Subnet: l.Subnet, PublicIP: l.Attrs.PublicIP, VtepMAC: mac.String(), mac: mac,
			Direct: b.cfg.DirectRouting && kernel.OnSegment(connected, l.Attrs.PublicIP)})
	}
	b.mu.Lock()
	b.peers, b.ready = peers, true
	b.mu.Unlock()
	b.rec.Trigger()
}

// desired is the reconcile loop's view of what the kernel should hold. It
// recreates a device someone deleted (flanneld's device watcher does too).
func (b *Backend) desired() (kernel.State, bool, error) {
	b.mu.Lock()
	ready, own, started, leaseMAC := b.ready, b.own, b.started, b.mac
	peers := b.peers // SetPeers replaces the slice, never changes it
	b.mu.Unlock()
	if !ready || !started {
		return kernel.State{}, false, nil
	}
	dev, created, err := b.ensureDevice()
	if err != nil {
		return kernel.State{}, false, err
	}
	if created {
		b.log.Warn("vxlan device was missing; recreated it", "device", dev.Name, "mac", dev.HardwareAddr.String())
	}
	if len(leaseMAC) == 6 && !slices.Equal(dev.HardwareAddr, leaseMAC) {
		// Someone changed it: put the lease's back, as peers know it.
		if err := b.nl.H.LinkSetHardwareAddr(dev, leaseMAC); err != nil {
			b.log.Warn("the vxlan device's MAC no longer matches the lease, and cannot be set back; peers reach this host only after a restart re-publishes it",
				"device", dev.Name, "mac", dev.HardwareAddr.String(), "lease", leaseMAC.String(), "err", err)
		} else {
			b.log.Warn("the vxlan device's MAC was changed; set the lease's back", "device", dev.Name, "was", dev.HardwareAddr.String(), "lease", leaseMAC.String())
			dev.HardwareAddr = leaseMAC
		}
	}
	if created || dev.Flags&net.FlagUp == 0 {
		if err := b.configure(dev, own.Subnet.Addr()); err != nil {
			return kernel.State{}, false, err
		}
	}
	s := kernel.State{Dev: dev.Index, Routes: make([]kernel.Route, 0, len(peers)),
		Neighs: make([]kernel.Neigh, 0, len(peers)), FDB: make([]kernel.FDB, 0, len(peers))}
	for _, p := range peers {
		if p.Direct {
			s.Routes = append(s.Routes, kernel.Route{Dst: p.Subnet, Gw: p.PublicIP, LinkIndex: b.host.IfaceIndex})
			continue
		}
		gw := p.Subnet.Addr() // the peer's flannel.<VNI> address
		s.Neighs = append(s.Neighs, kernel.Neigh{IP: gw, MAC: p.mac})
		s.FDB = append(s.FDB, kernel.FDB{MAC: p.mac, Dst: p.PublicIP})
		s.Routes = append(s.Routes, kernel.Route{Dst: p.Subnet, Gw: gw, LinkIndex: dev.Index, Onlink: true})
	}
	return s, true, nil
}

// Reconcile runs one pass now (tests; the loop runs them on its own).
func (b *Backend) Reconcile() error { return b.rec.Pass() }

// Run reconciles until ctx ends and leaves the kernel state in place.
func (b *Backend) Run(ctx context.Context) error { return b.rec.Run(ctx) }

// Status is the vxlan backend's part of `weft stats`.
type Status struct {
	Device    string       `json:"device"`
	VNI       int          `json:"vni"`
	Port      int          `json:"port"`
	MAC       string       `json:"mac"`
	MTU       int          `json:"mtu"`
	GBP       bool         `json:"gbp"`
	Direct    bool         `json:"direct_routing"`
	Peers     []peer       `json:"peers"`
	Reconcile kernel.Stats `json:"reconcile"`
}

func (b *Backend) Status() any {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Status{Device: b.spec.name, VNI: b.cfg.VNI, Port: b.cfg.Port, MAC: b.mac.String(), MTU: b.spec.mtu,
		GBP: b.cfg.GBP, Direct: b.cfg.DirectRouting, Peers: slices.Clone(b.peers), Reconcile: b.rec.Stats()}
	return s
}
