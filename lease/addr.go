package lease

import (
	"fmt"
	"net/netip"
)

// Address blocks no host or cluster network can be in (RFC 6890): packets
// to them never leave a host, or go to many.
var (
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")   // "this host on this network"
	loopback    = netip.MustParsePrefix("127.0.0.0/8") // never leaves the host
	multicast   = netip.MustParsePrefix("224.0.0.0/4")
	reserved    = netip.MustParsePrefix("240.0.0.0/4") // class E, and 255.255.255.255
	broadcast   = netip.AddrFrom4([4]byte{255, 255, 255, 255})
)

// CheckPublicIP reports why ip cannot be a host's PublicIP, the address
// other hosts send its pods' traffic to: it must be an IPv4 unicast
// address another host can reach, so not in 0.0.0.0/8 (unspecified),
// 127.0.0.0/8 (loopback) or 224.0.0.0/4 (multicast), and not the limited
// broadcast 255.255.255.255.
//
// Link-local addresses (169.254.0.0/16) are accepted, as flanneld accepts
// them: hosts on one segment can use them. So is the rest of 240.0.0.0/4,
// which some clusters use as unicast address space (Linux routes it).
func CheckPublicIP(ip netip.Addr) error {
	switch {
	case !ip.Is4():
		return fmt.Errorf("PublicIP %q is not an IPv4 address", ip)
	case thisNetwork.Contains(ip):
		return fmt.Errorf("PublicIP %s is unspecified (0.0.0.0/8): other hosts cannot send to it", ip)
	case loopback.Contains(ip):
		return fmt.Errorf("PublicIP %s is a loopback address (127.0.0.0/8): other hosts cannot send to it", ip)
	case multicast.Contains(ip):
		return fmt.Errorf("PublicIP %s is a multicast address (224.0.0.0/4), not one host's", ip)
	case ip == broadcast:
		return fmt.Errorf("PublicIP %s is the broadcast address, not one host's", ip)
	}
	return nil
}

// block is an address block no pod can have an address in.
type block struct {
	p    netip.Prefix
	what string
}

var (
	blocks4 = []block{{thisNetwork, "\"this network\""}, {loopback, "loopback"}, {multicast, "multicast"}, {reserved, "reserved (class E)"}}
	blocks6 = []block{{v6Reserved, "reserved (unspecified, loopback, IPv4-mapped)"}, {v6LinkLocal, "link-local"}, {v6Multicast, "multicast"}}
)

// checkNetwork reports why p cannot be a cluster network (or part of
// one): it must be a /8 or longer and not overlap 0.0.0.0/8, 127.0.0.0/8,
// 224.0.0.0/4 or 240.0.0.0/4 (IPv6: ::/8, fe80::/10 or ff00::/8), whose
// addresses are not unicast addresses a pod can have. 0.0.0.0/0 in
// particular would make the TUN route replace the default route.
func checkNetwork(p netip.Prefix) error {
	if p.Bits() < 8 {
		return fmt.Errorf("%s is too large: a cluster network is at most a /8", p)
	}
	bs := blocks4
	if p.Addr().Is6() {
		bs = blocks6
	}
	for _, b := range bs {
		if p.Overlaps(b.p) {
			return fmt.Errorf("%s overlaps %s, the %s block: pods cannot have those addresses", p, b.p, b.what)
		}
	}
	return nil
}

// IPv6 blocks no host or cluster network can be in (RFC 6890, RFC 4291).
var (
	v6Reserved  = netip.MustParsePrefix("::/8")      // unspecified, loopback, v4-mapped and -compatible
	v6LinkLocal = netip.MustParsePrefix("fe80::/10") // needs a zone: not an address another host routes to
	v6Multicast = netip.MustParsePrefix("ff00::/8")
)

// CheckPublicIPv6 reports why ip cannot be a host's PublicIPv6: it must be
// an IPv6 unicast address other hosts route to, so not in ::/8
// (unspecified, loopback, IPv4-mapped), fe80::/10 (link-local, which
// needs an interface to mean anything) or ff00::/8 (multicast).
func CheckPublicIPv6(ip netip.Addr) error {
	switch {
	case !ip.Is6() || ip.Is4In6():
		return fmt.Errorf("PublicIPv6 %q is not an IPv6 address", ip)
	case ip.Zone() != "":
		return fmt.Errorf("PublicIPv6 %s has a zone: other hosts cannot send to it", ip)
	case v6Reserved.Contains(ip):
		return fmt.Errorf("PublicIPv6 %s is in ::/8 (unspecified, loopback or IPv4-mapped): other hosts cannot send to it", ip)
	case v6LinkLocal.Contains(ip):
		return fmt.Errorf("PublicIPv6 %s is link-local (fe80::/10): other hosts cannot route to it", ip)
	case v6Multicast.Contains(ip):
		return fmt.Errorf("PublicIPv6 %s is a multicast address (ff00::/8), not one host's", ip)
	}
	return nil
}
