package decode

import (
	"fmt"
	"io"
	"strings"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// Lines prints a live pcapng stream of inner IPv4 or IPv6 packets (what
// `weft capture` receives) one line per packet, as tcpdump does without -w:
// time, the packet's comments (capture point, peer, drop reason), and its
// layers on one line. It returns at the end of the stream.
func Lines(in io.Reader, out io.Writer) error {
	r, err := pcapgo.NewNgReader(in, pcapgo.NgReaderOptions{})
	if err != nil {
		return fmt.Errorf("the capture stream is not pcapng: %v", err)
	}
	for {
		data, ci, opts, err := r.ReadPacketDataWithOptions()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("the capture stream broke: %v", err)
		}
		if intf, err := r.Interface(ci.InterfaceIndex); err == nil && intf.LinkType == layers.LinkTypeEthernet && len(data) >= 14 {
			data = data[14:] // the made-up header of a capture with IPv6
		}
		fmt.Fprintf(out, "%s %s %s\n", ci.Timestamp.Format("15:04:05.000000"), strings.Join(opts.Comments, " "), innerSummary(data))
	}
}

// innerSummary is a one-line view of an inner IPv4 or IPv6 packet.
func innerSummary(data []byte) string {
	var b strings.Builder
	d := &Decoder{Out: &b}
	d.Layers(gopacket.NewPacket(data, InnerLayer(data), gopacket.NoCopy), "")
	return strings.Join(strings.Split(strings.TrimSpace(b.String()), "\n"), " | ")
}
