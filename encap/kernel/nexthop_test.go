package kernel_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
)

// ip runs iproute2's ip inside ns (the child inherits the thread's
// namespace) and returns its output.
func ip(t *testing.T, ns *kerneltest.NS, args ...string) string {
	t.Helper()
	var out []byte
	err := ns.Do(func() error {
		var err error
		out, err = exec.Command("ip", args...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func hasLine(s, line string) bool {
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

// TestNexthopRoutes: with Nexthops on, weft's IPv4 routes go in by nexthop
// objects tagged with its protocol, id = the destination's address; the
// kernel still reports gateway and device with the route, so a second
// pass changes nothing; an update removes a peer's route and its object;
// a route deleted by hand, an object deleted by hand (its route goes
// with it) and a stale object are repaired or removed by a full pass; an
// id another daemon holds is left alone and that route goes in plain;
// and RemoveTaggedRoutes leaves no object of weft's.
func TestNexthopRoutes(t *testing.T) {
	ns := kerneltest.New(t)
	ns.Nexthops = true
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	dev := vxlanDev(t, ns, under)
	route := func(i int) kernel.Route {
		sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24)
		return kernel.Route{Dst: sn, Gw: sn.Addr(), LinkIndex: dev, Onlink: true}
	}
	id := func(i int) string { return fmt.Sprint(10<<24 | 5<<16 | i<<8) }
	// Another daemon's object holds route(3)'s id.
	ip(t, ns, "nexthop", "add", "id", id(3), "via", "192.0.2.200", "dev", "under0")
	// A stale object of weft's, from an earlier run.
	ip(t, ns, "nexthop", "add", "id", id(9), "via", "10.5.9.0", "dev", "flannel.7", "onlink", "proto", "87")

	want := kernel.State{Dev: dev, Routes: []kernel.Route{route(1), route(2), route(3)}}
	if off := ns.NexthopsOff(); off != "" {
		t.Fatalf("nexthops off: %s", off)
	}
	c, err := ns.Reconcile(want)
	if err != nil || len(c.Added) != 3 {
		t.Fatalf("first pass: %+v, %v", c, err)
	}
	routes := ip(t, ns, "-4", "route")
	for _, l := range []string{
		"10.5.1.0/24 nhid " + id(1) + " via 10.5.1.0 dev flannel.7 proto 87 onlink",
		"10.5.2.0/24 nhid " + id(2) + " via 10.5.2.0 dev flannel.7 proto 87 onlink",
		"10.5.3.0/24 via 10.5.3.0 dev flannel.7 proto 87 onlink", // plain: the id is another's
	} {
		if !hasLine(routes, l) {
			t.Errorf("no route %q in\n%s", l, routes)
		}
	}
	nh := ip(t, ns, "nexthop")
	if !strings.Contains(nh, "id "+id(3)+" via 192.0.2.200 dev under0") || strings.Contains(nh, "id "+id(9)+" ") {
		t.Errorf("the other daemon's object must stay and the stale one go:\n%s", nh)
	}
	if c, err := ns.Reconcile(want); err != nil || len(c.Added)+len(c.Removed) != 0 {
		t.Fatalf("second pass changed %+v (%v); want nothing", c, err)
	}

	// By hand: route(1) deleted, route(2)'s object deleted (taking its
	// route). A full pass puts both back.
	ip(t, ns, "route", "del", "10.5.1.0/24")
	ip(t, ns, "nexthop", "del", "id", id(2))
	if c, err := ns.Reconcile(want); err != nil || len(c.Added) != 2 {
		t.Fatalf("repair pass: %+v (%v); want 2 added", c, err)
	}
	if r := ip(t, ns, "-4", "route"); !strings.Contains(r, "10.5.1.0/24 nhid") || !strings.Contains(r, "10.5.2.0/24 nhid") {
		t.Fatalf("not repaired:\n%s", r)
	}

	// A peer leaves through an update: its route and object go, only them.
	r := &kernel.Reconciler{NL: ns.Netlink, Log: slog.New(slog.DiscardHandler), Desired: func() (kernel.State, bool, error) { return want, true, nil }}
	if err := r.Pass(); err != nil {
		t.Fatal(err)
	}
	r.Change(kernel.State{Dev: dev, Routes: []kernel.Route{route(2)}}, kernel.State{Dev: dev})
	want.Routes = []kernel.Route{route(1), route(3)}
	if err := r.Update(); err != nil {
		t.Fatal(err)
	}
	if r := ip(t, ns, "-4", "route"); strings.Contains(r, "10.5.2.0") || !strings.Contains(r, "10.5.1.0/24 nhid") {
		t.Fatalf("after the update:\n%s", r)
	}
	if nh := ip(t, ns, "nexthop"); strings.Contains(nh, "id "+id(2)+" ") {
		t.Fatalf("the departed peer's object is left:\n%s", nh)
	}

	// A plain delete of a route by nexthop (as flanneld's RouteDel would
	// send, with gateway and device) does not match it; the stale-route
	// path deletes it anyway.
	c, err = ns.Reconcile(kernel.State{Dev: dev, Routes: []kernel.Route{route(3)}})
	if err != nil || len(c.Removed) != 1 {
		t.Fatalf("leave pass: %+v (%v)", c, err)
	}

	var rm kernel.Removed
	if err := ns.RemoveTaggedRoutes(&rm); err != nil {
		t.Fatal(err)
	}
	if nh := ip(t, ns, "nexthop"); strings.Contains(nh, "proto 87") || !strings.Contains(nh, "id "+id(3)+" ") {
		t.Fatalf("after cleanup (only the other daemon's object may stay):\n%s", nh)
	}
	for _, rt := range ns.Routes(t) {
		if rt.Protocol == kernel.RouteProtocol {
			t.Errorf("tagged route left: %v", rt)
		}
	}
}

// TestNexthopsOffKeepsEarlierObjects: a run without nexthops finds the
// routes an earlier run made by nexthop object: it keeps the wanted ones
// as they are (no route is replaced on a restart) and removes a departed
// peer's route with its object.
func TestNexthopsOffKeepsEarlierObjects(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	keep := kernel.Route{Dst: netip.MustParsePrefix("10.6.1.0/24"), Gw: netip.MustParseAddr("192.0.2.11"), LinkIndex: under}
	ip(t, ns, "nexthop", "add", "id", fmt.Sprint(10<<24|6<<16|1<<8), "via", "192.0.2.11", "dev", "under0", "proto", "87")
	ip(t, ns, "route", "add", "10.6.1.0/24", "nhid", fmt.Sprint(10<<24|6<<16|1<<8), "proto", "87")
	ip(t, ns, "nexthop", "add", "id", fmt.Sprint(10<<24|6<<16|2<<8), "via", "192.0.2.12", "dev", "under0", "proto", "87")
	ip(t, ns, "route", "add", "10.6.2.0/24", "nhid", fmt.Sprint(10<<24|6<<16|2<<8), "proto", "87")
	ns.Nexthops = false
	c, err := ns.Reconcile(kernel.State{Routes: []kernel.Route{keep}})
	if err != nil || len(c.Added) != 0 || len(c.Removed) != 1 {
		t.Fatalf("pass: %+v (%v); want the departed route removed, nothing added", c, err)
	}
	if r := ip(t, ns, "-4", "route"); !strings.Contains(r, "10.6.1.0/24 nhid") || strings.Contains(r, "10.6.2.0") {
		t.Fatalf("routes:\n%s", r)
	}
	if nh := ip(t, ns, "nexthop"); strings.Count(nh, "proto 87") != 1 {
		t.Fatalf("objects:\n%s", nh)
	}
}

// TestRunRepairsDeletedNexthop: the kernel removes the routes by a
// nexthop object deleted by hand without announcing them, so the loop
// watches the objects themselves: the route is back well before the
// periodic pass, and the loop's own deletion of a departed peer's object
// does not wake a full pass.
func TestRunRepairsDeletedNexthop(t *testing.T) {
	ns := kerneltest.New(t)
	ns.Nexthops = true
	// No IPv6 link-local addresses: their late arrival on the devices
	// would wake a full pass that repairs anyway, and hide what is tested.
	for _, k := range []string{"net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"} {
		if err := ns.Sysctl(k, "1"); err != nil {
			t.Fatal(err)
		}
	}
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	p := &peers{dev: vxlanDev(t, ns, under), ids: []int{1, 2}}
	r := &kernel.Reconciler{NL: ns.Netlink, Log: slog.New(slog.DiscardHandler), Interval: time.Hour,
		Desired: func() (kernel.State, bool, error) { return p.state(), true, nil }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5s (the periodic pass is an hour away)", what)
			}
		}
	}
	byNH := func(sn netip.Prefix) bool { return strings.Contains(ip(t, ns, "-4", "route"), sn.String()+" nhid") }
	waitFor("routes by nexthop", func() bool { return byNH(peerSubnet(1)) && byNH(peerSubnet(2)) })
	id := fmt.Sprint(10<<24 | 100<<16 | 1<<8)
	ip(t, ns, "nexthop", "del", "id", id)
	waitFor("route by a deleted object repaired", func() bool { return byNH(peerSubnet(1)) && r.Stats().Repairs >= 1 })

	passes := r.Stats().Passes
	gone := p.state()
	p.ids = []int{1}
	r.Change(kernel.State{Dev: gone.Dev, Routes: gone.Routes[1:], Neighs: gone.Neighs[1:], FDB: gone.FDB[1:]}, kernel.State{Dev: gone.Dev})
	waitFor("departed peer removed", func() bool { return !strings.Contains(ip(t, ns, "-4", "route"), peerSubnet(2).String()) })
	time.Sleep(200 * time.Millisecond) // past the loop's debounce
	if got := r.Stats().Passes; got != passes {
		t.Fatalf("the update's own deletions woke %d full passes", got-passes)
	}
}
