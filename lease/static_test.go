package lease

import (
	"context"
	"net/netip"
	"strings"
	"testing"
)

func TestNewStatic(t *testing.T) {
	pp := netip.MustParsePrefix
	peer := func(sn, ip string) StaticPeer { return StaticPeer{Subnet: pp(sn), PublicIP: netip.MustParseAddr(ip)} }
	s, err := NewStatic(pp("10.6.0.0/16"), pp("10.6.1.0/24"), []StaticPeer{peer("10.6.2.0/24", "192.0.2.2"), peer("10.6.3.0/24", "169.254.0.3")})
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Config(context.Background()); c.Network != pp("10.6.0.0/16") || c.SubnetLen != 24 {
		t.Errorf("config %+v", c)
	}
	for _, c := range []struct {
		network, own string
		peers        []StaticPeer
		msg          string
	}{
		{"0.0.0.0/0", "10.6.1.0/24", nil, "--static-network: 0.0.0.0/0 is too large"},
		{"127.0.0.0/8", "127.0.1.0/24", nil, "--static-network: 127.0.0.0/8 overlaps"},
		{"224.0.0.0/8", "224.0.1.0/24", nil, "--static-network: 224.0.0.0/8 overlaps"},
		{"10.6.0.0/16", "10.6.1.0/24", []StaticPeer{peer("10.6.2.0/24", "127.0.0.1")}, "--static-peer: 10.6.2.0/24: PublicIP 127.0.0.1 is a loopback"},
		{"10.6.0.0/16", "10.6.1.0/24", []StaticPeer{peer("10.6.2.0/24", "0.0.0.0")}, "--static-peer: 10.6.2.0/24: PublicIP 0.0.0.0 is unspecified"},
		{"10.6.0.0/16", "10.6.1.0/24", []StaticPeer{peer("10.6.2.0/24", "239.1.1.1")}, "multicast"},
		{"10.6.0.0/16", "10.6.1.0/24", []StaticPeer{peer("10.6.2.0/24", "255.255.255.255")}, "broadcast"},
		{"10.6.0.0/16", "10.6.1.0/24", []StaticPeer{{Subnet: pp("10.6.2.0/24")}}, "not an IPv4 address"},
	} {
		_, err := NewStatic(pp(c.network), pp(c.own), c.peers)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s %s %v: %v, want %q", c.network, c.own, c.peers, err, c.msg)
		}
	}
}
