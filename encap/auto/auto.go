// Package auto is Backend.Type "auto"'s rule: which backend every host of
// an auto cluster runs. It is a pure function of facts every host sees
// alike (the public IPs of the cluster's leases) and of this host's
// connected prefixes, so it is tested without a kernel; the daemon gathers
// the facts and moves the backend live when the outcome changes.
//
// Why the rule converges: Backend.Type is in the cluster's one network
// config, and flanneld cannot run "auto", so in an auto cluster every host
// is a weft auto host. Every weft host speaks vxlan (in the kernel, or
// from userspace where the kernel has none: one wire format), so vxlan
// always works and udp is never needed. host-gw works only when every host
// reaches every other on one L2 segment. The rule is "host-gw iff every
// lease's public IP, this host's included, is on this host's connected
// segment, else vxlan": hosts on one segment have the same connected
// prefixes, so given the same leases they all decide alike; a host off
// that segment decides vxlan, and so do all the others, since its public
// IP is not on theirs. Whatever the start order, once the hosts see the
// same leases they run the same backend.
//
// On a dual-stack network host-gw routes IPv6 to each peer's PublicIPv6,
// so the rule asks the same of the IPv6 addresses: this host's, and every
// peer's that has an IPv6 subnet, on this host's connected IPv6 prefixes.
// On an IPv6-only network it asks only that.
package auto

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/lease"
)

// Facts are what the choice rests on.
type Facts struct {
	// Self is this host's public IP (the zero Addr on an IPv6-only
	// network); Self6 its public IPv6 on a network with IPv6 (else the
	// zero Addr).
	Self  netip.Addr
	Self6 netip.Addr
	// Peers are the other hosts' leases (admitted, whatever their
	// backend: a lease admission refuses is no host to reach).
	Peers []lease.Lease
	// Connected are the underlay interface's connected prefixes.
	Connected []netip.Prefix
	// NoHostGW, when not empty, says why this host cannot run host-gw
	// at all (a public IP that is not its interface's address).
	NoHostGW string
}

// Choose returns "host-gw" or "vxlan", and why.
func Choose(f Facts) (typ, why string) {
	seg := fmt.Sprint(f.Connected)
	if f.NoHostGW != "" {
		return "vxlan", "auto: " + f.NoHostGW
	}
	if f.Self.IsValid() && !kernel.OnSegment(f.Connected, f.Self) || !f.Self.IsValid() && !f.Self6.IsValid() {
		return "vxlan", fmt.Sprintf("auto: this host's public IP %s is not on its segment %s, so host-gw cannot work", f.Self, seg)
	}
	if f.Self6.IsValid() && !kernel.OnSegment(f.Connected, f.Self6) {
		return "vxlan", fmt.Sprintf("auto: this host's public IPv6 %s is not on its segment %s, so host-gw cannot carry IPv6", f.Self6, seg)
	}
	var off []string
	for _, p := range f.Peers {
		if p.Subnet.IsValid() && !kernel.OnSegment(f.Connected, p.Attrs.PublicIP) {
			off = append(off, fmt.Sprintf("%s (%s)", p.Subnet, p.Attrs.PublicIP))
		}
		if f.Self6.IsValid() && p.IPv6Subnet.IsValid() && !kernel.OnSegment(f.Connected, p.Attrs.PublicIPv6) {
			off = append(off, fmt.Sprintf("%s (%s)", p.IPv6Subnet, p.Attrs.PublicIPv6))
		}
	}
	switch {
	case len(off) > 0:
		return "vxlan", fmt.Sprintf("auto: peer %s is not on this host's segment %s: only vxlan reaches every host", strings.Join(off, ", "), seg)
	case len(f.Peers) == 0:
		return "host-gw", fmt.Sprintf("auto: no peers yet, so none is behind a router (this host is on %s)", seg)
	}
	return "host-gw", fmt.Sprintf("auto: all %d peers are on this host's segment %s", len(f.Peers), seg)
}
