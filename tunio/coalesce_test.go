package tunio

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

const off = 32

type seg struct {
	src, dst string
	sport    uint16
	seq, ack uint32
	psh, fin bool
	payload  int
	proto    string // "tcp" (default) or "udp"
	window   uint16
	tsval    byte // the timestamp option's first byte
	mf       bool // IPv4: a first fragment

	// IPv6 (build6)
	tclass uint8
	flow   uint32
	hop    uint8 // hop limit; 0: 63
	hbh    bool  // a hop-by-hop options header before the transport
	nocsum bool  // UDP without checksum
}

func build(t *testing.T, s seg) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 63, SrcIP: net.ParseIP(s.src).To4(), DstIP: net.ParseIP(s.dst).To4(), Flags: layers.IPv4DontFragment}
	if s.mf {
		ip.Flags = layers.IPv4MoreFragments
	}
	ip.Protocol = layers.IPProtocolTCP
	if s.proto == "udp" {
		ip.Protocol = layers.IPProtocolUDP
	}
	return serialize(t, s, ip, ip)
}

// serialize adds s's transport and payload to the network layer ip.
func serialize(t *testing.T, s seg, ip gopacket.SerializableLayer, csumLayer gopacket.NetworkLayer) []byte {
	t.Helper()
	payload := make([]byte, s.payload)
	for i := range payload {
		payload[i] = byte(s.seq) + byte(i)
	}
	var l4 gopacket.SerializableLayer
	if s.proto == "udp" {
		u := &layers.UDP{SrcPort: layers.UDPPort(s.sport), DstPort: 9}
		u.SetNetworkLayerForChecksum(csumLayer)
		l4 = u
	} else {
		w := s.window
		if w == 0 {
			w = 500
		}
		tc := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: 80, Seq: s.seq, Ack: s.ack, ACK: true, PSH: s.psh, FIN: s.fin, Window: w, DataOffset: 8,
			Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{s.tsval, 0, 0, 0, 0, 0, 0, 0}}}}
		tc.SetNetworkLayerForChecksum(csumLayer)
		l4 = tc
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, l4, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, off, 65535+off)
	return append(b, buf.Bytes()...)
}

// segment cuts a super-packet back into packets the way the kernel does
// (GSO), completing the checksum the way a device would, so the test can
// compare what the kernel will see with what was sent. Either family.
func segment(t *testing.T, b []byte) [][]byte {
	hdr := b[:virtioNetHdrLen] // b is what Write hands to write(2)
	pkt := b[virtioNetHdrLen:]
	if hdr[0] == 0 {
		if hdr[1] != virtioGSONone {
			t.Fatalf("virtio header % x", hdr)
		}
		return [][]byte{pkt}
	}
	v6 := pkt[0]>>4 == 6
	iph, proto := 20, pkt[9]
	if v6 {
		iph, proto = 40, pkt[6]
	}
	hlen := int(binary.NativeEndian.Uint16(hdr[2:]))
	gso := int(binary.NativeEndian.Uint16(hdr[4:]))
	cstart := int(binary.NativeEndian.Uint16(hdr[6:]))
	coff := int(binary.NativeEndian.Uint16(hdr[8:]))
	if hdr[0] != virtioFlagNeedsCsum || cstart != iph {
		t.Fatalf("virtio header % x", hdr)
	}
	var out [][]byte
	seq := binary.BigEndian.Uint32(pkt[iph+4:])
	if hdr[1] == virtioGSONone {
		// One packet in CHECKSUM_PARTIAL: complete its checksum.
		s := append([]byte(nil), pkt...)
		l4 := s[cstart:]
		ps := pseudoSum(s, proto, len(l4))
		if uint64(foldedSum(nil, ps)) != uint64(binary.BigEndian.Uint16(l4[coff:])) {
			t.Fatalf("checksum field does not hold the pseudo-header sum")
		}
		binary.BigEndian.PutUint16(l4[coff:], 0)
		binary.BigEndian.PutUint16(l4[coff:], deviceSum(proto, l4, ps))
		return [][]byte{s}
	}
	for p := hlen; p < len(pkt); p += gso {
		end := min(p+gso, len(pkt))
		s := append(append([]byte(nil), pkt[:hlen]...), pkt[p:end]...)
		if v6 {
			binary.BigEndian.PutUint16(s[4:], uint16(len(s)-40))
		} else {
			binary.BigEndian.PutUint16(s[2:], uint16(len(s)))
			s[10], s[11] = 0, 0
			binary.BigEndian.PutUint16(s[10:], ^foldedSum(s[:20], 0))
		}
		l4 := s[iph:]
		if hdr[1] == virtioGSOTCPv4 || hdr[1] == virtioGSOTCPv6 {
			binary.BigEndian.PutUint32(l4[4:], seq)
			seq += uint32(end - p)
			if end < len(pkt) {
				l4[13] &^= tcpFlagPSH // only the last segment keeps PSH
			}
		} else {
			binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		}
		// Pseudo header for this segment, then the device's sum.
		ps := pseudoSum(s, proto, len(l4))
		binary.BigEndian.PutUint16(l4[coff:], 0)
		binary.BigEndian.PutUint16(l4[coff:], deviceSum(proto, l4, ps))
		out = append(out, s)
	}
	return out
}

// deviceSum completes a transport checksum as skb_checksum_help does:
// csum_fold(csum) ?: CSUM_MANGLED_0, so a UDP checksum that sums to zero
// is sent as 0xffff (RFC 768: zero means none). For TCP both are the same
// number; the test's TCP senders never pick 0xffff, so keep theirs.
func deviceSum(proto byte, l4 []byte, pseudo uint64) uint16 {
	s := ^foldedSum(l4, pseudo)
	if s == 0 && proto == protoUDP {
		s = 0xffff
	}
	return s
}

func TestCoalesceRuns(t *testing.T) {
	a := func(seq uint32, n int, mod func(*seg)) seg {
		s := seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1000, seq: seq, ack: 77, payload: n}
		if mod != nil {
			mod(&s)
		}
		return s
	}
	b := func(seq uint32, n int) seg {
		return seg{src: "10.5.1.3", dst: "10.5.2.2", sport: 2000, seq: seq, ack: 5, payload: n}
	}
	u := func(n int) seg {
		return seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 53, payload: n, proto: "udp"}
	}
	us := func(count, n int) (out []seg) {
		for range count {
			out = append(out, u(n))
		}
		return out
	}
	cases := []struct {
		name string
		segs []seg
		runs []int // packets per written super-packet, in write order
	}{
		{"one flow", []seg{a(0, 1000, nil), a(1000, 1000, nil), a(2000, 1000, nil)}, []int{3}},
		{"short last ends the run", []seg{a(0, 1000, nil), a(1000, 500, nil), a(1500, 1000, nil)}, []int{2, 1}},
		{"psh ends the run", []seg{a(0, 1000, func(s *seg) { s.psh = true }), a(1000, 1000, nil)}, []int{1, 1}},
		{"psh on the last joins", []seg{a(0, 1000, nil), a(1000, 1000, func(s *seg) { s.psh = true })}, []int{2}},
		{"interleaved flows", []seg{a(0, 1000, nil), b(0, 1000), a(1000, 1000, nil), b(1000, 1000)}, []int{2, 2}},
		{"gap in sequence", []seg{a(0, 1000, nil), a(2000, 1000, nil)}, []int{1, 1}},
		{"different ack", []seg{a(0, 1000, nil), a(1000, 1000, func(s *seg) { s.ack = 78 })}, []int{1, 1}},
		{"different window", []seg{a(0, 1000, nil), a(1000, 1000, func(s *seg) { s.window = 9 })}, []int{1, 1}},
		{"a FIN keeps its place", []seg{a(0, 1000, nil), a(1000, 0, func(s *seg) { s.fin = true }), a(1000, 1000, nil)}, []int{1, 1, 1}},
		{"udp empty payloads stay apart", []seg{u(0), u(0), u(0)}, []int{1, 1, 1}},
		{"udp empty after data", []seg{u(64), u(64), u(0), u(64)}, []int{2, 1, 1}},
		{"udp empty before data", []seg{u(0), u(64), u(64)}, []int{1, 2}},
		{"udp at most 64 segments", us(100, 16), []int{64, 36}},
		{"tcp pure acks stay apart", []seg{a(0, 0, nil), a(0, 0, nil), a(0, 1000, nil), a(1000, 0, nil)}, []int{1, 1, 1, 1}},
		{"different options", []seg{a(0, 1000, nil), a(1000, 1000, func(s *seg) { s.tsval = 1 })}, []int{1, 1}},
		{"a fragment ends its address pair's runs", []seg{a(0, 1000, nil), a(1000, 1000, nil), b(0, 1000), a(9000, 1000, func(s *seg) { s.mf = true }), a(2000, 1000, nil), b(1000, 1000)}, []int{2, 2, 1, 1}},
		{"udp same size", []seg{{src: "10.5.1.2", dst: "10.5.2.2", sport: 53, payload: 64, proto: "udp"}, {src: "10.5.1.2", dst: "10.5.2.2", sport: 53, payload: 64, proto: "udp"}, {src: "10.5.1.2", dst: "10.5.2.2", sport: 53, payload: 10, proto: "udp"}}, []int{3}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var bufs [][]byte
			for _, s := range c.segs {
				bufs = append(bufs, build(t, s))
			}
			checkRuns(t, bufs, c.runs)
		})
	}
}

// checkRuns coalesces bufs (on a device with USO) and checks the packets
// per super-packet written, in write order, each write against the
// kernel's rules, and that the writes, cut back as the kernel would, give
// every packet byte for byte (checksums included), each flow in order.
func checkRuns(t *testing.T, bufs [][]byte, want []int) {
	t.Helper()
	var orig [][]byte
	for _, p := range bufs {
		orig = append(orig, append([]byte(nil), p[off:]...))
	}
	co := coalescer{uso: true}
	co.plan(bufs, off)
	var got []int
	var cut [][]byte
	for i := range co.runs {
		got = append(got, co.runs[i].n)
		w := joined(co.finish(bufs, off, &co.runs[i]))
		checkVirtioWrite(t, w, co.uso, co.mtu)
		cut = append(cut, segment(t, w)...)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("runs %v, want %v", got, want)
	}
	if len(cut) != len(orig) {
		t.Fatalf("%d packets after segmenting, want %d", len(cut), len(orig))
	}
	// Per flow (fuzzFlow's), the packets come out as they went in.
	flows := map[flowKey][][]byte{}
	for _, p := range orig {
		k, _, _ := fuzzFlow(p)
		flows[k] = append(flows[k], p)
	}
	for _, p := range cut {
		k, _, _ := fuzzFlow(p)
		if len(flows[k]) == 0 || !bytes.Equal(flows[k][0], p) {
			t.Fatalf("flow %+v: packet out of order or changed:\n% x", k, p)
		}
		flows[k] = flows[k][1:]
	}
}

func BenchmarkCoalesce(b *testing.B) {
	t := &testing.T{}
	var tmpl [][]byte
	for i := 0; i < 44; i++ {
		tmpl = append(tmpl, build(t, seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1000, seq: uint32(i * 1380), ack: 1, payload: 1380}))
	}
	bufs := make([][]byte, len(tmpl))
	b.ReportAllocs()
	b.ResetTimer()
	co := coalescer{}
	for i := 0; i < b.N; i++ {
		for j := range bufs {
			bufs[j] = tmpl[j][:len(tmpl[j])]
		}
		co.plan(bufs, off)
		for k := range co.runs {
			co.finish(bufs, off, &co.runs[k])
		}
		bufs[0] = bufs[0][:len(tmpl[0])]
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(bufs)), "ns/packet")
}

// TestCoalesceCutsLargeTCP: a lone TCP packet above the MTU (a kernel
// vxlan peer's TSO packet delivered whole) goes out as a super-packet the
// kernel cuts at the MTU, carrying every payload byte once.
func TestCoalesceCutsLargeTCP(t *testing.T) {
	big := build(t, seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1000, seq: 5, ack: 1, payload: 9000})
	payload := append([]byte(nil), big[off+52:]...)
	co := coalescer{mtu: 1450}
	bufs := [][]byte{big}
	co.plan(bufs, off)
	if len(co.runs) != 1 {
		t.Fatalf("%d runs", len(co.runs))
	}
	w := joined(co.finish(bufs, off, &co.runs[0]))
	if w[1] != virtioGSOTCPv4 {
		t.Fatalf("written with GSO type %d, want TCPv4", w[1])
	}
	var got []byte
	for _, s := range segment(t, w) {
		if len(s) > 1450 {
			t.Fatalf("a %d-byte segment for a 1450-byte MTU", len(s))
		}
		got = append(got, s[52:]...)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("payload not carried intact")
	}
}

// TestCoalesceCutsConsecutiveLargeTCP: two TSO packets of one flow above
// the MTU in a row must not merge into a super-packet cut at the first
// one's length (9000 bytes, for a 1450-byte device): each is cut at the
// MTU, and a train of MTU-sized packets after them still merges.
func TestCoalesceCutsConsecutiveLargeTCP(t *testing.T) {
	var bufs [][]byte
	var payload []byte
	seq := uint32(5)
	for _, n := range []int{9000, 9000, 1398, 1398} {
		p := build(t, seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1000, seq: seq, ack: 1, payload: n})
		payload = append(payload, p[off+52:]...)
		bufs = append(bufs, p)
		seq += uint32(n)
	}
	co := coalescer{mtu: 1450}
	co.plan(bufs, off)
	var got []byte
	for i := range co.runs {
		for _, s := range segment(t, joined(co.finish(bufs, off, &co.runs[i]))) {
			if len(s) > 1450 {
				t.Fatalf("run %d: a %d-byte segment for a 1450-byte MTU", i, len(s))
			}
			got = append(got, s[52:]...)
		}
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("payload not carried intact")
	}
	if len(co.runs) != 3 {
		t.Errorf("%d runs, want 3 (each large packet alone, then the train)", len(co.runs))
	}
}

// build6 is build for IPv6.
func build6(t *testing.T, s seg) []byte {
	t.Helper()
	hop := s.hop
	if hop == 0 {
		hop = 63
	}
	ip := &layers.IPv6{Version: 6, TrafficClass: s.tclass, FlowLabel: s.flow, HopLimit: hop, NextHeader: layers.IPProtocolTCP,
		SrcIP: net.ParseIP(s.src), DstIP: net.ParseIP(s.dst)}
	if s.proto == "udp" {
		ip.NextHeader = layers.IPProtocolUDP
	}
	b := serialize(t, s, ip, ip)
	p := b[off:]
	if s.nocsum {
		p[46], p[47] = 0, 0
	}
	if s.hbh {
		// Hop-by-hop options (a PadN) between the fixed header and the
		// transport: the transport checksum stays as it is (RFC 8200 8.1).
		rest := append([]byte(nil), p[40:]...)
		hbh := []byte{p[6], 0, 1, 4, 0, 0, 0, 0}
		b = append(append(b[:off+40], hbh...), rest...)
		b[off+6] = 0
		binary.BigEndian.PutUint16(b[off+4:], uint16(len(b)-off-40))
	}
	return b
}

// TestCoalesceRuns6 is TestCoalesceRuns for IPv6: each rule that keeps
// the kernel's GRO from coalescing two packets keeps weft from it too.
func TestCoalesceRuns6(t *testing.T) {
	a := func(seq uint32, n int, mod func(*seg)) seg {
		s := seg{src: "fd00:10:5:1::2", dst: "fd00:10:5:2::2", sport: 1000, seq: seq, ack: 77, payload: n, flow: 0x12345}
		if mod != nil {
			mod(&s)
		}
		return s
	}
	b := func(seq uint32, n int) seg {
		return seg{src: "fd00:10:5:1::3", dst: "fd00:10:5:2::2", sport: 2000, seq: seq, ack: 5, payload: n}
	}
	u := func(n int, mod func(*seg)) seg {
		s := seg{src: "fd00:10:5:1::2", dst: "fd00:10:5:2::2", sport: 53, payload: n, proto: "udp"}
		if mod != nil {
			mod(&s)
		}
		return s
	}
	us := func(count, n int) (out []seg) {
		for range count {
			out = append(out, u(n, nil))
		}
		return out
	}
	psh := func(s *seg) { s.psh = true }
	cases := []struct {
		name string
		segs []seg
		runs []int
	}{
		{"one flow", []seg{a(0, 1000, nil), a(1000, 1000, nil), a(2000, 1000, nil)}, []int{3}},
		{"short last ends the run", []seg{a(0, 1000, nil), a(1000, 500, nil), a(1500, 1000, nil)}, []int{2, 1}},
		{"larger than the first", []seg{a(0, 500, nil), a(500, 1000, nil)}, []int{1, 1}},
		{"psh ends the run", []seg{a(0, 1000, psh), a(1000, 1000, nil)}, []int{1, 1}},
		{"psh on the last joins", []seg{a(0, 1000, nil), a(1000, 1000, psh)}, []int{2}},
		{"interleaved flows", []seg{a(0, 1000, nil), b(0, 1000), a(1000, 1000, nil), b(1000, 1000)}, []int{2, 2}},
		{"gap in sequence", []seg{a(0, 1000, nil), a(2000, 1000, nil)}, []int{1, 1}},
		{"different ack", []seg{a(0, 1000, nil), a(1000, 1000, func(s *seg) { s.ack = 78 })}, []int{1, 1}},
		{"different window", []seg{a(0, 1000, nil), a(1000, 1000, func(s *seg) { s.window = 9 })}, []int{1, 1}},
		{"different options", []seg{a(0, 1000, nil), a(1000, 1000, func(s *seg) { s.tsval = 1 })}, []int{1, 1}},
		{"different traffic class", []seg{a(0, 1000, nil), a(1000, 1000, func(s *seg) { s.tclass = 4 })}, []int{1, 1}},
		{"different ECN bits", []seg{a(0, 1000, nil), a(1000, 1000, func(s *seg) { s.tclass = 1 })}, []int{1, 1}},
		{"different flow label", []seg{a(0, 1000, nil), a(1000, 1000, func(s *seg) { s.flow = 0x54321 })}, []int{1, 1}},
		{"different hop limit", []seg{a(0, 1000, nil), a(1000, 1000, func(s *seg) { s.hop = 62 })}, []int{1, 1}},
		{"a FIN keeps its place", []seg{a(0, 1000, nil), a(1000, 0, func(s *seg) { s.fin = true }), a(1000, 1000, nil)}, []int{1, 1, 1}},
		{"tcp pure acks stay apart", []seg{a(0, 0, nil), a(0, 0, nil), a(0, 1000, nil), a(1000, 0, nil)}, []int{1, 1, 1, 1}},
		{"an extension header ends its address pair's runs",
			[]seg{a(0, 1000, nil), a(1000, 1000, nil), b(0, 1000), a(9000, 1000, func(s *seg) { s.hbh = true }), a(2000, 1000, nil), b(1000, 1000)},
			[]int{2, 2, 1, 1}},
		{"extension headers never coalesce", []seg{a(0, 1000, func(s *seg) { s.hbh = true }), a(1000, 1000, func(s *seg) { s.hbh = true })}, []int{1, 1}},
		{"udp same size", []seg{u(64, nil), u(64, nil), u(10, nil)}, []int{3}},
		{"udp empty payloads stay apart", []seg{u(0, nil), u(0, nil), u(0, nil)}, []int{1, 1, 1}},
		{"udp empty after data", []seg{u(64, nil), u(64, nil), u(0, nil), u(64, nil)}, []int{2, 1, 1}},
		{"udp at most 64 segments", us(100, 16), []int{64, 36}},
		{"udp without checksum stays apart, as it came", []seg{u(64, nil), u(64, func(s *seg) { s.nocsum = true }), u(64, nil), u(64, nil)}, []int{1, 1, 2}},
		{"udp different hop limit", []seg{u(64, nil), u(64, func(s *seg) { s.hop = 9 })}, []int{1, 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var bufs [][]byte
			for _, s := range c.segs {
				bufs = append(bufs, build6(t, s))
			}
			checkRuns(t, bufs, c.runs)
		})
	}
}

// TestCoalesceMixedFamilies: IPv4 and IPv6 flows interleaved in one
// batch each coalesce, in order, and an IPv6 address that reads like an
// IPv4 one (::10.5.1.2) is not the IPv4 flow.
func TestCoalesceMixedFamilies(t *testing.T) {
	var bufs [][]byte
	for i := range uint32(3) {
		bufs = append(bufs,
			build(t, seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1000, seq: i * 1000, ack: 1, payload: 1000}),
			build6(t, seg{src: "fd00:10:5:1::2", dst: "fd00:10:5:2::2", sport: 1000, seq: i * 1000, ack: 1, payload: 1000}),
			build6(t, seg{src: "::10.5.1.2", dst: "::10.5.2.2", sport: 1000, seq: i * 1000, ack: 1, payload: 1000}))
	}
	checkRuns(t, bufs, []int{3, 3, 3})
}

// TestCoalesceIPv6Header checks what an IPv6 super-packet is written as:
// the virtio-net header (TCPv6 or UDP_L4 GSO, checksum from the transport
// header), the payload and UDP lengths, and the checksum field holding
// the IPv6 pseudo-header sum for the whole super-packet.
func TestCoalesceIPv6Header(t *testing.T) {
	for _, c := range []struct {
		proto   string
		payload int
		gso     uint8
		l4h     int
		coff    int
		proto6  uint64
	}{{"tcp", 1000, virtioGSOTCPv6, 32, 16, protoTCP}, {"udp", 64, virtioGSOUDPL4, 8, 6, protoUDP}} {
		var bufs [][]byte
		for i := range 3 {
			bufs = append(bufs, build6(t, seg{src: "fd00:10:5:1::2", dst: "fd00:10:5:2::2", sport: 1000,
				seq: uint32(i * c.payload), ack: 1, payload: c.payload, proto: c.proto}))
		}
		addrs := append([]byte(nil), bufs[0][off+8:off+40]...)
		co := coalescer{uso: true, mtu: 1472}
		co.plan(bufs, off)
		if len(co.runs) != 1 || co.runs[0].n != 3 {
			t.Fatalf("%s: runs %+v, want one of 3", c.proto, co.runs)
		}
		w := joined(co.finish(bufs, off, &co.runs[0]))
		h, pkt := w[:virtioNetHdrLen], w[virtioNetHdrLen:]
		l4len := c.l4h + 3*c.payload
		if h[0] != virtioFlagNeedsCsum || h[1] != c.gso ||
			binary.NativeEndian.Uint16(h[2:]) != uint16(40+c.l4h) || binary.NativeEndian.Uint16(h[4:]) != uint16(c.payload) ||
			binary.NativeEndian.Uint16(h[6:]) != 40 || binary.NativeEndian.Uint16(h[8:]) != uint16(c.coff) {
			t.Errorf("%s: virtio header % x", c.proto, h)
		}
		if len(pkt) != 40+l4len || binary.BigEndian.Uint16(pkt[4:]) != uint16(l4len) {
			t.Errorf("%s: %d bytes, payload length %d, want %d", c.proto, len(pkt), binary.BigEndian.Uint16(pkt[4:]), l4len)
		}
		if c.proto == "udp" && binary.BigEndian.Uint16(pkt[44:]) != uint16(l4len) {
			t.Errorf("udp: UDP length %d, want %d", binary.BigEndian.Uint16(pkt[44:]), l4len)
		}
		if want := foldedSum(addrs, c.proto6+uint64(l4len)); binary.BigEndian.Uint16(pkt[40+c.coff:]) != want {
			t.Errorf("%s: checksum field %#04x, want the pseudo-header sum %#04x", c.proto, binary.BigEndian.Uint16(pkt[40+c.coff:]), want)
		}
		// Each segment the kernel cuts verifies as gopacket reads it.
		for i, s := range segment(t, w) {
			ip := &layers.IPv6{}
			if err := ip.DecodeFromBytes(s, gopacket.NilDecodeFeedback); err != nil {
				t.Fatal(err)
			}
			var l4 interface {
				gopacket.DecodingLayer
				SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
				VerifyChecksum() (error, gopacket.ChecksumVerificationResult)
			}
			if c.proto == "udp" {
				l4 = &layers.UDP{}
			} else {
				l4 = &layers.TCP{}
			}
			if err := l4.DecodeFromBytes(s[40:], gopacket.NilDecodeFeedback); err != nil {
				t.Fatal(err)
			}
			l4.SetNetworkLayerForChecksum(ip)
			if err, v := l4.VerifyChecksum(); err != nil || !v.Valid {
				t.Errorf("%s: segment %d: checksum does not verify", c.proto, i)
			}
		}
	}
}

// TestCoalesceCutsLargeTCP6: an IPv6 TCP packet above the MTU (a kernel
// vxlan peer's whole TSO packet, which the engine lets through since the
// Device implements engine.LargeTCP6Writer) goes out alone as a TCPv6
// super-packet cut at the MTU; a train of MTU-sized packets after two of
// them still merges, and no IPv4 run is split around them.
func TestCoalesceCutsLargeTCP6(t *testing.T) {
	var bufs [][]byte
	var payload []byte
	seq := uint32(5)
	for _, n := range []int{9000, 9000, 1378, 1378} {
		p := build6(t, seg{src: "fd00:10:5:1::2", dst: "fd00:10:5:2::2", sport: 1000, seq: seq, ack: 1, payload: n})
		payload = append(payload, p[off+72:]...)
		bufs = append(bufs, p)
		seq += uint32(n)
	}
	v4 := func(seq uint32) []byte {
		return build(t, seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1000, seq: seq, ack: 1, payload: 1000})
	}
	bufs = append([][]byte{v4(0)}, append(bufs, v4(1000))...)
	co := coalescer{uso: true, mtu: 1450}
	co.plan(bufs, off)
	var got []byte
	var runs []int
	for i := range co.runs {
		runs = append(runs, co.runs[i].n)
		w := joined(co.finish(bufs, off, &co.runs[i]))
		checkVirtioWrite(t, w, co.uso, co.mtu)
		if i == 1 && (w[1] != virtioGSOTCPv6 || binary.NativeEndian.Uint16(w[4:]) != 1450-40-32) {
			t.Errorf("the large IPv6 packet written with virtio header % x", w[:virtioNetHdrLen])
		}
		for _, s := range segment(t, w) {
			if len(s) > 1450 {
				t.Fatalf("run %d: a %d-byte segment for a 1450-byte MTU", i, len(s))
			}
			if s[0]>>4 == 6 {
				got = append(got, s[72:]...)
			}
		}
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("payload not carried intact")
	}
	if fmt.Sprint(runs) != "[2 1 1 2]" {
		t.Errorf("runs %v, want the IPv4 pair, each large IPv6 packet alone, then the IPv6 pair", runs)
	}
	var d any = &Device{}
	if _, ok := d.(interface{ SegmentsLargeTCP6() bool }); !ok {
		t.Error("Device does not say it cuts large TCPv6 packets")
	}
}

// BenchmarkCoalesce6 is BenchmarkCoalesce for one TCP flow over IPv6.
func BenchmarkCoalesce6(b *testing.B) {
	t := &testing.T{}
	var tmpl [][]byte
	for i := 0; i < 44; i++ {
		tmpl = append(tmpl, build6(t, seg{src: "fd00:10:5:1::2", dst: "fd00:10:5:2::2", sport: 1000, seq: uint32(i * 1360), ack: 1, payload: 1360}))
	}
	bufs := make([][]byte, len(tmpl))
	b.ReportAllocs()
	b.ResetTimer()
	co := coalescer{}
	for i := 0; i < b.N; i++ {
		for j := range bufs {
			bufs[j] = tmpl[j][:len(tmpl[j])]
		}
		co.plan(bufs, off)
		for k := range co.runs {
			co.finish(bufs, off, &co.runs[k])
		}
		bufs[0] = bufs[0][:len(tmpl[0])]
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(bufs)), "ns/packet")
}

// joined is what a writev of pieces hands the kernel: the pieces one
// after another.
func joined(pieces [][]byte) []byte {
	var b []byte
	for _, p := range pieces {
		b = append(b, p...)
	}
	return b
}

// TestCoalesceRunFitsOneWritev: 1,100 one-byte TCP segments of one flow
// (a batch larger than UIO_MAXIOV) make two runs, each written with at
// most 1,024 iovecs.
func TestCoalesceRunFitsOneWritev(t *testing.T) {
	var bufs [][]byte
	for i := range 1100 {
		bufs = append(bufs, build(t, seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1000, seq: uint32(i), ack: 1, payload: 1}))
	}
	co := coalescer{uso: true}
	co.plan(bufs, off)
	if len(co.runs) != 2 || co.runs[0].n != maxWritePieces {
		t.Fatalf("%d runs, the first of %d packets; want 2, %d", len(co.runs), co.runs[0].n, maxWritePieces)
	}
	for i := range co.runs {
		if n := len(co.finish(bufs, off, &co.runs[i])); n > 1024 {
			t.Fatalf("run %d: %d pieces for one writev", i, n)
		}
	}
}
