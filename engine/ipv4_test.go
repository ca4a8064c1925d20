package engine

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"os"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// udpPacket builds a valid IPv4/UDP packet.
func udpPacket(t testing.TB, src, dst string, ttl uint8, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: ttl, Protocol: layers.IPProtocolUDP, SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4(), Flags: layers.IPv4DontFragment}
	u := &layers.UDP{SrcPort: 4000, DstPort: 5000}
	u.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, u, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCheckIPv4(t *testing.T) {
	good := udpPacket(t, "10.5.1.2", "10.5.2.2", 64, []byte("hello"))
	mut := func(f func(p []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		pkt  []byte
		want DropReason
		size int
	}{
		{"valid", good, DropNone, len(good)},
		{"trailing bytes ignored", append(append([]byte(nil), good...), 0, 0, 0), DropNone, len(good)},
		{"empty", nil, DropShort, 0},
		{"19 bytes", good[:19], DropShort, 0},
		{"ipv6", mut(func(p []byte) []byte { p[0] = 0x65; return p }), DropBadVersion, 0},
		{"ihl 4", mut(func(p []byte) []byte { p[0] = 0x44; return p }), DropBadHeaderLen, 0},
		{"ihl past end", mut(func(p []byte) []byte { p[0] = 0x4f; return p[:40] }), DropBadHeaderLen, 0},
		{"total length too big", mut(func(p []byte) []byte { binary.BigEndian.PutUint16(p[2:], uint16(len(p)+1)); return p }), DropBadLength, 0},
		{"total length below header", mut(func(p []byte) []byte { binary.BigEndian.PutUint16(p[2:], 19); return p }), DropBadLength, 0},
	}
	for _, c := range cases {
		size, r := checkIPv4(c.pkt)
		if r != c.want || size != c.size {
			t.Errorf("%s: got (%d, %v), want (%d, %v)", c.name, size, r, c.size, c.want)
		}
	}
}

func TestDecrementTTLKeepsChecksumValid(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	hdr := make([]byte, 20)
	for i := 0; i < 100000; i++ {
		for j := range hdr {
			hdr[j] = byte(r.Uint32())
		}
		hdr[0] = 0x45
		hdr[8] = byte(2 + r.IntN(254))
		hdr[10], hdr[11] = 0, 0
		binary.BigEndian.PutUint16(hdr[10:], checksum(hdr))
		want := append([]byte(nil), hdr...)
		want[8]--
		want[10], want[11] = 0, 0
		binary.BigEndian.PutUint16(want[10:], checksum(want))
		if !decrementTTL(hdr) {
			t.Fatal("decrementTTL refused a TTL above 1")
		}
		if checksum(hdr) != 0 {
			t.Fatalf("header checksum invalid after decrement: % x", hdr)
		}
		// RFC 1624's form may yield 0xffff where a full sum gives 0x0000;
		// both verify. Otherwise the bytes must match exactly.
		if !bytes.Equal(hdr, want) && !(hdr[10] == 0xff && hdr[11] == 0xff) {
			t.Fatalf("got % x, want % x", hdr, want)
		}
	}
	hdr[8] = 1
	if decrementTTL(hdr) || hdr[8] != 1 {
		t.Fatal("decrementTTL accepted TTL 1 or changed it")
	}
}

// TestDecrementTTLMatchesFlanneld checks the TTL patch against flanneld
// itself: the fixture's flannel0.pcap (h1's TUN) and underlay.pcap (the
// same 22 packets on the wire) differ exactly by one decrement per packet,
// one way or the other depending on direction.
func TestDecrementTTLMatchesFlanneld(t *testing.T) {
	tunPkts := readPcap(t, "testdata/flannel0.pcap", false)
	wirePkts := readPcap(t, "testdata/underlay.pcap", true)
	if len(tunPkts) != 22 || len(wirePkts) != 22 {
		t.Fatalf("fixtures hold %d and %d packets, want 22 each", len(tunPkts), len(wirePkts))
	}
	for i := range tunPkts {
		tp, wp := tunPkts[i], wirePkts[i]
		var before, after []byte
		if tp[8] > wp[8] { // h1 -> h2: decremented when read from h1's TUN
			before, after = tp, wp
		} else { // h2 -> h1: decremented again when written into h1's TUN
			before, after = wp, tp
		}
		got := append([]byte(nil), before...)
		if !decrementTTL(got) || !bytes.Equal(got, after) {
			t.Errorf("packet %d: decrement of % x\n gives % x\n flanneld made % x", i, before[:20], got[:20], after[:20])
		}
	}
}

// readPcap returns the IPv4 packets of a pcap: the whole record for a raw
// IP capture, the UDP payload for an Ethernet capture of the underlay.
func readPcap(t *testing.T, path string, underlay bool) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for {
		data, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		if !underlay {
			out = append(out, data)
			continue
		}
		p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
		u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok {
			t.Fatalf("%s: a record without UDP", path)
		}
		out = append(out, u.Payload)
	}
	return out
}

func TestBuildICMPError(t *testing.T) {
	offender := udpPacket(t, "10.5.1.2", "10.9.9.9", 64, bytes.Repeat([]byte{7}, 100))
	out := make([]byte, icmpErrorLen)
	n := buildICMPError(out, icmpDestUnreachable, icmpCodeNetUnreach, 0x0a050100, offender)
	p := gopacket.NewPacket(out[:n], layers.LayerTypeIPv4, gopacket.Default)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if ip == nil || icmp == nil {
		t.Fatalf("not an IPv4 ICMP packet: %v", p)
	}
	if ip.SrcIP.String() != "10.5.1.0" || ip.DstIP.String() != "10.5.1.2" {
		t.Errorf("addresses %s -> %s, want 10.5.1.0 -> 10.5.1.2", ip.SrcIP, ip.DstIP)
	}
	if icmp.TypeCode != layers.CreateICMPv4TypeCode(3, 0) {
		t.Errorf("type/code %v", icmp.TypeCode)
	}
	if checksum(out[:20]) != 0 || checksum(out[20:n]) != 0 {
		t.Error("bad checksum")
	}
	if !bytes.Equal(out[28:n], offender[:28]) {
		t.Error("the quote is not the offender's header and first 8 bytes")
	}
	// No ICMP error about an ICMP error (RFC 1122).
	if icmpErrorAllowed(out[:n]) {
		t.Error("an ICMP error may not be answered with one")
	}
	if !icmpErrorAllowed(offender) {
		t.Error("a UDP packet may be answered with an ICMP error")
	}
}

// TestICMPErrorAllowedAddresses: RFC 1122 3.2.2 forbids an ICMP error about
// a datagram whose source does not name a single host (this network,
// loopback, multicast, class E, broadcast) or whose destination is a
// broadcast or multicast address.
func TestICMPErrorAllowedAddresses(t *testing.T) {
	cases := []struct {
		src, dst string
		want     bool
	}{
		{"10.5.1.2", "10.9.9.9", true},
		{"192.0.2.1", "10.9.9.9", true},
		{"0.0.0.0", "10.9.9.9", false},
		{"0.1.2.3", "10.9.9.9", false},
		{"127.0.0.1", "10.9.9.9", false},
		{"127.255.0.9", "10.9.9.9", false},
		{"224.0.0.1", "10.9.9.9", false},
		{"239.255.255.255", "10.9.9.9", false},
		{"240.0.0.1", "10.9.9.9", false},
		{"254.1.2.3", "10.9.9.9", false},
		{"255.255.255.255", "10.9.9.9", false},
		{"10.5.1.2", "224.0.0.251", false},
		{"10.5.1.2", "239.1.2.3", false},
		{"10.5.1.2", "255.255.255.255", false},
		{"10.5.1.2", "240.0.0.1", false},
		{"10.5.1.2", "0.0.0.0", false},
		{"10.5.1.2", "127.0.0.1", false},
	}
	for _, c := range cases {
		pkt := udpPacket(t, c.src, c.dst, 64, []byte("x"))
		if got := icmpErrorAllowed(pkt); got != c.want {
			t.Errorf("%s -> %s: allowed %v, want %v", c.src, c.dst, got, c.want)
		}
	}
}
