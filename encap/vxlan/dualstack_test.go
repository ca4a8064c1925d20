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

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
	"github.com/weft-net/weft/lease"
)

// dualStackRun is one of the fixtures' dual-stack vxlan runs: per host,
// its subnets and its devices' MACs.
type dualStackRun struct {
	name            string
	state           string // testdata/<state>-h1.txt, -h2.txt
	lease           string // testdata/<lease>-h1.json, -h2.json; "" when the run has none
	subnet, subnet6 [2]string
	mac, mac6       [2]string
	pod, pod6       [2]string // the "pod" addresses (FLANNEL_SUBNET's .1)
}

var (
	// dualstack/vxlan: flanneld v0.28.9 with the etcd store.
	etcdDualStack = dualStackRun{
		name: "etcd", state: "dualstack-kernel-state", lease: "dualstack-lease",
		subnet: [2]string{"10.5.77.0/24", "10.5.62.0/24"}, subnet6: [2]string{"fd00:10:5:21::/64", "fd00:10:5:32::/64"},
		mac:  [2]string{"12:ad:4c:f6:c0:a2", "5e:66:a8:d5:a6:13"},
		mac6: [2]string{"22:a6:83:20:ec:9a", "62:a3:0b:92:83:ae"},
		pod:  [2]string{"10.5.77.1", "10.5.62.1"}, pod6: [2]string{"fd00:10:5:21::1", "fd00:10:5:32::1"},
	}
	// kube/dualstack-vxlan: the Kubernetes store; the same kernel state.
	kubeDualStack = dualStackRun{
		name: "kube", state: "kube-dualstack-kernel-state",
		subnet: [2]string{"10.244.1.0/24", "10.244.2.0/24"}, subnet6: [2]string{"fd00:10:244:1::/64", "fd00:10:244:2::/64"},
		mac:  [2]string{"ce:92:7b:87:2e:36", "f2:e4:5a:b9:9e:20"},
		mac6: [2]string{"52:dd:99:5a:64:d2", "22:c7:df:57:c8:cb"},
		pod:  [2]string{"10.244.1.1", "10.244.2.1"}, pod6: [2]string{"fd00:10:244:1::1", "fd00:10:244:2::1"},
	}
)

// dsHost is one "host" of a dual-stack pair: a namespace with the
// fixtures' underlay (fk-v1 192.0.2.1/24 2001:db8::1/64, and fk-v2) and a
// started backend.
type dsHost struct {
	ns    *kerneltest.NS
	b     *Backend
	own   lease.Lease
	host  encap.Host
	mtu   int
	lo    int
	index int
}

// dualStackPair builds two namespaces joined by a veth, as the fixtures'
// lab (without its switch), starts a backend in each with the run's MACs
// (as the previous lease's, so the devices get them) and subnets, and
// gives each the other as its peer.
func dualStackPair(t *testing.T, run dualStackRun, cfg Config) [2]*dsHost {
	t.Helper()
	var h [2]*dsHost
	nss := [2]*kerneltest.NS{kerneltest.New(t), kerneltest.New(t)}
	a4 := [2]netip.Prefix{netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("192.0.2.2/24")}
	a6 := [2]netip.Prefix{netip.MustParsePrefix("2001:db8::1/64"), netip.MustParsePrefix("2001:db8::2/64")}
	i1, i2 := nss[0].Link(t, nss[1], "fk-v1", "fk-v2", 1500, []netip.Prefix{a4[0], a6[0]}, []netip.Prefix{a4[1], a6[1]})
	for k, index := range []int{i1, i2} {
		ns := nss[k]
		host := encap.Host{Iface: fmt.Sprintf("fk-v%d", k+1), IfaceIndex: index, IfaceAddr: a4[k].Addr(), PublicIP: a4[k].Addr(), IfaceMTU: 1500,
			IfaceAddr6: a6[k].Addr(), PublicIPv6: a6[k].Addr()}
		mac, _ := net.ParseMAC(run.mac[k])
		mac6, _ := net.ParseMAC(run.mac6[k])
		b, err := New(Options{Host: host, Config: cfg, NL: ns.Netlink, Sysctl: ns.Sysctl, PrevMAC: mac, PrevMAC6: mac6, Interval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		attrs, err := b.Attrs()
		if err != nil {
			t.Fatal(err)
		}
		own := lease.Lease{Subnet: netip.MustParsePrefix(run.subnet[k]), IPv6Subnet: netip.MustParsePrefix(run.subnet6[k]), Attrs: attrs}
		mtu, err := b.Start(context.Background(), own)
		if err != nil {
			t.Fatal(err)
		}
		lo, err := ns.H.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		ns.AddAddr(t, lo.Attrs().Index, netip.PrefixFrom(netip.MustParseAddr(run.pod[k]), 32))
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

// TestDualStackMatchesFlanneld: in both dual-stack runs (etcd and
// Kubernetes stores), each host's devices, routes, neighbours and fdb
// entries are the ones flanneld v0.28.9 left, line for line (routes
// tagged with weft's protocol), its lease is flanneld's byte for byte,
// pods use the smaller device MTU, and pod traffic crosses both families
// at their devices' full MTU.
func TestDualStackMatchesFlanneld(t *testing.T) {
	for _, run := range []dualStackRun{etcdDualStack, kubeDualStack} {
		t.Run(run.name, func(t *testing.T) {
			h := dualStackPair(t, run, Config{VNI: 1, Port: 8472})
			for k, x := range h {
				want := kerneltest.FixtureLines(t, fmt.Sprintf("testdata/%s-h%d.txt", run.state, k+1))
				if got := x.ns.StateLines(t); !slices.Equal(got, want) {
					t.Errorf("h%d kernel state\n got %q\nwant %q", k+1, got, want)
				}
				if run.lease != "" {
					want, err := os.ReadFile(fmt.Sprintf("testdata/%s-h%d.json", run.lease, k+1))
					if err != nil {
						t.Fatal(err)
					}
					if got, err := json.Marshal(x.own.Attrs); err != nil || string(got) != string(want) {
						t.Errorf("h%d lease\n got %s (%v)\nwant %s", k+1, got, err, want)
					}
				}
				// FLANNEL_MTU: flannel-v6.1's 1430, not flannel.1's 1450 (see Start).
				if x.mtu != 1430 {
					t.Errorf("h%d: Start returned MTU %d; want 1430", k+1, x.mtu)
				}
				checkDevice6(t, x, run.subnet6[k], run.mac6[k])
				for _, r := range x.ns.Routes6(t) {
					if r.Gw != nil && r.Protocol != kernel.RouteProtocol {
						t.Errorf("h%d: route %v is not tagged", k+1, r)
					}
				}
			}
			checkTraffic(t, h, run)
		})
	}
}

// checkDevice6 compares flannel-v6.1 with the fixture's "vxlan id 1 local
// 2001:db8::1 dev fk-v1 srcport 0 0 dstport 8472 nolearning ... udpcsum",
// mtu 1430, UP, address <subnet's network address>/128.
func checkDevice6(t *testing.T, x *dsHost, subnet6, mac6 string) {
	t.Helper()
	l, err := x.ns.H.LinkByName("flannel-v6.1")
	if err != nil {
		t.Fatal(err)
	}
	v := l.(*netlink.Vxlan)
	if v.VxlanId != 1 || v.Port != 8472 || v.Learning || !v.SrcAddr.Equal(x.host.IfaceAddr6.AsSlice()) || v.VtepDevIndex != x.index ||
		v.MTU != 1430 || v.Flags&net.FlagUp == 0 || !v.UDPCSum || v.HardwareAddr.String() != mac6 {
		t.Fatalf("flannel-v6.1: %+v", v)
	}
	addrs, err := x.ns.H.AddrList(v, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	var global []string
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() {
			global = append(global, a.IPNet.String())
		}
	}
	want := netip.PrefixFrom(netip.MustParsePrefix(subnet6).Addr(), 128).String()
	if len(global) != 1 || global[0] != want {
		t.Fatalf("flannel-v6.1 addresses %v; want %s", global, want)
	}
}

// checkTraffic sends UDP between the two hosts' pod addresses, both ways
// and both families, with datagrams that fill the device's MTU: 1450 on
// flannel.1, 1430 on flannel-v6.1.
func checkTraffic(t *testing.T, h [2]*dsHost, run dualStackRun) {
	t.Helper()
	for k := range h {
		for _, c := range []struct {
			from, to string
			size     int
		}{
			{run.pod[k], run.pod[1-k], 1450 - 20 - 8},
			{run.pod6[k], run.pod6[1-k], 1430 - 40 - 8},
		} {
			if err := kerneltest.UDPRoundTrip(h[k].ns, h[1-k].ns, netip.MustParseAddr(c.from), netip.MustParseAddr(c.to), c.size); err != nil {
				t.Errorf("h%d %s -> %s, %d bytes: %v", k+1, c.from, c.to, c.size, err)
			}
		}
	}
}

// TestDualStackDeviceRecreated: flannel-v6.1 deleted under a running
// backend comes back with the MAC the lease's BackendV6Data publishes,
// with its address and its peer's entries, and a changed MAC is set back:
// peers' entries for this host stay right (flanneld v0.28.9 watches only
// flannel.1). Traffic flows again.
func TestDualStackDeviceRecreated(t *testing.T) {
	h := dualStackPair(t, etcdDualStack, Config{VNI: 1, Port: 8472})
	x := h[0]
	want := kerneltest.FixtureLines(t, "testdata/dualstack-kernel-state-h1.txt")
	l, _ := x.ns.H.LinkByName("flannel-v6.1")
	if err := x.ns.H.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	if err := x.b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	checkDevice6(t, x, etcdDualStack.subnet6[0], etcdDualStack.mac6[0])
	if got := x.ns.StateLines(t); !slices.Equal(got, want) {
		t.Fatalf("after recreation\n got %q\nwant %q", got, want)
	}
	l, _ = x.ns.H.LinkByName("flannel-v6.1")
	other, _ := net.ParseMAC("02:00:00:00:00:99")
	if err := x.ns.H.LinkSetHardwareAddr(l, other); err != nil {
		t.Fatal(err)
	}
	if err := x.b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	checkDevice6(t, x, etcdDualStack.subnet6[0], etcdDualStack.mac6[0])
	checkTraffic(t, h, etcdDualStack)
}

// TestDualStackCleanup: what `weft cleanup` removes (the vxlan devices and
// tagged routes) leaves no IPv4 or IPv6 state of weft's; keeping
// flannel.1 (the daemon keeps the running backend's device) keeps
// flannel-v6.1 too.
func TestDualStackCleanup(t *testing.T) {
	h := dualStackPair(t, etcdDualStack, Config{VNI: 1, Port: 8472})
	ns := h[0].ns
	var r kernel.Removed
	if err := ns.RemoveVXLANDevices("flannel.1", &r); err != nil || len(r.Links) != 0 {
		t.Fatalf("keeping flannel.1 removed %v (%v)", r.Links, err)
	}
	if err := ns.RemoveVXLANDevices("", &r); err != nil {
		t.Fatal(err)
	}
	if err := ns.RemoveTaggedRoutes(&r); err != nil {
		t.Fatal(err)
	}
	slices.Sort(r.Links)
	if !slices.Equal(r.Links, []string{"flannel-v6.1", "flannel.1"}) {
		t.Fatalf("removed devices %v", r.Links)
	}
	if got := ns.StateLines(t); len(got) != 0 {
		t.Fatalf("state left after cleanup: %q", got)
	}
}

// TestDualStackV4OnlyPeer: a peer without IPv6 on a dual-stack network
// gets IPv4 state only, and a departed IPv6 peer's IPv6 state goes.
func TestDualStackV4OnlyPeer(t *testing.T) {
	h := dualStackPair(t, etcdDualStack, Config{VNI: 1, Port: 8472})
	x := h[0]
	v4only := peerLease("10.5.9.0/24", "192.0.2.9", "vxlan", `{"VNI":1,"VtepMAC":"02:00:00:00:00:09"}`)
	x.b.SetPeers([]lease.Lease{v4only})
	if err := x.b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"02:00:00:00:00:09 dev flannel.1 dst 192.0.2.9 self permanent",
		"10.5.9.0 dev flannel.1 lladdr 02:00:00:00:00:09 PERMANENT",
		"10.5.9.0/24 via 10.5.9.0 dev flannel.1 onlink",
	}
	if got := x.ns.StateLines(t); !slices.Equal(got, want) {
		t.Fatalf("state\n got %q\nwant %q", got, want)
	}
	if s := x.b.Status().(Status); len(s.Peers) != 1 || s.Peers[0].IPv6Subnet.IsValid() || s.Device6 != "flannel-v6.1" || s.MTU6 != 1430 {
		t.Fatalf("status %+v", s)
	}
}

// TestDualStackDirectRouting: DirectRouting routes a peer on the
// underlay's IPv6 segment by a plain route too, as flanneld's
// v6DirectRoute.
func TestDualStackDirectRouting(t *testing.T) {
	h := dualStackPair(t, etcdDualStack, Config{VNI: 1, Port: 8472, DirectRouting: true})
	want := []string{
		"10.5.62.0/24 via 192.0.2.2 dev fk-v1",
		"fd00:10:5:32::/64 via 2001:db8::2 dev fk-v1 metric 1024",
	}
	if got := h[0].ns.StateLines(t); !slices.Equal(got, want) {
		t.Fatalf("state\n got %q\nwant %q", got, want)
	}
	checkTraffic(t, h, etcdDualStack)
}

// TestAcceptIPv6: a peer's BackendV6Data is checked as its BackendData
// is, and refusals name it.
func TestAcceptIPv6(t *testing.T) {
	b := &Backend{}
	b.leases6.V6 = true
	b.accept6 = AcceptLeaseV6Cached(1, &b.leases6)
	fixture, err := os.ReadFile("testdata/dualstack-lease-h2.json")
	if err != nil {
		t.Fatal(err)
	}
	var good lease.Attrs
	if err := json.Unmarshal(fixture, &good); err != nil {
		t.Fatal(err)
	}
	if err := b.AcceptIPv6(good); err != nil {
		t.Fatalf("the fixture's lease: %v", err)
	}
	for data, want := range map[string]string{
		`{"VNI":2,"VtepMAC":"62:a3:0b:92:83:ae"}`: "VNI is 2",
		`{"VNI":1,"VtepMAC":"63:a3:0b:92:83:ae"}`: "unicast",
		`{"VNI":1,"VtepMAC":"nope"}`:              "Ethernet",
		`{"VNI":1}`:                               "Ethernet",
		`[1]`:                                     "BackendV6Data",
		``:                                        "BackendV6Data",
	} {
		a := good
		a.BackendV6Data = json.RawMessage(data)
		err := b.AcceptIPv6(a)
		var r *admission.Refused
		if !errorAs(err, &r) || r.Reason != admission.BackendData || !strings.Contains(err.Error(), "BackendV6Data") || !strings.Contains(err.Error(), want) {
			t.Errorf("BackendV6Data %s: %v; want a backend-data refusal naming BackendV6Data and %q", data, err, want)
		}
	}
}

func errorAs(err error, r **admission.Refused) bool {
	x, ok := err.(*admission.Refused)
	*r = x
	return ok
}

// TestLeaseV6BytesMatchFlanneld: BackendV6Data as flanneld writes it, and
// read back.
func TestLeaseV6BytesMatchFlanneld(t *testing.T) {
	want, err := os.ReadFile("testdata/dualstack-lease-h1.json")
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("12:ad:4c:f6:c0:a2")
	mac6, _ := net.ParseMAC("22:a6:83:20:ec:9a")
	data, _ := MarshalLeaseData(1, mac)
	data6, _ := MarshalLeaseData(1, mac6)
	got, err := json.Marshal(lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.1"), PublicIPv6: netip.MustParseAddr("2001:db8::1"),
		BackendType: "vxlan", BackendData: data, BackendV6Data: data6})
	if err != nil || string(got) != string(want) {
		t.Fatalf("lease\n got %s (%v)\nwant %s", got, err, want)
	}
	var back lease.Attrs
	if err := json.Unmarshal(want, &back); err != nil {
		t.Fatal(err)
	}
	d, m, err := ParseLeaseV6Data(back.BackendV6Data)
	if err != nil || d.VNI != 1 || m.String() != "22:a6:83:20:ec:9a" {
		t.Fatalf("parse: %+v %s %v", d, m, err)
	}
}

// TestDualStackRefusals: a dual-stack backend refuses a lease without an
// IPv6 subnet and an underlay too small for IPv6 on flannel-v6.<VNI>; a
// backend on a network without IPv6 removes a flannel-v6.<VNI> an earlier
// dual-stack run left and publishes no IPv6 part.
func TestDualStackRefusals(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	ns.AddAddr(t, under, netip.MustParsePrefix("2001:db8::1/64"))
	host := encap.Host{Iface: "under0", IfaceIndex: under, IfaceAddr: netip.MustParseAddr("192.0.2.1"), PublicIP: netip.MustParseAddr("192.0.2.1"),
		IfaceMTU: 1500, IfaceAddr6: netip.MustParseAddr("2001:db8::1"), PublicIPv6: netip.MustParseAddr("2001:db8::1")}
	if _, err := New(Options{Host: host, Config: Config{VNI: 1, Port: 8472, MTU: 1349}, NL: ns.Netlink, Sysctl: ns.Sysctl}); err == nil ||
		!strings.Contains(err.Error(), "1280") || !strings.Contains(err.Error(), "1350") {
		t.Fatalf("Backend.MTU 1349 on a dual-stack network: %v", err)
	}
	b, err := New(Options{Host: host, Config: Config{VNI: 1, Port: 8472}, NL: ns.Netlink, Sysctl: ns.Sysctl})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := b.Attrs()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Start(context.Background(), lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: attrs}); err == nil || !strings.Contains(err.Error(), "no IPv6 subnet") {
		t.Fatalf("Start without an IPv6 subnet: %v", err)
	}
	if _, err := ns.H.LinkByName("flannel-v6.1"); err != nil {
		t.Fatal("no flannel-v6.1 after a dual-stack Attrs")
	}

	v4host := host
	v4host.IfaceAddr6, v4host.PublicIPv6 = netip.Addr{}, netip.Addr{}
	b4, err := New(Options{Host: v4host, Config: Config{VNI: 1, Port: 8472}, NL: ns.Netlink, Sysctl: ns.Sysctl})
	if err != nil {
		t.Fatal(err)
	}
	a4, err := b4.Attrs()
	if err != nil {
		t.Fatal(err)
	}
	if a4.PublicIPv6.IsValid() || a4.BackendV6Data != nil {
		t.Fatalf("IPv4-only attrs carry IPv6: %+v", a4)
	}
	if _, err := ns.H.LinkByName("flannel-v6.1"); err == nil {
		t.Fatal("flannel-v6.1 of the earlier dual-stack run left on a network without IPv6")
	}
	if _, err := b4.Start(context.Background(), lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"),
		IPv6Subnet: netip.MustParsePrefix("fd00:10:5:1::/64"), Attrs: a4}); err == nil {
		t.Fatal("an IPv4-only backend started on a lease with an IPv6 subnet")
	}
}
