package vxlan

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
	"github.com/weft-net/weft/lease"
)

// ipv6OnlyPair is dualStackPair on an IPv6-only network: the same lab
// (the underlay still has IPv4 addresses, as the fixtures' did), but the
// hosts have no IPv4 (Host.IfaceAddr and PublicIP unset) and their leases
// no IPv4 subnet. Each host gets run's IPv6 subnets and macs6. Before the
// IPv6-only backend starts, h1 holds a flannel.1 of an earlier IPv4 run,
// which it must remove.
func ipv6OnlyPair(t *testing.T, run dualStackRun, macs6 [2]string) [2]*dsHost {
	t.Helper()
	var h [2]*dsHost
	nss := [2]*kerneltest.NS{kerneltest.New(t), kerneltest.New(t)}
	a4 := [2]netip.Prefix{netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("192.0.2.2/24")}
	a6 := [2]netip.Prefix{netip.MustParsePrefix("2001:db8::1/64"), netip.MustParsePrefix("2001:db8::2/64")}
	i1, i2 := nss[0].Link(t, nss[1], "fk-v1", "fk-v2", 1500, []netip.Prefix{a4[0], a6[0]}, []netip.Prefix{a4[1], a6[1]})
	cfg := Config{VNI: 1, Port: 8472}
	for k, index := range []int{i1, i2} {
		ns := nss[k]
		if k == 0 {
			v4 := encap.Host{Iface: "fk-v1", IfaceIndex: index, IfaceAddr: a4[0].Addr(), PublicIP: a4[0].Addr(), IfaceMTU: 1500}
			old, err := New(Options{Host: v4, Config: cfg, NL: ns.Netlink, Sysctl: ns.Sysctl})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := old.Attrs(); err != nil {
				t.Fatal(err)
			}
		}
		host := encap.Host{Iface: fmt.Sprintf("fk-v%d", k+1), IfaceIndex: index, IfaceMTU: 1500, IfaceAddr6: a6[k].Addr(), PublicIPv6: a6[k].Addr()}
		mac6, _ := net.ParseMAC(macs6[k])
		b, err := New(Options{Host: host, Config: cfg, NL: ns.Netlink, Sysctl: ns.Sysctl, PrevMAC6: mac6, Interval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if b.Device() != "flannel-v6.1" || b.Device6() != "flannel-v6.1" {
			t.Fatalf("devices %q, %q", b.Device(), b.Device6())
		}
		attrs, err := b.Attrs()
		if err != nil {
			t.Fatal(err)
		}
		own := lease.Lease{IPv6Subnet: netip.MustParsePrefix(run.subnet6[k]), Attrs: attrs}
		mtu, err := b.Start(context.Background(), own)
		if err != nil {
			t.Fatal(err)
		}
		lo, err := ns.H.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		ns.AddAddr(t, lo.Attrs().Index, netip.PrefixFrom(netip.MustParseAddr(run.pod6[k]), 128))
		h[k] = &dsHost{ns: ns, b: b, own: own, host: host, mtu: mtu, lo: lo.Attrs().Index, index: index}
	}
	for k := range h {
		h[k].b.SetPeers([]lease.Lease{h[1-k].own})
		if err := h[k].b.Reconcile(); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// TestIPv6OnlyMatchesFlanneld: on an IPv6-only network flannel-v6.1 is
// the only device, as in the fixtures' ipv6only/vxlan run (flannel.1 of
// an earlier dual-stack run is removed); the lease is flanneld's bytes
// ("PublicIP":"0.0.0.0", no BackendData); each host's state is the IPv6
// half of flanneld's dual-stack state, line for line (flanneld's own
// IPv6-only run has no peer state to compare: its two hosts shared one
// subnet); FLANNEL_MTU is the device's 1430 (flanneld writes 1450); and
// pod traffic crosses at the device's full MTU.
func TestIPv6OnlyMatchesFlanneld(t *testing.T) {
	// Leases: with the fixture's ipv6only MACs, byte for byte.
	fixtureMACs := [2]string{"7a:f1:30:41:e3:17", "16:3a:6e:17:9c:3a"}
	h := ipv6OnlyPair(t, etcdDualStack, fixtureMACs)
	for k, x := range h {
		want, err := os.ReadFile(fmt.Sprintf("testdata/ipv6only-lease-h%d.json", k+1))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := json.Marshal(x.own.Attrs); err != nil || string(got) != string(want) {
			t.Errorf("h%d lease\n got %s (%v)\nwant %s", k+1, got, err, want)
		}
	}
	// Kernel state: the dual-stack fixture's IPv6 lines, with its MACs.
	h = ipv6OnlyPair(t, etcdDualStack, etcdDualStack.mac6)
	for k, x := range h {
		var want []string
		for _, l := range kerneltest.FixtureLines(t, fmt.Sprintf("testdata/dualstack-kernel-state-h%d.txt", k+1)) {
			if !strings.Contains(l, "flannel.1") {
				want = append(want, l)
			}
		}
		if got := x.ns.StateLines(t); !slices.Equal(got, want) {
			t.Errorf("h%d kernel state\n got %q\nwant %q", k+1, got, want)
		}
		if _, err := x.ns.H.LinkByName("flannel.1"); err == nil {
			t.Errorf("h%d: flannel.1 exists on an IPv6-only network", k+1)
		}
		if x.mtu != 1430 {
			t.Errorf("h%d: Start returned MTU %d; want 1430", k+1, x.mtu)
		}
		checkDevice6(t, x, etcdDualStack.subnet6[k], etcdDualStack.mac6[k])
		s := x.b.Status().(Status)
		if s.Device != "" || s.Device6 != "flannel-v6.1" || s.MTU6 != 1430 || len(s.Peers) != 1 || s.Peers[0].Subnet.IsValid() ||
			s.Peers[0].IPv6Subnet.String() != etcdDualStack.subnet6[1-k] {
			t.Errorf("h%d status %+v", k+1, s)
		}
		if b, _ := json.Marshal(s.Peers[0]); strings.Contains(string(b), `"subnet"`) || strings.Contains(string(b), `"public_ip"`) {
			t.Errorf("h%d: status names an IPv4 part: %s", k+1, b)
		}
	}
	for k := range h {
		a, b := etcdDualStack.pod6[k], etcdDualStack.pod6[1-k]
		if err := kerneltest.UDPRoundTrip(h[k].ns, h[1-k].ns, netip.MustParseAddr(a), netip.MustParseAddr(b), 1430-40-8); err != nil {
			t.Errorf("h%d %s -> %s: %v", k+1, a, b, err)
		}
	}
	// The fixture's device line: "flannel-v6.1 ... mtu 1430 ... vxlan id 1
	// local 2001:db8::1 dev fk-v1 srcport 0 0 dstport 8472 nolearning ...
	// udpcsum" (checkDevice6), and no flannel.1 in its link list.
	fixture, err := os.ReadFile("testdata/ipv6only-kernel-state-h1.txt")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(fixture), "flannel.1") || !strings.Contains(string(fixture), "flannel-v6.1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1430") {
		t.Fatal("the fixture is not the IPv6-only run's")
	}

	// Cleanup: removing the vxlan devices and tagged routes leaves nothing.
	var r kernel.Removed
	if err := h[0].ns.RemoveVXLANDevices("flannel-v6.1", &r); err != nil || len(r.Links) != 0 {
		t.Fatalf("keeping flannel-v6.1 removed %v (%v)", r.Links, err)
	}
	if err := h[0].ns.RemoveVXLANDevices("", &r); err != nil {
		t.Fatal(err)
	}
	if err := h[0].ns.RemoveTaggedRoutes(&r); err != nil {
		t.Fatal(err)
	}
	if got := h[0].ns.StateLines(t); len(got) != 0 || !slices.Equal(r.Links, []string{"flannel-v6.1"}) {
		t.Fatalf("after cleanup (removed %v): %q", r.Links, got)
	}
}

// TestIPv6OnlyAccept: on an IPv6-only network the backend's Accept checks
// the type alone (admission dropped BackendData); AcceptIPv6 the data.
// Start refuses a lease of the wrong shape.
func TestIPv6OnlyAccept(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("2001:db8::1/64"), 1500)
	host := encap.Host{Iface: "under0", IfaceIndex: under, IfaceMTU: 1500, IfaceAddr6: netip.MustParseAddr("2001:db8::1"), PublicIPv6: netip.MustParseAddr("2001:db8::1")}
	b, err := New(Options{Host: host, Config: Config{VNI: 1, Port: 8472}, NL: ns.Netlink, Sysctl: ns.Sysctl})
	if err != nil {
		t.Fatal(err)
	}
	fixture, err := os.ReadFile("testdata/ipv6only-lease-h2.json")
	if err != nil {
		t.Fatal(err)
	}
	var a lease.Attrs
	if err := json.Unmarshal(fixture, &a); err != nil {
		t.Fatal(err)
	}
	if a.PublicIP.IsValid() || a.BackendData != nil {
		t.Fatalf("fixture read as %+v", a)
	}
	if err := b.Accept(a); err != nil {
		t.Errorf("Accept: %v", err)
	}
	if err := b.AcceptIPv6(a); err != nil {
		t.Errorf("AcceptIPv6: %v", err)
	}
	a.BackendType = "host-gw"
	if err := b.Accept(a); err == nil {
		t.Errorf("Accept took a host-gw lease")
	}
	attrs, err := b.Attrs()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Start(context.Background(), lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:10:5:1::/64"), Attrs: attrs}); err == nil ||
		!strings.Contains(err.Error(), "IPv6-only") {
		t.Errorf("Start with an IPv4 subnet: %v", err)
	}
	if _, err := b.Start(context.Background(), lease.Lease{Attrs: attrs}); err == nil {
		t.Errorf("Start without an IPv6 subnet")
	}
}
