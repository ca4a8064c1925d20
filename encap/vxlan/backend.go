// Package vxlan is weft's kernel vxlan backend, flanneld's vxlan backend
// over netlink: it creates the device flannel.<VNI> and, per peer lease, a
// permanent neighbour (peer subnet's network address -> peer VtepMAC), an
// FDB entry (VtepMAC -> peer public IP) and an onlink route for the peer
// subnet; the kernel does the encapsulation. On a dual-stack network a
// second device, flannel-v6.<VNI>, with an IPv6 local address, carries
// the IPv6 subnets the same way (its own MAC, BackendV6Data, PublicIPv6).
// On an IPv6-only network (a Host without IPv4) flannel-v6.<VNI> is the
// only device, as flanneld's. A reconcile loop keeps that state in place.
//
// The package also speaks VXLAN from userspace, for encap/userspace's vxlan
// flavour on hosts whose kernel cannot create a vxlan device: Encap writes
// and checks the frames, Transport carries them on batched UDP sockets, and
// the config, lease data and admission rule are the kernel backend's own.
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
	"github.com/weft-net/weft/encap/admission"
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
	// v4 is flannel.<VNI>, nil on an IPv6-only network (Host.IfaceAddr
	// not set); v6 is flannel-v6.<VNI>, nil unless the network has IPv6
	// (Host.PublicIPv6 set).
	v4, v6          *vtep
	leases, leases6 LeaseCache // BackendData, BackendV6Data
	accept, accept6 func(lease.Attrs) error

	mu      sync.Mutex
	own     lease.Lease
	started bool
	peers   map[netip.Prefix]peer // by ID
	ready   bool
	// dev and dev6 are the devices' indexes as the last pass found them:
	// the entries an update programs hang on them.
	dev, dev6 int
}

type peer struct {
	// The IPv4 part; zero on an IPv6-only network.
	Subnet   netip.Prefix `json:"subnet,omitzero"`
	PublicIP netip.Addr   `json:"public_ip,omitzero"`
	VtepMAC  string       `json:"vtep_mac,omitempty"`
	Direct   bool         `json:"direct,omitempty"` // DirectRouting: a plain route
	mac      net.HardwareAddr
	// The IPv6 part, on a network with IPv6, of a peer with IPv6.
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
	_ encap.Claimer      = (*Backend)(nil)
	_ encap.PeerUpdater  = (*Backend)(nil)
)

// New checks the options; the devices are made by Attrs. A Host without
// an IPv4 address (IfaceAddr) and with a PublicIPv6 is an IPv6-only
// network's: flannel-v6.<VNI> alone.
func New(o Options) (*Backend, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Sysctl == nil {
		o.Sysctl = func(key, value string) error { return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644) }
	}
	ipv6Only := !o.Host.IfaceAddr.IsValid() && o.Host.PublicIPv6.IsValid()
	if !ipv6Only && !o.Host.IfaceAddr.Is4() {
		return nil, fmt.Errorf("vxlan: interface %s has no IPv4 address", o.Host.Iface)
	}
	mtu := DeviceMTU(o.Host, o.Config, o.Log)
	spec := deviceSpec{
		name: DeviceName(o.Config.VNI), vni: o.Config.VNI, port: o.Config.Port, gbp: o.Config.GBP,
		learning: o.Config.Learning, vtepIndex: o.Host.IfaceIndex, vtepAddr: o.Host.IfaceAddr, mtu: mtu,
	}
	b := &Backend{cfg: o.Config, host: o.Host, nl: o.NL, log: o.Log, sysctl: o.Sysctl}
	if !ipv6Only {
		b.v4 = &vtep{spec: spec, prevMAC: o.PrevMAC}
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
				"a network with IPv6 needs an underlay MTU (the interface's, or Backend.MTU) of at least %d",
				DeviceName6(o.Config.VNI), mtu6, mtu6+Overhead6, Overhead6, minMTU6, minMTU6+Overhead6)
		}
		spec6 := spec
		spec6.name, spec6.vtepAddr, spec6.mtu = DeviceName6(o.Config.VNI), local, mtu6
		b.v6 = &vtep{spec: spec6, prevMAC: o.PrevMAC6}
	}
	b.leases6.V6 = true
	b.accept = AcceptLeaseCached(o.Config.VNI, &b.leases)
	if ipv6Only {
		// Admission drops the IPv4 part (BackendData) of leases on an
		// IPv6-only network: the type here, the data in accept6.
		b.accept = admission.AcceptType("vxlan")
		mtu = b.v6.spec.mtu
	}
	b.accept6 = AcceptLeaseV6Cached(o.Config.VNI, &b.leases6)
	b.rec = &kernel.Reconciler{NL: o.NL, Log: o.Log.With("backend", "vxlan"), Interval: o.Interval, Desired: b.desired}
	b.log.Info("vxlan config", "vni", o.Config.VNI, "port", o.Config.Port, "gbp", o.Config.GBP,
		"learning", o.Config.Learning, "direct-routing", o.Config.DirectRouting, "mtu", mtu, "ipv6", b.v6 != nil, "ipv4", b.v4 != nil)
	return b, nil
}

// Device is the name of the backend's first device: flannel.<VNI>, or
// flannel-v6.<VNI> on an IPv6-only network.
func (b *Backend) Device() string {
	if b.v4 == nil {
		return b.v6.spec.name
	}
	return b.v4.spec.name
}

// Device6 is the IPv6 vxlan device's name, "" unless the network has
// IPv6.
func (b *Backend) Device6() string {
	if b.v6 == nil {
		return ""
	}
	return b.v6.spec.name
}

func (b *Backend) Type() string { return "vxlan" }

// Attrs creates (or reuses) the devices, since the lease carries their
// MACs: flanneld too sets the devices up before it acquires the lease. On
// a network with IPv6 the attributes carry PublicIPv6 and BackendV6Data,
// in flanneld's bytes; otherwise a flannel-v6.<VNI> an earlier dual-stack
// run left is removed. On an IPv6-only network they carry no PublicIP and
// no BackendData (flanneld: "PublicIP":"0.0.0.0", no BackendData), and a
// flannel.<VNI> an earlier run left is removed.
func (b *Backend) Attrs() (lease.Attrs, error) {
	a := lease.Attrs{BackendType: "vxlan"}
	if b.v4 == nil {
		b.removeStaleDevice(DeviceName(b.cfg.VNI))
	} else {
		data, err := b.attrs(b.v4)
		if err != nil {
			return lease.Attrs{}, err
		}
		a.PublicIP, a.BackendData = b.host.PublicIP, data
	}
	if b.v6 == nil {
		b.removeStaleDevice(DeviceName6(b.cfg.VNI))
		return a, nil
	}
	var err error
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

// removeStaleDevice deletes the device name of an earlier run on a
// network that no longer has its family: flannel-v6.<VNI> on one without
// IPv6 (the daemon keeps it with flannel.<VNI>), flannel.<VNI> on an
// IPv6-only one. Its routes, neighbours and FDB entries go with it.
func (b *Backend) removeStaleDevice(name string) {
	l, err := b.nl.H.LinkByName(name)
	if err != nil || l.Type() != "vxlan" {
		return
	}
	if err := b.nl.H.LinkDel(l); err != nil {
		b.log.Warn("cannot remove the vxlan device of an earlier run: the network no longer has its address family", "device", name, "err", err)
		return
	}
	b.log.Info("removed the vxlan device of an earlier run: the network no longer has its address family", "device", name)
}

// Start gives the devices the lease's addresses and brings them up. It
// returns the MTU pods should use: on a dual-stack network the smaller of
// the two devices' MTUs (flannel-v6.<VNI>'s, 20 bytes less); on an
// IPv6-only network flannel-v6.<VNI>'s.
//
// flanneld v0.28.9 writes FLANNEL_MTU from flannel.<VNI> alone (1450 on a
// 1500 underlay, fixture dualstack/vxlan) while flannel-v6.<VNI> has 1430,
// so pods send IPv6 packets the device cannot carry: large ones are lost,
// or rely on ICMPv6 Packet Too Big from the host. weft deliberately writes
// the smaller MTU, which both families fit. On an IPv6-only network
// flanneld still writes 1450 (fixture ipv6only/vxlan, where no
// flannel.<VNI> even exists); weft writes 1430, the device's real MTU.
func (b *Backend) Start(_ context.Context, own lease.Lease) (int, error) {
	switch {
	case b.v6 != nil && !own.IPv6Subnet.IsValid():
		return 0, fmt.Errorf("vxlan: the network has IPv6 (this host's public IPv6 is %s) but the lease %s has no IPv6 subnet", b.host.PublicIPv6, own)
	case b.v6 == nil && own.IPv6Subnet.IsValid():
		return 0, fmt.Errorf("vxlan: the lease has the IPv6 subnet %s but this host has no public IPv6 address for %s", own.IPv6Subnet, DeviceName6(b.cfg.VNI))
	case b.v4 != nil && !own.Subnet.IsValid():
		return 0, fmt.Errorf("vxlan: the lease %s has no IPv4 subnet for %s", own, DeviceName(b.cfg.VNI))
	case b.v4 == nil && own.Subnet.IsValid():
		return 0, fmt.Errorf("vxlan: the lease has the IPv4 subnet %s but this host has no IPv4 address (an IPv6-only network)", own.Subnet)
	}
	b.mu.Lock()
	b.own = own
	b.started = true
	b.mu.Unlock()
	mtu := 0
	if b.v4 != nil {
		var err error
		if mtu, err = b.start(b.v4, own.Subnet.Addr()); err != nil || b.v6 == nil {
			return mtu, err
		}
	}
	mtu6, err := b.start(b.v6, own.IPv6Subnet.Addr())
	if mtu == 0 {
		return mtu6, err
	}
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

// Claims are a lease's VtepMACs (encap.Claimer, LeaseClaims).
func (b *Backend) Claims(a lease.Attrs) []string { return LeaseClaims(&b.leases, &b.leases6)(a) }

// SetPeers records the admitted peers and asks the loop to program them.
func (b *Backend) SetPeers(leases []lease.Lease) {
	connected := b.connected()
	peers := make(map[netip.Prefix]peer, len(leases))
	var macs, macs6 []net.HardwareAddr
	if b.v4 != nil {
		macs = b.leases.Snapshot(leases)
	}
	if b.v6 != nil {
		macs6 = b.leases6.Snapshot(leases)
	}
	for i, l := range leases {
		var mac, mac6 net.HardwareAddr
		if macs != nil {
			mac = macs[i]
		}
		if macs6 != nil {
			mac6 = macs6[i]
		}
		if p, ok := b.peerOf(l, mac, mac6, connected); ok {
			peers[l.ID()] = p
		}
	}
	b.mu.Lock()
	b.peers, b.ready = peers, true
	b.mu.Unlock()
	b.rec.Trigger()
}

// UpdatePeers applies a change of the admitted peers (encap.PeerUpdater):
// the entries of the peers removed or changed go, those of the peers put
// come, and the loop programs just that. A lease's data is parsed once
// per change of it.
func (b *Backend) UpdatePeers(put []lease.Lease, removed []netip.Prefix) {
	connected := b.connected()
	b.mu.Lock()
	defer b.mu.Unlock()
	dev, dev6 := b.dev, b.dev6
	ready := b.ready && (b.v4 == nil || dev != 0) && (b.v6 == nil || dev6 != 0)
	gone, added := kernel.State{Dev: dev, Dev6: dev6}, kernel.State{Dev: dev, Dev6: dev6}
	drop := func(id netip.Prefix) {
		if p, ok := b.peers[id]; ok {
			b.peerState(&gone, p, dev, dev6)
			delete(b.peers, id)
		}
	}
	for _, id := range removed {
		drop(id)
	}
	for _, l := range put {
		drop(l.ID())
		var mac, mac6 net.HardwareAddr
		if b.v4 != nil {
			_, mac, _ = b.leases.Parse(l.Attrs.BackendData)
		}
		if b.v6 != nil && l.IPv6Subnet.IsValid() {
			_, mac6, _ = b.leases6.Parse(l.Attrs.BackendV6Data)
		}
		if p, ok := b.peerOf(l, mac, mac6, connected); ok {
			if b.peers == nil {
				b.peers = map[netip.Prefix]peer{}
			}
			b.peers[l.ID()] = p
			b.peerState(&added, p, dev, dev6)
		}
	}
	if !ready {
		b.ready = true
		b.rec.Trigger() // no pass yet knows the devices: program everything
		return
	}
	b.rec.Change(gone, added)
}

// connected is the underlay's subnets, for DirectRouting.
func (b *Backend) connected() []netip.Prefix {
	if !b.cfg.DirectRouting {
		return nil
	}
	connected, err := b.nl.Connected(b.host.IfaceIndex)
	if err != nil {
		b.log.Warn("cannot read the underlay's subnets; DirectRouting off for this change", "err", err)
	}
	return connected
}

// peerOf is the peer of an admitted lease with its VtepMACs (nil: its
// data does not parse, or it has no IPv6 part); false when there is
// nothing to program.
func (b *Backend) peerOf(l lease.Lease, mac, mac6 net.HardwareAddr, connected []netip.Prefix) (peer, bool) {
	var p peer
	// Admission checked the data; never program a peer without a MAC. A
	// peer without IPv6 (or, on a network without it, any peer) is
	// reached over IPv4 only; on an IPv6-only network every peer over
	// IPv6 only.
	if b.v4 != nil {
		if mac == nil {
			return peer{}, false
		}
		p = peer{Subnet: l.Subnet, PublicIP: l.Attrs.PublicIP, VtepMAC: mac.String(), mac: mac,
			Direct: b.cfg.DirectRouting && kernel.OnSegment(connected, l.Attrs.PublicIP)}
	}
	if b.v6 != nil && mac6 != nil && l.IPv6Subnet.IsValid() {
		p.IPv6Subnet, p.PublicIPv6, p.VtepMAC6, p.mac6 = l.IPv6Subnet, l.Attrs.PublicIPv6, mac6.String(), mac6
		p.Direct6 = b.cfg.DirectRouting && kernel.OnSegment(connected, l.Attrs.PublicIPv6)
	} else if b.v4 == nil {
		return peer{}, false
	}
	return p, true
}

// desired is the reconcile loop's view of what the kernel should hold. It
// recreates a device someone deleted (flanneld's device watcher does too,
// for flannel.<VNI> only).
func (b *Backend) desired() (kernel.State, bool, error) {
	b.mu.Lock()
	ready, own, started := b.ready, b.own, b.started
	peers := make([]peer, 0, len(b.peers))
	for _, p := range b.peers {
		peers = append(peers, p)
	}
	b.mu.Unlock()
	if !ready || !started {
		return kernel.State{}, false, nil
	}
	slices.SortFunc(peers, comparePeers)
	s := kernel.State{Routes: make([]kernel.Route, 0, len(peers))}
	dev, dev6 := 0, 0
	if b.v4 != nil {
		d, err := b.repairDevice(b.v4, own.Subnet.Addr())
		if err != nil {
			return kernel.State{}, false, err
		}
		dev = d.Index
		s.Neighs, s.FDB = make([]kernel.Neigh, 0, len(peers)), make([]kernel.FDB, 0, len(peers))
	}
	if b.v6 != nil {
		// IPv6, as flanneld: "fd00:10:5:32::/64 via fd00:10:5:32:: dev
		// flannel-v6.<VNI> onlink", the neighbour fd00:10:5:32:: lladdr
		// <v6 VtepMAC> and the fdb entry <v6 VtepMAC> dst <PublicIPv6>.
		d, err := b.repairDevice(b.v6, own.IPv6Subnet.Addr())
		if err != nil {
			return kernel.State{}, false, err
		}
		dev6 = d.Index
	}
	s.Dev, s.Dev6 = dev, dev6
	for _, p := range peers {
		b.peerState(&s, p, dev, dev6)
	}
	b.mu.Lock()
	b.dev, b.dev6 = dev, dev6
	b.mu.Unlock()
	return s, true, nil
}

func comparePeers(a, b peer) int {
	x, y := a.Subnet, b.Subnet
	if !x.IsValid() {
		x = a.IPv6Subnet
	}
	if !y.IsValid() {
		y = b.IPv6Subnet
	}
	return x.Addr().Compare(y.Addr())
}

// peerState adds one peer's entries: on flannel.<VNI> (dev), per peer
// "10.5.62.0/24 via 10.5.62.0 dev flannel.1 onlink", the neighbour and
// the FDB entry; the same on flannel-v6.<VNI> (dev6) for its IPv6 part.
func (b *Backend) peerState(s *kernel.State, p peer, dev, dev6 int) {
	switch {
	case b.v4 == nil || !p.Subnet.IsValid():
	case p.Direct:
		s.Routes = append(s.Routes, kernel.Route{Dst: p.Subnet, Gw: p.PublicIP, LinkIndex: b.host.IfaceIndex})
	default:
		gw := p.Subnet.Addr() // the peer's flannel.<VNI> address
		s.Neighs = append(s.Neighs, kernel.Neigh{IP: gw, MAC: p.mac})
		s.FDB = append(s.FDB, kernel.FDB{MAC: p.mac, Dst: p.PublicIP})
		s.Routes = append(s.Routes, kernel.Route{Dst: p.Subnet, Gw: gw, LinkIndex: dev, Onlink: true})
	}
	switch {
	case b.v6 == nil || !p.IPv6Subnet.IsValid():
	case p.Direct6:
		s.Routes = append(s.Routes, kernel.Route{Dst: p.IPv6Subnet, Gw: p.PublicIPv6, LinkIndex: b.host.IfaceIndex})
	default:
		gw := p.IPv6Subnet.Addr() // the peer's flannel-v6.<VNI> address
		s.Neighs6 = append(s.Neighs6, kernel.Neigh{IP: gw, MAC: p.mac6})
		s.FDB6 = append(s.FDB6, kernel.FDB{MAC: p.mac6, Dst: p.PublicIPv6})
		s.Routes = append(s.Routes, kernel.Route{Dst: p.IPv6Subnet, Gw: gw, LinkIndex: dev6, Onlink: true})
	}
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

// Status is the vxlan backend's part of `weft stats`. Device, MAC and
// MTU describe flannel.<VNI> (empty on an IPv6-only network); Device6,
// MAC6 and MTU6 flannel-v6.<VNI> on a network with IPv6.
type Status struct {
	Device    string       `json:"device,omitempty"`
	VNI       int          `json:"vni"`
	Port      int          `json:"port"`
	MAC       string       `json:"mac,omitempty"`
	MTU       int          `json:"mtu,omitempty"`
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
	s := Status{VNI: b.cfg.VNI, Port: b.cfg.Port, GBP: b.cfg.GBP, Direct: b.cfg.DirectRouting, Peers: make([]peer, 0, len(b.peers)), Reconcile: b.rec.Stats()}
	for _, p := range b.peers {
		s.Peers = append(s.Peers, p)
	}
	slices.SortFunc(s.Peers, comparePeers)
	if b.v4 != nil {
		s.Device, s.MAC, s.MTU = b.v4.spec.name, b.v4.mac.String(), b.v4.spec.mtu
	}
	if b.v6 != nil {
		s.Device6, s.MAC6, s.MTU6 = b.v6.spec.name, b.v6.mac.String(), b.v6.spec.mtu
	}
	return s
}
