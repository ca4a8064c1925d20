// Package kerneltest gives tests of the kernel backends a fresh, unnamed
// network namespace with an underlay link, removed when the test ends.
package kerneltest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/encap/kernel"
)

// NS is a namespace for one test.
type NS struct {
	*kernel.Netlink
	Handle netns.NsHandle
}

// New creates an unnamed namespace (it dies with its last reference, so a
// crashed test leaves nothing). Without root it skips, except under
// CI=true, where it fails: CI runs as root and must run these.
func New(t testing.TB) *NS {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (network namespaces), and CI=true runs as root")
		}
		t.Skip("needs root (network namespaces)")
	}
	var ns netns.NsHandle
	err := onThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if ns, err = netns.New(); err != nil {
			return err
		}
		return netns.Set(orig)
	})
	if err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(); ns.Close() })
	n := &NS{Netlink: &kernel.Netlink{H: h, NS: &ns, Nexthops: Nexthops()}, Handle: ns}
	n.up(t, "lo")
	return n
}

// Nexthops reports whether tests program IPv4 routes by nexthop object
// (kernel.Netlink.Nexthops, weft run --route-nexthops):
// WEFT_TEST_ROUTE_NEXTHOPS=1, which `make test` sets for a second run of
// the kernel backends' tests.
func Nexthops() bool { return os.Getenv("WEFT_TEST_ROUTE_NEXTHOPS") == "1" }

// onThread runs fn on a thread of its own; if fn leaves the thread in
// another namespace (an error), the thread is never reused.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		if err == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Sysctl writes /proc/sys/key inside the namespace.
func (n *NS) Sysctl(key, value string) error {
	return n.Do(func() error { return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644) })
}

// Do runs fn on a thread inside the namespace: devices and sockets fn
// creates belong to it. The thread goes back to the original namespace
// after, or is never reused.
func (n *NS) Do(fn func() error) error {
	return onThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := netns.Set(n.Handle); err != nil {
			return err
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			return fmt.Errorf("back to the original namespace: %w", err)
		}
		return ferr
	})
}

func (n *NS) up(t testing.TB, name string) netlink.Link {
	t.Helper()
	l, err := n.H.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.H.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l
}

// Underlay adds a veth pair (name and name+"p"; dummy links need a module
// some kernels lack) with addr (e.g. 192.0.2.1/24) on name, both up, and
// returns name's index.
func (n *NS) Underlay(t testing.TB, name string, addr netip.Prefix, mtu int) int {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = name, mtu
	if err := n.H.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: name + "p"}); err != nil {
		t.Fatal(err)
	}
	n.up(t, name+"p")
	l := n.up(t, name)
	n.AddAddr(t, l.Attrs().Index, addr)
	return l.Attrs().Index
}

// AddAddr adds addr (e.g. 192.0.2.1/24, 2001:db8::1/64) to link index.
// An IPv6 address is added without duplicate address detection (nodad),
// so it is usable at once, as in the fixtures' lab.
func (n *NS) AddAddr(t testing.TB, index int, addr netip.Prefix) {
	t.Helper()
	l, err := n.H.LinkByIndex(index)
	if err != nil {
		t.Fatal(err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), addr.Addr().BitLen())}}
	if addr.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := n.H.AddrAdd(l, a); err != nil {
		t.Fatalf("adding %s to %s: %v", addr, l.Attrs().Name, err)
	}
}

// Link adds a veth pair between n (name) and peer (peerName), both ends
// up with mtu, each end with its addresses, and returns the two ends'
// indexes: two "hosts" on one segment. Neither end runs duplicate address
// detection, for its link-local address either: neighbour discovery
// from a tentative link-local address waits for it, which delayed a
// test's first IPv6 packets by seconds.
func (n *NS) Link(t testing.TB, peer *NS, name, peerName string, mtu int, addrs, peerAddrs []netip.Prefix) (int, int) {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = name, mtu
	if err := n.H.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: peerName, PeerMTU: uint32(mtu),
		PeerNamespace: netlink.NsFd(int(peer.Handle))}); err != nil {
		t.Fatal(err)
	}
	// The kernel skips DAD only when both "all" and the device say so.
	for _, e := range []struct {
		ns   *NS
		name string
	}{{n, "all"}, {n, name}, {peer, "all"}, {peer, peerName}} {
		if err := e.ns.Sysctl("net/ipv6/conf/"+e.name+"/accept_dad", "0"); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	a, b := n.up(t, name).Attrs().Index, peer.up(t, peerName).Attrs().Index
	for _, p := range addrs {
		n.AddAddr(t, a, p)
	}
	for _, p := range peerAddrs {
		peer.AddAddr(t, b, p)
	}
	return a, b
}

// Routes lists the main table's IPv4 routes.
func (n *NS) Routes(t testing.TB) []netlink.Route {
	t.Helper()
	return n.routes(t, netlink.FAMILY_V4)
}

// Routes6 lists the main table's IPv6 routes.
func (n *NS) Routes6(t testing.TB) []netlink.Route {
	t.Helper()
	return n.routes(t, netlink.FAMILY_V6)
}

func (n *NS) routes(t testing.TB, family int) []netlink.Route {
	t.Helper()
	rs, err := kernel.Dump(func() ([]netlink.Route, error) { return n.H.RouteList(nil, family) })
	if err != nil {
		t.Fatal(err)
	}
	return rs
}
