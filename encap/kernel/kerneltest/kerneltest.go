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
	n := &NS{Netlink: &kernel.Netlink{H: h, NS: &ns}, Handle: ns}
	n.up(t, "lo")
	return n
}

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
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}}
	if err := n.H.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// Routes lists the main table's IPv4 routes.
func (n *NS) Routes(t testing.TB) []netlink.Route {
	t.Helper()
	rs, err := kernel.Dump(func() ([]netlink.Route, error) { return n.H.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		t.Fatal(err)
	}
	return rs
}
