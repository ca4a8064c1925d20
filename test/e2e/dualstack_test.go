package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/lease"
)

// dualStackConf is flanneld's dual-stack config as recorded
// (dualstack/<backend>/config.json), with the backend's type.
func dualStackConf(backend string) string {
	return fmt.Sprintf(`{"Network":"10.5.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10:5::/56","Backend":{"Type":%q}}`, backend)
}

// TestDualStack runs three hosts on a dual-stack network with the kernel
// backends: each gets an IPv4 and an IPv6 subnet in flanneld's key and
// lease format, pods reach each other over both families (ping and a
// verified TCP stream both ways between every pair), the kernel state per
// peer is flanneld's, and after SIGTERM `weft cleanup` leaves nothing of
// either family.
func TestDualStack(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) { testDualStack(t, backend) })
	}
}

func testDualStack(t *testing.T, backend string) {
	k := newKClusterOpts(t, lab.Options{Hosts: 3, IPv6: true}, dualStackConf(backend), nil)
	k.start(nil, 1, 2, 3)
	network6 := netip.MustParsePrefix("fd00:10:5::/56")
	seen := map[netip.Prefix]bool{}
	for i, env := range k.Envs {
		if !network6.Contains(env.IPv6Subnet.Addr()) || env.IPv6Subnet.Bits() != 64 || env.IPv6Network != network6 || seen[env.IPv6Subnet] {
			t.Fatalf("h%d: subnet file %+v", i+1, env)
		}
		seen[env.IPv6Subnet] = true
		// The pods' MTU fits both families: flannel-v6.<VNI> carries 20
		// bytes less than flannel.<VNI> (flanneld writes 1450 here and
		// loses large IPv6 packets).
		if want := map[string]int{"vxlan": 1430, "host-gw": 1500}[backend]; env.MTU != want {
			t.Errorf("h%d: FLANNEL_MTU=%d, want %d", i+1, env.MTU, want)
		}
	}
	for i := 1; i <= 3; i++ {
		checkDualStackLease(t, k, i, backend)
	}
	for a := 1; a <= 3; a++ {
		for b := 1; b <= 3; b++ {
			if a != b {
				k.ping(a, b)
				k.ping6(a, b)
			}
		}
	}
	k.tcpTo(1, 2, k.Lab.Host(2).PodIP6, 8<<20)
	k.tcpTo(2, 1, k.Lab.Host(1).PodIP6, 8<<20)
	k.tcpTo(3, 1, k.Lab.Host(1).PodIP6, 8<<20)
	k.tcpTo(1, 3, k.Lab.Host(3).PodIP, 8<<20)

	// flanneld's per-peer IPv6 state on h1 (the recordings' lines).
	r6 := k.sh(1, "ip", "-6", "route")
	for _, peer := range []int{2, 3} {
		sn := k.Envs[peer-1].IPv6Subnet
		want := fmt.Sprintf("%s via %s dev %s", sn, k.Lab.Host(peer).IP6, k.Lab.Host(1).Underlay)
		if backend == "vxlan" {
			want = fmt.Sprintf("%s via %s dev flannel-v6.1", sn, sn.Addr())
		}
		if !strings.Contains(r6, want) {
			t.Errorf("h1: no route %q in\n%s", want, r6)
		}
	}
	// flanneld's forward rules (--iptables-forward-rules, on by default)
	// for the IPv6 network too.
	if fw := k.sh(1, "ip6tables-save"); !strings.Contains(fw, "-A FLANNEL-FWD -s fd00:10:5::/56") {
		t.Errorf("h1: no IPv6 forward rules:\n%s", fw)
	}
	s := k.stats(1)
	if s.IPv6Subnet == nil || *s.IPv6Subnet != k.Envs[0].IPv6Subnet || len(s.Peers) != 2 || s.Peers[0].IPv6Subnet == nil {
		t.Errorf("h1 status: %+v", s)
	}

	// weft cleanup after SIGTERM: nothing of weft's is left, IPv6 included.
	k.stop(1, 2, 3)
	for i := 1; i <= 3; i++ {
		k.sh(i, k.Binary, "cleanup", "--debug-socket", "/nonexistent/debug.sock")
		r, l, fw := k.sh(i, "ip", "-6", "route"), k.sh(i, "ip", "link"), k.sh(i, "ip6tables-save")
		if strings.Contains(l, "flannel") || strings.Contains(r, "fd00:10:5:") && !strings.Contains(r, k.Lab.Host(i).PodVeth) || strings.Contains(fw, "FLANNEL") {
			t.Errorf("h%d after weft cleanup:\n%s%s%s", i, r, l, fw)
		}
	}
}

// checkDualStackLease: host i's lease is under flanneld's dual-stack key,
// with flanneld's bytes, advertising the host's IPv6 underlay address
// and, for vxlan, the MAC of its flannel-v6.1.
func checkDualStackLease(t *testing.T, k *kcluster, i int, backend string) {
	t.Helper()
	h := k.Lab.Host(i)
	v := k.leaseValue(i)
	var a lease.Attrs
	if err := json.Unmarshal([]byte(v), &a); err != nil {
		t.Fatalf("h%d lease %s: %v", i, v, err)
	}
	if out, _ := json.Marshal(a); string(out) != v {
		t.Errorf("h%d lease is not in flanneld's bytes:\n%s\n%s", i, v, out)
	}
	if a.PublicIP != h.IP || a.PublicIPv6 != h.IP6 || a.BackendType != backend {
		t.Errorf("h%d lease %s", i, v)
	}
	if backend == "vxlan" {
		link := k.sh(i, "ip", "link", "show", "flannel-v6.1")
		var d struct {
			VNI     int
			VtepMAC string
		}
		if err := json.Unmarshal(a.BackendV6Data, &d); err != nil || d.VNI != 1 || !strings.Contains(link, "link/ether "+d.VtepMAC) {
			t.Errorf("h%d BackendV6Data %s, device:\n%s", i, a.BackendV6Data, link)
		}
	} else if a.BackendV6Data != nil {
		t.Errorf("h%d host-gw lease has BackendV6Data: %s", i, v)
	}
}

func (k *kcluster) ping6(a, b int) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ha, hb := k.Lab.Host(a), k.Lab.Host(b)
	res, err := lab.Ping(ctx, ha.Pod, hb.PodIP6, 3, 20*time.Millisecond, 2*time.Second)
	if err != nil || res.Received == 0 {
		k.t.Fatalf("ping6 pod h%d -> pod h%d (%s): %d replies, %v", a, b, hb.PodIP6, res.Received, err)
	}
}
