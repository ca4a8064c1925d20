package capture

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/weft-net/weft/engine"
)

// ipv6 builds a minimal IPv6 packet with a TCP/UDP port pair (or an
// ICMPv6 header) for filter tests.
func ipv6(next uint8, src, dst string, sport, dport uint16) []byte {
	b := make([]byte, 48)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], 8)
	b[6], b[7] = next, 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	binary.BigEndian.PutUint16(b[40:], sport)
	binary.BigEndian.PutUint16(b[42:], dport)
	return b
}

// Filters see IPv6 packets as they see IPv4 ones: addresses and
// networks of either version, ports, icmp6, the version itself, and IPv6
// underlay peers.
func TestFilterIPv6(t *testing.T) {
	peer6 := netip.MustParseAddrPort("[2001:db8::2]:8472")
	tcp6 := &engine.TapPacket{Point: engine.PointFromTUN, FromTUN: true, Data: ipv6(6, "fd00:10:5:21::2", "fd00:10:5:32::2", 40000, 80)}
	icmp6 := &engine.TapPacket{Point: engine.PointToTUN, Peer: peer6, Data: ipv6(58, "fd00:10:5:32::2", "fd00:10:5:21::2", 0, 0)}
	tcp4 := &engine.TapPacket{Point: engine.PointFromTUN, FromTUN: true, Data: ipv4(6, "10.5.1.2", "10.5.2.3", 40000, 80)}
	all := []*engine.TapPacket{tcp6, icmp6, tcp4}
	for _, c := range []struct {
		expr string
		want []*engine.TapPacket
	}{
		{"tcp", []*engine.TapPacket{tcp6, tcp4}},
		{"icmp6", []*engine.TapPacket{icmp6}},
		{"proto icmp6", []*engine.TapPacket{icmp6}},
		{"icmp", nil},
		{"ip6", []*engine.TapPacket{tcp6, icmp6}},
		{"ip", []*engine.TapPacket{tcp4}},
		{"host fd00:10:5:21::2", []*engine.TapPacket{tcp6, icmp6}},
		{"src host fd00:10:5:21::2", []*engine.TapPacket{tcp6}},
		{"net fd00:10:5:32::/64", []*engine.TapPacket{tcp6, icmp6}},
		{"dst net fd00:10:5:32::/64", []*engine.TapPacket{tcp6}},
		{"net fd00:10:5::/56 and port 80", []*engine.TapPacket{tcp6}},
		{"port 80", []*engine.TapPacket{tcp6, tcp4}},
		{"net 10.5.0.0/16", []*engine.TapPacket{tcp4}},
		{"peer 2001:db8::2", []*engine.TapPacket{icmp6}},
		{"peer [2001:db8::2]:8472", []*engine.TapPacket{icmp6}},
		{"peer [2001:db8::2]:8285", nil},
	} {
		f, err := ParseFilter(c.expr)
		if err != nil {
			t.Errorf("%q: %v", c.expr, err)
			continue
		}
		for i, p := range all {
			want := false
			for _, w := range c.want {
				want = want || w == p
			}
			if got := f.Match(p); got != want {
				t.Errorf("%q on packet %d: got %v, want %v", c.expr, i, got, want)
			}
		}
	}
	for _, bad := range []string{"host fe80::1%eth0", "net ::ffff:10.0.0.0/104", "peer fe80::1%eth0"} {
		if _, err := ParseFilter(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if a := testing.AllocsPerRun(100, func() { mustFilter(t, "net fd00:10:5::/56 and tcp").Match(tcp6) }); a > 0 {
		t.Logf("parse and match: %v allocs (parse allocates; matching alone is checked below)", a)
	}
	f := mustFilter(t, "net fd00:10:5::/56 and tcp and peer 2001:db8::2")
	if a := testing.AllocsPerRun(1000, func() { f.Match(icmp6) }); a != 0 {
		t.Errorf("matching an IPv6 packet allocates %v times", a)
	}
}

func mustFilter(t *testing.T, expr string) *Filter {
	f, err := ParseFilter(expr)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// The ring keeps an IPv6 peer as it keeps an IPv4 one.
func TestRingKeepsIPv6Peer(t *testing.T) {
	r := newRing(1 << 12)
	for _, peer := range []netip.AddrPort{netip.MustParseAddrPort("[2001:db8::2]:8472"), netip.MustParseAddrPort("192.0.2.2:8285"), {}} {
		p := &engine.TapPacket{Point: engine.PointToTUN, Peer: peer, Data: ipv6(58, "fd00::2", "fd00::3", 0, 0)}
		if !r.push(1, p, len(p.Data)) {
			t.Fatal("push")
		}
		var rec Record
		if !r.peek(&rec) || rec.Peer != peer || !bytes.Equal(rec.Data, p.Data) {
			t.Errorf("peer %v came back as %v", peer, rec.Peer)
		}
		r.pop()
	}
}

// A capture on a network with IPv6 is LINKTYPE_ETHERNET: each packet
// behind a header with its version's EtherType, which libpcap, Wireshark
// and gopacket decode; a dropped VXLAN datagram has the experimental type.
func TestWriterIPv6(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, "", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	recs := []*Record{
		{Point: engine.PointFromTUN, Data: ipv6(58, "fd00::2", "fd00::3", 0, 0)},
		{Point: engine.PointToTUN, Data: ipv4(17, "10.5.1.2", "10.5.2.3", 1, 2)},
		{Point: engine.PointDrop, Reason: engine.DropWrongVNI, Data: []byte{8, 0, 0, 0, 0, 0, 7, 0}},
	}
	for _, r := range recs {
		r.Length = len(r.Data)
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(Stats{}); err != nil {
		t.Fatal(err)
	}
	rd, err := pcapgo.NewNgReader(&buf, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []gopacket.LayerType{layers.LayerTypeIPv6, layers.LayerTypeIPv4, 0} {
		data, ci, opts, err := rd.ReadPacketDataWithOptions()
		if err != nil {
			t.Fatal(err)
		}
		intf, _ := rd.Interface(ci.InterfaceIndex)
		if intf.LinkType != layers.LinkTypeEthernet || ci.Length != len(recs[i].Data)+14 {
			t.Errorf("packet %d: link type %v, length %d", i, intf.LinkType, ci.Length)
		}
		p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
		if i < 2 && (len(p.Layers()) < 2 || p.Layers()[1].LayerType() != want) {
			t.Errorf("packet %d decodes as %v, want %v after Ethernet", i, p.Layers(), want)
		}
		if i == 2 && (binary.BigEndian.Uint16(data[12:]) != EtherTypeDatagram || !strings.Contains(strings.Join(opts.Comments, " "), DatagramNote)) {
			t.Errorf("dropped datagram: %x %v", data[:14], opts.Comments)
		}
	}
}
