package admission

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/lease"
)

// l6only is an IPv6-only host's lease, as the stores read
// "0.0.0.0-0&<subnet6>" with PublicIP "0.0.0.0".
func l6only(subnet6, ip6 string, created int64) lease.Lease {
	x := lease.Lease{IPv6Subnet: netip.MustParsePrefix(subnet6), CreateRevision: created}
	if ip6 != "" {
		x.Attrs.PublicIPv6 = netip.MustParseAddr(ip6)
	}
	return x
}

// ruleIPv6Only is the rule of the fixtures' IPv6-only network
// ({"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:5::/56"}).
func ruleIPv6Only(t *testing.T) Rule {
	t.Helper()
	cfg, err := lease.ParseConfig([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:5::/56","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return FromConfig(cfg, l6only("fd00:10:5:1::/64", "2001:db8::1", 1), AcceptType("udp"), nil)
}

// TestAdmitIPv6Only: on an IPv6-only network the IPv6 part is required
// and checked as on a dual-stack one (length, inside the network, not
// this host's, no overlap, a usable and unique PublicIPv6); every lease
// has the zero PublicIP, which is no collision; an IPv4 part is dropped
// before any check, so a lease of a host still in a dual-stack config is
// a peer over IPv6. ipv6-not-supported is never given.
func TestAdmitIPv6Only(t *testing.T) {
	r := ruleIPv6Only(t)
	if r.Network.IsValid() || r.SubnetLen != 0 || r.IPv6SubnetLen != 64 {
		t.Fatalf("rule %+v", r)
	}
	dual := l6("10.5.9.0/24", "192.0.2.9", "fd00:10:5:9::/64", "2001:db8::9", 9)
	dual.Attrs.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"12:ad:4c:f6:c0:a2"}`)
	cases := []struct {
		lease  lease.Lease
		reason string // "" admitted
	}{
		{l6only("fd00:10:5:2::/64", "2001:db8::2", 2), ""},
		{l6only("fd00:10:5:3::/64", "2001:db8::3", 3), ""}, // a second PublicIP 0.0.0.0 is no collision
		{l6only("fd00:10:5:4::/63", "2001:db8::4", 4), SubnetLength},
		{l6only("fd00:10:6:5::/64", "2001:db8::5", 5), OutsideNetwork},
		{l6only("fd00:10:5:1::/80", "2001:db8::6", 6), SubnetLength},
		{l6only("fd00:10:5:7::/64", "2001:db8::2", 7), PublicIPTaken},
		{l6only("fd00:10:5:8::/64", "2001:db8::1", 8), PublicIPTaken}, // this host's
		{dual, ""},
		{l6only("fd00:10:5:a::/64", "", 10), PublicIP},
		{l6only("fd00:10:5:b::/64", "ff02::1", 11), PublicIP},
		{l6only("fd00:10:5:2::/64", "2001:db8::c", 12), Overlap},
		{l("10.5.13.0/24", "192.0.2.13", 13), OutsideNetwork}, // an IPv4-only host's: nothing left
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
	if !slices.IsSortedFunc(ds, func(a, b Decision) int { return lease.CompareID(a.Lease, b.Lease) }) {
		t.Errorf("decisions not in ID order")
	}
	for i, c := range cases {
		var got []string
		for _, d := range ds {
			if d.Lease.CreateRevision != c.lease.CreateRevision {
				continue
			}
			if d.Refused == nil {
				got = append(got, "")
			} else {
				got = append(got, d.Refused.Reason)
			}
			if d.Lease.Subnet.IsValid() || d.Lease.Attrs.PublicIP.IsValid() || d.Lease.Attrs.BackendData != nil {
				t.Errorf("case %d: the IPv4 part reached the decision: %+v", i, d.Lease)
			}
		}
		if len(got) != 1 || got[0] != c.reason {
			t.Errorf("case %d %v: %q, want %q", i, c.lease, got, c.reason)
		}
	}
	if snap[7].Attrs.BackendData == nil || !snap[7].Subnet.IsValid() {
		t.Errorf("Admit changed its input")
	}

	// Accept sees the type (no BackendData); AcceptIPv6 the IPv6 data.
	var accepted, accepted6 int
	r.Accept = func(a lease.Attrs) error {
		accepted++
		if a.BackendData != nil || a.PublicIP.IsValid() {
			t.Errorf("Accept saw an IPv4 part: %+v", a)
		}
		return nil
	}
	r.AcceptIPv6 = func(lease.Attrs) error { accepted6++; return Refuse(BackendData, "no") }
	ds = Admit(r, []lease.Lease{cases[0].lease, dual})
	if accepted != 2 || accepted6 != 2 || ds[0].Refused == nil || ds[0].Refused.Reason != BackendData {
		t.Errorf("Accept %d, AcceptIPv6 %d calls: %+v", accepted, accepted6, ds)
	}
	for _, d := range Admit(ruleIPv6Only(t), snap) {
		if d.Refused != nil && d.Refused.Reason == IPv6 {
			t.Errorf("%v refused as %s", d.Lease, IPv6)
		}
	}
}

// TestGateIPv6Only: the gate keys IPv6-only leases by their IPv6 subnet
// (their ID): two peers with the zero IPv4 subnet are two peers, each
// logged once when it comes and goes, refusals reported under the IPv6
// subnet.
func TestGateIPv6Only(t *testing.T) {
	var buf bytes.Buffer
	g := NewGate(ruleIPv6Only(t), slog.New(slog.NewTextHandler(&buf, nil)))
	a := l6only("fd00:10:5:12::/64", "2001:db8::2", 2)
	b := l6only("fd00:10:5:3::/64", "2001:db8::3", 3)
	bad := l6only("fd00:10:5:40::/60", "2001:db8::4", 4)
	for range 3 {
		p := g.Admit([]lease.Lease{a, bad, b})
		if len(p) != 2 || p[0].IPv6Subnet != b.IPv6Subnet || p[1].IPv6Subnet != a.IPv6Subnet {
			t.Fatalf("admitted %v", p)
		}
	}
	if n := strings.Count(buf.String(), "subnet added"); n != 2 {
		t.Errorf("added logged %d times:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "public-ipv6=2001:db8::2") {
		t.Errorf("the log does not name the peers' public IPv6:\n%s", buf.String())
	}
	if r := g.Refused(); len(r) != 1 || !strings.HasPrefix(r["fd00:10:5:40::/60"], SubnetLength) {
		t.Errorf("refused %v", r)
	}
	if c := g.Counts(); c[SubnetLength] != 1 || len(c) != 1 {
		t.Errorf("counts %v", c)
	}
	// b moves to another public IPv6: logged again, still one peer.
	b2 := b
	b2.Attrs.PublicIPv6 = netip.MustParseAddr("2001:db8::33")
	if p := g.Admit([]lease.Lease{a, b2}); len(p) != 2 {
		t.Fatalf("admitted %v", p)
	}
	if n := strings.Count(buf.String(), "subnet added"); n != 3 {
		t.Errorf("a changed public IPv6 is not logged:\n%s", buf.String())
	}
	g.Admit([]lease.Lease{a})
	if n := strings.Count(buf.String(), "subnet removed"); n != 1 || len(g.Refused()) != 0 {
		t.Errorf("removed logged %d times:\n%s", n, buf.String())
	}
}
