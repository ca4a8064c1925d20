// Package vxlan is weft's kernel vxlan backend, flanneld's vxlan backend
// over netlink: it creates the device flannel.<VNI> and, per peer lease, a
// permanent neighbour (peer subnet's network address -> peer VtepMAC), an
// FDB entry (VtepMAC -> peer public IP) and an onlink route for the peer
// subnet; the kernel does the encapsulation. On a dual-stack network a
// second device, flannel-v6.<VNI>, with an IPv6 local address, carries
// the IPv6 subnets the same way (its own MAC, BackendV6Data, PublicIPv6).
// A reconcile loop keeps that state in place.
package vxlan

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

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
	// PrevMAC6 is the same for flannel-v6.<VNI>: the VtepMAC of the
	// previous lease's BackendV6Data.
	PrevMAC6 net.HardwareAddr
}

// Backend is the kernel vxlan backend.
type Backend struct {
	cfg    Config
	host   encap.Host
	nl     *kernel.Netlink
	log    *slog.Logger
	sysctl func(key, value string) error
	rec    *kernel.Reconciler
	// v4 is flannel.<VNI>; v6 flannel-v6.<VNI>, nil unless the network is
	// dual-stack (Host.PublicIPv6 set).
	v4, v6          *vtep
	leases, leases6 LeaseCache // BackendData, BackendV6Data
	accept, accept6 func(lease.Attrs) error

	mu      sync.Mutex
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
	// The IPv6 part, on a dual-stack network, of a peer with IPv6.
	IPv6Subnet netip.Prefix `json:"ipv6_subnet,omitzero"`
	PublicIPv6 netip.Addr   `json:"public_ipv6,omitzero"`
	VtepMAC6   string       `json:"vtep_mac_v6,omitempty"`
	Direct6    bool         `json:"direct_v6,omitempty"`
	mac6       net.HardwareAddr
}

var (
	_ encap.Backend      = (*Backend)(nil)
	_ encap.Status       = (*Backend)(nil)
	_ encap.IPv6Acceptor = (*Backend)(nil)
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
	spec := deviceSpec{
		name: DeviceName(o.Config.VNI), vni: o.Config.VNI, port: o.Config.Port, gbp: o.Config.GBP,
		learning: o.Config.Learning, vtepIndex: o.Host.IfaceIndex, vtepAddr: o.Host.IfaceAddr, mtu: mtu,
	}
	b := &Backend{
		cfg: o.Config, host: o.Host, nl: o.NL, log: o.Log, sysctl: o.Sysctl,
		v4: &vtep{spec: spec, prevMAC: o.PrevMAC},
	}
	if o.Host.PublicIPv6.IsValid() {
		// The device's local address is the interface's, as flannel.<VNI>'s
		// is: the source of encapsulated packets must be an address of
		// this host. PublicIPv6 is what peers send to (they differ only
		// behind NAT66 or with --public-ipv6 naming another address).
		local := o.Host.IfaceAddr6
		if !local.IsValid() {
			local = o.Host.PublicIPv6
		}
		if !local.Is6() || local.Is4In6() {
			return nil, fmt.Errorf("vxlan: interface %s has no IPv6 address for %s", o.Host.Iface, DeviceName6(o.Config.VNI))
		}
		mtu6 := DeviceMTU6(o.Host, o.Config)
		if mtu6 < minMTU6 {
			return nil, fmt.Errorf("vxlan: %s would get MTU %d (the underlay's %d less %d), below IPv6's minimum %d, so the kernel would disable IPv6 on it: "+
				"a dual-stack network needs an underlay MTU (the interface's, or Backend.MTU) of at least %d",
				DeviceName6(o.Config.VNI), mtu6, mtu6+Overhead6, Overhead6, minMTU6, minMTU6+Overhead6)
		}
		spec6 := spec
		spec6.name, spec6.vtepAddr, spec6.mtu = DeviceName6(o.Config.VNI), local, mtu6
		b.v6 = &vtep{spec: spec6, prevMAC: o.PrevMAC6}
	}
	b.leases6.V6 = true
	b.accept = AcceptLeaseCached(o.Config.VNI, &b.leases)
	b.accept6 = AcceptLeaseV6Cached(o.Config.VNI, &b.leases6)
	b.rec = &kernel.Reconciler{NL: o.NL, Log: o.Log.With("backend", "vxlan"), Interval: o.Interval, Desired: b.desired}
	b.log.Info("vxlan config", "vni", o.Config.VNI, "port", o.Config.Port, "gbp", o.Config.GBP,
		"learning", o.Config.Learning, "direct-routing", o.Config.DirectRouting, "mtu", mtu, "ipv6", b.v6 != nil)
	return b, nil
}

// Device is the vxlan device's name.
func (b *Backend) Device() string { return b.v4.spec.name }

// Device6 is the IPv6 vxlan device's name, "" unless the network is
// dual-stack.
func (b *Backend) Device6() string {
	if b.v6 == nil {
		return ""
	}
	return b.v6.spec.name
}

func (b *Backend) Type() string { return "vxlan" }

// Attrs creates (or reuses) the devices, since the lease carries their
// MACs: flanneld too sets the devices up before it acquires the lease. On
// a dual-stack network the attributes carry PublicIPv6 and BackendV6Data,
// in flanneld's bytes; otherwise a flannel-v6.<VNI> an earlier dual-stack
// run left is removed.
func (b *Backend) Attrs() (lease.Attrs, error) {
	data, err := b.attrs(b.v4)
	if err != nil {
		return lease.Attrs{}, err
	}
	a := lease.Attrs{PublicIP: b.host.PublicIP, BackendType: "vxlan", BackendData: data}
	if b.v6 == nil {
		b.removeStaleDevice6()
		return a, nil
	}
	if a.BackendV6Data, err = b.attrs(b.v6); err != nil {
		return lease.Attrs{}, err
	}
	a.PublicIPv6 = b.host.PublicIPv6
	return a, nil
}

// attrs makes v's device and returns its lease data.
func (b *Backend) attrs(v *vtep) (json.RawMessage, error) {
	dev, created, err := b.ensureDevice(v)
	if err != nil {
		return nil, fmt.Errorf("vxlan: %w", err)
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
		return nil, err
	}
	b.mu.Lock()
	v.mac = dev.HardwareAddr
	b.mu.Unlock()
	return data, nil
}

// removeStaleDevice6 deletes the flannel-v6.<VNI> of an earlier dual-stack
// run on a network that is no longer dual-stack (the daemon keeps it with
// flannel.<VNI>); its routes, neighbours and FDB entries go with it.
func (b *Backend) removeStaleDevice6() {
	name := DeviceName6(b.cfg.VNI)
	l, err := b.nl.H.LinkByName(name)
	if err != nil || l.Type() != "vxlan" {
		return
	}
	if err := b.nl.H.LinkDel(l); err != nil {
		b.log.Warn("cannot remove the IPv6 vxlan device of an earlier dual-stack run", "device", name, "err", err)
		return
	}
	b.log.Info("removed the IPv6 vxlan device of an earlier dual-stack run", "device", name)
}

// Start gives the devices the lease's addresses and brings them up. It
// returns the MTU pods should use: on a dual-stack network the smaller of
// the two devices' MTUs (flannel-v6.<VNI>'s, 20 bytes less).
//
// flanneld v0.28.9 writes FLANNEL_MTU from flannel.<VNI> alone (1450 on a
// 1500 underlay, fixture dualstack/vxlan) while flannel-v6.<VNI> has 1430,
// so pods send IPv6 packets the device cannot carry: large ones are lost,
// or rely on ICMPv6 Packet Too Big from the host. weft deliberately writes
// the smaller MTU, which both families fit.
func (b *Backend) Start(_ context.Context, own lease.Lease) (int, error) {
	switch {
	case b.v6 != nil && !own.IPv6Subnet.IsValid():
		return 0, fmt.Errorf("vxlan: the network is dual-stack (this host's public IPv6 is %s) but the lease %s has no IPv6 subnet", b.host.PublicIPv6, own.Subnet)
	case b.v6 == nil && own.IPv6Subnet.IsValid():
		return 0, fmt.Errorf("vxlan: the lease has the IPv6 subnet %s but this host has no public IPv6 address for %s", own.IPv6Subnet, DeviceName6(b.cfg.VNI))
	}
	b.mu.Lock()
	b.own = own
	b.started = true
	b.mu.Unlock()
	mtu, err := b.start(b.v4, own.Subnet.Addr())
	if err != nil || b.v6 == nil {
		return mtu, err
	}
	mtu6, err := b.start(b.v6, own.IPv6Subnet.Addr())
	return min(mtu, mtu6), err
}

func (b *Backend) start(v *vtep, addr netip.Addr) (int, error) {
	dev, _, err := b.ensureDevice(v)
	if err != nil {
		return 0, fmt.Errorf("vxlan: %w", err)
	}
	if err := b.configure(dev, addr); err != nil {
		return 0, fmt.Errorf("vxlan: %w", err)
	}
	b.log.Info("vxlan device up", "device", dev.Name, "address", netip.PrefixFrom(addr, addr.BitLen()), "mtu", dev.MTU)
	return dev.MTU, nil
}

// Accept admits vxlan leases of this VNI (see admission).
func (b *Backend) Accept(a lease.Attrs) error { return b.accept(a) }

// AcceptIPv6 admits the IPv6 part of a vxlan lease: BackendV6Data with a
// unicast VtepMAC and this VNI (encap.IPv6Acceptor).
func (b *Backend) AcceptIPv6(a lease.Attrs) error { return b.accept6(a) }

// SetPeers records the admitted peers and asks the loop to program them.
func (b *Backend) SetPeers(leases []lease.Lease) {
	connected, err := b.nl.Connected(b.host.IfaceIndex)
	if err != nil && b.cfg.DirectRouting {
		b.log.Warn("cannot read the underlay's subnets; DirectRouting off for this snapshot", "err", err)
	}
	peers := make([]peer, 0, len(leases))
	macs := b.leases.Snapshot(leases)
	var macs6 []net.HardwareAddr
	if b.v6 != nil {
		macs6 = b.leases6.Snapshot(leases)
	}
	for i, l := range leases {
		mac := macs[i]
		if mac == nil {
			continue // admission checked it; never program a peer without a MAC
		}
		p := peer{Subnet: l.Subnet, PublicIP: l.Attrs.PublicIP, VtepMAC: mac.String(), mac: mac,
			Direct: b.cfg.DirectRouting && kernel.OnSegment(connected, l.Attrs.PublicIP)}
		// A peer without IPv6 (or, on a network without it, any peer) is
		// reached over IPv4 only.
		if mac6 := macs6; mac6 != nil && mac6[i] != nil {
			p.IPv6Subnet, p.PublicIPv6, p.VtepMAC6, p.mac6 = l.IPv6Subnet, l.Attrs.PublicIPv6, mac6[i].String(), mac6[i]
			p.Direct6 = b.cfg.DirectRouting && kernel.OnSegment(connected, l.Attrs.PublicIPv6)
		}
		peers = append(peers, p)
	}
	b.mu.Lock()
	b.peers, b.ready = peers, true
	b.mu.Unlock()
	b.rec.Trigger()
}

// desired is the reconcile loop's view of what the kernel should hold. It
// recreates a device someone deleted (flanneld's device watcher does too,
// for flannel.<VNI> only).
func (b *Backend) desired() (kernel.State, bool, error) {
	b.mu.Lock()
	ready, own, started := b.ready, b.own, b.started
	peers := b.peers // SetPeers replaces the slice, never changes it
	b.mu.Unlock()
	if !ready || !started {
		return kernel.State{}, false, nil
	}
	dev, err := b.repairDevice(b.v4, own.Subnet.Addr())
	if err != nil {
		return kernel.State{}, false, err
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
	if b.v6 == nil {
		return s, true, nil
	}
	// IPv6, as flanneld: "fd00:10:5:32::/64 via fd00:10:5:32:: dev
	// flannel-v6.1 onlink", the neighbour fd00:10:5:32:: lladdr <v6
	// VtepMAC> and the fdb entry <v6 VtepMAC> dst <PublicIPv6>.
	dev6, err := b.repairDevice(b.v6, own.IPv6Subnet.Addr())
	if err != nil {
		return kernel.State{}, false, err
	}
	s.Dev6 = dev6.Index
	for _, p := range peers {
		switch {
		case !p.IPv6Subnet.IsValid():
		case p.Direct6:
			s.Routes = append(s.Routes, kernel.Route{Dst: p.IPv6Subnet, Gw: p.PublicIPv6, LinkIndex: b.host.IfaceIndex})
		default:
			gw := p.IPv6Subnet.Addr() // the peer's flannel-v6.<VNI> address
			s.Neighs6 = append(s.Neighs6, kernel.Neigh{IP: gw, MAC: p.mac6})
			s.FDB6 = append(s.FDB6, kernel.FDB{MAC: p.mac6, Dst: p.PublicIPv6})
			s.Routes = append(s.Routes, kernel.Route{Dst: p.IPv6Subnet, Gw: gw, LinkIndex: dev6.Index, Onlink: true})
		}
	}
	return s, true, nil
}

// repairDevice returns v's device configured with addr: recreated with the
// lease's MAC if someone deleted it, the lease's MAC set back if someone
// changed it, addressed and up.
func (b *Backend) repairDevice(v *vtep, addr netip.Addr) (*netlink.Vxlan, error) {
	b.mu.Lock()
	leaseMAC := v.mac
	b.mu.Unlock()
	dev, created, err := b.ensureDevice(v)
	if err != nil {
		return nil, err
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
		if err := b.configure(dev, addr); err != nil {
			return nil, err
		}
	}
	return dev, nil
}

// Reconcile runs one pass now (tests; the loop runs them on its own).
func (b *Backend) Reconcile() error { return b.rec.Pass() }

// Run reconciles until ctx ends and leaves the kernel state in place.
func (b *Backend) Run(ctx context.Context) error { return b.rec.Run(ctx) }

// Status is the vxlan backend's part of `weft stats`. Device6, MAC6 and
// MTU6 describe flannel-v6.<VNI> on a dual-stack network.
type Status struct {
	Device    string       `json:"device"`
	VNI       int          `json:"vni"`
	Port      int          `json:"port"`
	MAC       string       `json:"mac"`
	MTU       int          `json:"mtu"`
	Device6   string       `json:"device_v6,omitempty"`
	MAC6      string       `json:"mac_v6,omitempty"`
	MTU6      int          `json:"mtu_v6,omitempty"`
	GBP       bool         `json:"gbp"`
	Direct    bool         `json:"direct_routing"`
	Peers     []peer       `json:"peers"`
	Reconcile kernel.Stats `json:"reconcile"`
}

func (b *Backend) Status() any {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Status{Device: b.v4.spec.name, VNI: b.cfg.VNI, Port: b.cfg.Port, MAC: b.v4.mac.String(), MTU: b.v4.spec.mtu,
		GBP: b.cfg.GBP, Direct: b.cfg.DirectRouting, Peers: slices.Clone(b.peers), Reconcile: b.rec.Stats()}
	if b.v6 != nil {
		s.Device6, s.MAC6, s.MTU6 = b.v6.spec.name, b.v6.mac.String(), b.v6.spec.mtu
	}
	return s
}
