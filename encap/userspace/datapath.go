package userspace

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/tunio"
)

// Options are the data path's tunables, the same for both flavours.
type Options struct {
	TUNName         string        // the TUN's name (udp; vxlan uses flannel.<VNI>)
	BatchSize       int           // packets per system call, each direction
	NoTUNOffload    bool          // open the TUN without virtio-net offloads
	TunPackageWrite bool          // coalesce TUN writes with the tun package's GRO
	CopySegments    bool          // split TSO super-packets by copying (engine.Config.CopySegments)
	CopyTrains      bool          // copy UDP GRO trains apart (engine.Config.CopyTrains)
	TxQueueLen      int           // the TUN's transmit queue (0: the kernel's)
	NoGSO, NoGRO    bool          // switch UDP GSO / GRO off
	BusyPoll        time.Duration // how long each loop polls before it sleeps
	// Queues is how many queues the data path runs: a multi-queue TUN and
	// an SO_REUSEPORT socket group, a loop pair per queue. 0:
	// DefaultQueues.
	Queues int
	// RealtimePriority is the forwarding loops' SCHED_FIFO priority
	// (engine.Config.RealtimePriority; 0: normal scheduling).
	RealtimePriority int
	AntiSpoof        bool // drop datagrams from non-peers and spoofed inner sources
	// CheckSourcePort (udp flavour, with AntiSpoof) drops datagrams from a
	// peer's address but not from the cluster's port.
	CheckSourcePort bool
	// StateDir keeps state across restarts (userspace vxlan's VtepMAC).
	StateDir string
	Log      *slog.Logger
}

// datapath is the part both flavours share: the TUN, the engine, and the
// table they build from the admitted peers.
type datapath struct {
	opts Options
	cfg  *lease.Config
	own  lease.Lease
	mtu  int
	tun  *tunio.Device   // the first queue: its name, offloads and events
	tuns []*tunio.Device // every queue
	eng  *engine.Engine
}

// openTUN creates the TUN device with the options' offload choices and
// gives it the lease's network address and the cluster route: flannel0
// carries the lease's network address as a /32 (10.5.42.0/32) and a route
// for the whole cluster network, as flanneld's does. On a dual-stack
// network it also carries the IPv6 lease's network address as a /128 and
// a route for the IPv6 network, as flannel-v6.<VNI> does.
func (d *datapath) openTUN(name string, queues int) error {
	o := d.opts
	if d.dualStack() && d.mtu < minMTU6 {
		return fmt.Errorf("%s would get MTU %d, below IPv6's minimum %d, and the kernel disables IPv6 on such a device: a dual-stack network needs a larger underlay MTU",
			name, d.mtu, minMTU6)
	}
	devs, err := tunio.CreateQueues(tunio.Options{Name: name, MTU: d.mtu, NoOffload: o.NoTUNOffload, TunPackageWrite: o.TunPackageWrite, TxQueueLen: o.TxQueueLen}, queues)
	if err != nil {
		return err
	}
	d.tun, d.tuns = devs[0], devs
	go drainEvents(d.tun, d.mtu, o.Log)
	if err := tunio.Configure(d.tun.Name, d.addrs()); err != nil {
		d.closeTUN()
		return err
	}
	return nil
}

// closeTUN closes every queue of the TUN (the device goes with the last).
func (d *datapath) closeTUN() {
	for _, t := range d.tuns {
		t.Close()
	}
}

// minMTU6 is IPv6's least link MTU (RFC 8200).
const minMTU6 = 1280

// dualStack reports whether the network is dual-stack and this host's
// lease has its IPv6 subnet.
func (d *datapath) dualStack() bool { return d.cfg.EnableIPv6 && d.own.IPv6Subnet.IsValid() }

func (d *datapath) addrs() tunio.Addrs {
	a := tunio.Addrs{Addr: d.own.Subnet.Addr(), Network: d.cfg.Network}
	if d.dualStack() {
		a.Addr6, a.Network6 = d.own.IPv6Subnet.Addr(), d.cfg.IPv6Network
	}
	return a
}

// networks is what the engine's tables cover: the IPv4 network and, on a
// dual-stack network, the IPv6 one.
func (d *datapath) networks() engine.Networks {
	n := engine.Networks{Network: d.cfg.Network, SubnetLen: d.cfg.SubnetLen, Own: d.own.Subnet}
	if d.dualStack() {
		n.Network6, n.SubnetLen6, n.Own6 = d.cfg.IPv6Network, d.cfg.IPv6SubnetLen, d.own.IPv6Subnet
	}
	return n
}

// newEngine builds the engine with a first table holding only this host's
// subnets (peers come with the first snapshot). enc nil is flannel's UDP
// format. ICMP errors come from the TUN's own addresses.
func (d *datapath) newEngine(trs []engine.Transport, enc engine.Encap, checkPort bool) error {
	o := d.opts
	cfg := engine.Config{
		BatchSize:        o.BatchSize,
		MTU:              d.mtu,
		AntiSpoof:        o.AntiSpoof,
		CheckSourcePort:  checkPort,
		BusyPoll:         o.BusyPoll,
		RealtimePriority: o.RealtimePriority,
		CopySegments:     o.CopySegments,
		CopyTrains:       o.CopyTrains,
		ICMPSource:       d.own.Subnet.Addr(),
		Encap:            enc,
		Logger:           o.Log,
	}
	if d.dualStack() {
		cfg.ICMPSource6 = d.own.IPv6Subnet.Addr()
	}
	qs := make([]engine.Queue, len(trs))
	for i, tr := range trs {
		qs[i] = engine.Queue{Device: d.tuns[i], Transport: tr}
	}
	eng, err := engine.NewQueues(qs, cfg)
	if err != nil {
		return err
	}
	t, err := engine.NewTableFor(d.networks(), nil, nil)
	if err != nil {
		return err
	}
	eng.SetTable(t)
	d.eng = eng
	return nil
}

// setTable swaps in a table of specs. Admission has checked every peer, so
// a table that cannot be built is a bug; it is logged and the last good
// table stays.
func (d *datapath) setTable(specs []engine.PeerSpec) {
	t, err := engine.NewTableFor(d.networks(), specs, d.eng.Table())
	if err != nil {
		d.opts.Log.Error("peers rejected by the engine's table; keeping the previous table", "err", err)
		return
	}
	d.eng.SetTable(t)
}

// updateTable swaps in the table with a change made (engine.Table.Update):
// the chunks of slots it touches are copied, the rest shared. A change
// that cannot be made is logged and the last good table stays.
func (d *datapath) updateTable(put []engine.PeerSpec, removed []netip.Prefix) {
	t, err := d.eng.Table().Update(put, removed)
	if err != nil {
		d.opts.Log.Error("peers rejected by the engine's table; keeping the previous table", "err", err)
		return
	}
	d.eng.SetTable(t)
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

func endpoint(l lease.Lease, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(l.Attrs.PublicIP, port)
}
