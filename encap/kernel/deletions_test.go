package kernel_test

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
)

// TestDeletionsOnly: the loop's subscription gets no message for the
// entries a reconcile adds (the kernel's socket filter drops them), and
// for each deletion the fields the loop keys on: a route's protocol and
// destination, a neighbour's device and address, an FDB entry's MAC and
// remote.
func TestDeletionsOnly(t *testing.T) {
	ns := kerneltest.New(t)
	under := ns.Underlay(t, "under0", netip.MustParsePrefix("192.0.2.1/24"), 1500)
	dev := vxlanDev(t, ns, under)
	var mu sync.Mutex
	var got []kernel.Deletion
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- ns.WatchDeletions(ctx, func(d kernel.Deletion) { mu.Lock(); got = append(got, d); mu.Unlock() })
	}()
	defer func() { cancel(); <-done }()
	time.Sleep(50 * time.Millisecond) // subscribed

	mac, _ := net.ParseMAC("0e:57:00:00:00:07")
	sn := netip.MustParsePrefix("10.5.7.0/24")
	want := kernel.State{Dev: dev, Routes: []kernel.Route{{Dst: sn, Gw: sn.Addr(), LinkIndex: dev, Onlink: true}},
		Neighs: []kernel.Neigh{{IP: sn.Addr(), MAC: mac}}, FDB: []kernel.FDB{{MAC: mac, Dst: netip.MustParseAddr("192.0.2.7")}}}
	if _, err := ns.Reconcile(want); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	if len(got) != 0 {
		t.Errorf("additions got through the filter: %+v", got)
	}
	mu.Unlock()

	if _, err := ns.Reconcile(kernel.State{Dev: dev}); err != nil {
		t.Fatal(err)
	}
	if err := ns.H.NeighAdd(&netlink.Neigh{LinkIndex: under, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: net.IPv4(192, 0, 2, 99).To4(), HardwareAddr: mac}); err != nil {
		t.Fatal(err)
	}
	ns.H.NeighDel(&netlink.Neigh{LinkIndex: under, Family: unix.AF_INET, IP: net.IPv4(192, 0, 2, 99).To4()})
	keys := map[string]bool{}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		for _, d := range got {
			keys[d.Key] = true
			if d.Type == unix.RTM_DELROUTE && d.Proto != uint8(kernel.RouteProtocol) {
				t.Errorf("route deletion with protocol %d", d.Proto)
			}
			if d.Type == unix.RTM_DELNEIGH && d.Key == "neigh 10.5.7.0" && d.Link != dev {
				t.Errorf("neighbour deletion on device %d, want %d", d.Link, dev)
			}
		}
		n := len(got)
		mu.Unlock()
		if keys["route 10.5.7.0/24"] && keys["neigh 10.5.7.0"] && keys["fdb 0e:57:00:00:00:07 192.0.2.7"] && keys["neigh 192.0.2.99"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deletions seen (%d): %v", n, keys)
		}
	}
}
