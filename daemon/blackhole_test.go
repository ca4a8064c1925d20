package daemon

import (
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
)

// --ip-blackhole-route never shadows the pods' bridge route for the
// subnet, whichever comes first; it is added again when missing (and only
// then); a kernel backend's reconcile pass leaves it alone.
func TestBlackholeBesideBridgeRoute(t *testing.T) {
	ns := kerneltest.New(t)
	subnet := netip.MustParsePrefix("10.9.1.0/24")
	lookup := func() int {
		t.Helper()
		rs, err := ns.H.RouteGet(net.IPv4(10, 9, 1, 5))
		if err != nil {
			return -1 // a blackhole: the kernel answers EINVAL
		}
		return rs[0].LinkIndex
	}
	if err := ensureBlackhole(ns.H.RouteAdd, subnet); err != nil {
		t.Fatal(err)
	}
	if lookup() != -1 {
		t.Fatal("the blackhole does not catch the subnet")
	}
	// The bridge comes up after weft (a first boot): its route wins.
	bridge := ns.Underlay(t, "cni0", netip.MustParsePrefix("10.9.1.1/24"), 1500)
	if got := lookup(); got != bridge {
		t.Fatalf("10.9.1.5 goes to link %d, want the bridge %d", got, bridge)
	}
	if err := ensureBlackhole(ns.H.RouteAdd, subnet); err != nil {
		t.Fatalf("a second ensure: %v", err)
	}
	// A reconcile pass of a kernel backend keeps it.
	if _, err := ns.Reconcile(kernel.State{}); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range ns.Routes(t) {
		if r.Type == unix.RTN_BLACKHOLE && r.Dst.String() == subnet.String() {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d blackhole routes after a reconcile pass, want 1", n)
	}
}
