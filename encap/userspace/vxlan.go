package userspace

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/udp"
	"github.com/weft-net/weft/encap/vxlan"
	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/lease"
)

// VXLAN speaks flannel's VXLAN from userspace, for hosts whose kernel
// cannot create a vxlan device (or under --no-kernel-vxlan): the engine
// with VXLAN encapsulation between a TUN named like flanneld's vxlan device
// and UDP on the vxlan port. Its lease is a vxlan lease with a VtepMAC of
// its own, so kernel-vxlan peers program it as any other vxlan host.
//
// On a dual-stack network it also stands in for flannel-v6.<VNI>: its lease
// carries PublicIPv6 and BackendV6Data with a second VtepMAC, IPv6 packets
// travel over the IPv6 underlay (to the peer's PublicIPv6, with the peer's
// BackendV6Data MAC), and the one TUN carries both families.
type VXLAN struct {
	datapath
	host     encap.Host
	vx       vxlan.Config
	macFile  string
	macFile6 string
	mac      net.HardwareAddr
	mac6     net.HardwareAddr // nil unless dual-stack
	local6   netip.Addr       // the IPv6 underlay address; invalid unless dual-stack
	queues   int              // TUN queues, each with a Transport of its own
	trs      []*vxlan.Transport
	enc      *vxlan.Encap
	leases   vxlan.LeaseCache // parsed BackendData of the last snapshot
	leases6  vxlan.LeaseCache // parsed BackendV6Data
	accept6  func(lease.Attrs) error
}

var (
	_ encap.Backend      = (*VXLAN)(nil)
	_ encap.Status       = (*VXLAN)(nil)
	_ encap.Datapath     = (*VXLAN)(nil)
	_ encap.IPv6Acceptor = (*VXLAN)(nil)
	_ encap.Claimer      = (*VXLAN)(nil)
	_ encap.PeerUpdater  = (*VXLAN)(nil)
)

// NewVXLAN checks the network config's Backend for userspace vxlan.
func NewVXLAN(host encap.Host, cfg *lease.Config, o Options) (*VXLAN, error) {
	c, err := vxlan.ParseConfig(cfg.Backend)
	if err != nil {
		return nil, err
	}
	o.Log = logger(o.Log).With("backend", "vxlan", "datapath", "userspace")
	if c.Learning || c.DirectRouting {
		o.Log.Warn("userspace VXLAN ignores Backend.Learning and Backend.DirectRouting", "learning", c.Learning, "direct-routing", c.DirectRouting)
	}
	if !host.PublicIP.Is4() {
		return nil, fmt.Errorf("vxlan: interface %s has no IPv4 address", host.Iface)
	}
	queues := o.Queues
	if queues == 0 {
		queues = DefaultQueues()
	}
	if queues < 1 || queues > MaxQueues {
		return nil, fmt.Errorf("vxlan: --queues %d is outside 1..%d", queues, MaxQueues)
	}
	b := &VXLAN{datapath: datapath{opts: o, cfg: cfg}, host: host, vx: c, macFile: VtepMACFile(o.StateDir, c.VNI), queues: queues}
	b.leases6.V6 = true
	b.accept6 = vxlan.AcceptLeaseV6Cached(c.VNI, &b.leases6)
	if host.PublicIPv6.IsValid() {
		// As the kernel backend's flannel-v6.<VNI>: frames leave from the
		// interface's IPv6 address; PublicIPv6 is what peers send to.
		b.local6 = host.IfaceAddr6
		if !b.local6.IsValid() {
			b.local6 = host.PublicIPv6
		}
		if !b.local6.Is6() || b.local6.Is4In6() {
			return nil, fmt.Errorf("vxlan: interface %s has no IPv6 address for the IPv6 underlay", host.Iface)
		}
		b.macFile6 = VtepMACFile6(o.StateDir, c.VNI)
	}
	return b, nil
}

// dual reports whether this host carries IPv6 (the network is dual-stack).
func (b *VXLAN) dual() bool { return b.local6.IsValid() }

func (b *VXLAN) Type() string { return "vxlan" }

// Attrs returns flanneld's vxlan lease attributes with this host's stable
// VtepMAC.
func (b *VXLAN) Attrs() (lease.Attrs, error) {
	mac, created, err := loadVtepMAC(b.macFile)
	if err != nil {
		return lease.Attrs{}, err
	}
	b.mac = mac
	if created {
		b.opts.Log.Info("new VtepMAC", "mac", mac.String(), "kept-in", b.macFile)
	} else {
		b.opts.Log.Info("reusing VtepMAC", "mac", mac.String(), "from", b.macFile)
	}
	data, err := vxlan.MarshalLeaseData(b.vx.VNI, mac)
	if err != nil {
		return lease.Attrs{}, err
	}
	a := lease.Attrs{PublicIP: b.host.PublicIP, BackendType: "vxlan", BackendData: data}
	if !b.dual() {
		return a, nil
	}
	mac6, created, err := loadVtepMAC(b.macFile6)
	if err != nil {
		return lease.Attrs{}, err
	}
	b.mac6 = mac6
	if created {
		b.opts.Log.Info("new IPv6 VtepMAC", "mac", mac6.String(), "kept-in", b.macFile6)
	} else {
		b.opts.Log.Info("reusing IPv6 VtepMAC", "mac", mac6.String(), "from", b.macFile6)
	}
	if a.BackendV6Data, err = vxlan.MarshalLeaseData(b.vx.VNI, mac6); err != nil {
		return lease.Attrs{}, err
	}
	a.PublicIPv6 = b.host.PublicIPv6
	return a, nil
}

// Accept admits vxlan leases of this VNI, as the kernel backend does.
func (b *VXLAN) Accept(a lease.Attrs) error { return vxlan.AcceptLeaseCached(b.vx.VNI, &b.leases)(a) }

// Claims are a lease's VtepMACs, as the kernel backend's (encap.Claimer):
// one admission rule for hosts of either kind in one cluster.
func (b *VXLAN) Claims(a lease.Attrs) []string { return vxlan.LeaseClaims(&b.leases, &b.leases6)(a) }

// AcceptIPv6 implements encap.IPv6Acceptor as the kernel backend does: a
// peer's BackendV6Data must name a unicast VtepMAC and this VNI.
func (b *VXLAN) AcceptIPv6(a lease.Attrs) error { return b.accept6(a) }

// Start creates flannel.<VNI> as a TUN with the kernel backend's MTU and
// address, and the engine with VXLAN encapsulation. On a dual-stack
// network the TUN's MTU is that of flannel-v6.<VNI> (the underlay's less
// 70), which the IPv4 frames fit too: the kernel backend writes the same
// smaller MTU to FLANNEL_MTU.
//
// With several queues the TUN is multi-queue and each queue has a
// Transport of its own: a receiving socket of one SO_REUSEPORT group on
// the VXLAN port, and sender sockets whose ports no other queue uses. A
// VXLAN sender (the kernel's, or this one) picks a frame's source port by
// its inner flow, so a peer's flows spread over the group's sockets, where
// flannel's udp format, sent from its one port, puts each peer on one.
func (b *VXLAN) Start(_ context.Context, own lease.Lease) (int, error) {
	b.own = own
	b.mtu = vxlan.DeviceMTU(b.host, b.vx, b.opts.Log)
	o := vxlan.TransportOptions{
		Local:     netip.AddrPortFrom(b.host.IfaceAddr, uint16(b.vx.Port)), // as the udp backend: not the public IP
		BatchSize: b.opts.BatchSize, NoGSO: b.opts.NoGSO, NoGRO: b.opts.NoGRO,
	}
	if b.dual() {
		if !b.dualStack() || b.mac6 == nil {
			return 0, fmt.Errorf("vxlan: dual-stack host without an IPv6 lease (%s) or IPv6 VtepMAC", own.IPv6Subnet)
		}
		b.mtu = min(b.mtu, vxlan.DeviceMTU6(b.host, b.vx))
		o.Local6 = netip.AddrPortFrom(b.local6, uint16(b.vx.Port))
	}
	o.ReusePort = b.queues > 1
	if err := b.openTUN(vxlan.DeviceName(b.vx.VNI), b.queues); err != nil {
		return 0, err
	}
	closeAll := func() {
		b.closeTUN()
		for _, tr := range b.trs {
			tr.Close()
		}
		b.trs = nil
	}
	trs := make([]engine.Transport, 0, b.queues)
	for range b.queues {
		tr, err := vxlan.ListenTransport(o)
		if err != nil {
			closeAll()
			return 0, err
		}
		b.trs = append(b.trs, tr)
		trs = append(trs, tr)
	}
	// ARP replies leave from the first queue's receiving socket, on the
	// VXLAN port as the kernel's; the Encap sends one at a time.
	enc, err := vxlan.NewEncap(vxlan.EncapOptions{VNI: b.vx.VNI, MAC: b.mac, MAC6: b.mac6, GBP: b.vx.GBP,
		Gateway: own.Subnet.Addr(), SendARP: b.trs[0].SendFrame})
	if err == nil {
		err = b.newEngine(trs, enc, false) // VXLAN source ports vary per flow
	}
	if err != nil {
		closeAll()
		return 0, err
	}
	b.enc = enc
	ts := b.transportStats()
	b.opts.Log.Info("userspace vxlan up", "tun", b.tun.Name, "mtu", b.mtu, "vni", b.vx.VNI, "port", b.vx.Port, "gbp", b.vx.GBP,
		"mac", b.mac.String(), "source-ports", ts.SourcePorts, "tso", b.tun.TSO, "udp-gso", ts.Send.GSO,
		"ipv6", b.dual(), "mac-v6", b.mac6.String(), "underlay-v6", b.local6,
		"batch", b.opts.BatchSize, "queues", b.queues, "anti-spoof", b.opts.AntiSpoof)
	return b.mtu, nil
}

// transportStats sums the queues' Transports.
func (b *VXLAN) transportStats() vxlan.TransportStats {
	var s vxlan.TransportStats
	for i, tr := range b.trs {
		if i == 0 {
			s = tr.Stats()
		} else {
			s = s.Add(tr.Stats())
		}
	}
	return s
}

// Run forwards until ctx ends; the TUN goes with the process.
func (b *VXLAN) Run(ctx context.Context) error { return b.eng.Run(ctx) }

// SetPeers turns the admitted vxlan peers into a lookup table. Every
// flannel vxlan host listens on the cluster's one port, over IPv6 too. A
// peer's IPv6 subnet is reached at its PublicIPv6 with its BackendV6Data
// MAC, as its flannel-v6.<VNI> is.
func (b *VXLAN) SetPeers(peers []lease.Lease) {
	macs := b.leases.Snapshot(peers)
	var macs6 []net.HardwareAddr
	if b.dual() {
		macs6 = b.leases6.Snapshot(peers)
	}
	specs := make([]engine.PeerSpec, 0, len(peers))
	for i, l := range peers {
		var mac6 net.HardwareAddr
		if macs6 != nil {
			mac6 = macs6[i]
		}
		if s, ok := b.spec(l, macs[i], mac6); ok {
			specs = append(specs, s)
		}
	}
	b.setTable(specs)
}

// UpdatePeers applies a change of the admitted peers to the table
// (encap.PeerUpdater), parsing only the changed leases' data.
func (b *VXLAN) UpdatePeers(put []lease.Lease, removed []netip.Prefix) {
	specs := make([]engine.PeerSpec, 0, len(put))
	for _, l := range put {
		_, mac, _ := b.leases.Parse(l.Attrs.BackendData)
		var mac6 net.HardwareAddr
		if b.dual() && l.IPv6Subnet.IsValid() {
			_, mac6, _ = b.leases6.Parse(l.Attrs.BackendV6Data)
		}
		if s, ok := b.spec(l, mac, mac6); ok {
			specs = append(specs, s)
		} else {
			removed = append(slices.Clip(removed), l.ID()) // unusable now: not its old self either
		}
	}
	b.updateTable(specs, removed)
}

// spec is the table's entry for a peer with its VtepMACs.
func (b *VXLAN) spec(l lease.Lease, mac, mac6 net.HardwareAddr) (engine.PeerSpec, bool) {
	if len(mac) != 6 {
		return engine.PeerSpec{}, false // admission checked it
	}
	port := uint16(b.vx.Port)
	s := engine.PeerSpec{Subnet: l.Subnet, Endpoint: endpoint(l, port), HWAddr: [6]byte(mac)}
	if len(mac6) == 6 && l.IPv6Subnet.IsValid() && l.Attrs.PublicIPv6.Is6() {
		s.Subnet6, s.HWAddr6 = l.IPv6Subnet, [6]byte(mac6)
		s.Endpoint6 = netip.AddrPortFrom(l.Attrs.PublicIPv6, port)
	}
	return s, true
}

// Datapath implements encap.Datapath. The receive counters come from the
// receive socket, the send counters from the send sockets.
func (b *VXLAN) Datapath() *encap.DatapathInfo {
	if b.eng == nil {
		return nil
	}
	return &encap.DatapathInfo{Engine: b.eng, TUN: b.tun, Socket: func() udp.Stats {
		ts := b.transportStats()
		s := ts.Receive
		if r6 := ts.Receive6; r6 != nil {
			s.GRO = s.GRO && r6.GRO
			s.RecvCalls += r6.RecvCalls
			s.RecvDatagrams += r6.RecvDatagrams
			s.RecvSegments += r6.RecvSegments
			s.Truncated += r6.Truncated
			s.ReceiveDrops += r6.ReceiveDrops
		}
		s.GSO, s.GSOFallbacks = ts.Send.GSO, ts.Send.GSOFallbacks
		s.SendCalls, s.SendMessages, s.SendSegments = ts.Send.SendCalls, ts.Send.SendMessages, ts.Send.SendSegments
		s.SendErrors, s.LastSendErrno = ts.Send.SendErrors, ts.Send.LastSendErrno
		return s
	}}
}

// VXLANStatus is userspace vxlan's part of /status.
type VXLANStatus struct {
	Datapath  string               `json:"datapath"` // "userspace", beside the kernel backend's status
	TUN       string               `json:"tun"`
	MTU       int                  `json:"mtu"`
	VNI       int                  `json:"vni"`
	Port      int                  `json:"port"`
	MAC       string               `json:"mac"`
	MAC6      string               `json:"mac_v6,omitempty"` // the BackendV6Data VtepMAC, dual-stack only
	GBP       bool                 `json:"gbp"`
	Encap     vxlan.EncapStats     `json:"encap"`
	Transport vxlan.TransportStats `json:"transport"`
}

func (b *VXLAN) Status() any {
	s := VXLANStatus{Datapath: "userspace", MTU: b.mtu, VNI: b.vx.VNI, Port: b.vx.Port, MAC: b.mac.String(), GBP: b.vx.GBP}
	if b.mac6 != nil {
		s.MAC6 = b.mac6.String()
	}
	if b.eng != nil {
		s.TUN, s.Encap, s.Transport = b.tun.Name, b.enc.Stats(), b.transportStats()
	}
	return s
}
