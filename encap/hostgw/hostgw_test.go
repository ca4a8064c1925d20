package hostgw

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
	"github.com/weft-net/weft/lease"
)

// The lease is byte for byte flanneld's (fixture host-gw/lease-10.5.21.0-24.json).
func TestLeaseBytesMatchFlanneld(t *testing.T) {
	want, err := os.ReadFile("testdata/lease-10.5.21.0-24.json")
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Options{Host: encap.Host{IfaceAddr: netip.MustParseAddr("192.0.2.1"), PublicIP: netip.MustParseAddr("192.0.2.1")}})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := b.Attrs()
	got, err := json.Marshal(a)
	if err != nil || string(got) != string(want) {
		t.Fatalf("got %s (%v), want %s", got, err, want)
	}
}

func TestRefuse(t *testing.T) {
	seg := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	l := func(ip, typ string) lease.Lease {
		return lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: typ}}
	}
	if why := Refuse(l("192.0.2.7", "host-gw"), seg); why != "" {
		t.Errorf("on-segment peer refused: %s", why)
	}
	if why := Refuse(l("198.51.100.7", "host-gw"), seg); !strings.Contains(why, "198.51.100.7") || !strings.Contains(why, "router") {
		t.Errorf("off-segment peer: %q", why)
	}
	if err := (&Backend{}).Accept(l("192.0.2.7", "").Attrs); err == nil || !strings.Contains(err.Error(), "udp") {
		t.Errorf("udp peer: %v", err)
	}
}

// TestRoutes: flanneld's "10.5.51.0/24 via 192.0.2.2 dev fa-v1" per
// reachable peer, tagged; the peer behind a router gets none; a departed
// peer's route goes; a route deleted by hand comes back as a repair.
func TestRoutes(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	b, err := New(Options{NL: ns.Netlink, Host: encap.Host{Iface: "under0", IfaceIndex: under, IfaceAddr: netip.MustParseAddr("192.0.2.1"),
		PublicIP: netip.MustParseAddr("192.0.2.1"), IfaceMTU: 1500}})
	if err != nil {
		t.Fatal(err)
	}
	attrs, _ := b.Attrs()
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.21.0/24"), Attrs: attrs}
	if mtu, err := b.Start(context.Background(), own); err != nil || mtu != 1500 {
		t.Fatalf("Start: %d %v", mtu, err)
	}
	peer := lease.Lease{Subnet: netip.MustParsePrefix("10.5.51.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.2"), BackendType: "host-gw"}}
	far := lease.Lease{Subnet: netip.MustParsePrefix("10.5.52.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("198.51.100.2"), BackendType: "host-gw"}}
	b.SetPeers([]lease.Lease{peer, far})
	if err := b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	routes := func() map[string]string {
		m := map[string]string{}
		for _, r := range ns.Routes(t) {
			if r.Protocol == kernel.RouteProtocol && r.LinkIndex == under {
				m[r.Dst.String()] = r.Gw.String()
			}
		}
		return m
	}
	if got := routes(); len(got) != 1 || got["10.5.51.0/24"] != "192.0.2.2" {
		t.Fatalf("routes %v", got)
	}
	st := b.Status().(Status)
	if !strings.Contains(st.Refused["10.5.52.0/24"], "198.51.100.2") {
		t.Fatalf("status does not name the refused peer: %+v", st)
	}
	rs := ns.Routes(t)
	for _, r := range rs {
		if r.Protocol == kernel.RouteProtocol {
			// By destination, as `ip route del D` does: a delete naming the
			// gateway does not match a route by nexthop object.
			ns.H.RouteDel(&netlink.Route{Dst: r.Dst, Table: r.Table, Protocol: r.Protocol})
		}
	}
	if err := b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if got := routes(); len(got) != 1 || b.Status().(Status).Reconcile.Repairs != 1 {
		t.Fatalf("after deletion: routes %v, stats %+v", got, b.Status().(Status).Reconcile)
	}
	b.SetPeers(nil)
	if err := b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if got := routes(); len(got) != 0 {
		t.Fatalf("departed peer's route left: %v", got)
	}
}

// TestRunLoop drives the real loop: a snapshot is programmed, a route
// deleted by hand comes back through the netlink event well before the
// periodic pass, and ending Run leaves the route in place.
func TestRunLoop(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	b, err := New(Options{NL: ns.Netlink, Interval: time.Hour, Host: encap.Host{Iface: "under0", IfaceIndex: under,
		IfaceAddr: netip.MustParseAddr("192.0.2.1"), PublicIP: netip.MustParseAddr("192.0.2.1"), IfaceMTU: 1500}})
	if err != nil {
		t.Fatal(err)
	}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.21.0/24")}
	b.Start(context.Background(), own)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	b.SetPeers([]lease.Lease{{Subnet: netip.MustParsePrefix("10.5.51.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.2"), BackendType: "host-gw"}}})
	tagged := func() []netlink.Route {
		var out []netlink.Route
		for _, r := range ns.Routes(t) {
			if r.Protocol == kernel.RouteProtocol {
				out = append(out, r)
			}
		}
		return out
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5s (the periodic pass is an hour away)", what)
			}
		}
	}
	waitFor("route programmed", func() bool { return len(tagged()) == 1 })
	r := tagged()[0]
	if err := ns.H.RouteDel(&netlink.Route{Dst: r.Dst, Table: r.Table, Protocol: r.Protocol}); err != nil {
		t.Fatal(err)
	}
	waitFor("route repaired", func() bool { return len(tagged()) == 1 && b.Status().(Status).Reconcile.Repairs == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(tagged()) != 1 {
		t.Fatal("ending Run removed the route; it must stay for a restart")
	}
}

// A public IP that is not the interface's own address (a NAT'd host) is
// refused, naming both, as flanneld v0.28.9's host-gw New refuses
// ExtAddr != IfaceAddr; the interface's own address is not.
func TestRefusesPublicIPOtherThanIfaceAddr(t *testing.T) {
	host := encap.Host{Iface: "eth0", IfaceAddr: netip.MustParseAddr("192.0.2.1"), PublicIP: netip.MustParseAddr("203.0.113.9")}
	_, err := New(Options{Host: host})
	if err == nil || !strings.Contains(err.Error(), "203.0.113.9") || !strings.Contains(err.Error(), "192.0.2.1") || !strings.Contains(err.Error(), "NAT") {
		t.Fatalf("NAT'd public IP: %v", err)
	}
	host.PublicIP = host.IfaceAddr
	if _, err := New(Options{Host: host}); err != nil {
		t.Fatalf("public IP = interface address: %v", err)
	}
}
