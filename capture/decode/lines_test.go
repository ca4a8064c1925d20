package decode

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// Lines prints one line per packet: time, comments, layers.
func TestLines(t *testing.T) {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: []byte{10, 5, 2, 7}, DstIP: []byte{10, 5, 1, 2}}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 1, Seq: 1}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, icmp); err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	w, err := pcapgo.NewNgWriter(&stream, layers.LinkTypeIPv4)
	if err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	ci := gopacket.CaptureInfo{Timestamp: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC), CaptureLength: len(data), Length: len(data)}
	if err := w.WritePacketWithOptions(ci, data, pcapgo.NgPacketOptions{Comments: []string{"to-tun peer 192.0.2.2:8285"}}); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	var out strings.Builder
	if err := Lines(&stream, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, "to-tun peer 192.0.2.2:8285") || !strings.Contains(got, "10.5.2.7") || strings.Contains(got[:len(got)-1], "\n") {
		t.Errorf("line: %q", got)
	}
	if err := Lines(strings.NewReader("not pcapng"), &out); err == nil {
		t.Error("a stream that is not pcapng was read")
	}
}
