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
	"maps"
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

	mu     sync.Mutex
	own    lease.Lease
	leases map[netip.Prefix]lease.Lease // the admitted peers, by ID
	ready  bool
	// routed is what each peer wants, as the last pass or update decided
	// it: an update removes a changed peer's old routes.
	routed  map[netip.Prefix]routed
	refused map[netip.Prefix]string // logged once per reason
}

// routed is one peer's routes and what status shows of it.
type routed struct {
	peer   Peer
	routes []kernel.Route
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
	_ encap.Backend     = (*Backend)(nil)
	_ encap.Status      = (*Backend)(nil)
	_ encap.PeerUpdater = (*Backend)(nil)
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
	b := &Backend{host: o.Host, nl: o.NL, log: o.Log, refused: map[netip.Prefix]string{}, routed: map[netip.Prefix]routed{}}
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
	m := make(map[netip.Prefix]lease.Lease, len(leases))
	for _, l := range leases {
		m[l.ID()] = l
	}
	b.mu.Lock()
	b.leases, b.ready = m, true
	b.mu.Unlock()
	b.rec.Trigger()
}

// UpdatePeers applies a change of the admitted peers (encap.PeerUpdater):
// the routes of the peers removed or changed go, those of the peers put
// come, and the loop programs just that.
func (b *Backend) UpdatePeers(put []lease.Lease, removed []netip.Prefix) {
	// Only a put needs the underlay's subnets (to refuse an off-segment
	// peer); a removal is not worth a netlink dump.
	var connected []netip.Prefix
	var err error
	if len(put) > 0 {
		connected, err = b.nl.Connected(b.host.IfaceIndex)
	}
	b.mu.Lock()
	if !b.ready || err != nil {
		b.mu.Unlock()
		if err != nil {
			b.log.Warn("cannot read the underlay's subnets; programming the whole state", "err", err)
		}
		b.applyAll(put, removed)
		return
	}
	var gone, added kernel.State
	drop := func(id netip.Prefix) {
		if r, ok := b.routed[id]; ok {
			gone.Routes = append(gone.Routes, r.routes...)
			delete(b.routed, id)
		}
		for _, sn := range []netip.Prefix{id, b.leases[id].IPv6Subnet} {
			delete(b.refused, sn)
		}
		delete(b.leases, id)
	}
	for _, id := range removed {
		drop(id)
	}
	for _, l := range put {
		drop(l.ID())
		b.leases[l.ID()] = l
		r := b.route(l, connected, b.refused, b.refused)
		b.routed[l.ID()] = r
		added.Routes = append(added.Routes, r.routes...)
	}
	b.mu.Unlock()
	b.rec.Change(gone, added)
}

// applyAll applies a change to the peers and programs the whole state.
func (b *Backend) applyAll(put []lease.Lease, removed []netip.Prefix) {
	b.mu.Lock()
	if b.leases == nil {
		b.leases = map[netip.Prefix]lease.Lease{}
	}
	for _, id := range removed {
		delete(b.leases, id)
	}
	for _, l := range put {
		b.leases[l.ID()] = l
	}
	b.ready = true
	b.mu.Unlock()
	b.rec.Trigger()
}

// route is what host-gw wants for one peer: a route per family it can
// reach, each on its own, so a peer whose IPv6 address is behind a router
// is still routed over IPv4. A refusal goes into refused, logged when
// was did not hold it.
func (b *Backend) route(l lease.Lease, connected []netip.Prefix, refused, was map[netip.Prefix]string) routed {
	var r routed
	add := func(subnet netip.Prefix, gw netip.Addr, why string) bool {
		if why != "" {
			if was[subnet] != why {
				b.log.Warn("refusing peer", "subnet", subnet, "public-ip", gw, "why", why)
			}
			refused[subnet] = why
			return false
		}
		r.routes = append(r.routes, kernel.Route{Dst: subnet, Gw: gw, LinkIndex: b.host.IfaceIndex})
		return true
	}
	// Admission passes an IPv4 subnet only on a network with IPv4.
	if l.Subnet.IsValid() && add(l.Subnet, l.Attrs.PublicIP, Refuse(l, connected)) {
		r.peer.Subnet, r.peer.PublicIP = l.Subnet, l.Attrs.PublicIP
	}
	// As flanneld: "fd00:10:5:27::/64 via 2001:db8::2 dev fk-v1".
	// Admission passes an IPv6 subnet only on a network with IPv6.
	if l.IPv6Subnet.IsValid() && add(l.IPv6Subnet, l.Attrs.PublicIPv6, RefuseIPv6(l, connected)) {
		r.peer.IPv6Subnet, r.peer.PublicIPv6 = l.IPv6Subnet, l.Attrs.PublicIPv6
	}
	return r
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
	routedNow := make(map[netip.Prefix]routed, len(b.leases))
	refused := map[netip.Prefix]string{}
	for _, id := range slices.SortedFunc(maps.Keys(b.leases), comparePrefix) {
		r := b.route(b.leases[id], connected, refused, b.refused)
		routedNow[id] = r
		s.Routes = append(s.Routes, r.routes...)
	}
	b.routed, b.refused = routedNow, refused
	return s, true, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
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
	s := Status{Iface: b.host.Iface, MTU: b.host.IfaceMTU, Peers: make([]Peer, 0, len(b.routed)), Reconcile: b.rec.Stats()}
	for _, id := range slices.SortedFunc(maps.Keys(b.routed), comparePrefix) {
		if p := b.routed[id].peer; p != (Peer{}) {
			s.Peers = append(s.Peers, p)
		}
	}
	for sn, why := range b.refused {
		if s.Refused == nil {
			s.Refused = map[string]string{}
		}
		s.Refused[sn.String()] = why
	}
	return s
}
