package vxlan

import (
	"bytes"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/weft-net/weft/engine"
)

var (
	ownMAC  = net.HardwareAddr{0x8e, 0xd7, 0x4b, 0x96, 0x29, 0xeb} // flanneld's h1 in the fixture
	peerMAC = [6]byte{0xd6, 0x61, 0xc5, 0x27, 0x4e, 0x01}          // and h2
)

type sentFrame struct {
	b  []byte
	to netip.AddrPort
}

func testEncap(t testing.TB, gbp bool, policy uint16) (*Encap, *[]sentFrame) {
	t.Helper()
	var sent []sentFrame
	e, err := NewEncap(EncapOptions{VNI: 1, MAC: ownMAC, GBP: gbp, GroupPolicy: policy,
		Gateway: netip.MustParseAddr("10.5.92.0"),
		SendARP: func(b []byte, to netip.AddrPort) error {
			sent = append(sent, sentFrame{bytes.Clone(b), to})
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	return e, &sent
}

func testPeer() *engine.Peer {
	return &engine.Peer{Subnet: netip.MustParsePrefix("10.5.55.0/24"), Endpoint: netip.MustParseAddrPort("192.0.2.2:8472"), HWAddr: peerMAC}
}

// fixtureFrames reads the UDP payloads of flanneld's vxlan capture (the
// kernel's own frames) from the shared fixtures; copied into testdata.
func fixtureFrames(t testing.TB) [][]byte {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "flannel-vxlan-underlay-txcsum-off.pcap"))
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
		p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
		if u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && u.DstPort == DefaultPort {
			out = append(out, bytes.Clone(u.Payload))
		}
	}
	if len(out) == 0 {
		t.Fatal("no vxlan frames in the fixture")
	}
	return out
}

// The kernel's frames (h2 -> h1 in the fixture) decapsulate on h1, and
// Encapsulate on h2's side rebuilds their headers byte for byte.
func TestEncapMatchesKernelFrames(t *testing.T) {
	h1, _ := testEncap(t, false, 0)
	h2mac := net.HardwareAddr(peerMAC[:])
	h2, err := NewEncap(EncapOptions{VNI: 1, MAC: h2mac})
	if err != nil {
		t.Fatal(err)
	}
	toH1 := &engine.Peer{HWAddr: [6]byte(ownMAC)}
	n := 0
	for _, fr := range fixtureFrames(t) {
		if !bytes.Equal(fr[8:14], ownMAC) { // h1 -> h2: the other direction
			continue
		}
		n++
		if r := h1.Decapsulate(fr[:HeaderLen:len(fr)], testPeer()); r != engine.DropNone {
			t.Fatalf("kernel frame dropped as %v: %x", r, fr[:HeaderLen])
		}
		hdr := make([]byte, HeaderLen)
		h2.Encapsulate(hdr, fr[HeaderLen:], toH1)
		if !bytes.Equal(hdr, fr[:HeaderLen]) {
			t.Fatalf("header\n got %x\nwant %x", hdr, fr[:HeaderLen])
		}
	}
	if n == 0 {
		t.Fatal("no h2 -> h1 frames in the fixture")
	}
}

func frame(vxlan string, dst [6]byte, etherType uint16, body []byte) []byte {
	b, _ := hex.DecodeString(vxlan)
	b = append(b, dst[:]...)
	b = append(b, peerMAC[:]...)
	b = append(b, byte(etherType>>8), byte(etherType))
	return append(b, body...)
}

func TestDecapsulateDrops(t *testing.T) {
	own := [6]byte(ownMAC)
	ip := []byte{0x45, 0, 0, 20}
	for _, c := range []struct {
		name  string
		gbp   bool
		frame []byte
		want  engine.DropReason
	}{
		{"ok", false, frame("0800000000000100", own, 0x0800, ip), engine.DropNone},
		{"broadcast", false, frame("0800000000000100", broadcastMAC, 0x0800, ip), engine.DropNone},
		{"truncated", false, frame("0800000000000100", own, 0x0800, nil)[:HeaderLen-1], engine.DropBadEncap},
		{"no I flag", false, frame("0000000000000100", own, 0x0800, ip), engine.DropBadEncap},
		{"reserved flag", false, frame("0c00000000000100", own, 0x0800, ip), engine.DropBadEncap},
		{"reserved byte 1", false, frame("0800010000000100", own, 0x0800, ip), engine.DropBadEncap},
		{"reserved after VNI", false, frame("0800000000000101", own, 0x0800, ip), engine.DropBadEncap},
		{"GBP not configured", false, frame("8800001200000100", own, 0x0800, ip), engine.DropBadEncap},
		{"GBP configured", true, frame("8848001200000100", own, 0x0800, ip), engine.DropNone},
		{"GBP with a reserved flag", true, frame("c848001200000100", own, 0x0800, ip), engine.DropBadEncap},
		{"GBP bits without G", true, frame("0840001200000100", own, 0x0800, ip), engine.DropBadEncap},
		{"wrong VNI", false, frame("0800000000000200", own, 0x0800, ip), engine.DropWrongVNI},
		{"wrong MAC", false, frame("0800000000000100", peerMAC, 0x0800, ip), engine.DropWrongMAC},
		{"IPv6", false, frame("0800000000000100", own, 0x86dd, ip), engine.DropNotIPv4Frame},
		{"VLAN", false, frame("0800000000000100", own, 0x8100, ip), engine.DropNotIPv4Frame},
		{"ARP not for us", false, frame("0800000000000100", broadcastMAC, 0x0806, arpRequest("10.5.92.9")), engine.DropNotIPv4Frame},
	} {
		e, sent := testEncap(t, c.gbp, 0)
		fr := c.frame
		hdr := fr[:min(HeaderLen, len(fr)):len(fr)]
		if got := e.Decapsulate(hdr, testPeer()); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
		if len(*sent) != 0 {
			t.Errorf("%s: sent an ARP reply", c.name)
		}
	}
}

func arpRequest(target string) []byte {
	a := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: peerMAC[:], SourceProtAddress: []byte{10, 5, 55, 0},
		DstHwAddress: make([]byte, 6), DstProtAddress: netip.MustParseAddr(target).AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	gopacket.SerializeLayers(buf, gopacket.SerializeOptions{}, a)
	return buf.Bytes()
}

// An ARP request for the gateway address is answered with the VtepMAC, as
// the kernel's flannel.1 would, to the requesting peer's endpoint.
func TestARPReply(t *testing.T) {
	e, sent := testEncap(t, false, 0)
	fr := frame("0800000000000100", broadcastMAC, 0x0806, arpRequest("10.5.92.0"))
	if r := e.Decapsulate(fr[:HeaderLen:len(fr)], testPeer()); r != engine.DropARPAnswered {
		t.Fatalf("ARP request: %v", r)
	}
	if len(*sent) != 1 || (*sent)[0].to != testPeer().Endpoint {
		t.Fatalf("sent %v", *sent)
	}
	reply := (*sent)[0].b
	var vx layers.VXLAN
	if err := vx.DecodeFromBytes(reply, gopacket.NilDecodeFeedback); err != nil || !vx.ValidIDFlag || vx.VNI != 1 {
		t.Fatalf("reply's VXLAN header %x: %v", reply[:8], err)
	}
	p := gopacket.NewPacket(reply[8:], layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	arp, _ := p.Layer(layers.LayerTypeARP).(*layers.ARP)
	if eth == nil || arp == nil || !bytes.Equal(eth.DstMAC, peerMAC[:]) || !bytes.Equal(eth.SrcMAC, ownMAC) ||
		arp.Operation != layers.ARPReply || !bytes.Equal(arp.SourceHwAddress, ownMAC) ||
		!bytes.Equal(arp.SourceProtAddress, []byte{10, 5, 92, 0}) || !bytes.Equal(arp.DstProtAddress, []byte{10, 5, 55, 0}) ||
		!bytes.Equal(arp.DstHwAddress, peerMAC[:]) {
		t.Fatalf("reply:\n%s", p.Dump())
	}
	// From a sender with no lease: not answered.
	if r := e.Decapsulate(fr[:HeaderLen:len(fr)], nil); r != engine.DropNotIPv4Frame {
		t.Fatalf("ARP from a non-peer: %v", r)
	}
	// A truncated request is not answered from whatever follows it.
	if r := e.Decapsulate(fr[:HeaderLen:HeaderLen+20], testPeer()); r != engine.DropNotIPv4Frame {
		t.Fatalf("truncated ARP: %v", r)
	}
	// A flood is cut at the rate limit.
	for range 2 * arpRepliesPerSecond {
		e.Decapsulate(fr[:HeaderLen:len(fr)], testPeer())
	}
	if s := e.Stats(); s.ARPReplies != arpRepliesPerSecond || s.ARPRateLimited == 0 {
		t.Fatalf("after a flood: %+v", s)
	}
}

func TestGBPSent(t *testing.T) {
	e, _ := testEncap(t, true, 0x1234)
	hdr := make([]byte, HeaderLen)
	e.Encapsulate(hdr, nil, testPeer())
	if want := "8800123400000100"; hex.EncodeToString(hdr[:8]) != want {
		t.Fatalf("GBP header %x, want %s", hdr[:8], want)
	}
	if r := e.Decapsulate(append(hdr[:8:8], frame("", [6]byte(ownMAC), 0x0800, nil)...), nil); r != engine.DropNone {
		t.Fatalf("own GBP frame: %v", r)
	}
	// Without a policy the header is the plain one, as the kernel sends
	// for an unmarked packet.
	e, _ = testEncap(t, true, 0)
	e.Encapsulate(hdr, nil, testPeer())
	if want := "0800000000000100"; hex.EncodeToString(hdr[:8]) != want {
		t.Fatalf("header %x, want %s", hdr[:8], want)
	}
}

// FuzzVXLANDecap: any datagram decapsulates without panicking; an accepted
// one really is a VXLAN frame for this VNI and MAC carrying IPv4, and an
// ARP reply goes out only for a well-formed request for the gateway.
func FuzzVXLANDecap(f *testing.F) {
	own := [6]byte(ownMAC)
	f.Add(frame("0800000000000100", own, 0x0800, []byte{0x45}), true)
	f.Add(frame("0800000000000100", broadcastMAC, 0x0806, arpRequest("10.5.92.0")), true)
	f.Add(frame("8848001200000100", own, 0x0800, nil), false)
	f.Add([]byte{0x08}, true)
	e, sent := testEncap(f, true, 0)
	f.Fuzz(func(t *testing.T, data []byte, known bool) {
		var p *engine.Peer
		if known {
			p = testPeer()
		}
		*sent = (*sent)[:0]
		hdr := data[:min(HeaderLen, len(data)):len(data)]
		r := e.Decapsulate(hdr, p)
		switch r {
		case engine.DropNone:
			if len(data) < HeaderLen || data[0]&0x08 == 0 || data[4] != 0 || data[5] != 0 || data[6] != 1 || data[7] != 0 ||
				(!bytes.Equal(data[8:14], ownMAC) && [6]byte(data[8:14]) != broadcastMAC) || data[20] != 0x08 || data[21] != 0 {
				t.Fatalf("accepted %x", hdr)
			}
		case engine.DropARPAnswered:
			if len(*sent) != 1 || p == nil || len(data) < HeaderLen+arpLen || !bytes.Equal(data[HeaderLen+24:HeaderLen+28], []byte{10, 5, 92, 0}) {
				t.Fatalf("answered %x", data)
			}
		default:
			if len(*sent) != 0 {
				t.Fatalf("%v but sent a reply", r)
			}
		}
	})
}
