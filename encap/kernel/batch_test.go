package kernel_test

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
)

// A full pass puts its adds in batches of many requests per sendmsg: 600
// vxlan peers (more than two batches of each kind) all arrive, with the
// shape single requests give them, in a few dozen sendmsg calls; a
// request the kernel refuses in the middle of a batch fails alone,
// reported with its entry, and the requests after it in the same batch
// still go in.
func TestFullPassBatches(t *testing.T) {
	for _, nh := range []bool{false, true} {
		t.Run(fmt.Sprintf("nexthops=%v", nh), func(t *testing.T) { testFullPassBatches(t, nh) })
	}
}

func testFullPassBatches(t *testing.T, nexthops bool) {
	ns := kerneltest.New(t)
	ns.Nexthops = nexthops
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	dev := vxlanDev(t, ns, under)
	const peers = 600
	var want kernel.State
	want.Dev = dev
	for i := range peers {
		sub := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i >> 8), byte(i)}), 32)
		if i < 256 { // /24s for the first, /32s after: all distinct
			sub = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 6, byte(i), 0}), 24)
		}
		gw := sub.Addr()
		mac := net.HardwareAddr{0x0a, 0x58, 0, 0, byte(i >> 8), byte(i)}
		want.Routes = append(want.Routes, kernel.Route{Dst: sub, Gw: gw, LinkIndex: dev, Onlink: true})
		want.Neighs = append(want.Neighs, kernel.Neigh{IP: gw, MAC: mac})
		want.FDB = append(want.FDB, kernel.FDB{MAC: mac, Dst: netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i%200)})})
	}
	// A route the kernel refuses: its gateway is on no link and it is
	// not onlink (ENETUNREACH), in the middle of the routes.
	bad := kernel.Route{Dst: netip.MustParsePrefix("10.7.0.0/24"), Gw: netip.MustParseAddr("203.0.113.9"), LinkIndex: under}
	want.Routes = append(want.Routes[:300], append([]kernel.Route{bad}, want.Routes[300:]...)...)

	before := ns.Ops()
	c, err := ns.Reconcile(want)
	ops := ns.Ops()
	if err == nil || !strings.Contains(err.Error(), "adding route "+bad.String()) || strings.Count(err.Error(), "adding route") != 1 {
		t.Fatalf("error %v; want the one refused route's", err)
	}
	if len(c.Added) != 3*peers {
		t.Fatalf("added %d entries, want %d", len(c.Added), 3*peers)
	}
	batches := ops.Batches - before.Batches
	if batches == 0 || batches > 20 {
		t.Errorf("%d batches for %d requests; want a few per kind", batches, ops.Requests-before.Requests)
	}
	t.Logf("%d requests in %d batches", ops.Requests-before.Requests, batches)

	// The entries are those single requests make: a second pass finds
	// everything right (only the refused route missing, refused again).
	c, err = ns.Reconcile(want)
	if len(c.Added)+len(c.Removed) != 0 || err == nil {
		t.Fatalf("second pass changed %+v (%v); want nothing but the refusal", c, err)
	}
	routes := 0
	for _, r := range ns.Routes(t) {
		if r.Protocol == kernel.RouteProtocol {
			routes++
			if r.LinkIndex != dev || r.Flags&int(netlink.FLAG_ONLINK) == 0 {
				t.Fatalf("route %s", r)
			}
		}
	}
	neighs, _ := ns.H.NeighList(dev, netlink.FAMILY_V4)
	fdb, _ := ns.H.NeighList(dev, unix.AF_BRIDGE)
	permanent := 0
	for _, n := range neighs {
		if n.State&netlink.NUD_PERMANENT != 0 {
			permanent++
		}
	}
	if routes != peers || permanent != peers || len(fdb) != peers {
		t.Fatalf("kernel holds %d routes, %d permanent neighbours, %d fdb entries; want %d each", routes, permanent, len(fdb), peers)
	}
	if nexthops {
		if off := ns.NexthopsOff(); off != "" {
			t.Fatalf("nexthops off: %s", off)
		}
		objs := strings.Count(strings.TrimSpace(ip(t, ns, "nexthop", "show", "proto", "87")), "\n") + 1
		if objs != peers {
			t.Fatalf("%d nexthop objects of weft's, want %d", objs, peers)
		}
		if !strings.Contains(ip(t, ns, "route", "show", "10.6.7.0/24"), "nhid") {
			t.Fatal("10.6.7.0/24 is not by nexthop object")
		}
	}
}
