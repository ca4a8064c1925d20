// Package admission is the one rule every backend applies to a peer's
// lease before it touches the engine's table or the kernel. A lease is
// untrusted input: any host that can write to the store can write one, so
// a lease is admitted only when it is exactly one subnet of the cluster
// network, is not this host's, overlaps no admitted lease, names a usable
// unicast public IP (lease.CheckPublicIP) that no other admitted lease
// names, and carries the backend type and data this host's backend
// speaks, claiming nothing (Rule.Claims: a vxlan VtepMAC) that this host
// or an older admitted lease claims. On a dual-stack network the same holds for a lease's IPv6
// subnet, PublicIPv6 and BackendV6Data, when it has them (a host without
// IPv6 is still a peer over IPv4, as with flanneld); a lease's IPv6 part
// on a network without IPv6 is dropped, as flanneld ignores it. On an
// IPv6-only network the IPv6 part is required and checked the same way,
// and a lease's IPv4 part is dropped, as flanneld ignores it there.
// Everything else is refused, the whole lease, under one of the reason
// names below, which logs, `weft status` and metrics share. Leases are
// keyed and ordered by lease.Lease.ID.
package admission

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/weft-net/weft/lease"
)

// Refusal reasons. The names are stable: metrics and scripts use them.
const (
	OutsideNetwork = "outside-network" // not inside the cluster network
	SubnetLength   = "subnet-length"   // not exactly the network's SubnetLen
	OwnSubnet      = "own-subnet"      // overlaps this host's subnet under another key
	Overlap        = "overlap"         // the same subnet as an older admitted lease
	PublicIP       = "public-ip"       // not a usable unicast IPv4 address
	PublicIPTaken  = "public-ip-taken" // an older lease (or this host) has that public IP
	BackendType    = "backend-type"    // another backend than this host's
	BackendData    = "backend-data"    // the backend's data is unreadable or does not match
	// BackendDataTaken: the backend's data claims what this host or an
	// older lease holds (Rule.Claims: a vxlan VtepMAC).
	BackendDataTaken = "backend-data-taken"
	// IPv6 is no longer given: it was the reason for a lease without an
	// IPv4 subnet before weft ran IPv6-only networks. Such a lease is now
	// admitted on an IPv6-only network and refused as OutsideNetwork on
	// one with IPv4. The name stays in Reasons so that metric series
	// (weft_peer_refusals_total{reason="ipv6-not-supported"}, zero) and
	// scripts that name it keep working.
	IPv6 = "ipv6-not-supported"
	// Unreadable is the store's refusal, before admission: a key or value
	// it cannot read (a non-canonical key, bad JSON, an unusable PublicIP).
	Unreadable = "unreadable"
)

// Reasons lists every reason, for metrics that report zero counts too.
var Reasons = []string{OutsideNetwork, SubnetLength, OwnSubnet, Overlap, PublicIP, PublicIPTaken, BackendType, BackendData, BackendDataTaken, IPv6, Unreadable}

// Refused is a refusal: the reason's name and a sentence for the log.
type Refused struct {
	Reason string
	Detail string
}

func (r *Refused) Error() string { return r.Reason + ": " + r.Detail }

// Refuse builds a Refused error, for a backend's Accept. The detail is
// cut to MaxDetail bytes.
func Refuse(reason, format string, args ...any) error {
	return &Refused{Reason: reason, Detail: bound(fmt.Sprintf(format, args...))}
}

// MaxDetail bounds a backend's refusal detail. A backend quotes what it
// read from a lease (a VtepMAC; encoding/json quotes a number literal),
// and BackendData may be lease.MaxBackendData long: every host logs the
// refusal once and shows it in status, so a lease must not make each
// host log 64 KiB.
const MaxDetail = 256

// bound cuts s to MaxDetail bytes (never inside a UTF-8 sequence), saying
// how long it was.
func bound(s string) string {
	if len(s) <= MaxDetail {
		return s
	}
	cut := MaxDetail
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "... (" + strconv.Itoa(len(s)) + " bytes)"
}

// Rule is what admission checks against.
type Rule struct {
	// Network and SubnetLen are the network's IPv4 part; zero on an
	// IPv6-only network.
	Network   netip.Prefix
	SubnetLen int
	// IPv6Network and IPv6SubnetLen are the network's IPv6 part; zero
	// when it has none.
	IPv6Network   netip.Prefix
	IPv6SubnetLen int
	Own           lease.Lease // this host's lease: its subnets and public IPs are taken
	// Accept checks the backend type and data of a peer's lease for the
	// backend this host runs; nil accepts any. An error that is not a
	// *Refused counts as BackendData. On an IPv6-only network it sees
	// leases without BackendData (the IPv4 part is dropped first): it
	// checks the type, and AcceptIPv6 the data.
	Accept func(lease.Attrs) error
	// AcceptIPv6 checks, for a lease with an IPv6 subnet, the backend's
	// IPv6 data (BackendV6Data); nil accepts any.
	AcceptIPv6 func(lease.Attrs) error
	// Claims names what a lease's backend data holds that no other lease
	// may (vxlan: each VtepMAC, by which the kernel keys the FDB, so a
	// second lease with a peer's MAC would take the peer's traffic), for
	// leases Accept and AcceptIPv6 passed and for Own; nil: nothing.
	Claims func(lease.Attrs) []string
}

// FromConfig is the Rule for a network config, this host's lease and the
// backend's checks.
func FromConfig(cfg *lease.Config, own lease.Lease, accept, acceptIPv6 func(lease.Attrs) error) Rule {
	r := Rule{Own: own, Accept: accept, AcceptIPv6: acceptIPv6}
	if cfg.EnableIPv4 {
		r.Network, r.SubnetLen = cfg.Network, cfg.SubnetLen
	}
	if cfg.EnableIPv6 {
		r.IPv6Network, r.IPv6SubnetLen = cfg.IPv6Network, cfg.IPv6SubnetLen
	}
	return r
}

// Decision is one lease of a snapshot and what admission made of it.
type Decision struct {
	Lease   lease.Lease
	Refused *Refused // nil: admitted
}

// Admit decides every lease of snap except this host's own. It is pure:
// the same snapshot gives the same decisions, whatever its order. When two
// leases collide (same subnet, same public IP), the older one wins: the
// lower creation revision, then the lower ID. The decisions are in ID
// order, and their leases are as admission saw them: without the family
// the network does not have.
func Admit(r Rule, snap []lease.Lease) []Decision {
	// Decide in age order (input position breaks ties, as a stable sort
	// would), then answer in ID order; a snapshot already sorted by ID,
	// as the stores give them, is not sorted again. A stable sort of the
	// leases themselves cost 3 ms per snapshot at 5,000 leases.
	leases := snap
	switch {
	case !r.IPv6Network.IsValid():
		leases = withoutIPv6(snap)
	case !r.Network.IsValid():
		leases = withoutIPv4(snap)
	}
	order := make([]int, len(snap))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		la, lb := &leases[a], &leases[b]
		if c := cmp.Compare(created(*la), created(*lb)); c != 0 {
			return c
		}
		if c := lease.CompareID(*la, *lb); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	decided := make([]*Refused, len(snap))
	own := make([]bool, len(snap))
	subnets := make(map[netip.Prefix]bool, len(snap))
	ips := make(map[netip.Addr]bool, len(snap))
	for _, ip := range []netip.Addr{r.Own.Attrs.PublicIP, r.Own.Attrs.PublicIPv6} {
		if ip.IsValid() {
			ips[ip] = true
		}
	}
	held := map[string]bool{}
	for _, c := range r.claims(r.Own.Attrs) {
		held[c] = true
	}
	ownID := r.Own.ID()
	for _, i := range order {
		l := &leases[i]
		if l.ID() == ownID {
			own[i] = true // this host's own lease
			continue
		}
		ref := check(r, *l)
		if ref == nil {
			ref = collides(l, subnets, ips)
		}
		var claims []string
		if ref == nil {
			claims = r.claims(l.Attrs)
			for _, c := range claims {
				if held[c] {
					ref = claimTaken(c)
					break
				}
			}
		}
		if ref == nil {
			for _, c := range claims {
				held[c] = true
			}
			// An IPv6-only lease has no IPv4 subnet or public IP: the
			// zero values must not be taken, or the second such lease
			// would collide with the first.
			if l.Subnet.IsValid() {
				subnets[l.Subnet] = true
				ips[l.Attrs.PublicIP] = true
			}
			if l.IPv6Subnet.IsValid() {
				subnets[l.IPv6Subnet] = true
				ips[l.Attrs.PublicIPv6] = true
			}
		}
		decided[i] = ref
	}
	out := make([]Decision, 0, len(snap))
	for i, l := range leases {
		if !own[i] {
			out = append(out, Decision{Lease: l, Refused: decided[i]})
		}
	}
	byID := func(a, b Decision) int { return lease.CompareID(a.Lease, b.Lease) }
	if !slices.IsSortedFunc(out, byID) {
		slices.SortStableFunc(out, byID)
	}
	return out
}

// collides refuses l when an older admitted lease (or this host) holds
// one of its subnets or public IPs.
func collides(l *lease.Lease, subnets map[netip.Prefix]bool, ips map[netip.Addr]bool) *Refused {
	switch {
	case l.Subnet.IsValid() && subnets[l.Subnet]:
		return &Refused{Overlap, fmt.Sprintf("%s is already held by an older lease", l.Subnet)}
	case l.IPv6Subnet.IsValid() && subnets[l.IPv6Subnet]:
		return &Refused{Overlap, fmt.Sprintf("%s is already held by an older lease", l.IPv6Subnet)}
	case l.Subnet.IsValid() && ips[l.Attrs.PublicIP]:
		return &Refused{PublicIPTaken, fmt.Sprintf("public IP %s is already held by this host or an older lease", l.Attrs.PublicIP)}
	case l.IPv6Subnet.IsValid() && ips[l.Attrs.PublicIPv6]:
		return &Refused{PublicIPTaken, fmt.Sprintf("public IPv6 %s is already held by this host or an older lease", l.Attrs.PublicIPv6)}
	}
	return nil
}

// claims is r.Claims(a), nil without it.
func (r Rule) claims(a lease.Attrs) []string {
	if r.Claims == nil {
		return nil
	}
	return r.Claims(a)
}

func claimTaken(c string) *Refused {
	return &Refused{BackendDataTaken, bound(c + " is already held by this host or an older lease")}
}

// withoutIPv6 returns snap with every lease's IPv6 part dropped, copying
// only when some lease has one: on a network without IPv6, flanneld
// ignores it, and no backend should see it.
func withoutIPv6(snap []lease.Lease) []lease.Lease {
	out := snap
	for i, l := range snap {
		if !l.IPv6Subnet.IsValid() && !l.Attrs.PublicIPv6.IsValid() && l.Attrs.BackendV6Data == nil {
			continue
		}
		if &out[0] == &snap[0] {
			out = slices.Clone(snap)
		}
		out[i].IPv6Subnet = netip.Prefix{}
		out[i].Attrs.PublicIPv6 = netip.Addr{}
		out[i].Attrs.BackendV6Data = nil
	}
	return out
}

// withoutIPv4 is withoutIPv6 for an IPv6-only network: every lease's
// IPv4 part (subnet, PublicIP, BackendData) is dropped, as flanneld's
// backends ignore it there (no flannel.<VNI>, no IPv4 routes). A host
// still in a dual-stack config stays a peer over IPv6; one with no IPv6
// part is refused as having no subnet in the network.
func withoutIPv4(snap []lease.Lease) []lease.Lease {
	out := snap
	for i, l := range snap {
		if !l.Subnet.IsValid() && !l.Attrs.PublicIP.IsValid() && l.Attrs.BackendData == nil {
			continue
		}
		if &out[0] == &snap[0] {
			out = slices.Clone(snap)
		}
		out[i].Subnet = netip.Prefix{}
		out[i].Attrs.PublicIP = netip.Addr{}
		out[i].Attrs.BackendData = nil
	}
	return out
}

func created(l lease.Lease) int64 {
	if l.CreateRevision != 0 {
		return l.CreateRevision
	}
	return l.Revision
}

func check(r Rule, l lease.Lease) *Refused {
	if !r.Network.IsValid() {
		return checkIPv6Only(r, l)
	}
	s := l.Subnet
	switch {
	case !s.IsValid() && l.IPv6Subnet.IsValid():
		return &Refused{OutsideNetwork, fmt.Sprintf("%s has no IPv4 subnet, but the network %s has IPv4 (an IPv6-only host's lease?)", l.IPv6Subnet, r.Network)}
	case !s.IsValid():
		return &Refused{OutsideNetwork, "no subnet"}
	case !s.Addr().Is4():
		return &Refused{OutsideNetwork, fmt.Sprintf("%s is not an IPv4 subnet", s)}
	case s != s.Masked():
		return &Refused{OutsideNetwork, fmt.Sprintf("%s is not a network address", s)}
	case s.Bits() != r.SubnetLen:
		return &Refused{SubnetLength, fmt.Sprintf("%s is not a /%d", s, r.SubnetLen)}
	case !r.Network.Contains(s.Addr()) || s.Bits() < r.Network.Bits():
		return &Refused{OutsideNetwork, fmt.Sprintf("%s is outside the network %s", s, r.Network)}
	case r.Own.Subnet.IsValid() && s.Overlaps(r.Own.Subnet):
		return &Refused{OwnSubnet, fmt.Sprintf("%s overlaps this host's subnet %s", s, r.Own.Subnet)}
	}
	if err := lease.CheckPublicIP(l.Attrs.PublicIP); err != nil {
		return &Refused{PublicIP, err.Error()}
	}
	if ref := accept(r.Accept, l.Attrs); ref != nil {
		return ref
	}
	if l.IPv6Subnet.IsValid() {
		return checkIPv6(r, l)
	}
	return nil
}

// checkIPv6Only is check on an IPv6-only network, for a lease whose IPv4
// part withoutIPv4 dropped: the backend's type (Accept), then the IPv6
// part, required.
func checkIPv6Only(r Rule, l lease.Lease) *Refused {
	if !l.IPv6Subnet.IsValid() {
		return &Refused{OutsideNetwork, fmt.Sprintf("no IPv6 subnet, and the network is IPv6-only (%s)", r.IPv6Network)}
	}
	if ref := accept(r.Accept, l.Attrs); ref != nil {
		return ref
	}
	return checkIPv6(r, l)
}

// checkIPv6 is check for a lease's IPv6 part.
func checkIPv6(r Rule, l lease.Lease) *Refused {
	s := l.IPv6Subnet
	switch {
	case !s.Addr().Is6() || s.Addr().Is4In6():
		return &Refused{OutsideNetwork, fmt.Sprintf("%s is not an IPv6 subnet", s)}
	case s != s.Masked():
		return &Refused{OutsideNetwork, fmt.Sprintf("%s is not a network address", s)}
	case s.Bits() != r.IPv6SubnetLen:
		return &Refused{SubnetLength, fmt.Sprintf("%s is not a /%d", s, r.IPv6SubnetLen)}
	case !r.IPv6Network.Contains(s.Addr()) || s.Bits() < r.IPv6Network.Bits():
		return &Refused{OutsideNetwork, fmt.Sprintf("%s is outside the IPv6 network %s", s, r.IPv6Network)}
	case r.Own.IPv6Subnet.IsValid() && s.Overlaps(r.Own.IPv6Subnet):
		return &Refused{OwnSubnet, fmt.Sprintf("%s overlaps this host's IPv6 subnet %s", s, r.Own.IPv6Subnet)}
	}
	if err := lease.CheckPublicIPv6(l.Attrs.PublicIPv6); err != nil {
		return &Refused{PublicIP, fmt.Sprintf("IPv6 subnet %s: %v", s, err)}
	}
	return accept(r.AcceptIPv6, l.Attrs)
}

// accept runs a backend's check; an error that is not a *Refused counts
// as BackendData.
func accept(f func(lease.Attrs) error, a lease.Attrs) *Refused {
	if f == nil {
		return nil
	}
	if err := f(a); err != nil {
		if ref, ok := err.(*Refused); ok {
			if len(ref.Detail) > MaxDetail { // built without Refuse
				return &Refused{ref.Reason, bound(ref.Detail)}
			}
			return ref
		}
		return &Refused{BackendData, bound(err.Error())}
	}
	return nil
}

// AcceptType returns an Accept for backends whose leases carry a type and
// no data to check (udp, host-gw).
func AcceptType(typ string) func(lease.Attrs) error {
	return func(a lease.Attrs) error {
		if a.BackendName() != typ {
			return Refuse(BackendType, "its backend is %s, not %s", a.BackendName(), typ)
		}
		return nil
	}
}
