package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/udp"
	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/tunio"
)

// udpOverhead is what flannel's UDP encapsulation adds: outer IPv4 and UDP
// headers, so flannel0's MTU is the underlay's minus 28.
const udpOverhead = 20 + 8

// udpBackend is the userspace engine with flannel's UDP wire format: the
// TUN device, the batched socket and the forwarding loops between them.
type udpBackend struct {
	f    *runFlags
	host encap.Host
	cfg  *lease.Config
	log  *slog.Logger
	port uint16

	own  lease.Lease
	mtu  int
	tun  *tunio.Device
	conn *udp.Conn
	eng  *engine.Engine
	seen map[netip.Prefix]lease.Lease // peers of the last snapshot, for logging changes
}

var (
	_ encap.Backend = (*udpBackend)(nil)
	_ encap.Status  = (*udpBackend)(nil)
)

func newUDPBackend(f *runFlags, host encap.Host, cfg *lease.Config, log *slog.Logger) (*udpBackend, error) {
	port, err := udpPort(cfg)
	if err != nil {
		return nil, err
	}
	return &udpBackend{f: f, host: host, cfg: cfg, log: log, port: port}, nil
}

// udpPort reads Backend.Port, flannel's default 8285 when absent.
func udpPort(cfg *lease.Config) (uint16, error) {
	var b struct{ Port int }
	if len(cfg.Backend) > 0 {
		if err := json.Unmarshal(cfg.Backend, &b); err != nil {
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

func (b *udpBackend) Type() string { return "udp" }

// Attrs: flanneld's UDP backend writes no BackendType and no BackendData.
func (b *udpBackend) Attrs() (lease.Attrs, error) { return lease.Attrs{PublicIP: b.host.PublicIP}, nil }

func (b *udpBackend) Start(_ context.Context, own lease.Lease) (int, error) {
	b.own = own
	b.mtu = b.host.IfaceMTU - udpOverhead
	// flannel0 carries the lease's network address as a /32 (10.5.42.0/32)
	// and a route for the whole cluster network.
	dev, err := openTUN(b.f, b.f.tunName, b.mtu, own, b.cfg.Network, b.log)
	if err != nil {
		return 0, err
	}
	// Bind the interface's own address: --public-ip may be an address the
	// host does not have (a NAT in front of it), and datagrams sent from
	// the interface address reach peers as coming from the public one.
	conn, err := udp.Listen(udp.Options{
		Local:     netip.AddrPortFrom(b.host.IfaceAddr, b.port),
		BatchSize: b.f.batchSize,
		NoGSO:     b.f.noGSO,
		NoGRO:     b.f.noGRO,
		BusyPoll:  b.f.busyPoll,
	})
	if err != nil {
		dev.Close()
		return 0, err
	}
	eng, err := newEngine(b.f, dev, conn, b.mtu, own, b.cfg, nil, b.log)
	if err != nil {
		dev.Close()
		conn.Close()
		return 0, err
	}
	b.tun, b.conn, b.eng = dev, conn, eng
	ts := conn.Stats()
	b.log.Info("udp backend up", "tun", dev.Name, "mtu", b.mtu, "port", b.port, "tso", dev.TSO, "uso", dev.USO,
		"udp-gso", ts.GSO, "udp-gro", ts.GRO, "batch", b.f.batchSize, "anti-spoof", b.f.antiSpoof)
	return b.mtu, nil
}

// openTUN creates the TUN device of a userspace backend (flannel0, or
// flannel.<VNI> for userspace VXLAN) with the flags' offload choices, and
// gives it the lease's network address and the cluster route.
func openTUN(f *runFlags, name string, mtu int, own lease.Lease, network netip.Prefix, log *slog.Logger) (*tunio.Device, error) {
	dev, err := tunio.Create(tunio.Options{Name: name, MTU: mtu, NoOffload: f.noTUNOffload, TunPackageWrite: f.tunPackageWrite, TxQueueLen: f.tunTxQueueLen})
	if err != nil {
		return nil, err
	}
	go drainEvents(dev, mtu, log)
	if err := tunio.Configure(dev.Name, own.Subnet.Addr(), network); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// newEngine builds the engine of a userspace backend from the flags, with
// a first table holding only this host's subnet (peers come with the
// first lease snapshot). enc nil is flannel's UDP format.
func newEngine(f *runFlags, dev engine.Device, tr engine.Transport, mtu int, own lease.Lease, cfg *lease.Config, enc engine.Encap, log *slog.Logger) (*engine.Engine, error) {
	eng, err := engine.New(dev, tr, engine.Config{
		BatchSize:  f.batchSize,
		MTU:        mtu,
		AntiSpoof:  f.antiSpoof,
		BusyPoll:   f.busyPoll,
		ICMPSource: own.Subnet.Addr(),
		Encap:      enc,
		Logger:     log,
	})
	if err != nil {
		return nil, err
	}
	t, err := engine.NewTable(cfg.Network, cfg.SubnetLen, own.Subnet, nil, nil)
	if err != nil {
		return nil, err
	}
	eng.SetTable(t)
	return eng, nil
}

// Run forwards until ctx ends; the TUN device (not persistent) and its
// route go with the process, as flanneld's do.
func (b *udpBackend) Run(ctx context.Context) error { return b.eng.Run(ctx) }

// SetPeers turns a lease snapshot into a new lookup table. A snapshot that
// cannot become a table is logged and skipped: the last good table stays.
func (b *udpBackend) SetPeers(snap []lease.Lease) {
	specs := make([]engine.PeerSpec, 0, len(snap))
	now := make(map[netip.Prefix]lease.Lease, len(snap))
	for _, l := range snap {
		if l.Subnet == b.own.Subnet {
			continue
		}
		if l.Attrs.BackendType != "" && l.Attrs.BackendType != "udp" {
			if _, ok := b.seen[l.Subnet]; !ok {
				b.log.Warn("peer uses another backend; the udp backend cannot reach it", "subnet", l.Subnet, "backend", l.Attrs.BackendType)
			}
			now[l.Subnet] = l
			continue
		}
		if !l.Attrs.PublicIP.Is4() || !b.cfg.Network.Contains(l.Subnet.Addr()) || l.Subnet.Bits() != b.cfg.SubnetLen {
			b.log.Warn("ignoring lease outside the network config", "subnet", l.Subnet, "public-ip", l.Attrs.PublicIP)
			continue
		}
		specs = append(specs, engine.PeerSpec{Subnet: l.Subnet, Endpoint: netip.AddrPortFrom(l.Attrs.PublicIP, b.port)})
		now[l.Subnet] = l
	}
	t, err := engine.NewTable(b.cfg.Network, b.cfg.SubnetLen, b.own.Subnet, specs, b.eng.Table())
	if err != nil {
		b.log.Error("lease snapshot rejected; keeping the previous table", "err", err)
		return
	}
	logPeerChanges(b.log, b.seen, now)
	b.seen = now
	b.eng.SetTable(t)
}

func logPeerChanges(log *slog.Logger, before, now map[netip.Prefix]lease.Lease) {
	for s, l := range now {
		if old, ok := before[s]; !ok || old.Attrs.PublicIP != l.Attrs.PublicIP {
			log.Info("subnet added", "subnet", s, "public-ip", l.Attrs.PublicIP)
		}
	}
	for s, l := range before {
		if _, ok := now[s]; !ok {
			log.Info("subnet removed", "subnet", s, "public-ip", l.Attrs.PublicIP)
		}
	}
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

// udpStatus is the udp backend's part of /stats.
type udpStatus struct {
	TUN       string             `json:"tun"`
	MTU       int                `json:"mtu"`
	Port      uint16             `json:"port"`
	Offloads  offloadState       `json:"offloads"`
	Engine    engineStats        `json:"engine"`
	Transport udp.Stats          `json:"transport"`
	Peers     []engine.PeerStats `json:"peers"`
}

type offloadState struct {
	TSO, USO, GSO, GRO bool
}

type engineStats struct {
	engine.Stats
	DropsByReason map[string]uint64 `json:"drops_by_reason"`
}

func (b *udpBackend) Status() any {
	s := b.eng.Stats()
	ts := b.conn.Stats()
	out := udpStatus{
		TUN: b.tun.Name, MTU: b.mtu, Port: b.port,
		Offloads:  offloadState{TSO: b.tun.TSO, USO: b.tun.USO, GSO: ts.GSO, GRO: ts.GRO},
		Engine:    engineStats{Stats: s, DropsByReason: s.DropsByName()},
		Transport: ts,
	}
	if t := b.eng.Table(); t != nil {
		for _, p := range t.Peers() {
			out.Peers = append(out.Peers, p.Stats())
		}
	}
	return out
}
