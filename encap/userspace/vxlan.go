package userspace

import (
	"context"
	"fmt"
	"net"
	"net/netip"

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
type VXLAN struct {
	datapath
	host    encap.Host
	vx      vxlan.Config
	macFile string
	mac     net.HardwareAddr
	tr      *vxlan.Transport
	enc     *vxlan.Encap
	leases  vxlan.LeaseCache // parsed BackendData of the last snapshot
}

var (
	_ encap.Backend  = (*VXLAN)(nil)
	_ encap.Status   = (*VXLAN)(nil)
	_ encap.Datapath = (*VXLAN)(nil)
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
	return &VXLAN{datapath: datapath{opts: o, cfg: cfg}, host: host, vx: c, macFile: VtepMACFile(o.StateDir, c.VNI)}, nil
}

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
	return lease.Attrs{PublicIP: b.host.PublicIP, BackendType: "vxlan", BackendData: data}, nil
}

// Accept admits vxlan leases of this VNI, as the kernel backend does.
func (b *VXLAN) Accept(a lease.Attrs) error { return vxlan.AcceptLeaseCached(b.vx.VNI, &b.leases)(a) }

// Start creates flannel.<VNI> as a TUN with the kernel backend's MTU and
// address, and the engine with VXLAN encapsulation.
func (b *VXLAN) Start(_ context.Context, own lease.Lease) (int, error) {
	b.own = own
	b.mtu = vxlan.DeviceMTU(b.host, b.vx, b.opts.Log)
	if err := b.openTUN(vxlan.DeviceName(b.vx.VNI)); err != nil {
		return 0, err
	}
	tr, err := vxlan.ListenTransport(vxlan.TransportOptions{
		Local:     netip.AddrPortFrom(b.host.IfaceAddr, uint16(b.vx.Port)), // as the udp backend: not the public IP
		BatchSize: b.opts.BatchSize, NoGSO: b.opts.NoGSO, NoGRO: b.opts.NoGRO,
	})
	if err != nil {
		b.tun.Close()
		return 0, err
	}
	enc, err := vxlan.NewEncap(vxlan.EncapOptions{VNI: b.vx.VNI, MAC: b.mac, GBP: b.vx.GBP,
		Gateway: own.Subnet.Addr(), SendARP: tr.SendFrame})
	if err == nil {
		err = b.newEngine(tr, enc, false) // VXLAN source ports vary per flow
	}
	if err != nil {
		b.tun.Close()
		tr.Close()
		return 0, err
	}
	b.tr, b.enc = tr, enc
	b.opts.Log.Info("userspace vxlan up", "tun", b.tun.Name, "mtu", b.mtu, "vni", b.vx.VNI, "port", b.vx.Port, "gbp", b.vx.GBP,
		"mac", b.mac.String(), "source-ports", tr.SourcePorts(), "tso", b.tun.TSO, "udp-gso", tr.Stats().Send.GSO,
		"batch", b.opts.BatchSize, "anti-spoof", b.opts.AntiSpoof)
	return b.mtu, nil
}

// Run forwards until ctx ends; the TUN goes with the process.
func (b *VXLAN) Run(ctx context.Context) error { return b.eng.Run(ctx) }

// SetPeers turns the admitted vxlan peers into a lookup table. Every
// flannel vxlan host listens on the cluster's one port.
func (b *VXLAN) SetPeers(peers []lease.Lease) {
	specs := make([]engine.PeerSpec, 0, len(peers))
	macs := b.leases.Snapshot(peers)
	for i, l := range peers {
		mac := macs[i]
		if len(mac) != 6 {
			continue // admission checked it
		}
		specs = append(specs, engine.PeerSpec{Subnet: l.Subnet, Endpoint: endpoint(l, uint16(b.vx.Port)), HWAddr: [6]byte(mac)})
	}
	b.setTable(specs)
}

// Datapath implements encap.Datapath. The receive counters come from the
// receive socket, the send counters from the send sockets.
func (b *VXLAN) Datapath() *encap.DatapathInfo {
	if b.eng == nil {
		return nil
	}
	return &encap.DatapathInfo{Engine: b.eng, TUN: b.tun, Socket: func() udp.Stats {
		ts := b.tr.Stats()
		s := ts.Receive
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
	GBP       bool                 `json:"gbp"`
	Encap     vxlan.EncapStats     `json:"encap"`
	Transport vxlan.TransportStats `json:"transport"`
}

func (b *VXLAN) Status() any {
	s := VXLANStatus{Datapath: "userspace", MTU: b.mtu, VNI: b.vx.VNI, Port: b.vx.Port, MAC: b.mac.String(), GBP: b.vx.GBP}
	if b.eng != nil {
		s.TUN, s.Encap, s.Transport = b.tun.Name, b.enc.Stats(), b.tr.Stats()
	}
	return s
}
