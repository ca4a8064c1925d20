package admission

import (
	"bytes"
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/lease"
)

func l(subnet, ip string, created int64) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip)}, CreateRevision: created}
}

var rule = Rule{
	Network:   netip.MustParsePrefix("10.5.0.0/16"),
	SubnetLen: 24,
	Own:       l("10.5.1.0/24", "192.0.2.1", 1),
	Accept:    AcceptType("udp"),
}

// TestAdmitHostile: each lease a hostile or broken writer could put in the
// store is refused under its reason; the valid rest is admitted.
func TestAdmitHostile(t *testing.T) {
	hostGW := l("10.5.9.0/24", "192.0.2.9", 9)
	hostGW.Attrs.BackendType = "host-gw"
	cases := []struct {
		lease  lease.Lease
		reason string // "" admitted
	}{
		{l("10.5.2.0/24", "192.0.2.2", 2), ""},
		{l("0.0.0.0/0", "192.0.2.66", 3), SubnetLength},                        // would replace the default route
		{l("10.5.1.0/25", "192.0.2.66", 4), SubnetLength},                      // inside this host's subnet
		{l("10.6.0.0/24", "192.0.2.66", 5), OutsideNetwork},                    // another network
		{l("10.5.3.0/24", "0.0.0.0", 6), PublicIP},                             // unspecified
		{l("10.5.4.0/24", "127.0.0.1", 6), PublicIP},                           // loopback
		{l("10.5.5.0/24", "224.0.0.1", 6), PublicIP},                           // multicast
		{l("10.5.6.0/24", "255.255.255.255", 6), PublicIP},                     // broadcast
		{l("10.5.8.0/24", "192.0.2.2", 7), PublicIPTaken},                      // 10.5.2.0's address, younger
		{l("10.5.10.0/24", "192.0.2.1", 1), PublicIPTaken},                     // this host's address
		{hostGW, BackendType},                                                  // another backend
		{l("fd00::/64", "192.0.2.77", 8), OutsideNetwork},                      // an IPv6 subnet where the IPv4 one goes
		{lease.Lease{Subnet: netip.MustParsePrefix("10.5.11.0/24")}, PublicIP}, // no public IP
	}
	var snap []lease.Lease
	want := map[netip.Prefix]string{}
	for _, c := range cases {
		snap = append(snap, c.lease)
		want[c.lease.Subnet] = c.reason
	}
	snap = append(snap, rule.Own) // this host's own lease is neither admitted nor refused
	ds := Admit(rule, snap)
	if len(ds) != len(cases) {
		t.Fatalf("%d decisions for %d peer leases", len(ds), len(cases))
	}
	for _, d := range ds {
		got := ""
		if d.Refused != nil {
			got = d.Refused.Reason
		}
		if got != want[d.Lease.Subnet] {
			t.Errorf("%s (%s): %q (%v), want %q", d.Lease.Subnet, d.Lease.Attrs.PublicIP, got, d.Refused, want[d.Lease.Subnet])
		}
	}
}

// TestAdmitOlderWins: of two leases with one public IP, or one subnet, the
// older is admitted whatever the snapshot's order.
func TestAdmitOlderWins(t *testing.T) {
	old, young := l("10.5.2.0/24", "192.0.2.2", 10), l("10.5.3.0/24", "192.0.2.2", 20)
	dupOld, dupYoung := l("10.5.4.0/24", "192.0.2.4", 11), l("10.5.4.0/24", "192.0.2.5", 21)
	for _, snap := range [][]lease.Lease{{old, young, dupOld, dupYoung}, {dupYoung, young, dupOld, old}} {
		admitted := map[string]bool{}
		for _, d := range Admit(rule, snap) {
			if d.Refused == nil {
				admitted[d.Lease.Subnet.String()+" "+d.Lease.Attrs.PublicIP.String()] = true
			}
		}
		if !admitted["10.5.2.0/24 192.0.2.2"] || admitted["10.5.3.0/24 192.0.2.2"] || !admitted["10.5.4.0/24 192.0.2.4"] || len(admitted) != 2 {
			t.Errorf("admitted %v", admitted)
		}
	}
}

// TestGateLogsAndCountsOnce: a refusal repeated in every snapshot is
// logged and counted once; a changed reason counts again.
func TestGateLogsAndCountsOnce(t *testing.T) {
	var buf bytes.Buffer
	g := NewGate(rule, slog.New(slog.NewTextHandler(&buf, nil)))
	bad := l("10.5.0.0/20", "192.0.2.3", 3)
	good := l("10.5.2.0/24", "192.0.2.2", 2)
	for range 3 {
		if p := g.Admit([]lease.Lease{good, bad}); len(p) != 1 || p[0].Subnet != good.Subnet {
			t.Fatalf("admitted %v", p)
		}
	}
	if n := strings.Count(buf.String(), "peer lease refused"); n != 1 {
		t.Errorf("refusal logged %d times:\n%s", n, buf.String())
	}
	if n := strings.Count(buf.String(), "subnet added"); n != 1 {
		t.Errorf("added logged %d times", n)
	}
	if c := g.Counts(); c[SubnetLength] != 1 || len(c) != 1 {
		t.Errorf("counts %v", c)
	}
	if r := g.Refused(); !strings.HasPrefix(r["10.5.0.0/20"], SubnetLength) {
		t.Errorf("refused %v", r)
	}
	g.Admit(nil)
	if !strings.Contains(buf.String(), "subnet removed") || len(g.Refused()) != 0 {
		t.Errorf("a removed peer is not logged, or a refusal outlives its lease:\n%s", buf.String())
	}
}

// TestAcceptErrors: a backend's plain error counts as backend data.
func TestAcceptErrors(t *testing.T) {
	r := rule
	r.Accept = func(lease.Attrs) error { return errors.New("unreadable") }
	ds := Admit(r, []lease.Lease{l("10.5.2.0/24", "192.0.2.2", 2)})
	if ds[0].Refused == nil || ds[0].Refused.Reason != BackendData {
		t.Fatalf("%+v", ds[0].Refused)
	}
}

// TestRefusalDetailBounded: a backend's refusal quotes what it read from
// the lease (a VtepMAC, or encoding/json a number literal), and a lease's
// BackendData may be 64 KiB: every host logs the refusal and shows it in
// status, so its detail is cut short, saying how long it was.
func TestRefusalDetailBounded(t *testing.T) {
	huge := strings.Repeat("9", lease.MaxBackendData-16)
	for name, accept := range map[string]func(lease.Attrs) error{
		"refusal":     func(lease.Attrs) error { return Refuse(BackendData, "VtepMAC %q is not an Ethernet address", huge) },
		"plain error": func(lease.Attrs) error { return errors.New("json: cannot unmarshal number " + huge + " into int") },
	} {
		r := rule
		r.Accept = accept
		ref := Admit(r, []lease.Lease{l("10.5.2.0/24", "192.0.2.2", 2)})[0].Refused
		if ref == nil || ref.Reason != BackendData {
			t.Fatalf("%s: %+v", name, ref)
		}
		if len(ref.Detail) > 2*MaxDetail || !strings.Contains(ref.Detail, "bytes)") {
			t.Errorf("%s: a detail of %d bytes: %.100s...", name, len(ref.Detail), ref.Detail)
		}
	}
	if d := Refuse(BackendData, "VtepMAC %q is not an Ethernet address", "nope").(*Refused).Detail; d != `VtepMAC "nope" is not an Ethernet address` {
		t.Errorf("a short detail was changed: %s", d)
	}
}

// TestAdmitClaims: of two leases whose backend data claims one thing (a
// vxlan VtepMAC), the older is admitted, whatever the order; a lease
// claiming what this host claims is refused; the gate agrees.
func TestAdmitClaims(t *testing.T) {
	r := rule
	r.Claims = func(a lease.Attrs) []string { return []string{"VtepMAC " + string(a.BackendData)} }
	r.Own.Attrs.BackendData = []byte("own")
	with := func(l lease.Lease, data string) lease.Lease { l.Attrs.BackendData = []byte(data); return l }
	old, young := with(l("10.5.2.0/24", "192.0.2.2", 10), "a"), with(l("10.5.3.0/24", "192.0.2.3", 20), "a")
	mine, other := with(l("10.5.4.0/24", "192.0.2.4", 5), "own"), with(l("10.5.5.0/24", "192.0.2.5", 30), "b")
	want := map[string]string{"10.5.2.0/24": "", "10.5.3.0/24": BackendDataTaken, "10.5.4.0/24": BackendDataTaken, "10.5.5.0/24": ""}
	for _, snap := range [][]lease.Lease{{old, young, mine, other}, {other, mine, young, old}} {
		got := map[string]string{}
		for _, d := range Admit(r, snap) {
			got[d.Lease.Subnet.String()] = ""
			if d.Refused != nil {
				got[d.Lease.Subnet.String()] = d.Refused.Reason
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("Admit: %v, want %v", got, want)
		}
		g := NewGate(r, slog.New(slog.DiscardHandler))
		g.Admit(snap)
		if p := g.Peers(); len(p) != 2 || p[0].Subnet != old.Subnet || p[1].Subnet != other.Subnet {
			t.Errorf("gate admitted %v", p)
		}
		if c := g.Counts(); c[BackendDataTaken] != 2 {
			t.Errorf("gate counts %v", c)
		}
	}
}
