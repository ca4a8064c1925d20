package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/renameio/v2"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/vxlan"
	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/tunio"
)

// uvxlanBackend speaks VXLAN from userspace, for hosts whose kernel cannot
// create a vxlan device (or under --no-kernel-vxlan): the engine with
// VXLAN encapsulation between a TUN named like flanneld's vxlan device and
// UDP on the vxlan port. Its lease is a vxlan lease with a VtepMAC of its
// own, so kernel-vxlan peers program it as any other vxlan host.
type uvxlanBackend struct {
	f       *runFlags
	host    encap.Host
	cfg     *lease.Config
	vx      vxlan.Config
	log     *slog.Logger
	macFile string

	mac  net.HardwareAddr
	own  lease.Lease
	mtu  int
	tun  *tunio.Device
	tr   *vxlan.Transport
	enc  *vxlan.Encap
	eng  *engine.Engine
	seen map[netip.Prefix]string // last snapshot's peers (and why skipped), for logging changes

	mu      sync.Mutex
	skipped map[string]string // for Status
}

var (
	_ encap.Backend = (*uvxlanBackend)(nil)
	_ encap.Status  = (*uvxlanBackend)(nil)
)

func newUVXLANBackend(f *runFlags, host encap.Host, cfg *lease.Config, log *slog.Logger) (*uvxlanBackend, error) {
	c, err := vxlan.ParseConfig(cfg.Backend)
	if err != nil {
		return nil, err
	}
	if c.Learning || c.DirectRouting {
		log.Warn("userspace VXLAN ignores Backend.Learning and Backend.DirectRouting", "learning", c.Learning, "direct-routing", c.DirectRouting)
	}
	if !host.PublicIP.Is4() {
		return nil, fmt.Errorf("vxlan: interface %s has no IPv4 address", host.Iface)
	}
	log = log.With("backend", "vxlan", "datapath", "userspace")
	return &uvxlanBackend{f: f, host: host, cfg: cfg, vx: c, log: log, macFile: vtepMACFile(f.subnetFile, c.VNI)}, nil
}

// vtepMACFile is where the VtepMAC is kept across restarts: next to the
// subnet file (--subnet-file), which flanneld also rereads on restart to
// keep its lease. The kernel's device keeps flanneld's MAC the same way
// until a reboot, which /run/flannel does not survive either.
func vtepMACFile(subnetFile string, vni int) string {
	return filepath.Join(filepath.Dir(subnetFile), fmt.Sprintf("weft-vxlan.%d.mac", vni))
}

func (b *uvxlanBackend) Type() string { return "vxlan" }

// Attrs returns flanneld's vxlan lease attributes with this host's stable
// VtepMAC.
func (b *uvxlanBackend) Attrs() (lease.Attrs, error) {
	mac, created, err := loadVtepMAC(b.macFile)
	if err != nil {
		return lease.Attrs{}, err
	}
	b.mac = mac
	if created {
		b.log.Info("new VtepMAC", "mac", mac.String(), "kept-in", b.macFile)
	} else {
		b.log.Info("reusing VtepMAC", "mac", mac.String(), "from", b.macFile)
	}
	data, err := vxlan.MarshalLeaseData(b.vx.VNI, mac)
	if err != nil {
		return lease.Attrs{}, err
	}
	return lease.Attrs{PublicIP: b.host.PublicIP, BackendType: "vxlan", BackendData: data}, nil
}

// loadVtepMAC reads the kept MAC or makes and keeps a new one (random,
// locally administered, unicast, as the kernel's and weft's vxlan use).
func loadVtepMAC(path string) (net.HardwareAddr, bool, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		mac, perr := net.ParseMAC(strings.TrimSpace(string(b)))
		if perr == nil && len(mac) == 6 && mac[0]&1 == 0 {
			return mac, false, nil
		}
		return nil, false, fmt.Errorf("vxlan: %s does not hold a unicast Ethernet address (remove it to get a new VtepMAC): %q", path, b)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("vxlan: VtepMAC file: %w", err)
	}
	mac, err := vxlan.RandomMAC()
	if err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, false, fmt.Errorf("vxlan: VtepMAC file: %w", err)
	}
	if err := renameio.WriteFile(path, []byte(mac.String()+"\n"), 0o644); err != nil {
		return nil, false, fmt.Errorf("vxlan: VtepMAC file: %w", err)
	}
	return mac, true, nil
}

// Start creates flannel.<VNI> as a TUN with the kernel backend's MTU and
// address, and the engine with VXLAN encapsulation.
func (b *uvxlanBackend) Start(_ context.Context, own lease.Lease) (int, error) {
	b.own = own
	b.mtu = b.host.IfaceMTU - vxlan.Overhead
	if b.vx.MTU != 0 && b.vx.MTU < b.mtu {
		b.mtu = b.vx.MTU
	}
	dev, err := openTUN(b.f, vxlan.DeviceName(b.vx.VNI), b.mtu, own, b.cfg.Network, b.log)
	if err != nil {
		return 0, err
	}
	tr, err := vxlan.ListenTransport(vxlan.TransportOptions{
		Local:     netip.AddrPortFrom(b.host.IfaceAddr, uint16(b.vx.Port)), // as the udp backend: not --public-ip
		BatchSize: b.f.batchSize, NoGSO: b.f.noGSO, NoGRO: b.f.noGRO,
	})
	if err != nil {
		dev.Close()
		return 0, err
	}
	enc, err := vxlan.NewEncap(vxlan.EncapOptions{VNI: b.vx.VNI, MAC: b.mac, GBP: b.vx.GBP,
		Gateway: own.Subnet.Addr(), SendARP: tr.SendFrame})
	if err == nil {
		b.eng, err = newEngine(b.f, dev, tr, b.mtu, own, b.cfg, enc, b.log)
	}
	if err != nil {
		dev.Close()
		tr.Close()
		return 0, err
	}
	b.tun, b.tr, b.enc = dev, tr, enc
	b.log.Info("userspace vxlan up", "tun", dev.Name, "mtu", b.mtu, "vni", b.vx.VNI, "port", b.vx.Port, "gbp", b.vx.GBP,
		"mac", b.mac.String(), "source-ports", tr.SourcePorts(), "tso", dev.TSO, "udp-gso", tr.Stats().Send.GSO,
		"batch", b.f.batchSize, "anti-spoof", b.f.antiSpoof)
	return b.mtu, nil
}

// Run forwards until ctx ends; the TUN goes with the process.
func (b *uvxlanBackend) Run(ctx context.Context) error { return b.eng.Run(ctx) }

// SetPeers turns the vxlan leases of a snapshot into a lookup table;
// peers on other backends or VNIs cannot be reached and are logged once.
func (b *uvxlanBackend) SetPeers(snap []lease.Lease) {
	specs := make([]engine.PeerSpec, 0, len(snap))
	now := make(map[netip.Prefix]string, len(snap))
	for _, l := range snap {
		if l.Subnet == b.own.Subnet {
			continue
		}
		spec, why := b.peerSpec(l)
		now[l.Subnet] = why
		if why != "" {
			if old, ok := b.seen[l.Subnet]; !ok || old != why {
				b.log.Warn("skipping peer lease", "subnet", l.Subnet, "public-ip", l.Attrs.PublicIP, "why", why)
			}
			continue
		}
		if _, ok := b.seen[l.Subnet]; !ok {
			b.log.Info("subnet added", "subnet", l.Subnet, "public-ip", l.Attrs.PublicIP, "vtep-mac", net.HardwareAddr(spec.HWAddr[:]).String())
		}
		specs = append(specs, spec)
	}
	t, err := engine.NewTable(b.cfg.Network, b.cfg.SubnetLen, b.own.Subnet, specs, b.eng.Table())
	if err != nil {
		b.log.Error("lease snapshot rejected; keeping the previous table", "err", err)
		return
	}
	for s, why := range b.seen {
		if _, ok := now[s]; !ok && why == "" {
			b.log.Info("subnet removed", "subnet", s)
		}
	}
	b.seen = now
	skipped := map[string]string{}
	for s, why := range now {
		if why != "" {
			skipped[s.String()] = why
		}
	}
	b.mu.Lock()
	b.skipped = skipped
	b.mu.Unlock()
	b.eng.SetTable(t)
}

// peerSpec is lease l as an engine peer, or why it cannot be one.
func (b *uvxlanBackend) peerSpec(l lease.Lease) (engine.PeerSpec, string) {
	if l.Attrs.BackendType != "vxlan" {
		bt := l.Attrs.BackendType
		if bt == "" {
			bt = "udp"
		}
		return engine.PeerSpec{}, "its backend is " + bt + ", not vxlan"
	}
	if !l.Attrs.PublicIP.Is4() || !b.cfg.Network.Contains(l.Subnet.Addr()) || l.Subnet.Bits() != b.cfg.SubnetLen {
		return engine.PeerSpec{}, "it is outside the network config or has no IPv4 public address"
	}
	d, mac, err := vxlan.ParseLeaseData(l.Attrs.BackendData)
	if err != nil {
		return engine.PeerSpec{}, err.Error()
	}
	if d.VNI != b.vx.VNI {
		return engine.PeerSpec{}, fmt.Sprintf("its VNI is %d, not %d", d.VNI, b.vx.VNI)
	}
	// Every flannel vxlan host listens on the cluster's one port.
	return engine.PeerSpec{Subnet: l.Subnet, Endpoint: netip.AddrPortFrom(l.Attrs.PublicIP, uint16(b.vx.Port)), HWAddr: [6]byte(mac)}, ""
}

// uvxlanStatus is the userspace vxlan backend's part of /stats.
type uvxlanStatus struct {
	Datapath  string               `json:"datapath"` // "userspace", beside the kernel backend's status
	TUN       string               `json:"tun"`
	MTU       int                  `json:"mtu"`
	VNI       int                  `json:"vni"`
	Port      int                  `json:"port"`
	MAC       string               `json:"mac"`
	GBP       bool                 `json:"gbp"`
	TSO       bool                 `json:"tso"`
	Engine    engineStats          `json:"engine"`
	Encap     vxlan.EncapStats     `json:"encap"`
	Transport vxlan.TransportStats `json:"transport"`
	Peers     []engine.PeerStats   `json:"peers"`
	Skipped   map[string]string    `json:"skipped,omitempty"`
}

func (b *uvxlanBackend) Status() any {
	s := b.eng.Stats()
	out := uvxlanStatus{
		Datapath: "userspace", TUN: b.tun.Name, MTU: b.mtu, VNI: b.vx.VNI, Port: b.vx.Port, MAC: b.mac.String(),
		GBP: b.vx.GBP, TSO: b.tun.TSO, Engine: engineStats{Stats: s, DropsByReason: s.DropsByName()},
		Encap: b.enc.Stats(), Transport: b.tr.Stats(),
	}
	if t := b.eng.Table(); t != nil {
		for _, p := range t.Peers() {
			out.Peers = append(out.Peers, p.Stats())
		}
	}
	b.mu.Lock()
	out.Skipped = b.skipped
	b.mu.Unlock()
	return out
}
