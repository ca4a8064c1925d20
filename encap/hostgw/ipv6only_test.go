package hostgw

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/encap/kernel/kerneltest"
	"github.com/weft-net/weft/lease"
)

// TestIPv6OnlyRoutes: on an IPv6-only network (a Host without IPv4, the
// underlay keeping its IPv4 addresses as in the fixtures' lab) host-gw's
// lease is flanneld's ("PublicIP":"0.0.0.0", no BackendData), each host
// has the IPv6 route of the dual-stack fixture and no IPv4 route, pod
// traffic crosses over IPv6, and cleanup leaves nothing.
func TestIPv6OnlyRoutes(t *testing.T) {
	subnet6 := [2]string{"fd00:10:5:62::/64", "fd00:10:5:27::/64"}
	nss := [2]*kerneltest.NS{kerneltest.New(t), kerneltest.New(t)}
	a4 := [2]netip.Prefix{netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("192.0.2.2/24")}
	a6 := [2]netip.Prefix{netip.MustParsePrefix("2001:db8::1/64"), netip.MustParsePrefix("2001:db8::2/64")}
	i1, i2 := nss[0].Link(t, nss[1], "fk-v1", "fk-v2", 1500, []netip.Prefix{a4[0], a6[0]}, []netip.Prefix{a4[1], a6[1]})
	var h [2]*dsHost
	for k, index := range []int{i1, i2} {
		ns := nss[k]
		host := encap.Host{Iface: fmt.Sprintf("fk-v%d", k+1), IfaceIndex: index, IfaceMTU: 1500, IfaceAddr6: a6[k].Addr(), PublicIPv6: a6[k].Addr()}
		b, err := New(Options{Host: host, NL: ns.Netlink})
		if err != nil {
			t.Fatal(err)
		}
		attrs, _ := b.Attrs()
		want := fmt.Sprintf(`{"PublicIP":"0.0.0.0","PublicIPv6":"%s","BackendType":"host-gw"}`, a6[k].Addr())
		if got, err := json.Marshal(attrs); err != nil || string(got) != want {
			t.Fatalf("lease %s (%v), want %s", got, err, want)
		}
		own := lease.Lease{IPv6Subnet: netip.MustParsePrefix(subnet6[k]), Attrs: attrs}
		if mtu, err := b.Start(context.Background(), own); err != nil || mtu != 1500 {
			t.Fatalf("Start: %d %v", mtu, err)
		}
		lo, err := ns.H.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		ns.AddAddr(t, lo.Attrs().Index, netip.PrefixFrom(own.IPv6Subnet.Addr().Next(), 128))
		h[k] = &dsHost{ns: ns, b: b, own: own}
	}
	for k := range h {
		h[k].b.SetPeers([]lease.Lease{h[1-k].own})
		if err := h[k].b.Reconcile(); err != nil {
			t.Fatal(err)
		}
	}
	var want []string
	for _, l := range kerneltest.FixtureLines(t, "testdata/dualstack-kernel-state-h1.txt") {
		if strings.Contains(l, "fd00:") {
			want = append(want, l)
		}
	}
	if got := h[0].ns.StateLines(t); len(want) != 1 || !slices.Equal(got, want) {
		t.Fatalf("h1 kernel state\n got %q\nwant %q", got, want)
	}
	for k := range h {
		from, to := h[k].own.IPv6Subnet.Addr().Next(), h[1-k].own.IPv6Subnet.Addr().Next()
		if err := kerneltest.UDPRoundTrip(h[k].ns, h[1-k].ns, from, to, 1400); err != nil {
			t.Errorf("%s -> %s: %v", from, to, err)
		}
	}
	st := h[0].b.Status().(Status)
	if len(st.Peers) != 1 || st.Peers[0].Subnet.IsValid() || st.Peers[0].IPv6Subnet.String() != subnet6[1] || len(st.Refused) != 0 {
		t.Fatalf("status %+v", st)
	}
	var r kernel.Removed
	if err := h[0].ns.RemoveTaggedRoutes(&r); err != nil {
		t.Fatal(err)
	}
	if got := h[0].ns.StateLines(t); len(got) != 0 || len(r.Routes) != 1 {
		t.Fatalf("cleanup removed %v, left %q", r.Routes, got)
	}
}
