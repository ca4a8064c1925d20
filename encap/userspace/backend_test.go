package userspace

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
	"github.com/weft-net/weft/lease"
)

func testHost(t *testing.T) (*kerneltest.NS, encap.Host) {
	ns := kerneltest.New(t)
	idx := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	a := netip.MustParseAddr("192.0.2.1")
	return ns, encap.Host{Iface: "under0", IfaceIndex: idx, IfaceAddr: a, PublicIP: a, IfaceMTU: 1500}
}

var testCfg = &lease.Config{Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24, BackendType: "udp"}

func peer(subnet, ip, typ, data string) lease.Lease {
	l := lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: typ}}
	if data != "" {
		l.Attrs.BackendData = []byte(data)
	}
	return l
}

// The udp backend: flanneld's lease attributes (no type, no data), its
// part of admission, flannel0 with the underlay's MTU - 28, and a table of
// the admitted peers at the cluster's port.
func TestUDPBackend(t *testing.T) {
	ns, host := testHost(t)
	b, err := NewUDP(host, testCfg, Options{TUNName: "wefttest0", BatchSize: 32, AntiSpoof: true})
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := b.Attrs(); a.BackendType != "" || a.BackendData != nil || a.PublicIP != host.PublicIP {
		t.Errorf("attrs %+v", a)
	}
	if b.Accept(peer("10.5.2.0/24", "192.0.2.2", "", "").Attrs) != nil || b.Accept(peer("10.5.2.0/24", "192.0.2.2", "vxlan", "").Attrs) == nil {
		t.Error("Accept takes anything but udp leases, or refuses them")
	}
	if b.Datapath() != nil {
		t.Error("a datapath before Start")
	}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{PublicIP: host.PublicIP}}
	var mtu int
	if err := ns.Do(func() (err error) { mtu, err = b.Start(context.Background(), own); return err }); err != nil {
		t.Fatal(err)
	}
	run(t, b)
	if mtu != 1472 {
		t.Errorf("mtu %d, want 1472", mtu)
	}
	l, err := ns.H.LinkByName("wefttest0")
	if err != nil || l.Attrs().MTU != 1472 {
		t.Fatalf("TUN: %v %v", l, err)
	}
	b.SetPeers([]lease.Lease{peer("10.5.2.0/24", "192.0.2.2", "", ""), peer("10.5.3.0/24", "192.0.2.3", "", "")})
	peers := b.Datapath().Engine.Table().Peers()
	if len(peers) != 2 || peers[0].Endpoint.Port() != 8285 {
		t.Fatalf("table %+v", peers)
	}
	if s := b.Status().(UDPStatus); s.MTU != 1472 || s.Port != 8285 {
		t.Errorf("status %+v", s)
	}
}

// Userspace vxlan: a vxlan lease with a VtepMAC kept in the state
// directory, the kernel backend's Accept, a TUN of Backend.MTU - 50, and
// peers with their MACs.
func TestVXLANBackend(t *testing.T) {
	ns, host := testHost(t)
	cfg := *testCfg
	// Backend.MTU is the underlay's, as for the kernel device and in
	// flanneld: the TUN (and FLANNEL_MTU) gets 50 bytes less.
	cfg.BackendType, cfg.Backend = "vxlan", []byte(`{"Type":"vxlan","VNI":3,"MTU":1400}`)
	b, err := NewVXLAN(host, &cfg, Options{BatchSize: 32, AntiSpoof: true, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	a, err := b.Attrs()
	if err != nil || a.BackendType != "vxlan" || !strings.Contains(string(a.BackendData), `"VNI":3`) {
		t.Fatalf("attrs %s %v", a.BackendData, err)
	}
	if err := b.Accept(peer("10.5.2.0/24", "192.0.2.2", "vxlan", `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`).Attrs); err == nil {
		t.Error("Accept takes another VNI")
	}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: a}
	var mtu int
	if err := ns.Do(func() (err error) { mtu, err = b.Start(context.Background(), own); return err }); err != nil {
		t.Fatal(err)
	}
	run(t, b)
	if l, err := ns.H.LinkByName("flannel.3"); err != nil || l.Attrs().MTU != 1350 || mtu != 1350 {
		t.Fatalf("flannel.3 %v (%v), Start's MTU %d: want a TUN of MTU 1350 (Backend.MTU 1400 - 50)", l, err, mtu)
	}
	b.SetPeers([]lease.Lease{peer("10.5.2.0/24", "192.0.2.2", "vxlan", `{"VNI":3,"VtepMAC":"02:00:00:00:00:02"}`)})
	peers := b.Datapath().Engine.Table().Peers()
	if len(peers) != 1 || peers[0].Endpoint.Port() != 8472 {
		t.Fatalf("table %+v", peers)
	}
}

// run runs b until the test ends; Run closes the TUN and the socket.
func run(t *testing.T, b encap.Backend) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

var testCfg6 = &lease.Config{Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24, BackendType: "udp",
	EnableIPv6: true, IPv6Network: netip.MustParsePrefix("fd00:10:5::/56"), IPv6SubnetLen: 64}

func testHost6(t *testing.T) (*kerneltest.NS, encap.Host) {
	ns, host := testHost(t)
	ns.AddAddr(t, host.IfaceIndex, netip.MustParsePrefix("2001:db8::1/64"))
	host.IfaceAddr6 = netip.MustParseAddr("2001:db8::1")
	host.PublicIPv6 = host.IfaceAddr6
	return ns, host
}

func peer6(subnet, ip, subnet6, ip6, typ, data, data6 string) lease.Lease {
	l := peer(subnet, ip, typ, data)
	l.IPv6Subnet, l.Attrs.PublicIPv6 = netip.MustParsePrefix(subnet6), netip.MustParseAddr(ip6)
	if data6 != "" {
		l.Attrs.BackendV6Data = []byte(data6)
	}
	return l
}

// The udp backend on a dual-stack network: the lease names PublicIPv6
// and, in BackendV6Data, the port of its IPv6 underlay; the TUN carries
// the IPv6 lease's address and the IPv6 network's route (IPv6 on) with an
// MTU both underlays carry; a second socket listens on the interface's
// IPv6 address; and the table reaches a peer's IPv6 subnet over the IPv6
// underlay when the peer's lease has one, else through its IPv4 endpoint
// (a weft host of the previous release: flannel's UDP format carries
// either family).
func TestUDPBackendDualStack(t *testing.T) {
	ns, host := testHost6(t)
	b, err := NewUDP(host, testCfg6, Options{TUNName: "wefttest6", BatchSize: 32, AntiSpoof: true})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := b.Attrs()
	if a.PublicIPv6 != host.PublicIPv6 || string(a.BackendV6Data) != `{"Port":8285}` || a.BackendData != nil || a.BackendType != "" {
		t.Errorf("attrs %+v (BackendV6Data %s)", a, a.BackendV6Data)
	}
	for data6, ok := range map[string]bool{"": true, `{"Port":8285}`: true, `{"Port":8286}`: false, `{"Port":"x"}`: false, `[`: false} {
		l := peer6("10.5.2.0/24", "192.0.2.2", "fd00:10:5:2::/64", "2001:db8::2", "", "", data6)
		if err := b.AcceptIPv6(l.Attrs); (err == nil) != ok {
			t.Errorf("AcceptIPv6(%s): %v", data6, err)
		}
	}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:10:5:1::/64"), Attrs: a}
	var mtu int
	if err := ns.Do(func() (err error) { mtu, err = b.Start(context.Background(), own); return err }); err != nil {
		t.Fatal(err)
	}
	run(t, b)
	if mtu != 1452 {
		t.Errorf("mtu %d, want 1452 (the IPv6 underlay's less 48, which IPv4 packets fit too)", mtu)
	}
	if s := b.Status().(UDPStatus); s.Local6 != "[2001:db8::1]:8285" || s.Socket == nil || s.Socket6 == nil {
		t.Errorf("status %+v", s)
	}
	l, err := ns.H.LinkByName("wefttest6")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := ns.H.AddrList(l, netlink.FAMILY_V6)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "fd00:10:5:1::/128" {
		t.Errorf("IPv6 addresses of the TUN: %v %v (want only fd00:10:5:1::/128, no link-local)", addrs, err)
	}
	found := false
	for _, r := range ns.Routes6(t) {
		if r.LinkIndex == l.Attrs().Index && r.Dst != nil && r.Dst.String() == "fd00:10:5::/56" {
			found = true
		}
	}
	if !found {
		t.Errorf("no route for fd00:10:5::/56 through the TUN: %v", ns.Routes6(t))
	}
	b.SetPeers([]lease.Lease{
		peer6("10.5.2.0/24", "192.0.2.2", "fd00:10:5:2::/64", "2001:db8::2", "", "", ""), // the previous release
		peer("10.5.3.0/24", "192.0.2.3", "", ""),                                         // a host without IPv6
		peer6("10.5.4.0/24", "192.0.2.4", "fd00:10:5:4::/64", "2001:db8::4", "", "", `{"Port":8285}`),
	})
	tab := b.Datapath().Engine.Table()
	p := tab.Lookup(netip.MustParseAddr("fd00:10:5:2::5"))
	if p == nil || p.Endpoint != netip.MustParseAddrPort("192.0.2.2:8285") || p.Endpoint6.IsValid() {
		t.Fatalf("IPv6 peer of the previous release %+v", p)
	}
	p = tab.Lookup(netip.MustParseAddr("fd00:10:5:4::5"))
	if p == nil || p.Endpoint != netip.MustParseAddrPort("192.0.2.4:8285") || p.Endpoint6 != netip.MustParseAddrPort("[2001:db8::4]:8285") {
		t.Fatalf("IPv6 peer with an IPv6 underlay %+v", p)
	}
	if tab.Lookup(netip.MustParseAddr("10.5.4.1")) != p {
		t.Error("the peer's IPv4 subnet is not the same peer")
	}
	if tab.Own6() != own.IPv6Subnet || tab.Lookup(netip.MustParseAddr("10.5.3.1")) == nil {
		t.Errorf("table: own6 %s, peers %v", tab.Own6(), tab.Peers())
	}
}

// Userspace vxlan on a dual-stack network: a second VtepMAC kept in the
// state directory and advertised in BackendV6Data with PublicIPv6, the
// kernel backend's AcceptIPv6, one TUN of flannel-v6.<VNI>'s MTU (the
// underlay's less 70, which fits IPv4 too) with both families' addresses,
// and peers reached over the IPv6 underlay with their IPv6 MACs.
func TestVXLANBackendDualStack(t *testing.T) {
	ns, host := testHost6(t)
	cfg := *testCfg6
	cfg.BackendType, cfg.Backend = "vxlan", []byte(`{"Type":"vxlan","VNI":3}`)
	dir := t.TempDir()
	b, err := NewVXLAN(host, &cfg, Options{BatchSize: 32, AntiSpoof: true, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	a, err := b.Attrs()
	if err != nil || a.PublicIPv6 != host.PublicIPv6 || !strings.Contains(string(a.BackendV6Data), `"VNI":3`) {
		t.Fatalf("attrs %+v %v", a, err)
	}
	if string(a.BackendV6Data) == string(a.BackendData) {
		t.Fatal("the IPv6 VtepMAC is the IPv4 one")
	}
	again, _ := NewVXLAN(host, &cfg, Options{BatchSize: 32, StateDir: dir})
	if a2, err := again.Attrs(); err != nil || string(a2.BackendV6Data) != string(a.BackendV6Data) {
		t.Fatalf("IPv6 VtepMAC not kept: %s, then %s (%v)", a.BackendV6Data, a2.BackendV6Data, err)
	}
	good := peer6("10.5.2.0/24", "192.0.2.2", "fd00:10:5:2::/64", "2001:db8::2", "vxlan",
		`{"VNI":3,"VtepMAC":"02:00:00:00:00:02"}`, `{"VNI":3,"VtepMAC":"02:00:00:00:06:02"}`)
	if err := b.AcceptIPv6(good.Attrs); err != nil {
		t.Errorf("AcceptIPv6 refuses %s: %v", good.Attrs.BackendV6Data, err)
	}
	for _, bad := range []string{`{"VNI":1,"VtepMAC":"02:00:00:00:06:02"}`, `{"VNI":3,"VtepMAC":"03:00:00:00:06:02"}`, `{"VNI":3}`, `null`} {
		l := good
		l.Attrs.BackendV6Data = []byte(bad)
		if b.AcceptIPv6(l.Attrs) == nil {
			t.Errorf("AcceptIPv6 takes %s", bad)
		}
	}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:10:5:1::/64"), Attrs: a}
	var mtu int
	if err := ns.Do(func() (err error) { mtu, err = b.Start(context.Background(), own); return err }); err != nil {
		t.Fatal(err)
	}
	run(t, b)
	if mtu != 1430 {
		t.Errorf("mtu %d, want 1430 (flannel-v6.<VNI>'s)", mtu)
	}
	l, err := ns.H.LinkByName("flannel.3")
	if err != nil || l.Attrs().MTU != 1430 {
		t.Fatalf("TUN %v %v", l, err)
	}
	if addrs, err := ns.H.AddrList(l, netlink.FAMILY_V6); err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "fd00:10:5:1::/128" {
		t.Errorf("IPv6 addresses of the TUN: %v %v", addrs, err)
	}
	b.SetPeers([]lease.Lease{good, peer("10.5.3.0/24", "192.0.2.3", "vxlan", `{"VNI":3,"VtepMAC":"02:00:00:00:00:03"}`)})
	tab := b.Datapath().Engine.Table()
	p := tab.Lookup(netip.MustParseAddr("fd00:10:5:2::9"))
	if p == nil || p.Endpoint6 != netip.MustParseAddrPort("[2001:db8::2]:8472") || p.HWAddr6 != [6]byte{2, 0, 0, 0, 6, 2} || p.HWAddr != [6]byte{2, 0, 0, 0, 0, 2} {
		t.Fatalf("IPv6 peer %+v", p)
	}
	if p3 := tab.Lookup(netip.MustParseAddr("10.5.3.1")); p3 == nil || p3.Endpoint6.IsValid() {
		t.Errorf("IPv4-only peer %+v", p3)
	}
	s := b.Status().(VXLANStatus)
	if s.MAC6 == "" || s.Transport.Receive6 == nil || len(s.Transport.SourcePorts6) == 0 {
		t.Errorf("status %+v", s)
	}
}

// A udp host on a dual-stack network with no IPv6 underlay of its own
// (no PublicIPv6: admission refuses its IPv6 subnet elsewhere) opens no
// IPv6 socket, advertises none, and reaches even a peer that has one
// through its IPv4 endpoint, so the two agree on the underlay.
func TestUDPBackendWithoutIPv6Underlay(t *testing.T) {
	_, host := testHost(t)
	b, err := NewUDP(host, testCfg6, Options{TUNName: "wefttest7", BatchSize: 32, AntiSpoof: true})
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := b.Attrs(); a.BackendV6Data != nil || b.underlay6() {
		t.Errorf("attrs %+v without an IPv6 address", a)
	}
	specs := b.specs([]lease.Lease{peer6("10.5.4.0/24", "192.0.2.4", "fd00:10:5:4::/64", "2001:db8::4", "", "", `{"Port":8285}`)})
	if specs[0].Endpoint6.IsValid() {
		t.Errorf("spec %+v: an IPv6 endpoint without an IPv6 socket", specs[0])
	}
}
