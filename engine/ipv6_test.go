package engine

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// udp6Packet builds a valid IPv6/UDP packet.
func udp6Packet(t testing.TB, src, dst string, hops uint8, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, HopLimit: hops, NextHeader: layers.IPProtocolUDP, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
	u := &layers.UDP{SrcPort: 4000, DstPort: 5000}
	u.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, u, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// icmp6Packet builds an IPv6 packet carrying an ICMPv6 message of the
// given type, behind the extension headers ext (raw, each with its next
// header byte to be filled in: pass their protocol numbers in order).
func icmp6Packet(t testing.TB, src, dst string, typ uint8, ext ...[]byte) []byte {
	t.Helper()
	msg := []byte{typ, 0, 0, 0, 0, 0, 0, 0, 'x', 'y'}
	return rawIPv6(src, dst, protoICMPv6, msg, ext...)
}

// rawIPv6 assembles an IPv6 packet: the fixed header, the extension
// headers given as (protocol number, bytes) pairs folded into ext as
// [proto, bytes...], then the upper-layer payload of protocol proto.
func rawIPv6(src, dst string, proto uint8, payload []byte, ext ...[]byte) []byte {
	pkt := make([]byte, ipv6HeaderLen)
	pkt[0] = 0x60
	pkt[7] = 64
	copy(pkt[8:24], net.ParseIP(src).To16())
	copy(pkt[24:40], net.ParseIP(dst).To16())
	nhAt := 6
	for _, e := range ext {
		pkt[nhAt] = e[0]
		nhAt = len(pkt)
		pkt = append(pkt, e[1:]...)
	}
	pkt[nhAt] = proto
	pkt = append(pkt, payload...)
	binary.BigEndian.PutUint16(pkt[4:6], uint16(len(pkt)-ipv6HeaderLen))
	return pkt
}

// extHdr is an extension header of protocol proto, 8*(1+n) bytes long.
func extHdr(proto uint8, n int) []byte {
	h := make([]byte, 1+8*(1+n))
	h[0] = proto
	h[2] = byte(n) // the length byte (next header goes at h[1])
	return h
}

// fragHdr is a fragment header with the given fragment offset (in 8-byte
// units).
func fragHdr(offset uint16) []byte {
	h := make([]byte, 9)
	h[0] = protoFragment
	binary.BigEndian.PutUint16(h[3:5], offset<<3)
	return h
}

func TestCheckIPv6(t *testing.T) {
	good := udp6Packet(t, "fd00:10:5:1::2", "fd00:10:5:2::2", 64, []byte("hello"))
	mut := func(f func(p []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		pkt  []byte
		want DropReason
		size int
	}{
		{"valid", good, DropNone, len(good)},
		{"trailing bytes ignored", append(append([]byte(nil), good...), 0, 0, 0), DropNone, len(good)},
		{"39 bytes", good[:39], DropShort, 0},
		{"version 4 nibble", mut(func(p []byte) []byte { p[0] = 0x40; return p }), DropBadVersion, 0},
		{"payload length too big", mut(func(p []byte) []byte { binary.BigEndian.PutUint16(p[4:], uint16(len(p)-39)); return p }), DropBadLength, 0},
		{"no payload", mut(func(p []byte) []byte { p[4], p[5], p[6] = 0, 0, 59; return p }), DropNone, 40},
		{"jumbogram", mut(func(p []byte) []byte { p[4], p[5], p[6] = 0, 0, protoHopByHop; return p }), DropBadLength, 0},
		{"extension headers are payload", rawIPv6("fd00::1", "fd00::2", 17, make([]byte, 8), extHdr(protoHopByHop, 0), extHdr(protoDestOpts, 2)), DropNone, 40 + 8 + 24 + 8},
	}
	for _, c := range cases {
		size, r := checkIPv6(c.pkt)
		if r != c.want || size != c.size {
			t.Errorf("%s: got (%d, %v), want (%d, %v)", c.name, size, r, c.size, c.want)
		}
	}
	if !isIPv6(good) || isIPv6(nil) || isIPv6(udpPacket(t, "10.5.1.2", "10.5.2.2", 64, nil)) {
		t.Error("isIPv6 misclassifies")
	}
}

func TestDecrementHopLimit(t *testing.T) {
	p := udp6Packet(t, "fd00:10:5:1::2", "fd00:10:5:2::2", 2, nil)
	want := append([]byte(nil), p...)
	want[7] = 1
	if !decrementHopLimit(p) || !bytes.Equal(p, want) {
		t.Fatalf("decrement of hop limit 2 gave % x", p[:8])
	}
	if decrementHopLimit(p) || p[7] != 1 {
		t.Fatal("decrementHopLimit accepted hop limit 1 or changed it")
	}
	p[7] = 0
	if decrementHopLimit(p) || p[7] != 0 {
		t.Fatal("decrementHopLimit accepted hop limit 0")
	}
}

// verifyICMPv6 decodes an ICMPv6 error the engine built and checks it
// with gopacket (an implementation of the pseudo-header checksum other
// than ours) and with checksum over an explicit pseudo-header.
func verifyICMPv6(t testing.TB, b []byte, typ, code uint8) (*layers.IPv6, *layers.ICMPv6) {
	t.Helper()
	if len(b) > ipv6MinMTU {
		t.Fatalf("ICMPv6 error of %d bytes: more than the minimum MTU", len(b))
	}
	p := gopacket.NewPacket(b, layers.LayerTypeIPv6, gopacket.Default)
	ip, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	icmp, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
	if ip == nil || icmp == nil {
		t.Fatalf("not an IPv6 ICMPv6 packet: %v", p)
	}
	if int(ip.Length) != len(b)-ipv6HeaderLen || ip.NextHeader != layers.IPProtocolICMPv6 || ip.HopLimit == 0 {
		t.Fatalf("IPv6 header: length %d for %d bytes, next header %d, hop limit %d", ip.Length, len(b), ip.NextHeader, ip.HopLimit)
	}
	if icmp.TypeCode != layers.CreateICMPv6TypeCode(typ, code) {
		t.Fatalf("type/code %v, want %d/%d", icmp.TypeCode, typ, code)
	}
	if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	if err, res := icmp.VerifyChecksum(); err != nil || !res.Valid {
		t.Fatalf("ICMPv6 checksum invalid: %v %+v", err, res)
	}
	pseudo := append(append([]byte(nil), b[8:40]...), 0, 0, 0, 0, 0, 0, 0, protoICMPv6)
	binary.BigEndian.PutUint32(pseudo[32:36], uint32(len(b)-ipv6HeaderLen))
	if checksum(append(pseudo, b[ipv6HeaderLen:]...)) != 0 {
		t.Fatal("ICMPv6 checksum over the pseudo-header is not zero")
	}
	return ip, icmp
}

func TestBuildICMPv6Error(t *testing.T) {
	src := addr6Of(testOwn6.Addr().Next())
	for _, c := range []struct {
		name       string
		typ, code  uint8
		param      uint32
		payloadLen int
	}{
		{"no route, short offender", icmp6DestUnreachable, icmp6CodeNoRoute, 0, 10},
		{"time exceeded, odd length", icmp6TimeExceeded, icmp6CodeHopLimitExceeded, 0, 101},
		{"packet too big, long offender cut at 1280", icmp6PacketTooBig, 0, 1472, 1452},
		{"time exceeded, 64 KiB offender", icmp6TimeExceeded, 0, 0, 65000},
	} {
		offender := udp6Packet(t, "fd00:10:5:1::2", "fd00:10:5:9::9", 64, bytes.Repeat([]byte{7}, c.payloadLen))
		out := make([]byte, icmp6ErrorLen)
		n := buildICMPv6Error(out, c.typ, c.code, c.param, src, offender)
		ip, icmp := verifyICMPv6(t, out[:n], c.typ, c.code)
		if ip.SrcIP.String() != "fd00:10:5:1::1" || ip.DstIP.String() != "fd00:10:5:1::2" {
			t.Errorf("%s: addresses %s -> %s", c.name, ip.SrcIP, ip.DstIP)
		}
		if got := binary.BigEndian.Uint32(out[44:48]); got != c.param {
			t.Errorf("%s: 32-bit field %d, want %d", c.name, got, c.param)
		}
		wantQuote := min(len(offender), ipv6MinMTU-48)
		if n != 48+wantQuote || !bytes.Equal(out[48:n], offender[:wantQuote]) {
			t.Errorf("%s: %d bytes; the quote is not the offender's first %d bytes", c.name, n, wantQuote)
		}
		_ = icmp
		// Never an ICMPv6 error about an ICMPv6 error.
		if icmp6ErrorAllowed(out[:n], icmp6DestUnreachable) {
			t.Errorf("%s: an ICMPv6 error may not be answered with one", c.name)
		}
	}
}

// TestICMPv6ErrorAllowed: RFC 4443 2.4 (e), including offenders whose
// upper-layer header sits behind extension headers.
func TestICMPv6ErrorAllowed(t *testing.T) {
	const me, other = "fd00:10:5:1::2", "fd00:10:5:9::9"
	udp := func(src, dst string) []byte { return udp6Packet(t, src, dst, 64, []byte("x")) }
	cases := []struct {
		name string
		pkt  []byte
		typ  uint8
		want bool
	}{
		{"udp", udp(me, other), icmp6DestUnreachable, true},
		{"from ::", udp("::", other), icmp6DestUnreachable, false},
		{"from ::1", udp("::1", other), icmp6DestUnreachable, false},
		{"from multicast", udp("ff02::1", other), icmp6DestUnreachable, false},
		{"from link-local", udp("fe80::1", other), icmp6DestUnreachable, true},
		{"to multicast", udp(me, "ff05::2"), icmp6DestUnreachable, false},
		{"to multicast, packet too big", udp(me, "ff05::2"), icmp6PacketTooBig, true},
		{"to ::", udp(me, "::"), icmp6TimeExceeded, false},
		{"echo request", icmp6Packet(t, me, other, 128), icmp6DestUnreachable, true},
		{"echo reply", icmp6Packet(t, me, other, 129), icmp6TimeExceeded, true},
		{"destination unreachable", icmp6Packet(t, me, other, 1), icmp6DestUnreachable, false},
		{"packet too big", icmp6Packet(t, me, other, 2), icmp6PacketTooBig, false},
		{"error behind hop-by-hop and destination options", icmp6Packet(t, me, other, 3, extHdr(protoHopByHop, 0), extHdr(protoDestOpts, 1)), icmp6DestUnreachable, false},
		{"echo behind routing header", icmp6Packet(t, me, other, 128, extHdr(protoRouting, 2)), icmp6DestUnreachable, true},
		{"error behind initial fragment", icmp6Packet(t, me, other, 1, fragHdr(0)), icmp6DestUnreachable, false},
		{"udp behind initial fragment", rawIPv6(me, other, 17, make([]byte, 8), fragHdr(0)), icmp6DestUnreachable, true},
		{"non-initial fragment", rawIPv6(me, other, 17, make([]byte, 8), fragHdr(1)), icmp6DestUnreachable, false},
		{"error behind AH", icmp6Packet(t, me, other, 4, append([]byte{protoAH, 0, 1}, make([]byte, 10)...)), icmp6DestUnreachable, false},
		{"hop-by-hop header past the end", rawIPv6(me, other, protoHopByHop, nil), icmp6DestUnreachable, false},
		{"hop-by-hop claims more than is there", rawIPv6(me, other, 58, nil, []byte{protoHopByHop, 0, 9, 0, 0, 0, 0, 0, 0}), icmp6DestUnreachable, false},
		{"icmpv6 with no message", rawIPv6(me, other, protoICMPv6, nil), icmp6DestUnreachable, false},
		{"chain too long", icmp6Packet(t, me, other, 128,
			extHdr(protoDestOpts, 0), extHdr(protoDestOpts, 0), extHdr(protoDestOpts, 0), extHdr(protoDestOpts, 0),
			extHdr(protoDestOpts, 0), extHdr(protoDestOpts, 0), extHdr(protoDestOpts, 0), extHdr(protoDestOpts, 0)), icmp6DestUnreachable, false},
		{"chain of seven", icmp6Packet(t, me, other, 128,
			extHdr(protoDestOpts, 0), extHdr(protoDestOpts, 0), extHdr(protoDestOpts, 0), extHdr(protoDestOpts, 0),
			extHdr(protoDestOpts, 0), extHdr(protoDestOpts, 0), extHdr(protoDestOpts, 0)), icmp6DestUnreachable, true},
		{"esp", rawIPv6(me, other, 50, make([]byte, 16)), icmp6DestUnreachable, true},
	}
	for _, c := range cases {
		if got := icmp6ErrorAllowed(c.pkt, c.typ); got != c.want {
			t.Errorf("%s: allowed %v, want %v", c.name, got, c.want)
		}
	}
}

// TestChecksum6MatchesChecksum: the word-wise pseudo-header sum agrees
// with RFC 1071's byte-pair sum over an explicit pseudo-header, for every
// length parity and alignment of the tail.
func TestChecksum6MatchesChecksum(t *testing.T) {
	ip := udp6Packet(t, "fd00:10:5:1::2", "fd00:ffff:5:9::9", 64, nil)[:ipv6HeaderLen]
	for n := 0; n < 70; n++ {
		l4 := make([]byte, n)
		for i := range l4 {
			l4[i] = byte(i*37 + n)
		}
		pseudo := append(append([]byte(nil), ip[8:40]...), 0, 0, 0, 0, 0, 0, 0, 17)
		binary.BigEndian.PutUint32(pseudo[32:36], uint32(n))
		if got, want := checksum6(ip, 17, l4), checksum(append(pseudo, l4...)); got != want && !(got == 0xffff && want == 0) && !(got == 0 && want == 0xffff) {
			t.Fatalf("length %d: checksum6 %#04x, checksum %#04x", n, got, want)
		}
	}
}
