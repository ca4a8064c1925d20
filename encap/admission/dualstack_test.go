package admission

import (
	"net/netip"
	"testing"

	"github.com/weft-net/weft/lease"
)

func l6(subnet, ip, subnet6, ip6 string, created int64) lease.Lease {
	x := l(subnet, ip, created)
	if subnet6 != "" {
		x.IPv6Subnet = netip.MustParsePrefix(subnet6)
	}
	if ip6 != "" {
		x.Attrs.PublicIPv6 = netip.MustParseAddr(ip6)
	}
	return x
}

// TestAdmitDualStack: a lease's IPv6 part is checked like its IPv4 part,
// and a bad IPv6 part refuses the whole lease; a host without IPv6 stays
// a peer over IPv4; on a network without IPv6 the IPv6 part is dropped.
func TestAdmitDualStack(t *testing.T) {
	r := rule
	r.IPv6Network, r.IPv6SubnetLen = netip.MustParsePrefix("fd00:10:5::/56"), 64
	r.Own = l6("10.5.1.0/24", "192.0.2.1", "fd00:10:5:1::/64", "2001:db8::1", 1)
	cases := []struct {
		lease  lease.Lease
		reason string
	}{
		{l6("10.5.2.0/24", "192.0.2.2", "fd00:10:5:2::/64", "2001:db8::2", 2), ""},
		{l6("10.5.3.0/24", "192.0.2.3", "", "", 3), ""}, // no IPv6: a peer over IPv4
		{l6("10.5.4.0/24", "192.0.2.4", "fd00:10:5:4::/63", "2001:db8::4", 4), SubnetLength},
		{l6("10.5.5.0/24", "192.0.2.5", "fd00:10:6:5::/64", "2001:db8::5", 5), OutsideNetwork},
		{l6("10.5.6.0/24", "192.0.2.6", "fd00:10:5:1::/64", "2001:db8::6", 6), OwnSubnet},
		{l6("10.5.7.0/24", "192.0.2.7", "fd00:10:5:2::/64", "2001:db8::7", 7), Overlap},
		{l6("10.5.8.0/24", "192.0.2.8", "fd00:10:5:8::/64", "2001:db8::2", 8), PublicIPTaken},
		{l6("10.5.9.0/24", "192.0.2.9", "fd00:10:5:9::/64", "2001:db8::1", 9), PublicIPTaken}, // this host's
		{l6("10.5.10.0/24", "192.0.2.10", "fd00:10:5:a::/64", "", 10), PublicIP},
		{l6("10.5.11.0/24", "192.0.2.11", "fd00:10:5:b::/64", "fe80::1", 11), PublicIP},
		{l6("10.5.12.0/24", "192.0.2.12", "fd00:10:5:c:1::/80", "2001:db8::c", 12), SubnetLength},
		{lease.Lease{IPv6Subnet: netip.MustParsePrefix("fd00:10:5:d::/64"), Attrs: lease.Attrs{PublicIPv6: netip.MustParseAddr("2001:db8::d")}, CreateRevision: 13}, OutsideNetwork}, // an IPv6-only host's lease
	}
	var snap []lease.Lease
	for _, c := range cases {
		snap = append(snap, c.lease)
	}
	snap = append(snap, r.Own)
	ds := Admit(r, snap)
	if len(ds) != len(cases) {
		t.Fatalf("%d decisions for %d leases", len(ds), len(cases))
	}
	for i, c := range cases {
		var got string
		for _, d := range ds {
			if d.Lease.Subnet == c.lease.Subnet && d.Lease.IPv6Subnet == c.lease.IPv6Subnet {
				got = "admitted"
				if d.Refused != nil {
					got = d.Refused.Reason
				}
			}
		}
		if want := map[bool]string{true: "admitted", false: c.reason}[c.reason == ""]; got != want {
			t.Errorf("case %d %v: %q, want %q", i, c.lease, got, want)
		}
	}

	// Without IPv6 in the network, the IPv6 part is ignored, not checked.
	r4 := rule
	ds = Admit(r4, []lease.Lease{l6("10.5.2.0/24", "192.0.2.2", "fd00:99::/64", "fe80::1", 2)})
	if len(ds) != 1 || ds[0].Refused != nil || ds[0].Lease.IPv6Subnet.IsValid() || ds[0].Lease.Attrs.PublicIPv6.IsValid() {
		t.Errorf("IPv4 network, dual-stack lease: %+v", ds)
	}

	// The backend's IPv6 check runs only for leases with an IPv6 subnet.
	calls := 0
	r.AcceptIPv6 = func(lease.Attrs) error { calls++; return Refuse(BackendData, "no") }
	ds = Admit(r, []lease.Lease{cases[0].lease, cases[1].lease})
	if calls != 1 || ds[0].Refused == nil || ds[0].Refused.Reason != BackendData || ds[1].Refused != nil {
		t.Errorf("AcceptIPv6: %d calls, %+v", calls, ds)
	}
}
