package userspace

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/encap/udp"
	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/lease"
)

// UDPOverhead is what flannel's UDP encapsulation adds: outer IPv4 and UDP
// headers, so flannel0's MTU is the underlay's minus 28.
const UDPOverhead = 20 + 8

// UDPOverhead6 is what it adds over the IPv6 underlay: outer IPv6 and UDP
// headers (48).
const UDPOverhead6 = 40 + 8

// UDP is the udp backend: flannel's UDP wire format (one inner IP packet
// per datagram) on a batched GSO/GRO socket; on a dual-stack network, a
// second socket carries IPv6 packets over the IPv6 underlay to peers that
// have one (UDPLeaseV6Data).
type UDP struct {
	datapath
	host   encap.Host
	port   uint16
	local6 netip.Addr  // the IPv6 underlay address; invalid unless dual-stack
	queues int         // TUN queues and sockets per underlay
	conns  []*udp.Conn // the IPv4 underlay, one socket per queue
	conns6 []*udp.Conn // the IPv6 underlay, one socket per queue; nil without one
}

var (
	_ encap.Backend      = (*UDP)(nil)
	_ encap.Status       = (*UDP)(nil)
	_ encap.Datapath     = (*UDP)(nil)
	_ encap.PeerUpdater  = (*UDP)(nil)
	_ encap.IPv6Acceptor = (*UDP)(nil)
)

// NewUDP checks the network config's Backend for the udp backend.
func NewUDP(host encap.Host, cfg *lease.Config, o Options) (*UDP, error) {
	port, err := ParseUDPPort(cfg.Backend)
	if err != nil {
		return nil, err
	}
	o.Log = logger(o.Log).With("backend", "udp")
	queues := o.Queues
	if queues == 0 {
		queues = DefaultQueues()
	}
	if queues < 1 || queues > MaxQueues {
		return nil, fmt.Errorf("udp: --queues %d is outside 1..%d", queues, MaxQueues)
	}
	b := &UDP{datapath: datapath{opts: o, cfg: cfg}, host: host, port: port, queues: queues}
	if cfg.EnableIPv6 && host.PublicIPv6.IsValid() {
		// As the IPv4 socket: datagrams leave from the interface's
		// address; PublicIPv6 is what peers send to.
		b.local6 = host.IfaceAddr6
		if !b.local6.IsValid() {
			b.local6 = host.PublicIPv6
		}
		if !b.local6.Is6() || b.local6.Is4In6() {
			return nil, fmt.Errorf("udp: interface %s has no IPv6 address for the IPv6 underlay", host.Iface)
		}
	}
	return b, nil
}

// UDPLeaseV6 is the BackendV6Data of a weft udp host with an IPv6
// underlay: it receives IPv6 packets in flannel's UDP format on its
// PublicIPv6 at Port (the cluster's). A lease without it (a weft host of
// an earlier release) is sent IPv6 packets over the IPv4 underlay, as
// that release sends them. flanneld's udp backend writes none and
// carries no IPv6.
type UDPLeaseV6 struct {
	Port int
}

// ParseUDPLeaseV6 reads a udp lease's BackendV6Data; ok is false when it
// has none (absent, or JSON null: what the Kubernetes store reads from a
// "null" backend-v6-data annotation).
func ParseUDPLeaseV6(raw json.RawMessage) (d UDPLeaseV6, ok bool, err error) {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return d, false, nil
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, false, fmt.Errorf("BackendV6Data: %v", err)
	}
	return d, true, nil
}

// ParseUDPPort reads Backend.Port, flannel's default 8285 when absent.
func ParseUDPPort(backend json.RawMessage) (uint16, error) {
	var b struct{ Port int }
	if len(backend) > 0 {
		if err := json.Unmarshal(backend, &b); err != nil {
			return 0, fmt.Errorf("network config: \"Backend\": %v", err)
		}
	}
	if b.Port == 0 {
		return udp.DefaultPort, nil
	}
	if b.Port < 1 || b.Port > 65535 {
		return 0, fmt.Errorf("network config: \"Backend.Port\": %d is not a UDP port", b.Port)
	}
	return uint16(b.Port), nil
}

func (b *UDP) Type() string { return "udp" }

// Attrs: flanneld's UDP backend writes no BackendType and no BackendData.
// On a dual-stack network the lease names PublicIPv6 too, which admission
// requires of a lease with an IPv6 subnet (flanneld's udp backend leaves
// it out, so weft refuses a flanneld udp host's lease there: its proxy
// reads only IPv4 headers and cannot carry IPv6).
// With an IPv6 underlay the lease says so in BackendV6Data (UDPLeaseV6).
func (b *UDP) Attrs() (lease.Attrs, error) {
	a := lease.Attrs{PublicIP: b.host.PublicIP, PublicIPv6: b.host.PublicIPv6}
	if b.underlay6() {
		a.BackendV6Data = json.RawMessage(fmt.Sprintf(`{"Port":%d}`, b.port))
	}
	return a, nil
}

// underlay6 reports whether this host carries IPv6 over the IPv6 underlay.
func (b *UDP) underlay6() bool { return b.local6.IsValid() }

// Accept admits udp leases (flanneld's carry no BackendType).
func (b *UDP) Accept(a lease.Attrs) error { return admission.AcceptType("udp")(a) }

// AcceptIPv6 implements encap.IPv6Acceptor: a peer's BackendV6Data, if
// any, must name the cluster's port (every flannel udp host listens on
// it; a peer elsewhere is misconfigured or lying).
func (b *UDP) AcceptIPv6(a lease.Attrs) error {
	d, ok, err := ParseUDPLeaseV6(a.BackendV6Data)
	if err != nil {
		return admission.Refuse(admission.BackendData, "%v", err)
	}
	if ok && d.Port != int(b.port) {
		return admission.Refuse(admission.BackendData, "BackendV6Data: port %d, not the cluster's %d", d.Port, b.port)
	}
	return nil
}

func (b *UDP) Start(_ context.Context, own lease.Lease) (int, error) {
	b.own = own
	// With an IPv6 underlay, packets of either family must fit the one
	// that costs more (IPv6's 20 more bytes of header): 1452 on a 1500
	// link, which FLANNEL_MTU says.
	b.mtu = b.host.IfaceMTU - UDPOverhead
	if b.underlay6() {
		if !b.dualStack() {
			return 0, fmt.Errorf("udp: dual-stack host without an IPv6 lease (%s)", own.IPv6Subnet)
		}
		b.mtu = min(b.mtu, b.host.IfaceMTU-UDPOverhead6)
	}
	if err := b.openTUN(b.opts.TUNName, b.queues); err != nil {
		return 0, err
	}
	// Bind the interface's own address: the public IP may be an address
	// the host does not have (a NAT in front of it), and datagrams sent
	// from the interface address reach peers as coming from the public one.
	// With several queues, each queue's loops have a socket of their own
	// in an SO_REUSEPORT group on that one address (of each family).
	o := udp.Options{
		Local:     netip.AddrPortFrom(b.host.IfaceAddr, b.port),
		BatchSize: b.opts.BatchSize,
		NoGSO:     b.opts.NoGSO,
		NoGRO:     b.opts.NoGRO,
		BusyPoll:  b.opts.BusyPoll,
		ReusePort: b.queues > 1,
	}
	trs, err := b.listen(o)
	if err != nil {
		b.closeTUN()
		return 0, err
	}
	// Every flannel host sends from the cluster's port, over either
	// underlay: the source port check holds for both.
	if err := b.newEngine(trs, nil, b.opts.CheckSourcePort); err != nil {
		b.closeTUN()
		for _, tr := range trs {
			tr.Close()
		}
		b.conns, b.conns6 = nil, nil
		return 0, err
	}
	ts := b.socketStats()
	b.opts.Log.Info("udp backend up", "tun", b.tun.Name, "mtu", b.mtu, "port", b.port, "tso", b.tun.TSO, "uso", b.tun.USO,
		"udp-gso", ts.GSO, "udp-gro", ts.GRO, "ipv6", b.dualStack(), "underlay-v6", b.local6,
		"batch", b.opts.BatchSize, "queues", b.queues, "anti-spoof", b.opts.AntiSpoof, "source-port-check", b.opts.AntiSpoof && b.opts.CheckSourcePort)
	return b.mtu, nil
}

// listen opens a socket (two, with an IPv6 underlay) per queue.
func (b *UDP) listen(o udp.Options) ([]engine.Transport, error) {
	var trs []engine.Transport
	if !b.underlay6() {
		cs, err := udp.ListenGroup(o, b.queues)
		if err != nil {
			return nil, err
		}
		for _, c := range cs {
			trs = append(trs, c)
		}
		b.conns = cs
		return trs, nil
	}
	for range b.queues {
		d, err := udp.ListenDual(o, o.Local, netip.AddrPortFrom(b.local6, b.port))
		if err != nil {
			for _, tr := range trs {
				tr.Close()
			}
			b.conns, b.conns6 = nil, nil
			return nil, fmt.Errorf("udp: %w", err)
		}
		trs = append(trs, d)
		b.conns, b.conns6 = append(b.conns, d.V4()), append(b.conns6, d.V6())
	}
	return trs, nil
}

// socketStats sums the underlay sockets' counters.
func (b *UDP) socketStats() udp.Stats {
	s := sumStats(b.conns)
	if len(b.conns6) > 0 {
		s = udp.Sum(s, sumStats(b.conns6))
	}
	return s
}

func sumStats(cs []*udp.Conn) udp.Stats {
	var s udp.Stats
	for i, c := range cs {
		if i == 0 {
			s = c.Stats()
		} else {
			s = udp.Sum(s, c.Stats())
		}
	}
	return s
}

// Run forwards until ctx ends; the TUN device (not persistent) and its
// route go with the process, as flanneld's do.
func (b *UDP) Run(ctx context.Context) error { return b.eng.Run(ctx) }

// SetPeers turns the admitted peers into a new lookup table. Every
// flannel udp host listens on the cluster's one port. A peer's IPv6
// subnet (dual-stack) is reached over the IPv6 underlay, at its
// PublicIPv6, when both hosts have one (this host an IPv6 socket, the
// peer's lease UDPLeaseV6); otherwise through its IPv4 endpoint:
// flannel's UDP format carries a bare IP packet, whose version nibble
// tells the families apart. The engine then takes a peer's IPv6 packets
// only from its IPv6 endpoint and IPv4 ones only from its IPv4 endpoint.
func (b *UDP) SetPeers(peers []lease.Lease) {
	b.setTable(b.specs(peers))
}

// UpdatePeers applies a change of the admitted peers to the table
// (encap.PeerUpdater): only the slots of the peers changed are written.
func (b *UDP) UpdatePeers(put []lease.Lease, removed []netip.Prefix) {
	b.updateTable(b.specs(put), removed)
}

func (b *UDP) specs(peers []lease.Lease) []engine.PeerSpec {
	specs := make([]engine.PeerSpec, 0, len(peers))
	for _, l := range peers {
		s := engine.PeerSpec{Subnet: l.Subnet, Subnet6: l.IPv6Subnet, Endpoint: endpoint(l, b.port)}
		if b.underlay6() && l.IPv6Subnet.IsValid() && l.Attrs.PublicIPv6.Is6() && !l.Attrs.PublicIPv6.Is4In6() {
			// Admission checked the port (AcceptIPv6); only presence counts.
			if _, ok, _ := ParseUDPLeaseV6(l.Attrs.BackendV6Data); ok {
				s.Endpoint6 = netip.AddrPortFrom(l.Attrs.PublicIPv6, b.port)
			}
		}
		specs = append(specs, s)
	}
	return specs
}

// Datapath implements encap.Datapath.
func (b *UDP) Datapath() *encap.DatapathInfo {
	if b.eng == nil {
		return nil
	}
	return &encap.DatapathInfo{Engine: b.eng, TUN: b.tun, Socket: b.socketStats}
}

// UDPStatus is the udp backend's part of /status: with an IPv6 underlay,
// each underlay socket's counters.
type UDPStatus struct {
	TUN     string     `json:"tun"`
	MTU     int        `json:"mtu"`
	Port    uint16     `json:"port"`
	Local6  string     `json:"underlay_v6,omitempty"` // the IPv6 socket's address
	Socket  *udp.Stats `json:"socket_v4,omitempty"`
	Socket6 *udp.Stats `json:"socket_v6,omitempty"`
}

func (b *UDP) Status() any {
	s := UDPStatus{TUN: b.opts.TUNName, MTU: b.mtu, Port: b.port}
	if len(b.conns6) > 0 {
		s.Local6 = b.conns6[0].LocalAddr().String()
		s4, s6 := sumStats(b.conns), sumStats(b.conns6)
		s.Socket, s.Socket6 = &s4, &s6
	}
	return s
}
