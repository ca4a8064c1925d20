package encap

import (
	"context"
	"net/netip"

	"github.com/weft-net/weft/encap/udp"
	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/tunio"
)

// Host is what a backend needs to know of the machine it runs on.
type Host struct {
	Iface      string     // the interface that carries inter-host traffic (--iface)
	IfaceIndex int        // its link index
	IfaceAddr  netip.Addr // its IPv4 address
	PublicIP   netip.Addr // the address peers reach this host at (--public-ip)
	IfaceMTU   int        // its MTU
	// IfaceAddr6 and PublicIPv6 are the interface's IPv6 address and the
	// one peers reach this host at over IPv6 (--public-ipv6); zero unless
	// the network has IPv6. On an IPv6-only network IfaceAddr and
	// PublicIP are zero: that is how a backend knows it has no IPv4.
	IfaceAddr6 netip.Addr
	PublicIPv6 netip.Addr
}

// Backend carries traffic between this host's subnet and its peers'. The
// daemon drives every backend through the same steps:
//
//	attrs, _ := b.Attrs()          // before the lease: what peers need to reach us
//	own := acquire(attrs)
//	mtu, _ := b.Start(ctx, own)    // data path up for own subnet
//	b.SetPeers(admitted)           // at start and on every full set, from one goroutine
//	b.UpdatePeers(put, removed)    // on every other change, if b is a PeerUpdater
//	b.Run(ctx)                     // until ctx ends
//
// SetPeers never sees a lease that package admission refused: the daemon
// applies one rule (admission.Rule, with the backend's Accept) to every
// change, so no backend checks subnets, lengths or public IPs itself.
//
// On return from Run the backend stops without undoing kernel state that
// lets traffic keep flowing through a restart (flanneld leaves its vxlan
// device and routes in place on SIGTERM); Cleanup removes it all.
type Backend interface {
	// Type is the backend's name in the network config and in leases:
	// "udp", "vxlan" or "host-gw".
	Type() string
	// Attrs returns this host's lease attributes: PublicIP, and the
	// backend's BackendType and BackendData in flanneld's format.
	Attrs() (lease.Attrs, error)
	// Start brings the data path up for this host's lease and returns the
	// MTU pods should use (FLANNEL_MTU).
	Start(ctx context.Context, own lease.Lease) (mtu int, err error)
	// Accept is the backend's part of admission: it returns nil when a
	// peer with these attributes (BackendType, BackendData) can be reached
	// by this backend, else an *admission.Refused naming why.
	Accept(a lease.Attrs) error
	// SetPeers applies the admitted peers of a snapshot (this host's lease
	// left out), sorted by ID (lease.CompareID). Calls come from one
	// goroutine.
	SetPeers(peers []lease.Lease)
	// Run forwards or reconciles until ctx ends.
	Run(ctx context.Context) error
}

// PeerUpdater is the optional interface of a backend that applies a
// change of the admitted peers rather than the whole set: the daemon
// calls SetPeers first (at start, and with every full change: a store
// that listed anew, a new backend after auto's move), then UpdatePeers
// with each change, so a lease event costs the backend the size of the
// change, not of the cluster.
type PeerUpdater interface {
	// UpdatePeers applies a change: removed are the IDs (lease.Lease.ID)
	// of peers no longer admitted, put the peers new or changed, which
	// replace any peer of the same ID; removed first, then put. After
	// it the backend's peers are those SetPeers would have been given.
	// Calls come from the goroutine that calls SetPeers.
	UpdatePeers(put []lease.Lease, removed []netip.Prefix)
}

// Status is the optional interface of a backend with details of its own
// for `weft status --json` and the debug socket's /status.
type Status interface {
	Status() any
}

// Datapath is the optional interface of a backend whose packets pass
// through weft's engine (udp, vxlan from userspace): status, metrics and
// captures reach the engine, its TUN and its socket through it. A backend
// returns nil before Start.
type Datapath interface {
	Datapath() *DatapathInfo
}

// DatapathInfo is what Datapath returns.
type DatapathInfo struct {
	Engine *engine.Engine
	TUN    *tunio.Device
	// Socket reads the underlay socket's counters (both directions).
	Socket func() udp.Stats
}

// IPv6Acceptor is the optional interface of a backend whose leases carry
// IPv6 data (vxlan: BackendV6Data). AcceptIPv6 is Accept for the IPv6
// part of a peer's lease; admission calls it only for leases with an
// IPv6 subnet on a dual-stack network.
type IPv6Acceptor interface {
	AcceptIPv6(a lease.Attrs) error
}

// Claimer is the optional interface of a backend whose lease data names
// something only one host may hold (vxlan: each VtepMAC, by which the
// kernel keys flannel.<VNI>'s FDB). Claims is admission.Rule.Claims: of
// two leases claiming one thing, the older is admitted.
type Claimer interface {
	Claims(a lease.Attrs) []string
}
