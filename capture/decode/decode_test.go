package decode

import (
	"bytes"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/weft-net/weft/capture"
	"github.com/weft-net/weft/engine"
)

func decodeFile(t *testing.T, path string, udpPort layers.UDPPort) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	d := &Decoder{Out: &out, UDPPort: udpPort, VXLANPort: DefaultVXLANPort}
	if err := d.File(path, f, 0); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// packets splits decode output into its packets.
func packets(out string) []string {
	return strings.Split(strings.TrimSpace(out), "\n\n")
}

// The fixtures are flanneld v0.28.9's own captures (see
// ../shared/fixtures/flannel-v0.28.9/README.md): 22 packets each, the same
// pings and TCP exchange.
func TestDecodeFlannelUDPUnderlay(t *testing.T) {
	pk := packets(decodeFile(t, "testdata/flannel-udp-underlay.pcap", DefaultUDPPort))
	if len(pk) != 22 {
		t.Fatalf("%d packets, want 22", len(pk))
	}
	want := `#1 2026-11-23T14:32:00.139048Z len 126
  Ethernet f6:2b:ce:67:73:7a > 7a:e3:68:9e:b6:e8 type IPv4
  IPv4 192.0.2.1 > 192.0.2.2 proto UDP ttl 64 id 25001 len 112 flags DF csum 0x54d0
  UDP 8285 > 8285 len 92 csum 0x8471
  flannel-udp payload, 84 bytes: the inner packet
    IPv4 10.5.42.1 > 10.5.40.1 proto ICMPv4 ttl 63 id 23111 len 84 flags DF csum 0x7b56
    ICMPv4 EchoRequest id 26085 seq 1
    payload 56 bytes`
	if pk[0] != want {
		t.Errorf("packet 1:\n%s\nwant:\n%s", pk[0], want)
	}
	all := strings.Join(pk, "\n")
	for _, s := range []string{"ICMPv4 EchoReply", "[SYN]", "mss 1432", "payload 30", "payload 36", "[ACK,FIN]"} {
		if !strings.Contains(all, s) {
			t.Errorf("no %q in the inner packets", s)
		}
	}
	// On another port the payload stays opaque.
	if out := decodeFile(t, "testdata/flannel-udp-underlay.pcap", 9999); strings.Contains(out, "flannel-udp") {
		t.Error("payload decoded as flannel-udp on a port that is not --udp-port")
	}
}

func TestDecodeFlannelTUN(t *testing.T) {
	pk := packets(decodeFile(t, "testdata/flannel-udp-flannel0.pcap", DefaultUDPPort))
	if len(pk) != 22 {
		t.Fatalf("%d packets, want 22", len(pk))
	}
	// Record N is record N of the underlay capture, TTL one higher (flanneld
	// lowers it when it reads the TUN).
	if !strings.HasPrefix(pk[0], "#1 2026-11-23T14:32:00.13892Z len 84\n  IPv4 10.5.42.1 > 10.5.40.1 proto ICMPv4 ttl 64 id 23111") {
		t.Errorf("packet 1:\n%s", pk[0])
	}
}

func TestDecodeFlannelVXLANUnderlay(t *testing.T) {
	pk := packets(decodeFile(t, "testdata/flannel-vxlan-underlay.pcap", DefaultUDPPort))
	if len(pk) != 22 {
		t.Fatalf("%d packets, want 22", len(pk))
	}
	want := `  UDP 50748 > 8472 len 114 csum 0x8487
    VXLAN vni 1: the inner frame
    Ethernet 8e:d7:4b:96:29:eb > d6:61:c5:27:4e:01 type IPv4
    IPv4 10.5.92.1 > 10.5.55.1 proto ICMPv4 ttl 64 id 33126 len 84 flags DF csum 0x1237
    ICMPv4 EchoRequest id 27029 seq 1`
	if !strings.Contains(pk[0], want) {
		t.Errorf("packet 1:\n%s\nwant it to contain:\n%s", pk[0], want)
	}
}

// A pcapng as weft capture writes it: the point and comment show on the
// header line, the packet is decoded from its IPv4 header.
func TestDecodeWeftCapture(t *testing.T) {
	var buf bytes.Buffer
	w, err := capture.NewWriter(&buf, "udp", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	pkt := []byte{0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 10, 6, 9, 9, 10, 6, 1, 2, 0, 9, 0, 9, 0, 12, 0, 0, 's', 'p', 'o', 'f'}
	r := &capture.Record{Time: 1e18, Point: engine.PointDrop, Reason: engine.DropSpoofedSource,
		Peer: netip.MustParseAddrPort("192.0.2.3:41000"), Length: len(pkt), Data: pkt}
	if err := w.Write(r); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(capture.Stats{}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	d := &Decoder{Out: &out, UDPPort: DefaultUDPPort, VXLANPort: DefaultVXLANPort}
	if err := d.File("mem", &buf, 0); err != nil {
		t.Fatal(err)
	}
	want := `#1 2001-09-09T01:46:40Z len 32 [drop reason=spoofed-source peer 192.0.2.3:41000]
  IPv4 10.6.9.9 > 10.6.1.2 proto UDP ttl 64 id 1 len 32 csum 0x0000
  UDP 9 > 9 len 12 csum 0x0000
  payload 4 bytes`
	if strings.TrimSpace(out.String()) != want {
		t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestDecodeRefusesWhatIsNoCapture(t *testing.T) {
	d := &Decoder{Out: &bytes.Buffer{}}
	err := d.File("notes.txt", strings.NewReader("hello, this is not a pcap"), 0)
	if err == nil || !strings.Contains(err.Error(), "notes.txt: not a pcap or pcapng file") {
		t.Errorf("got %v", err)
	}
}

// A userspace-VXLAN drop before decapsulation holds the VXLAN datagram:
// decode shows its VXLAN header and inner frame.
func TestDecodeWeftVXLANDrop(t *testing.T) {
	var buf bytes.Buffer
	w, err := capture.NewWriter(&buf, "", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	inner := []byte{0x45, 0, 0, 20, 0, 1, 0, 0, 64, 1, 0, 0, 10, 6, 2, 2, 10, 6, 1, 2}
	dgram := append([]byte{0x08, 0, 0, 0, 0, 0, 7, 0, // VXLAN, VNI 7
		2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0}, inner...) // Ethernet, IPv4
	r := &capture.Record{Point: engine.PointDrop, Reason: engine.DropWrongVNI, Peer: netip.MustParseAddrPort("192.0.2.3:8472"), Length: len(dgram), Data: dgram}
	if err := w.Write(r); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	var out bytes.Buffer
	if err := (&Decoder{Out: &out}).File("mem", &buf, 0); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[drop reason=wrong-vni peer 192.0.2.3:8472 data=vxlan-datagram]", "VXLAN vni 7", "Ethernet 02:00:00:00:00:02 > 02:00:00:00:00:01 type IPv4", "IPv4 10.6.2.2 > 10.6.1.2"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in:\n%s", want, out.String())
		}
	}
}
