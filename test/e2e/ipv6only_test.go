package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/lease"
)

// ipv6OnlyConf is flanneld's IPv6-only config as recorded
// (ipv6only/vxlan/config.json), with the backend's type.
func ipv6OnlyConf(backend string) string {
	return fmt.Sprintf(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:5::/56","Backend":{"Type":%q,"VNI":1}}`, backend)
}

// TestIPv6Only runs three hosts on an IPv6-only network with the kernel
// backends. Each host gets an IPv6 subnet under flanneld's key
// (0.0.0.0-0&<subnet>-64), three distinct ones (flanneld's own IPv6-only
// etcd mode gives every host one subnet), with flanneld's lease bytes and
// subnet file lines; vxlan makes flannel-v6.1 alone, in the recorded
// device's shape, and flanneld's per-peer IPv6 state; host-gw IPv6 routes
// only. Pods reach each other over IPv6 (ping and a verified TCP stream
// between every pair, both ways), and after SIGTERM `weft cleanup` leaves
// nothing.
func TestIPv6Only(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) { testIPv6Only(t, backend) })
	}
}

func testIPv6Only(t *testing.T, backend string) {
	k := newKClusterOpts(t, lab.Options{Hosts: 3, IPv6: true}, ipv6OnlyConf(backend), nil)
	k.start(nil, 1, 2, 3)
	network6 := netip.MustParsePrefix("fd00:10:5::/56")
	seen := map[netip.Prefix]bool{}
	for i, env := range k.Envs {
		if env.Network.IsValid() || env.Subnet.IsValid() || env.IPv6Network != network6 || !network6.Contains(env.IPv6Subnet.Addr()) ||
			env.IPv6Subnet.Bits() != 64 || seen[env.IPv6Subnet] {
			t.Fatalf("h%d: subnet file %+v", i+1, env)
		}
		seen[env.IPv6Subnet] = true
		// flanneld writes 1450 with vxlan (fixture subnet-h1.env), the MTU
		// of a flannel.1 that does not exist; weft writes flannel-v6.1's.
		if want := map[string]int{"vxlan": 1430, "host-gw": 1500}[backend]; env.MTU != want {
			t.Errorf("h%d: FLANNEL_MTU=%d, want %d", i+1, env.MTU, want)
		}
		checkIPv6OnlySubnetFile(t, k, i+1)
		checkIPv6OnlyLease(t, k, i+1, backend)
	}
	for a := 1; a <= 3; a++ {
		for b := 1; b <= 3; b++ {
			if a != b {
				k.ping6(a, b)
				k.tcpTo(a, b, k.Lab.Host(b).PodIP6, 4<<20)
			}
		}
	}
	if backend == "vxlan" {
		checkIPv6OnlyVXLANState(t, k)
	} else {
		r6 := k.sh(1, "ip", "-6", "route")
		for _, peer := range []int{2, 3} {
			want := fmt.Sprintf("%s via %s dev %s proto 87 metric 1024 pref medium", k.Envs[peer-1].IPv6Subnet, k.Lab.Host(peer).IP6, k.Lab.Host(1).Underlay)
			if !has(r6, want) {
				t.Errorf("h1: no route %q in\n%s", want, r6)
			}
		}
		if l := k.sh(1, "ip", "link"); strings.Contains(l, "flannel") {
			t.Errorf("h1: a flannel device with host-gw:\n%s", l)
		}
	}
	// No IPv4 state at all: the fixture's `ip route` has the underlay's
	// kernel route alone.
	for i := 1; i <= 3; i++ {
		if r := k.sh(i, "ip", "-4", "route"); strings.Contains(r, "proto 87") || strings.Contains(r, "flannel") {
			t.Errorf("h%d: IPv4 routes of weft's:\n%s", i, r)
		}
	}
	// flanneld's IPv6 rules (ip6tables-save-h1.txt) and no IPv4 ones (its
	// iptables-save-h1.txt is empty).
	fw6 := k.sh(1, "ip6tables-save")
	for _, want := range []string{
		"-A FLANNEL-FWD -s fd00:10:5::/56 -m comment --comment \"flanneld forward\" -j ACCEPT",
		"-A FLANNEL-FWD -d fd00:10:5::/56 -m comment --comment \"flanneld forward\" -j ACCEPT",
	} {
		if !has(fw6, want) || !fixtureHas(t, "flannel-ipv6only-vxlan-ip6tables-save-h1.txt", want) {
			t.Errorf("h1: ip6tables rule %q missing (or not flanneld's):\n%s", want, fw6)
		}
	}
	if fw := k.sh(1, "iptables-save"); strings.Contains(fw, "FLANNEL") {
		t.Errorf("h1: IPv4 rules on an IPv6-only network:\n%s", fw)
	}
	s := k.stats(1)
	if s.Subnet.IsValid() || s.PublicIP.IsValid() || s.IPv6Subnet == nil || *s.IPv6Subnet != k.Envs[0].IPv6Subnet || s.MTU != k.Envs[0].MTU ||
		len(s.Peers) != 2 || len(s.Refused) != 0 {
		t.Errorf("h1 status: %+v", s)
	}
	for _, p := range s.Peers {
		if p.Subnet.IsValid() || p.IPv6Subnet == nil || p.PublicIPv6 == nil {
			t.Errorf("h1 status peer %+v", p)
		}
	}

	k.stop(1, 2, 3)
	for i := 1; i <= 3; i++ {
		k.sh(i, k.Binary, "cleanup", "--debug-socket", "/nonexistent/debug.sock")
		r, l, fw := k.sh(i, "ip", "-6", "route"), k.sh(i, "ip", "link"), k.sh(i, "ip6tables-save")
		if strings.Contains(l, "flannel") || strings.Contains(r, "proto 87") || strings.Contains(fw, "FLANNEL") {
			t.Errorf("h%d after weft cleanup:\n%s%s%s", i, r, l, fw)
		}
	}
}

// checkIPv6OnlySubnetFile: host i's subnet file has flanneld's lines in
// flanneld's order (fixture subnet-h1.env): IPv6 ones only.
func checkIPv6OnlySubnetFile(t *testing.T, k *kcluster, i int) {
	t.Helper()
	keys := func(b []byte) []string {
		var out []string
		for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			key, _, _ := strings.Cut(l, "=")
			out = append(out, key)
		}
		return out
	}
	fixture, err := os.ReadFile(filepath.Join("testdata", "flannel-ipv6only-vxlan-subnet-h1.env"))
	if err != nil {
		t.Fatal(err)
	}
	got := mustRead(t, harness.SubnetFile(k.Lab.Host(i)))
	if g, w := strings.Join(keys(got), " "), strings.Join(keys(fixture), " "); g != w {
		t.Errorf("h%d subnet file keys %q, flanneld's %q:\n%s", i, g, w, got)
	}
	env := k.Envs[i-1]
	if want := fmt.Sprintf("FLANNEL_IPV6_SUBNET=%s/64\n", env.IPv6Subnet.Addr().Next()); !strings.Contains(string(got), want) {
		t.Errorf("h%d subnet file lacks %q:\n%s", i, want, got)
	}
}

// checkIPv6OnlyLease: host i's lease is under flanneld's IPv6-only key,
// in flanneld's bytes (fixture lease-h2.json, with this host's address
// and MAC): "PublicIP":"0.0.0.0", no BackendData; for vxlan the VtepMAC
// of its flannel-v6.1.
func checkIPv6OnlyLease(t *testing.T, k *kcluster, i int, backend string) {
	t.Helper()
	h := k.Lab.Host(i)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	key := "/coreos.com/network/subnets/0.0.0.0-0&" + lease.SubnetKey(k.Envs[i-1].IPv6Subnet)
	resp, err := k.cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("h%d: no lease %s (%v)", i, key, err)
	}
	v := string(resp.Kvs[0].Value)
	want := fmt.Sprintf(`{"PublicIP":"0.0.0.0","PublicIPv6":"%s","BackendType":"host-gw"}`, h.IP6)
	if backend == "vxlan" {
		fixture, err := os.ReadFile(filepath.Join("testdata", "flannel-ipv6only-vxlan-lease-h2.json"))
		if err != nil {
			t.Fatal(err)
		}
		mac := linkMAC(t, k.Lab.Host(i).Name, "flannel-v6.1")
		want = strings.NewReplacer("2001:db8::2", h.IP6.String(), "16:3a:6e:17:9c:3a", mac).Replace(string(fixture))
	}
	if v != want {
		t.Errorf("h%d lease\n got %s\nwant %s", i, v, want)
	}
}

// checkIPv6OnlyVXLANState compares h1's kernel state with flanneld's: the
// device in the shape of the IPv6-only recording (flannel-v6.1 alone,
// MTU 1430, local <underlay IPv6>, dstport 8472, nolearning, udpcsum; its
// address the subnet's network address as a /128) and, per peer, the
// route, neighbour and FDB entry in the shape of the dual-stack
// recording's IPv6 lines (the IPv6-only recording has none: flanneld's two
// hosts shared one subnet).
func checkIPv6OnlyVXLANState(t *testing.T, k *kcluster) {
	t.Helper()
	const fx6, fxDual = "flannel-ipv6only-vxlan-kernel-state-h1.txt", "flannel-dualstack-vxlan-kernel-state-h1.txt"
	shape := "vxlan id 1 local %s dev %s srcport 0 0 dstport 8472 nolearning ttl auto ageing 300 udpcsum noudp6zerocsumtx noudp6zerocsumrx"
	if !fixtureContains(t, fx6, fmt.Sprintf(shape, "2001:db8::1", "fk-v1")) || !fixtureContains(t, fx6, "flannel-v6.1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1430") ||
		!fixtureHas(t, fx6, "inet6 fd00:10:5:12::/128 scope global") || fixtureContains(t, fx6, "flannel.1") {
		t.Fatal("the device shapes checked here are not flanneld's IPv6-only recording's")
	}
	h1 := k.Lab.Host(1)
	links := k.sh(1, "ip", "-d", "link", "show")
	if strings.Contains(links, "flannel.1") || !strings.Contains(links, fmt.Sprintf(shape, h1.IP6, h1.Underlay)) ||
		!strings.Contains(links, "flannel-v6.1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1430") {
		t.Errorf("h1 devices unlike flanneld's:\n%s", links)
	}
	addr := k.sh(1, "ip", "addr", "show", "flannel-v6.1")
	if !has(addr, fmt.Sprintf("inet6 %s/128 scope global", k.Envs[0].IPv6Subnet.Addr())) || strings.Contains(addr, "inet ") {
		t.Errorf("h1 flannel-v6.1 addresses unlike flanneld's:\n%s", addr)
	}
	if !fixtureHas(t, fxDual, "fd00:10:5:32::/64 via fd00:10:5:32:: dev flannel-v6.1 metric 1024 onlink pref medium") ||
		!fixtureHas(t, fxDual, "fd00:10:5:32:: dev flannel-v6.1 lladdr 62:a3:0b:92:83:ae PERMANENT") ||
		!fixtureHas(t, fxDual, "62:a3:0b:92:83:ae dev flannel-v6.1 dst 2001:db8::2 self permanent") {
		t.Fatal("the per-peer shapes checked here are not flanneld's dual-stack recording's")
	}
	r, n, f := k.sh(1, "ip", "-6", "route"), k.sh(1, "ip", "-6", "neigh"), k.sh(1, "bridge", "fdb", "show")
	for _, peer := range []int{2, 3} {
		sn, mac := k.Envs[peer-1].IPv6Subnet, linkMAC(t, k.Lab.Host(peer).Name, "flannel-v6.1")
		for _, c := range []struct{ out, line string }{
			{r, fmt.Sprintf("%s via %s dev flannel-v6.1 proto 87 metric 1024 onlink pref medium", sn, sn.Addr())},
			{n, fmt.Sprintf("%s dev flannel-v6.1 lladdr %s PERMANENT", sn.Addr(), mac)},
			{f, fmt.Sprintf("%s dev flannel-v6.1 dst %s self permanent", mac, k.Lab.Host(peer).IP6)},
		} {
			if !has(c.out, c.line) {
				t.Errorf("h1: no %q in\n%s", c.line, c.out)
			}
		}
	}
}

// fixtureContains reports whether a recorded file has s in it.
func fixtureContains(t *testing.T, file, s string) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), s)
}

// TestIPv6OnlyFlanneld runs a real flanneld v0.28.9 beside two weft hosts
// on an IPv6-only network, for both backends, and checks what can work:
// weft reads flanneld's IPv6-only lease, admits it and programs the
// per-peer state flanneld's dual-stack recording shows, while the weft
// hosts reach each other; flanneld reads weft's leases (vxlan logs each
// with weft's PublicIPv6 and BackendV6Data).
//
// Pod traffic with the flanneld host is not checked because flanneld
// v0.28.9 never programs an IPv6-only peer: its etcd registry marks every
// lease EnableIPv4 (registry.go), so its backends handle each peer's IPv4
// part with the IPv4 device or route function an IPv6-only network does
// not have (vxlan_network.go handleSubnetEvents, nw.dev nil; host-gw's
// GetRoute nil), and its event loop handles no further event. Only one
// flanneld, started first: flanneld looks its lease up by PublicIP,
// 0.0.0.0 on every IPv6-only host, so a second flanneld, or one started
// after weft hosts, takes over another host's lease.
func TestIPv6OnlyFlanneld(t *testing.T) {
	flanneld := flanneldBinary(t)
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			k := newKClusterOpts(t, lab.Options{Hosts: 3, IPv6: true}, ipv6OnlyConf(backend), nil)
			k.Flanneld = flanneld
			if err := k.StartFlanneld(k.Lab.Host(1)); err != nil {
				t.Fatal(err)
			}
			k.waitSubnets()
			k.start(nil, 2, 3)
			for i, env := range k.Envs {
				if env.Subnet.IsValid() || !env.IPv6Subnet.IsValid() {
					t.Fatalf("h%d subnet file %+v", i+1, env)
				}
			}
			flannel := k.Envs[0].IPv6Subnet
			for _, on := range []int{2, 3} {
				k.eventually(fmt.Sprintf("weft on h%d admits flanneld's lease", on), 10*time.Second, func() (bool, string) {
					s := k.stats(on)
					for _, p := range s.Peers {
						if p.IPv6Subnet != nil && *p.IPv6Subnet == flannel && p.PublicIPv6 != nil && *p.PublicIPv6 == k.Lab.Host(1).IP6 {
							return len(s.Peers) == 2 && len(s.Refused) == 0, fmt.Sprintf("%+v %v", s.Peers, s.Refused)
						}
					}
					return false, fmt.Sprintf("%+v %v", s.Peers, s.Refused)
				})
				want := fmt.Sprintf("%s via %s dev %s proto 87 metric 1024 pref medium", flannel, k.Lab.Host(1).IP6, k.Lab.Host(on).Underlay)
				if backend == "vxlan" {
					want = fmt.Sprintf("%s via %s dev flannel-v6.1 proto 87 metric 1024 onlink pref medium", flannel, flannel.Addr())
					mac := linkMAC(t, k.Lab.Host(1).Name, "flannel-v6.1")
					if f := k.sh(on, "bridge", "fdb", "show"); !has(f, fmt.Sprintf("%s dev flannel-v6.1 dst %s self permanent", mac, k.Lab.Host(1).IP6)) {
						t.Errorf("h%d: no FDB entry for flanneld's flannel-v6.1:\n%s", on, f)
					}
				}
				if r := k.sh(on, "ip", "-6", "route"); !has(r, want) {
					t.Errorf("h%d: no route %q in\n%s", on, want, r)
				}
			}
			k.ping6(2, 3)
			k.tcpTo(3, 2, k.Lab.Host(2).PodIP6, 4<<20)
			if backend == "vxlan" {
				// h2's lease, the first event flanneld gets (it handles
				// no later one, see above).
				mac := linkMAC(t, k.Lab.Host(2).Name, "flannel-v6.1")
				want := fmt.Sprintf(`Received Subnet Event with VxLan: BackendType: vxlan, PublicIP: 0.0.0.0, PublicIPv6: %s, BackendData: (nil), BackendV6Data: {"VNI":1,"VtepMAC":"%s"}`, k.Lab.Host(2).IP6, mac)
				k.eventually("flanneld reads weft's lease", 10*time.Second, func() (bool, string) {
					l := k.Runs[0].Log()
					return strings.Contains(l, want), l
				})
			}
			if p := k.Runs[0]; p.Exited() {
				t.Fatalf("flanneld exited:\n%s", p.Log())
			}
			k.stop(2, 3)
			k.Runs[0].Stop()
		})
	}
}
