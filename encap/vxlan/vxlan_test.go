package vxlan

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
	"github.com/weft-net/weft/lease"
)

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig(json.RawMessage(`{"Type":"vxlan"}`))
	if err != nil || c != (Config{VNI: 1, Port: 8472}) {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	c, err = ParseConfig(json.RawMessage(`{"Type":"vxlan","vni":42,"Port":4789,"GBP":true,"DirectRouting":true,"MTU":1400}`))
	if err != nil || c != (Config{VNI: 42, Port: 4789, GBP: true, DirectRouting: true, MTU: 1400}) {
		t.Fatalf("explicit: %+v, %v", c, err)
	}
	for raw, key := range map[string]string{
		`{"VNI":16777216}`: "Backend.VNI", `{"Port":70000}`: "Backend.Port", `{"MTU":10}`: "Backend.MTU", `{"VNI":"x"}`: "Backend",
	} {
		if _, err := ParseConfig(json.RawMessage(raw)); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: error %v does not name %s", raw, err, key)
		}
	}
}

// The lease this backend writes is byte for byte what flanneld v0.28.9
// wrote for the same device (fixture vxlan/lease-10.5.92.0-24.json).
func TestLeaseBytesMatchFlanneld(t *testing.T) {
	want, err := os.ReadFile("testdata/lease-10.5.92.0-24.json")
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("8e:d7:4b:96:29:eb")
	data, err := MarshalLeaseData(1, mac)
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.1"), BackendType: "vxlan", BackendData: data})
	if err != nil || string(got) != string(want) {
		t.Fatalf("lease\n got %s (%v)\nwant %s", got, err, want)
	}
	var back lease.Attrs
	if err := json.Unmarshal(want, &back); err != nil {
		t.Fatal(err)
	}
	d, m, err := ParseLeaseData(back.BackendData)
	if err != nil || d.VNI != 1 || m.String() != "8e:d7:4b:96:29:eb" {
		t.Fatalf("parse: %+v %s %v", d, m, err)
	}
}

func newBackend(t *testing.T, ns *kerneltest.NS, under int, cfg Config) *Backend {
	t.Helper()
	b, err := New(Options{
		Host:   encap.Host{Iface: "under0", IfaceIndex: under, IfaceAddr: netip.MustParseAddr("192.0.2.1"), PublicIP: netip.MustParseAddr("192.0.2.1"), IfaceMTU: 1500},
		Config: cfg, NL: ns.Netlink, Sysctl: ns.Sysctl,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func peerLease(subnet, ip, typ, data string) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(subnet),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: typ, BackendData: json.RawMessage(data)}}
}

// TestBackendKernelState checks the device and per-peer state against the
// shapes flanneld left (fixture vxlan/kernel-state-h1.txt), the MAC kept
// across a restart, and a departed peer's state removed.
func TestBackendKernelState(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	b := newBackend(t, ns, under, Config{VNI: 1, Port: 8472})
	attrs, err := b.Attrs()
	if err != nil {
		t.Fatal(err)
	}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.92.0/24"), Attrs: attrs}
	mtu, err := b.Start(context.Background(), own)
	if err != nil || mtu != 1450 {
		t.Fatalf("Start: mtu %d, %v; want 1450", mtu, err)
	}
	l, err := ns.H.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	v := l.(*netlink.Vxlan)
	// "vxlan id 1 local 192.0.2.1 dev fa-v1 srcport 0 0 dstport 8472 nolearning ... udpcsum", mtu 1450, UP
	if v.VxlanId != 1 || v.Port != 8472 || v.Learning || !v.SrcAddr.Equal(net.IPv4(192, 0, 2, 1)) ||
		v.VtepDevIndex != under || v.MTU != 1450 || v.Flags&net.FlagUp == 0 || !v.UDPCSum {
		t.Fatalf("device: %+v", v)
	}
	if v.HardwareAddr[0]&1 != 0 || v.HardwareAddr[0]&2 == 0 {
		t.Errorf("MAC %s is not locally administered unicast", v.HardwareAddr)
	}
	if !strings.Contains(string(attrs.BackendData), v.HardwareAddr.String()) {
		t.Fatalf("lease data %s does not carry the device MAC %s", attrs.BackendData, v.HardwareAddr)
	}
	addrs, _ := ns.H.AddrList(v, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.5.92.0/32" {
		t.Fatalf("addresses %v, want 10.5.92.0/32", addrs)
	}

	if err := b.Accept(peerLease("10.5.66.0/24", "192.0.2.3", "host-gw", ``).Attrs); err == nil || !strings.Contains(err.Error(), "host-gw") {
		t.Fatalf("Accept of a host-gw lease: %v", err)
	}
	if err := b.Accept(peerLease("10.5.66.0/24", "192.0.2.3", "vxlan", `{"VNI":2,"VtepMAC":"d6:61:c5:27:4e:01"}`).Attrs); err == nil || !strings.Contains(err.Error(), "VNI") {
		t.Fatalf("Accept of another VNI: %v", err)
	}
	b.SetPeers([]lease.Lease{
		peerLease("10.5.55.0/24", "192.0.2.2", "vxlan", `{"VNI":1,"VtepMAC":"d6:61:c5:27:4e:01"}`),
	})
	if err := b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	checkPeer(t, ns, v.Index, true)
	if s := b.Status().(Status); len(s.Peers) != 1 || s.Reconcile.Programmed != 3 {
		t.Fatalf("status %+v", s)
	}

	// A restart: a new backend over the leftover device keeps its MAC and
	// programs nothing twice.
	b2 := newBackend(t, ns, under, Config{VNI: 1, Port: 8472})
	attrs2, err := b2.Attrs()
	if err != nil || string(attrs2.BackendData) != string(attrs.BackendData) {
		t.Fatalf("restart lease data %s (%v), want %s", attrs2.BackendData, err, attrs.BackendData)
	}
	if _, err := b2.Start(context.Background(), own); err != nil {
		t.Fatal(err)
	}
	b2.SetPeers([]lease.Lease{peerLease("10.5.55.0/24", "192.0.2.2", "vxlan", `{"VNI":1,"VtepMAC":"d6:61:c5:27:4e:01"}`)})
	if err := b2.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if s := b2.Status().(Status); s.Reconcile.Programmed != 0 || s.Reconcile.StaleRemoved != 0 {
		t.Fatalf("restart changed state: %+v", s.Reconcile)
	}
	checkPeer(t, ns, v.Index, true)

	b2.SetPeers(nil)
	if err := b2.Reconcile(); err != nil {
		t.Fatal(err)
	}
	checkPeer(t, ns, v.Index, false)
}

func checkPeer(t *testing.T, ns *kerneltest.NS, dev int, present bool) {
	t.Helper()
	var route, neigh, fdb bool
	for _, r := range ns.Routes(t) {
		// "10.5.55.0/24 via 10.5.55.0 dev flannel.1 onlink"
		if r.Dst != nil && r.Dst.String() == "10.5.55.0/24" && r.Gw.String() == "10.5.55.0" && r.LinkIndex == dev &&
			r.Flags&int(netlink.FLAG_ONLINK) != 0 && r.Protocol == kernel.RouteProtocol {
			route = true
		}
	}
	ns4, _ := ns.H.NeighList(dev, netlink.FAMILY_V4)
	for _, n := range ns4 {
		// "10.5.55.0 dev flannel.1 lladdr d6:61:c5:27:4e:01 PERMANENT"
		if n.IP.String() == "10.5.55.0" && n.HardwareAddr.String() == "d6:61:c5:27:4e:01" && n.State == netlink.NUD_PERMANENT {
			neigh = true
		}
	}
	br, _ := ns.H.NeighList(dev, unix.AF_BRIDGE)
	for _, n := range br {
		// "d6:61:c5:27:4e:01 dev flannel.1 dst 192.0.2.2 self permanent"
		if n.HardwareAddr.String() == "d6:61:c5:27:4e:01" && n.IP.String() == "192.0.2.2" && n.State == netlink.NUD_PERMANENT {
			fdb = true
		}
	}
	if route != present || neigh != present || fdb != present {
		t.Fatalf("route %v, neighbour %v, fdb %v; want all %v (fdb %+v)", route, neigh, fdb, present, br)
	}
	if !present && len(br) != 0 {
		t.Fatalf("fdb entries left: %+v", br)
	}
}

func TestDirectRouting(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	b := newBackend(t, ns, under, Config{VNI: 5, Port: 8472, DirectRouting: true})
	attrs, err := b.Attrs()
	if err != nil {
		t.Fatal(err)
	}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: attrs}
	if _, err := b.Start(context.Background(), own); err != nil {
		t.Fatal(err)
	}
	b.SetPeers([]lease.Lease{
		peerLease("10.5.2.0/24", "192.0.2.2", "vxlan", `{"VNI":5,"VtepMAC":"02:00:00:00:00:02"}`),
		peerLease("10.5.3.0/24", "198.51.100.3", "vxlan", `{"VNI":5,"VtepMAC":"02:00:00:00:00:03"}`),
	})
	// The off-segment peer's route via its vxlan gateway needs no
	// underlay route; its encapsulated packets would, but none are sent.
	if err := b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	dev, _ := ns.H.LinkByName("flannel.5")
	got := map[string]string{}
	for _, r := range ns.Routes(t) {
		if r.Protocol == kernel.RouteProtocol {
			got[r.Dst.String()] = r.Gw.String()
			if r.Dst.String() == "10.5.2.0/24" && r.LinkIndex != under || r.Dst.String() == "10.5.3.0/24" && r.LinkIndex != dev.Attrs().Index {
				t.Errorf("route %s on link %d", r.Dst, r.LinkIndex)
			}
		}
	}
	if got["10.5.2.0/24"] != "192.0.2.2" || got["10.5.3.0/24"] != "10.5.3.0" {
		t.Fatalf("routes %v: want the on-segment peer direct, the other through vxlan", got)
	}
}

// Backend.MTU is the underlay's MTU, as in flanneld v0.28.9 (vxlan.go,
// device.go: device MTU = Backend.MTU - 50; vxlan_network.go: FLANNEL_MTU
// the same): a 1400-byte underlay gives a 1350-byte device, never 1400. One
// larger than the interface's is clamped to it, as the kernel clamps
// flanneld's device.
func TestDeviceMTUIsUnderlayMinusOverhead(t *testing.T) {
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	host := encap.Host{IfaceMTU: 1500}
	for _, c := range []struct{ backendMTU, want int }{
		{0, 1450},    // the fixture's FLANNEL_MTU with a 1500 underlay
		{1500, 1450}, // the interface's, given explicitly
		{1400, 1350},
		{118, 68},
		{9000, 1450}, // larger than the interface's: clamped
	} {
		logged.Reset()
		if got := DeviceMTU(host, Config{MTU: c.backendMTU}, log); got != c.want {
			t.Errorf("Backend.MTU %d on a 1500 interface: device MTU %d, want %d", c.backendMTU, got, c.want)
		}
		if warned := strings.Contains(logged.String(), "Backend.MTU"); warned != (c.backendMTU > 1500) {
			t.Errorf("Backend.MTU %d: warned %v; log %q", c.backendMTU, warned, logged.String())
		}
	}
	// Below 68+50 the device could not exist: refused, naming the key.
	if _, err := ParseConfig(json.RawMessage(`{"MTU":117}`)); err == nil || !strings.Contains(err.Error(), "Backend.MTU") {
		t.Fatalf("MTU 117: %v", err)
	}
	if c, err := ParseConfig(json.RawMessage(`{"MTU":118}`)); err != nil || c.MTU != 118 {
		t.Fatalf("MTU 118: %+v %v", c, err)
	}
}

// The kernel device gets Backend.MTU - 50, and Start reports it (it becomes
// FLANNEL_MTU).
func TestBackendMTUKernelDevice(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	b := newBackend(t, ns, under, Config{VNI: 1, Port: 8472, MTU: 1400})
	attrs, err := b.Attrs()
	if err != nil {
		t.Fatal(err)
	}
	mtu, err := b.Start(context.Background(), lease.Lease{Subnet: netip.MustParsePrefix("10.5.92.0/24"), Attrs: attrs})
	if err != nil || mtu != 1350 {
		t.Fatalf("Start: mtu %d, %v; want 1350", mtu, err)
	}
	l, err := ns.H.LinkByName("flannel.1")
	if err != nil || l.Attrs().MTU != 1350 {
		t.Fatalf("flannel.1: %v, %v; want MTU 1350", l, err)
	}
}

// A device created anew takes the previous lease's VtepMAC (the kube
// store reads it back from the Node's backend-data, as flanneld does),
// so peers' neighbour and FDB entries for this host stay right after a
// reboot or a deleted device.
func TestPrevMACReused(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	prev, _ := net.ParseMAC("52:21:cc:9e:cb:54")
	b, err := New(Options{
		Host:   encap.Host{Iface: "under0", IfaceIndex: under, IfaceAddr: netip.MustParseAddr("192.0.2.1"), PublicIP: netip.MustParseAddr("192.0.2.1"), IfaceMTU: 1500},
		Config: Config{VNI: 1, Port: 8472}, NL: ns.Netlink, Sysctl: ns.Sysctl, PrevMAC: prev,
	})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := b.Attrs()
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"VNI":1,"VtepMAC":"52:21:cc:9e:cb:54"}`; string(attrs.BackendData) != want {
		t.Errorf("lease data %s, want %s", attrs.BackendData, want)
	}
	l, err := ns.H.LinkByName("flannel.1")
	if err != nil || l.Attrs().HardwareAddr.String() != prev.String() {
		t.Fatalf("device MAC %v (%v), want %s", l, err, prev)
	}
}

// flannel.1 deleted, or its MAC changed, under a running backend comes back
// with the MAC the lease publishes: peers' neighbour and FDB entries for
// this host stay right (flanneld makes a new MAC and stays unreachable).
func TestDeviceRecreatedWithLeaseMAC(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	b := newBackend(t, ns, under, Config{VNI: 1, Port: 8472})
	attrs, err := b.Attrs()
	if err != nil {
		t.Fatal(err)
	}
	_, mac, _ := ParseLeaseData(attrs.BackendData)
	if _, err := b.Start(context.Background(), lease.Lease{Subnet: netip.MustParsePrefix("10.5.92.0/24"), Attrs: attrs}); err != nil {
		t.Fatal(err)
	}
	b.SetPeers(nil)
	check := func(what string) {
		t.Helper()
		if err := b.Reconcile(); err != nil {
			t.Fatal(err)
		}
		l, err := ns.H.LinkByName("flannel.1")
		if err != nil || l.Attrs().HardwareAddr.String() != mac.String() {
			t.Fatalf("%s: device %v (%v), want MAC %s", what, l, err, mac)
		}
	}
	l, _ := ns.H.LinkByName("flannel.1")
	if err := ns.H.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	check("after deletion")
	l, _ = ns.H.LinkByName("flannel.1")
	other, _ := net.ParseMAC("02:00:00:00:00:99")
	if err := ns.H.LinkSetHardwareAddr(l, other); err != nil {
		t.Fatal(err)
	}
	check("after a MAC change")
}
