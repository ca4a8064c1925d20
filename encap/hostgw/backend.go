// Package hostgw is weft's host-gw backend, flanneld's host-gw over
// netlink: per peer lease, a route for the peer's subnet via the peer's
// public IP on the underlay interface, and on a dual-stack network one for
// the peer's IPv6 subnet via its public IPv6 (on an IPv6-only network that
// one alone); no encapsulation at all. It
// works only between hosts on one L2 segment, so a peer behind a router
// is refused by name (per family) rather than black-holed. A reconcile
// loop keeps the routes in place.
package hostgw

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/lease"
)

// Options configure New.
type Options struct {
	Host     encap.Host
	NL       *kernel.Netlink
	Log      *slog.Logger
	Interval time.Duration // reconcile period; default kernel.DefaultInterval
}

// Backend is the host-gw backend.
type Backend struct {
	host encap.Host
	nl   *kernel.Netlink
	log  *slog.Logger
	rec  *kernel.Reconciler

	mu      sync.Mutex
	own     lease.Lease
	leases  []lease.Lease // the last snapshot; nil until the first
	ready   bool
	peers   []Peer
	refused map[netip.Prefix]string // logged once per reason
}

// Peer is a peer the backend routes to: its IPv4 subnet, its IPv6 one, or
// both.
type Peer struct {
	Subnet     netip.Prefix `json:"subnet,omitzero"`
	PublicIP   netip.Addr   `json:"public_ip,omitzero"`
	IPv6Subnet netip.Prefix `json:"ipv6_subnet,omitzero"`
	PublicIPv6 netip.Addr   `json:"public_ipv6,omitzero"`
}

var (
	_ encap.Backend = (*Backend)(nil)
	_ encap.Status  = (*Backend)(nil)
)

// New builds the backend.
func New(o Options) (*Backend, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	// A Host without IPv4 and with a public IPv6 is an IPv6-only
	// network's: IPv6 routes only.
	ipv6Only := !o.Host.IfaceAddr.IsValid() && o.Host.PublicIPv6.IsValid()
	if !ipv6Only && !o.Host.IfaceAddr.Is4() {
		return nil, fmt.Errorf("host-gw: interface %s has no IPv4 address", o.Host.Iface)
	}
	if err := CheckPublicIP(o.Host); err != nil {
		return nil, err
	}
	b := &Backend{host: o.Host, nl: o.NL, log: o.Log, refused: map[netip.Prefix]string{}}
	b.rec = &kernel.Reconciler{NL: o.NL, Log: o.Log.With("backend", "host-gw"), Interval: o.Interval, Desired: b.desired}
	return b, nil
}

// CheckPublicIP refuses a public IP other than the interface's own
// address. Peers route this host's subnet via its public IP, so one that
// differs means a NAT between (or an address of another interface), where
// host-gw routes go nowhere. flanneld v0.28.9 refuses it the same way
// (pkg/backend/hostgw/hostgw.go, New: ExtAddr != IfaceAddr). auto asks it
// too, so as not to pick host-gw on such a host.
//
// The same holds for the public IPv6 on a dual-stack network (flanneld
// does not check it; its peers' IPv6 routes would go nowhere).
func CheckPublicIP(h encap.Host) error {
	if h.PublicIP.IsValid() && h.PublicIP != h.IfaceAddr {
		return fmt.Errorf("host-gw: the public IP %s (--public-ip) differs from %s's address %s: this host is probably behind NAT, "+
			"which host-gw cannot route (flanneld refuses it too); use vxlan or udp, or a --public-ip/--iface that is the interface's own address",
			h.PublicIP, h.Iface, h.IfaceAddr)
	}
	if h.PublicIPv6.IsValid() && h.IfaceAddr6.IsValid() && h.PublicIPv6 != h.IfaceAddr6 {
		return fmt.Errorf("host-gw: the public IPv6 %s (--public-ipv6) differs from %s's address %s: peers' IPv6 routes to this host would go nowhere; "+
			"use vxlan, or a --public-ipv6 that is the interface's own address", h.PublicIPv6, h.Iface, h.IfaceAddr6)
	}
	return nil
}

func (b *Backend) Type() string { return "host-gw" }

// Attrs: flanneld's host-gw lease has BackendType "host-gw" and no
// BackendData; on a network with IPv6 it has PublicIPv6 and no
// BackendV6Data, and on an IPv6-only one no PublicIP (flanneld writes
// "0.0.0.0").
func (b *Backend) Attrs() (lease.Attrs, error) {
	return lease.Attrs{PublicIP: b.host.PublicIP, PublicIPv6: b.host.PublicIPv6, BackendType: "host-gw"}, nil
}

// Start has nothing to set up: pods use the underlay's MTU, as flanneld's
// host-gw writes FLANNEL_MTU=1500 on a 1500 underlay.
func (b *Backend) Start(_ context.Context, own lease.Lease) (int, error) {
	b.mu.Lock()
	b.own = own
	b.mu.Unlock()
	b.log.Info("host-gw backend up", "iface", b.host.Iface, "mtu", b.host.IfaceMTU)
	return b.host.IfaceMTU, nil
}

// Accept admits host-gw leases (see admission).
func (b *Backend) Accept(a lease.Attrs) error { return admission.AcceptType("host-gw")(a) }

// SetPeers records the admitted peers and asks the loop to program them.
func (b *Backend) SetPeers(leases []lease.Lease) {
	b.mu.Lock()
	b.leases, b.ready = slices.Clone(leases), true
	b.mu.Unlock()
	b.rec.Trigger()
}

// Reachability is decided on every pass, from the underlay's connected
// subnets at that time, so an address added or removed later takes effect.
func (b *Backend) desired() (kernel.State, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.ready {
		return kernel.State{}, false, nil
	}
	connected, err := b.nl.Connected(b.host.IfaceIndex)
	if err != nil {
		return kernel.State{}, false, fmt.Errorf("reading %s's subnets: %w", b.host.Iface, err)
	}
	s := kernel.State{Routes: make([]kernel.Route, 0, len(b.leases))}
	peers := make([]Peer, 0, len(b.leases))
	refused := map[netip.Prefix]string{}
	// route adds the route to subnet via gw, or refuses it: each family
	// on its own, so a peer whose IPv6 address is behind a router is
	// still routed over IPv4.
	route := func(subnet netip.Prefix, gw netip.Addr, why string) bool {
		if why != "" {
			refused[subnet] = why
			if b.refused[subnet] != why {
				b.log.Warn("refusing peer", "subnet", subnet, "public-ip", gw, "why", why)
			}
			return false
		}
		s.Routes = append(s.Routes, kernel.Route{Dst: subnet, Gw: gw, LinkIndex: b.host.IfaceIndex})
		return true
	}
	for _, l := range b.leases {
		var p Peer
		// Admission passes an IPv4 subnet only on a network with IPv4.
		if l.Subnet.IsValid() && route(l.Subnet, l.Attrs.PublicIP, Refuse(l, connected)) {
			p.Subnet, p.PublicIP = l.Subnet, l.Attrs.PublicIP
		}
		// As flanneld: "fd00:10:5:27::/64 via 2001:db8::2 dev fk-v1".
		// Admission passes an IPv6 subnet only on a network with IPv6.
		if l.IPv6Subnet.IsValid() && route(l.IPv6Subnet, l.Attrs.PublicIPv6, RefuseIPv6(l, connected)) {
			p.IPv6Subnet, p.PublicIPv6 = l.IPv6Subnet, l.Attrs.PublicIPv6
		}
		if p != (Peer{}) {
			peers = append(peers, p)
		}
	}
	b.peers, b.refused = peers, refused
	return s, true, nil
}

// Refuse says why host-gw cannot route to the peer of l, or "". A route via
// a gateway the kernel cannot reach by ARP on the interface would be
// refused by the kernel (ENETUNREACH), or, made onlink, black-hole the
// subnet; so such a peer is left out and named.
func Refuse(l lease.Lease, connected []netip.Prefix) string {
	if !kernel.OnSegment(connected, l.Attrs.PublicIP) {
		return fmt.Sprintf("its public IP %s is not on this host's segment %v: host-gw cannot route across a router (use vxlan or auto)",
			l.Attrs.PublicIP, sameFamily(connected, l.Attrs.PublicIP))
	}
	return ""
}

// RefuseIPv6 is Refuse for the IPv6 part of l: its route via its public
// IPv6, which neighbour discovery on the interface must reach.
func RefuseIPv6(l lease.Lease, connected []netip.Prefix) string {
	if !kernel.OnSegment(connected, l.Attrs.PublicIPv6) {
		return fmt.Sprintf("its public IPv6 %s is not on this host's segment %v: host-gw cannot route across a router (use vxlan or auto)",
			l.Attrs.PublicIPv6, sameFamily(connected, l.Attrs.PublicIPv6))
	}
	return ""
}

// sameFamily is the prefixes of ip's family, for messages.
func sameFamily(connected []netip.Prefix, ip netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range connected {
		if p.Addr().Is4() == ip.Is4() {
			out = append(out, p)
		}
	}
	return out
}

// Reconcile runs one pass now (tests; the loop runs them on its own).
func (b *Backend) Reconcile() error { return b.rec.Pass() }

// Run reconciles until ctx ends and leaves the routes in place.
func (b *Backend) Run(ctx context.Context) error { return b.rec.Run(ctx) }

// Status is the host-gw backend's part of `weft stats`.
type Status struct {
	Iface     string            `json:"iface"`
	MTU       int               `json:"mtu"`
	Peers     []Peer            `json:"peers"`
	Refused   map[string]string `json:"refused,omitempty"`
	Reconcile kernel.Stats      `json:"reconcile"`
}

func (b *Backend) Status() any {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Status{Iface: b.host.Iface, MTU: b.host.IfaceMTU, Peers: slices.Clone(b.peers), Reconcile: b.rec.Stats()}
	for sn, why := range b.refused {
		if s.Refused == nil {
			s.Refused = map[string]string{}
		}
		s.Refused[sn.String()] = why
	}
	return s
}
