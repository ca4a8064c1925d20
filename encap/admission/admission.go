// Package admission is the one rule every backend applies to a peer's
// lease before it touches the engine's table or the kernel. A lease is
// untrusted input: any host that can write to the store can write one, so
// a lease is admitted only when it is exactly one subnet of the cluster
// network, is not this host's, overlaps no admitted lease, names a usable
// unicast public IP (lease.CheckPublicIP) that no other admitted lease names, and carries the
// backend type and data this host's backend speaks. Everything else is
// refused under one of the reason names below, which logs, `weft status`
// and metrics share.
package admission

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/lease"
)

// Refusal reasons. The names are stable: metrics and scripts use them.
const (
	OutsideNetwork = "outside-network"    // not inside the cluster network
	SubnetLength   = "subnet-length"      // not exactly the network's SubnetLen
	OwnSubnet      = "own-subnet"         // overlaps this host's subnet under another key
	Overlap        = "overlap"            // the same subnet as an older admitted lease
	PublicIP       = "public-ip"          // not a usable unicast IPv4 address
	PublicIPTaken  = "public-ip-taken"    // an older lease (or this host) has that public IP
	BackendType    = "backend-type"       // another backend than this host's
	BackendData    = "backend-data"       // the backend's data is unreadable or does not match
	IPv6           = "ipv6-not-supported" // an IPv6 subnet (dual-stack is not supported yet)
	// Unreadable is the store's refusal, before admission: a key or value
	// it cannot read (a non-canonical key, bad JSON, an unusable PublicIP).
	Unreadable = "unreadable"
)

// Reasons lists every reason, for metrics that report zero counts too.
var Reasons = []string{OutsideNetwork, SubnetLength, OwnSubnet, Overlap, PublicIP, PublicIPTaken, BackendType, BackendData, IPv6, Unreadable}

// Refused is a refusal: the reason's name and a sentence for the log.
type Refused struct {
	Reason string
	Detail string
}

func (r *Refused) Error() string { return r.Reason + ": " + r.Detail }

// Refuse builds a Refused error, for a backend's Accept.
func Refuse(reason, format string, args ...any) error {
	return &Refused{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Rule is what admission checks against.
type Rule struct {
	Network   netip.Prefix
	SubnetLen int
	Own       lease.Lease // this host's lease: its subnet and public IP are taken
	// Accept checks the backend type and data of a peer's lease for the
	// backend this host runs; nil accepts any. An error that is not a
	// *Refused counts as BackendData.
	Accept func(lease.Attrs) error
}

// Decision is one lease of a snapshot and what admission made of it.
type Decision struct {
	Lease   lease.Lease
	Refused *Refused // nil: admitted
}

// Admit decides every lease of snap except this host's own. It is pure:
// the same snapshot gives the same decisions, whatever its order. When two
// leases collide (same subnet, same public IP), the older one wins: the
// lower creation revision, then the lower subnet.
func Admit(r Rule, snap []lease.Lease) []Decision {
	// Decide in age order (input position breaks ties, as a stable sort
	// would), then answer in subnet order; a snapshot already sorted by
	// subnet, as the stores give them, is not sorted again. A stable sort
	// of the leases themselves cost 3 ms per snapshot at 5,000 leases.
	order := make([]int, len(snap))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		la, lb := &snap[a], &snap[b]
		if c := cmp.Compare(created(*la), created(*lb)); c != 0 {
			return c
		}
		if c := la.Subnet.Addr().Compare(lb.Subnet.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	decided := make([]*Refused, len(snap))
	own := make([]bool, len(snap))
	subnets := make(map[netip.Prefix]bool, len(snap))
	ips := make(map[netip.Addr]bool, len(snap))
	if r.Own.Attrs.PublicIP.IsValid() {
		ips[r.Own.Attrs.PublicIP] = true
	}
	for _, i := range order {
		l := &snap[i]
		if l.Subnet == r.Own.Subnet {
			own[i] = true // this host's own lease
			continue
		}
		ref := check(r, *l)
		if ref == nil && subnets[l.Subnet] {
			ref = &Refused{Overlap, fmt.Sprintf("%s is already held by an older lease", l.Subnet)}
		}
		if ref == nil && ips[l.Attrs.PublicIP] {
			ref = &Refused{PublicIPTaken, fmt.Sprintf("public IP %s is already held by this host or an older lease", l.Attrs.PublicIP)}
		}
		if ref == nil {
			subnets[l.Subnet] = true
			ips[l.Attrs.PublicIP] = true
		}
		decided[i] = ref
	}
	out := make([]Decision, 0, len(snap))
	for i, l := range snap {
		if !own[i] {
			out = append(out, Decision{Lease: l, Refused: decided[i]})
		}
	}
	bySubnet := func(a, b Decision) int { return a.Lease.Subnet.Addr().Compare(b.Lease.Subnet.Addr()) }
	if !slices.IsSortedFunc(out, bySubnet) {
		slices.SortStableFunc(out, bySubnet)
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
	s := l.Subnet
	switch {
	case !s.IsValid():
		return &Refused{OutsideNetwork, "no subnet"}
	case s.Addr().Is6():
		return &Refused{IPv6, fmt.Sprintf("%s is an IPv6 subnet", s)}
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
	if r.Accept != nil {
		if err := r.Accept(l.Attrs); err != nil {
			if ref, ok := err.(*Refused); ok {
				return ref
			}
			return &Refused{BackendData, err.Error()}
		}
	}
	return nil
}

// BackendName is a lease's backend type as people say it: flanneld's udp
// backend writes an empty BackendType.
func BackendName(a lease.Attrs) string {
	if a.BackendType == "" {
		return "udp"
	}
	return a.BackendType
}

// AcceptType returns an Accept for backends whose leases carry a type and
// no data to check (udp, host-gw).
func AcceptType(typ string) func(lease.Attrs) error {
	return func(a lease.Attrs) error {
		if BackendName(a) != typ {
			return Refuse(BackendType, "its backend is %s, not %s", BackendName(a), typ)
		}
		return nil
	}
}
