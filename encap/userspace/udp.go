package userspace

import (
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

// UDP is the udp backend: flannel's UDP wire format (one inner IPv4
// packet per datagram) on a batched GSO/GRO socket.
type UDP struct {
	datapath
	host encap.Host
	port uint16
	conn *udp.Conn
}

var (
	_ encap.Backend     = (*UDP)(nil)
	_ encap.Status      = (*UDP)(nil)
	_ encap.Datapath    = (*UDP)(nil)
	_ encap.PeerUpdater = (*UDP)(nil)
)

// NewUDP checks the network config's Backend for the udp backend.
func NewUDP(host encap.Host, cfg *lease.Config, o Options) (*UDP, error) {
	port, err := ParseUDPPort(cfg.Backend)
	if err != nil {
		return nil, err
	}
	o.Log = logger(o.Log).With("backend", "udp")
	return &UDP{datapath: datapath{opts: o, cfg: cfg}, host: host, port: port}, nil
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
func (b *UDP) Attrs() (lease.Attrs, error) {
	return lease.Attrs{PublicIP: b.host.PublicIP, PublicIPv6: b.host.PublicIPv6}, nil
}

// Accept admits udp leases (flanneld's carry no BackendType).
func (b *UDP) Accept(a lease.Attrs) error { return admission.AcceptType("udp")(a) }

func (b *UDP) Start(_ context.Context, own lease.Lease) (int, error) {
	b.own = own
	b.mtu = b.host.IfaceMTU - UDPOverhead
	if err := b.openTUN(b.opts.TUNName); err != nil {
		return 0, err
	}
	// Bind the interface's own address: the public IP may be an address
	// the host does not have (a NAT in front of it), and datagrams sent
	// from the interface address reach peers as coming from the public one.
	conn, err := udp.Listen(udp.Options{
		Local:     netip.AddrPortFrom(b.host.IfaceAddr, b.port),
		BatchSize: b.opts.BatchSize,
		NoGSO:     b.opts.NoGSO,
		NoGRO:     b.opts.NoGRO,
		BusyPoll:  b.opts.BusyPoll,
	})
	if err != nil {
		b.tun.Close()
		return 0, err
	}
	// Every flannel host sends from the cluster's port.
	if err := b.newEngine(conn, nil, b.opts.CheckSourcePort); err != nil {
		b.tun.Close()
		conn.Close()
		return 0, err
	}
	b.conn = conn
	ts := conn.Stats()
	b.opts.Log.Info("udp backend up", "tun", b.tun.Name, "mtu", b.mtu, "port", b.port, "tso", b.tun.TSO, "uso", b.tun.USO,
		"udp-gso", ts.GSO, "udp-gro", ts.GRO, "ipv6", b.dualStack(), "batch", b.opts.BatchSize, "anti-spoof", b.opts.AntiSpoof, "source-port-check", b.opts.AntiSpoof && b.opts.CheckSourcePort)
	return b.mtu, nil
}

// Run forwards until ctx ends; the TUN device (not persistent) and its
// route go with the process, as flanneld's do.
func (b *UDP) Run(ctx context.Context) error { return b.eng.Run(ctx) }

// SetPeers turns the admitted peers into a new lookup table. Every
// flannel udp host listens on the cluster's one port. A peer's IPv6
// subnet (dual-stack) is reached through the same IPv4 endpoint: flannel's
// UDP format carries a bare IP packet, whose version nibble tells the
// families apart.
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
		specs = append(specs, engine.PeerSpec{Subnet: l.Subnet, Subnet6: l.IPv6Subnet, Endpoint: endpoint(l, b.port)})
	}
	return specs
}

// Datapath implements encap.Datapath.
func (b *UDP) Datapath() *encap.DatapathInfo {
	if b.eng == nil {
		return nil
	}
	return &encap.DatapathInfo{Engine: b.eng, TUN: b.tun, Socket: b.conn.Stats}
}

// UDPStatus is the udp backend's part of /status.
type UDPStatus struct {
	TUN  string `json:"tun"`
	MTU  int    `json:"mtu"`
	Port uint16 `json:"port"`
}

func (b *UDP) Status() any { return UDPStatus{TUN: b.opts.TUNName, MTU: b.mtu, Port: b.port} }
