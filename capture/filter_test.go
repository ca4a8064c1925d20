package capture

import (
	"net/netip"
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
		again, err := ParseFilter(flt.String())
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", flt.String(), expr, err)
		}
		if again.Match(p) != got {
			t.Fatalf("%q and its canonical form %q disagree", expr, flt.String())
		}
	})
}
