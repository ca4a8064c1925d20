package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/lab"
)

// TestDualStackUDP runs three hosts on a dual-stack network with the udp
// backend: IPv6 travels through weft's engine inside flannel's UDP format
// over the IPv4 underlay. Every pair pings and streams verified TCP over
// both families; the TUN carries the IPv6 lease's address and the IPv6
// network's route; the lease names PublicIPv6; FLANNEL_MTU is the IPv4
// underlay's less 28 for both families.
func TestDualStackUDP(t *testing.T) {
	k := newKClusterOpts(t, lab.Options{Hosts: 3, IPv6: true}, dualStackConf("udp"), nil)
	k.start(nil, 1, 2, 3)
	for i, env := range k.Envs {
		if !env.IPv6Subnet.IsValid() || env.MTU != 1472 {
			t.Fatalf("h%d: subnet file %+v", i+1, env)
		}
		h := k.Lab.Host(i + 1)
		want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":"%s"}`, h.IP, h.IP6)
		if got := k.leaseValue(i + 1); got != want {
			t.Errorf("h%d lease\n got %s\nwant %s", i+1, got, want)
		}
	}
	a6 := k.sh(1, "ip", "-6", "addr", "show", "flannel0")
	if !strings.Contains(a6, k.Envs[0].IPv6Subnet.Addr().String()+"/128") || strings.Contains(a6, "fe80:") {
		t.Errorf("h1 flannel0's IPv6 addresses:\n%s", a6)
	}
	if r6 := k.sh(1, "ip", "-6", "route"); !strings.Contains(r6, "fd00:10:5::/56 dev flannel0") {
		t.Errorf("h1: no IPv6 network route through flannel0:\n%s", r6)
	}
	k.eventually("every host knows both peers with IPv6", 10*time.Second, func() (bool, string) {
		for i := 1; i <= 3; i++ {
			s := k.stats(i)
			if len(s.Peers) != 2 || s.Peers[0].IPv6Subnet == nil || s.Peers[1].IPv6Subnet == nil {
				return false, fmt.Sprintf("h%d: %+v", i, s.Peers)
			}
		}
		return true, ""
	})
	for a := 1; a <= 3; a++ {
		for b := 1; b <= 3; b++ {
			if a != b {
				k.ping(a, b)
				k.ping6(a, b)
				k.tcpTo(a, b, k.Lab.Host(b).PodIP6, 4<<20)
			}
		}
	}
	k.tcp(1, 2, 4<<20)
	s := k.stats(1)
	if s.Engine == nil || s.Engine.DropsByReason["spoofed-source"] != 0 || s.Engine.DropsByReason["unknown-peer"] != 0 {
		t.Errorf("h1 engine: %+v", s.Engine)
	}
	k.stop(1, 2, 3)
}
