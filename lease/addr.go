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

// checkNetwork reports why p cannot be a cluster network (or part of
// one): it must be a /8 or longer and not overlap 0.0.0.0/8, 127.0.0.0/8,
// 224.0.0.0/4 or 240.0.0.0/4, whose addresses are not unicast addresses a
// pod can have. 0.0.0.0/0 in particular would make the TUN route replace
// the default route.
func checkNetwork(p netip.Prefix) error {
	if p.Bits() < 8 {
		return fmt.Errorf("%s is too large: a cluster network is at most a /8", p)
	}
	for _, b := range []struct {
		p    netip.Prefix
		what string
	}{{thisNetwork, "\"this network\""}, {loopback, "loopback"}, {multicast, "multicast"}, {reserved, "reserved (class E)"}} {
		if p.Overlaps(b.p) {
			return fmt.Errorf("%s overlaps %s, the %s block: pods cannot have those addresses", p, b.p, b.what)
		}
	}
	return nil
}
