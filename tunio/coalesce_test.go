package tunio

import (
	"bytes"
	"encoding/binary"
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
}

func build(t *testing.T, s seg) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 63, SrcIP: net.ParseIP(s.src).To4(), DstIP: net.ParseIP(s.dst).To4(), Flags: layers.IPv4DontFragment}
	payload := make([]byte, s.payload)
	for i := range payload {
		payload[i] = byte(s.seq) + byte(i)
	}
	var l4 gopacket.SerializableLayer
	if s.proto == "udp" {
		ip.Protocol = layers.IPProtocolUDP
		u := &layers.UDP{SrcPort: layers.UDPPort(s.sport), DstPort: 9}
		u.SetNetworkLayerForChecksum(ip)
		l4 = u
	} else {
		ip.Protocol = layers.IPProtocolTCP
		w := s.window
		if w == 0 {
			w = 500
		}
		tc := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: 80, Seq: s.seq, Ack: s.ack, ACK: true, PSH: s.psh, FIN: s.fin, Window: w, DataOffset: 8,
			Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)}}}
		tc.SetNetworkLayerForChecksum(ip)
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
// compare what the kernel will see with what was sent.
func segment(t *testing.T, b []byte) [][]byte {
	hdr := b[:virtioNetHdrLen] // b is what Write hands to write(2)
	pkt := b[virtioNetHdrLen:]
	if hdr[0] == 0 {
		if hdr[1] != virtioGSONone {
			t.Fatalf("virtio header % x", hdr)
		}
		return [][]byte{pkt}
	}
	hlen := int(binary.NativeEndian.Uint16(hdr[2:]))
	gso := int(binary.NativeEndian.Uint16(hdr[4:]))
	cstart := int(binary.NativeEndian.Uint16(hdr[6:]))
	coff := int(binary.NativeEndian.Uint16(hdr[8:]))
	if hdr[0] != virtioFlagNeedsCsum || cstart != 20 {
		t.Fatalf("virtio header % x", hdr)
	}
	var out [][]byte
	seq := binary.BigEndian.Uint32(pkt[24:])
	if hdr[1] == virtioGSONone {
		// One packet in CHECKSUM_PARTIAL: complete its checksum.
		s := append([]byte(nil), pkt...)
		l4 := s[cstart:]
		ps := uint64(binary.BigEndian.Uint16(s[12:])) + uint64(binary.BigEndian.Uint16(s[14:])) +
			uint64(binary.BigEndian.Uint16(s[16:])) + uint64(binary.BigEndian.Uint16(s[18:])) + uint64(s[9]) + uint64(len(l4))
		if uint64(foldedSum(nil, ps)) != uint64(binary.BigEndian.Uint16(l4[coff:])) {
			t.Fatalf("checksum field does not hold the pseudo-header sum")
		}
		binary.BigEndian.PutUint16(l4[coff:], 0)
		binary.BigEndian.PutUint16(l4[coff:], deviceSum(s[9], l4, ps))
		return [][]byte{s}
	}
	for p := hlen; p < len(pkt); p += gso {
		end := min(p+gso, len(pkt))
		s := append(append([]byte(nil), pkt[:hlen]...), pkt[p:end]...)
		binary.BigEndian.PutUint16(s[2:], uint16(len(s)))
		s[10], s[11] = 0, 0
		binary.BigEndian.PutUint16(s[10:], ^foldedSum(s[:20], 0))
		l4 := s[20:]
		if hdr[1] == virtioGSOTCPv4 {
			binary.BigEndian.PutUint32(l4[4:], seq)
			seq += uint32(end - p)
			if end < len(pkt) {
				l4[13] &^= tcpFlagPSH // only the last segment keeps PSH
			}
		} else {
			binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		}
		// Pseudo header for this segment, then the device's sum.
		ps := uint64(binary.BigEndian.Uint16(s[12:])) + uint64(binary.BigEndian.Uint16(s[14:])) +
			uint64(binary.BigEndian.Uint16(s[16:])) + uint64(binary.BigEndian.Uint16(s[18:])) + uint64(s[9]) + uint64(len(l4))
		binary.BigEndian.PutUint16(l4[coff:], 0)
		binary.BigEndian.PutUint16(l4[coff:], deviceSum(s[9], l4, ps))
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
		{"udp same size", []seg{{src: "10.5.1.2", dst: "10.5.2.2", sport: 53, payload: 64, proto: "udp"}, {src: "10.5.1.2", dst: "10.5.2.2", sport: 53, payload: 64, proto: "udp"}, {src: "10.5.1.2", dst: "10.5.2.2", sport: 53, payload: 10, proto: "udp"}}, []int{3}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var bufs, orig [][]byte
			for _, s := range c.segs {
				p := build(t, s)
				bufs = append(bufs, p)
				orig = append(orig, append([]byte(nil), p[off:]...))
			}
			co := coalescer{uso: true}
			co.plan(bufs, off)
			var got []int
			var cut [][]byte
			for i := range co.runs {
				got = append(got, co.runs[i].n)
				cut = append(cut, segment(t, co.finish(bufs, off, &co.runs[i]))...)
			}
			if len(got) != len(c.runs) {
				t.Fatalf("runs %v, want %v", got, c.runs)
			}
			for i := range got {
				if got[i] != c.runs[i] {
					t.Fatalf("runs %v, want %v", got, c.runs)
				}
			}
			// Cut back, every packet is the original, byte for byte
			// (checksums included), in an order that keeps each flow's.
			seen := 0
			for _, o := range orig {
				found := false
				for _, p := range cut {
					if bytes.Equal(p, o) {
						found = true
					}
				}
				if found {
					seen++
				} else {
					t.Errorf("packet %x... not reproduced", o[:40])
				}
			}
			if len(cut) != len(orig) || seen != len(orig) {
				t.Fatalf("%d packets after segmenting, want %d", len(cut), len(orig))
			}
		})
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
	w := co.finish(bufs, off, &co.runs[0])
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
		for _, s := range segment(t, co.finish(bufs, off, &co.runs[i])) {
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

// build6 is build for TCP over IPv6.
func build6(t *testing.T, s seg) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, HopLimit: 63, NextHeader: layers.IPProtocolTCP, SrcIP: net.ParseIP(s.src), DstIP: net.ParseIP(s.dst)}
	tc := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: 80, Seq: s.seq, Ack: s.ack, ACK: true, Window: 500}
	tc.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tc, gopacket.Payload(make([]byte, s.payload))); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, off, 65535+off)
	return append(b, buf.Bytes()...)
}

// TestCoalesceLeavesIPv6Alone: the write path coalesces IPv4 only, and
// does not split the IPv4 run around an IPv6 packet. An IPv6 TCP packet
// (the engine forwards them too) is written alone in CHECKSUM_PARTIAL, as
// IPv4 ones are (a kernel vxlan peer over veth sends them with the
// checksum unfinished), and one above the MTU (that peer's whole TSO
// packet, which the engine lets through since the Device implements
// engine.LargeTCP6Writer) as a TCPv6 super-packet cut at the MTU.
func TestCoalesceLeavesIPv6Alone(t *testing.T) {
	v4 := func(seq uint32) []byte {
		return build(t, seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1000, seq: seq, ack: 1, payload: 1000})
	}
	v6 := func(seq uint32, n int) []byte {
		return build6(t, seg{src: "fd00:10:5:1::2", dst: "fd00:10:5:2::2", sport: 1000, seq: seq, ack: 1, payload: n})
	}
	bufs := [][]byte{v4(0), v6(0, 1000), v4(1000), v6(1000, 9000)}
	orig := [][]byte{nil, append([]byte(nil), bufs[1][off:]...), nil, append([]byte(nil), bufs[3][off:]...)}
	co := coalescer{uso: true, mtu: 1450}
	co.plan(bufs, off)
	if len(co.runs) != 3 || co.runs[0].n != 2 || co.runs[1].n != 1 || co.runs[2].n != 1 {
		t.Fatalf("runs %+v, want the IPv4 pair and each IPv6 packet alone", co.runs)
	}
	for i, wantGSO := range map[int]struct {
		typ  uint8
		size uint16
	}{1: {virtioGSONone, 0}, 2: {virtioGSOTCPv6, 1450 - 40 - 20}} {
		w := co.finish(bufs, off, &co.runs[i])
		h, pkt := w[:virtioNetHdrLen], w[virtioNetHdrLen:]
		if h[0] != virtioFlagNeedsCsum || h[1] != wantGSO.typ || binary.NativeEndian.Uint16(h[4:]) != wantGSO.size ||
			binary.NativeEndian.Uint16(h[6:]) != 40 || binary.NativeEndian.Uint16(h[8:]) != 16 {
			t.Errorf("IPv6 packet %d written with virtio header % x", i, h)
		}
		o := orig[co.runs[i].idx]
		if !bytes.Equal(pkt[:56], o[:56]) || !bytes.Equal(pkt[58:], o[58:]) {
			t.Errorf("IPv6 packet %d changed beyond its checksum", i)
		}
		// Completing the partial checksum as the kernel would gives the
		// sender's full one.
		if got := ^foldedSum(pkt[40:], 0); got != binary.BigEndian.Uint16(o[56:]) {
			t.Errorf("IPv6 packet %d: completed checksum %#04x, sender's %#04x", i, got, binary.BigEndian.Uint16(o[56:]))
		}
	}
	var d any = &Device{}
	if _, ok := d.(interface{ SegmentsLargeTCP6() bool }); !ok {
		t.Error("Device does not say it cuts large TCPv6 packets")
	}
}
