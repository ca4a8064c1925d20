package capture

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/weft-net/weft/engine"
)

// ipv4 builds a minimal IPv4 packet with a TCP/UDP port pair (or an ICMP
// header) for filter tests.
func ipv4(proto uint8, src, dst string, sport, dport uint16) []byte {
	b := make([]byte, 40)
	b[0] = 0x45
	b[2], b[3] = 0, 40
	b[8] = 64
	b[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	b[20], b[21] = byte(sport>>8), byte(sport)
	b[22], b[23] = byte(dport>>8), byte(dport)
	return b
}

func TestFilterMatches(t *testing.T) {
	peer := netip.MustParseAddrPort("192.0.2.2:8285")
	tcp := &engine.TapPacket{Point: engine.PointFromTUN, FromTUN: true, Data: ipv4(6, "10.5.1.2", "10.5.2.3", 40000, 80)}
	udpIn := &engine.TapPacket{Point: engine.PointToTUN, Peer: peer, Data: ipv4(17, "10.5.2.3", "10.5.1.2", 53, 3333)}
	spoof := &engine.TapPacket{Point: engine.PointDrop, Reason: engine.DropSpoofedSource, Peer: peer, Data: ipv4(1, "10.6.9.9", "10.5.1.2", 0, 0)}
	short := &engine.TapPacket{Point: engine.PointDrop, Reason: engine.DropShort, Peer: peer, Data: []byte{0x45, 0}}
	all := []*engine.TapPacket{tcp, udpIn, spoof, short}
	cases := []struct {
		expr string
		want []*engine.TapPacket
	}{
		{"", all},
		{"tcp", []*engine.TapPacket{tcp}},
		{"udp or icmp", []*engine.TapPacket{udpIn, spoof}},
		{"host 10.5.1.2", []*engine.TapPacket{tcp, udpIn, spoof}},
		{"src host 10.5.1.2", []*engine.TapPacket{tcp}},
		{"dst host 10.5.1.2", []*engine.TapPacket{udpIn, spoof}},
		{"net 10.5.2.0/24", []*engine.TapPacket{tcp, udpIn}},
		{"src net 10.6.0.0/16", []*engine.TapPacket{spoof}},
		{"port 80", []*engine.TapPacket{tcp}},
		{"dst port 3333", []*engine.TapPacket{udpIn}},
		{"src port 3333", nil},
		{"port 0", nil}, // ICMP has no ports
		{"peer 192.0.2.2", []*engine.TapPacket{udpIn, spoof, short}},
		{"peer 192.0.2.2:9999", nil},
		{"drop", []*engine.TapPacket{spoof, short}},
		{"point to-tun", []*engine.TapPacket{udpIn}},
		{"reason spoofed-source", []*engine.TapPacket{spoof}},
		{"drop and not reason short", []*engine.TapPacket{spoof}},
		{"!drop", []*engine.TapPacket{tcp, udpIn}},
		{"not (tcp or udp) and host 10.5.1.2", []*engine.TapPacket{spoof}},
		{"tcp || udp && to-tun", []*engine.TapPacket{tcp, udpIn}},
		{"(tcp||udp)&&to-tun", []*engine.TapPacket{udpIn}},
		{"!(tcp||udp)", []*engine.TapPacket{spoof, short}},
		{"proto 17", []*engine.TapPacket{udpIn}},
		{"tcp port 80", []*engine.TapPacket{tcp}},
		{"udp dst port 3333 or drop reason short", []*engine.TapPacket{udpIn, short}},
	}
	for _, c := range cases {
		f, err := ParseFilter(c.expr)
		if err != nil {
			t.Errorf("%q: %v", c.expr, err)
			continue
		}
		for _, p := range all {
			want := false
			for _, w := range c.want {
				want = want || w == p
			}
			if got := f.Match(p); got != want {
				t.Errorf("%q on %s/%s: got %v, want %v", c.expr, p.Point, p.Reason, got, want)
			}
		}
	}
}

func TestFilterErrorsNameTheToken(t *testing.T) {
	cases := map[string]string{
		"tcp and":         "at the end",
		"host 10.5.1":     `"10.5.1"`,
		"host":            "at the end",
		"net 10.5.0.0":    `"10.5.0.0"`,
		"port 70000":      `"70000"`,
		"tcp port http":   `token 3 "http"`,
		"tcp or":          "at the end",
		"bogus":           `token 1 "bogus"`,
		"src tcp":         `token 2 "tcp"`,
		"(tcp":            "expected )",
		"tcp)":            `")"`,
		"reason nope":     `"nope"`,
		"point middle":    `"middle"`,
		"peer 10.0.0.1:x": `"10.0.0.1:x"`,
		"proto 300":       `"300"`,
		strings.Repeat("(", 100) + "tcp" + strings.Repeat(")", 100): "nested",
	}
	for expr, want := range cases {
		_, err := ParseFilter(expr)
		if err == nil {
			t.Errorf("%q: accepted", expr)
			continue
		}
		if !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "filter: ") {
			t.Errorf("%q: error %q does not contain %q", expr, err, want)
		}
	}
}

func TestParsePoints(t *testing.T) {
	s, err := ParsePoints("drop,to-tun")
	if err != nil || s.Has(engine.PointFromTUN) || !s.Has(engine.PointDrop) || !s.Has(engine.PointToTUN) {
		t.Fatalf("got %v, %v", s, err)
	}
	if _, err := ParsePoints("drop,nowhere"); err == nil || !strings.Contains(err.Error(), "nowhere") {
		t.Fatalf("bad point accepted or not named: %v", err)
	}
}

// FuzzFilter: any expression either parses or is refused with an error
// naming a token; a parsed one matches any packet without panicking, and
// its canonical form parses to a filter that agrees with it.
func FuzzFilter(f *testing.F) {
	for _, s := range []string{"tcp", "host 10.5.1.2 and not port 22", "drop and reason no-route",
		"(udp or icmp) and src net 10.5.0.0/16", "peer 192.0.2.2:8285 || !to-tun", "proto 47", "((tcp)"} {
		f.Add(s, []byte{0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 5, 1, 2, 10, 5, 2, 3, 0, 80, 0, 80}, uint8(0))
	}
	f.Fuzz(func(t *testing.T, expr string, pkt []byte, point uint8) {
		flt, err := ParseFilter(expr)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "filter: ") {
				t.Fatalf("error without the filter prefix: %v", err)
			}
			return
		}
		p := &engine.TapPacket{Point: engine.Point(point % uint8(engine.NumPoints)), Reason: engine.DropReason(point % uint8(engine.NumDropReasons)),
			Peer: netip.MustParseAddrPort("192.0.2.2:8285"), Data: pkt}
		got := flt.Match(p)
		checkCompiled(t, flt, p)
		again, err := ParseFilter(flt.String())
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", flt.String(), expr, err)
		}
		if again.Match(p) != got {
			t.Fatalf("%q and its canonical form %q disagree", expr, flt.String())
		}
	})
}

// eval is the reference semantics: the parse tree, evaluated recursively.
func (n *node) eval(v *view) bool {
	switch n.op {
	case opAnd:
		return n.a.eval(v) && n.b.eval(v)
	case opOr:
		return n.a.eval(v) || n.b.eval(v)
	case opNot:
		return !n.a.eval(v)
	}
	return n.test(v)
}

// checkCompiled: the flat program agrees with the tree on p, holds at most
// MaxFilterTerms tests, and only ever jumps forward.
func checkCompiled(t *testing.T, f *Filter, p *engine.TapPacket) {
	t.Helper()
	if f.root == nil {
		return
	}
	if len(f.prog) > MaxFilterTerms {
		t.Fatalf("%q: %d instructions", f.expr, len(f.prog))
	}
	for i, in := range f.prog {
		for _, j := range []int16{in.jt, in.jf} {
			if j != jAccept && j != jReject && int(j) <= i {
				t.Fatalf("%q: instruction %d jumps back to %d", f.expr, i, j)
			}
		}
	}
	var v view
	v.parse(p)
	if f.match(&v) != f.root.eval(&v) {
		t.Fatalf("%q: the compiled filter says %v, the tree %v", f.expr, f.match(&v), f.root.eval(&v))
	}
}

// TestFilterBounds: a filter's size and number of terms are bounded, so
// no capture client can make the forwarding loops evaluate a 250,000-term
// filter per packet (7 ms each), or write an if_filter option longer than
// pcapng's 16-bit option length.
func TestFilterBounds(t *testing.T) {
	chain := func(n int, op string) string {
		terms := make([]string, n)
		for i := range terms {
			terms[i] = "port " + strconv.Itoa(i)
		}
		return strings.Join(terms, " "+op+" ")
	}
	for _, c := range []struct {
		expr string
		ok   bool
		want string
	}{
		{chain(MaxFilterTerms, "or"), true, ""},
		{chain(MaxFilterTerms+1, "or"), false, "more than 64 terms"},
		{chain(MaxFilterTerms+1, "and"), false, "more than 64 terms"},
		{chain(MaxFilterTerms+1, ""), false, "more than 64 terms"},
		{strings.Repeat("tcp or ", 250000) + "tcp", false, "longer than"},
		{"tcp" + strings.Repeat(" ", MaxFilterLen), false, "longer than"},
		{strings.Repeat("(", 1500) + "tcp" + strings.Repeat(")", 1500), false, "longer than"}, // 3003 bytes, 6005 tokenized
	} {
		f, err := ParseFilter(c.expr)
		if c.ok != (err == nil) || (err != nil && (!strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "filter: "))) {
			t.Errorf("%.40q... (%d bytes): %v, want ok %v or an error with %q", c.expr, len(c.expr), err, c.ok, c.want)
		}
		if err == nil {
			checkCompiled(t, f, &engine.TapPacket{Data: ipv4(17, "10.5.1.2", "10.5.2.3", 63, 5)})
		}
	}
}

// TestFilterCompiledAgreesWithTree over the grammar's corners.
func TestFilterCompiledAgreesWithTree(t *testing.T) {
	exprs := []string{"tcp", "not tcp", "not not udp", "tcp and port 80", "tcp or udp", "not (tcp or udp)",
		"(tcp and port 80) or (udp and not port 53) or icmp", "not (tcp and not (port 80 or port 443))",
		"host 10.5.1.2 and (drop or to-tun) and not reason no-route", "udp port 53 or tcp port 80 and host 10.5.2.3"}
	var pkts []*engine.TapPacket
	for _, proto := range []uint8{1, 6, 17} {
		for _, port := range []uint16{53, 80, 443, 1} {
			for pt := engine.Point(0); pt < engine.NumPoints; pt++ {
				pkts = append(pkts, &engine.TapPacket{Point: pt, Reason: engine.DropReason(port % 3), Data: ipv4(proto, "10.5.1.2", "10.5.2.3", 40000, port)})
			}
		}
	}
	for _, e := range exprs {
		f, err := ParseFilter(e)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pkts {
			checkCompiled(t, f, p)
		}
	}
}

// BenchmarkFilterMatchLargest: the most expensive filter a client may ask
// for, per packet.
func BenchmarkFilterMatchLargest(b *testing.B) {
	terms := make([]string, MaxFilterTerms)
	for i := range terms {
		terms[i] = "port " + strconv.Itoa(i+1000)
	}
	f, err := ParseFilter(strings.Join(terms, " or "))
	if err != nil {
		b.Fatal(err)
	}
	p := &engine.TapPacket{Data: ipv4(17, "10.5.1.2", "10.5.2.3", 63, 5)}
	b.ReportAllocs()
	for b.Loop() {
		if f.Match(p) {
			b.Fatal("matched")
		}
	}
}
