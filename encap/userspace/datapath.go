package userspace

import (
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
	TxQueueLen      int           // the TUN's transmit queue (0: the kernel's)
	NoGSO, NoGRO    bool          // switch UDP GSO / GRO off
	BusyPoll        time.Duration // how long each loop polls before it sleeps
	AntiSpoof       bool          // drop datagrams from non-peers and spoofed inner sources
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
	tun  *tunio.Device
	eng  *engine.Engine
}

// openTUN creates the TUN device with the options' offload choices and
// gives it the lease's network address and the cluster route: flannel0
// carries the lease's network address as a /32 (10.5.42.0/32) and a route
// for the whole cluster network, as flanneld's does.
func (d *datapath) openTUN(name string) error {
	o := d.opts
	dev, err := tunio.Create(tunio.Options{Name: name, MTU: d.mtu, NoOffload: o.NoTUNOffload, TunPackageWrite: o.TunPackageWrite, TxQueueLen: o.TxQueueLen})
	if err != nil {
		return err
	}
	go drainEvents(dev, d.mtu, o.Log)
	if err := tunio.Configure(dev.Name, d.own.Subnet.Addr(), d.cfg.Network); err != nil {
		dev.Close()
		return err
	}
	d.tun = dev
	return nil
}

// newEngine builds the engine with a first table holding only this host's
// subnet (peers come with the first snapshot). enc nil is flannel's UDP
// format.
func (d *datapath) newEngine(tr engine.Transport, enc engine.Encap, checkPort bool) error {
	o := d.opts
	eng, err := engine.New(d.tun, tr, engine.Config{
		BatchSize:       o.BatchSize,
		MTU:             d.mtu,
		AntiSpoof:       o.AntiSpoof,
		CheckSourcePort: checkPort,
		BusyPoll:        o.BusyPoll,
		ICMPSource:      d.own.Subnet.Addr(),
		Encap:           enc,
		Logger:          o.Log,
	})
	if err != nil {
		return err
	}
	t, err := engine.NewTable(d.cfg.Network, d.cfg.SubnetLen, d.own.Subnet, nil, nil)
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
	t, err := engine.NewTable(d.cfg.Network, d.cfg.SubnetLen, d.own.Subnet, specs, d.eng.Table())
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
