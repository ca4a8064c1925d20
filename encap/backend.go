package encap

import (
	"context"
	"net/netip"

	"github.com/weft-net/weft/lease"
)

// Host is what a backend needs to know of the machine it runs on.
type Host struct {
	Iface      string     // the interface that carries inter-host traffic (--iface)
	IfaceIndex int        // its link index
	IfaceAddr  netip.Addr // its IPv4 address
	PublicIP   netip.Addr // the address peers reach this host at (--public-ip)
	IfaceMTU   int        // its MTU
}

// Backend carries traffic between this host's subnet and its peers'. The
// daemon drives every backend through the same steps:
//
//	attrs, _ := b.Attrs()          // before the lease: what peers need to reach us
//	own := acquire(attrs)
//	mtu, _ := b.Start(ctx, own)    // data path up for own subnet
//	b.SetPeers(snapshot)           // on every lease snapshot, from one goroutine
//	b.Run(ctx)                     // until ctx ends
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
	// SetPeers applies a snapshot of every lease of the cluster (this
	// host's included). Calls come from one goroutine.
	SetPeers(leases []lease.Lease)
	// Run forwards or reconciles until ctx ends.
	Run(ctx context.Context) error
}

// Status is what a backend reports for `weft status` and the debug socket.
type Status interface {
	Status() any
}
