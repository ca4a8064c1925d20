// Package decode prints captured packets layer by layer with gopacket, for
// bug reports: inner IPv4/TCP/UDP/ICMP packets of raw captures (weft
// capture, a TUN), and for captures of the underlay the outer Ethernet,
// IPv4 and UDP headers with a flannel-UDP or VXLAN payload decoded as the
// inner packet.
package decode

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/weft-net/weft/capture"
)

// Default ports: flannel's udp backend and flannel's VXLAN (the kernel's
// default, not IANA's 4789).
const (
	DefaultUDPPort   = 8285
	DefaultVXLANPort = 8472
)

// Decoder prints packets layer by layer. Underlay datagrams to or from the
// flannel-UDP port carry a bare inner IPv4 packet; to or from the VXLAN
// port, a VXLAN header and an inner Ethernet frame: both are decoded as
// the inner packet, indented.
type Decoder struct {
	Out       io.Writer
	UDPPort   layers.UDPPort
	VXLANPort layers.UDPPort
}

// packetSource reads pcap or pcapng.
type packetSource interface {
	ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
	LinkType() layers.LinkType
}

// File decodes every packet of a pcap or pcapng stream (at most limit,
// 0 for all); name is for errors.
func (d *Decoder) File(name string, in io.Reader, limit int) error {
	br := bufio.NewReader(in)
	magic, err := br.Peek(4)
	if err != nil {
		return fmt.Errorf("%s: too short for a capture file: %v", name, err)
	}
	var (
		src packetSource
		ng  *pcapgo.NgReader
	)
	if string(magic) == "\x0a\x0d\x0d\x0a" {
		ng, err = pcapgo.NewNgReader(br, pcapgo.NgReaderOptions{})
		src = ng
	} else {
		src, err = pcapgo.NewReader(br)
	}
	if err != nil {
		return fmt.Errorf("%s: not a pcap or pcapng file: %v", name, err)
	}
	for n := 1; limit == 0 || n <= limit; n++ {
		var (
			data []byte
			ci   gopacket.CaptureInfo
			note string
		)
		if ng != nil {
			var opts pcapgo.NgPacketOptions
			data, ci, opts, err = ng.ReadPacketDataWithOptions()
			if err == nil {
				note = strings.Join(opts.Comments, "; ")
				if intf, ierr := ng.Interface(ci.InterfaceIndex); ierr == nil && intf.Name != "" && !strings.HasPrefix(note, intf.Name) {
					note = strings.TrimSpace(intf.Name + " " + note)
				}
			}
		} else {
			data, ci, err = src.ReadPacketData()
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: packet %d: %v", name, n, err)
		}
		lt := src.LinkType()
		if ng != nil {
			if intf, ierr := ng.Interface(ci.InterfaceIndex); ierr == nil {
				lt = intf.LinkType
			}
		}
		d.Packet(n, ci, note, data, lt)
	}
	return nil
}

// Packet prints one packet: a header line, then its layers.
func (d *Decoder) Packet(n int, ci gopacket.CaptureInfo, note string, data []byte, lt layers.LinkType) {
	fmt.Fprintf(d.Out, "#%d %s len %d", n, ci.Timestamp.UTC().Format(time.RFC3339Nano), ci.Length)
	if ci.CaptureLength < ci.Length {
		fmt.Fprintf(d.Out, " (captured %d)", ci.CaptureLength)
	}
	if note != "" {
		fmt.Fprintf(d.Out, " [%s]", note)
	}
	fmt.Fprintln(d.Out)
	var first gopacket.Decoder = lt
	switch {
	case strings.Contains(note, capture.DatagramNote):
		first = layers.LayerTypeVXLAN // a weft drop before decapsulation
		if lt == layers.LinkTypeEthernet && len(data) >= 14 {
			data = data[14:] // the made-up header of a capture with IPv6
		}
	case lt == layers.LinkTypeRaw || lt == layers.LinkTypeIPv4 || lt == layers.LinkTypeIPv6:
		first = InnerLayer(data)
	}
	d.Layers(gopacket.NewPacket(data, first, gopacket.NoCopy), "  ")
	fmt.Fprintln(d.Out)
}

// Layers prints each layer on its own line; a flannel-UDP or VXLAN payload
// is decoded again as the inner packet, one level deeper.
func (d *Decoder) Layers(p gopacket.Packet, indent string) {
	for _, l := range p.Layers() {
		switch l := l.(type) {
		case *layers.UDP:
			fmt.Fprintf(d.Out, "%s%s\n", indent, LayerLine(l))
			switch {
			case l.SrcPort == d.UDPPort || l.DstPort == d.UDPPort:
				fmt.Fprintf(d.Out, "%sflannel-udp payload, %d bytes: the inner packet\n", indent, len(l.Payload))
				d.Layers(gopacket.NewPacket(l.Payload, InnerLayer(l.Payload), gopacket.NoCopy), indent+"  ")
				return
			case l.SrcPort == d.VXLANPort || l.DstPort == d.VXLANPort:
				d.Layers(gopacket.NewPacket(l.Payload, layers.LayerTypeVXLAN, gopacket.NoCopy), indent+"  ")
				return
			}
		default:
			fmt.Fprintf(d.Out, "%s%s\n", indent, LayerLine(l))
		}
	}
}

// InnerLayer is the first layer of a bare IP packet, by its version
// nibble: IPv6 for 6, else IPv4 (whose decoder then says what is wrong).
func InnerLayer(data []byte) gopacket.Decoder {
	if len(data) > 0 && data[0]>>4 == 6 {
		return layers.LayerTypeIPv6
	}
	return layers.LayerTypeIPv4
}

// LayerLine is a one-line summary of a layer's fields that matter when
// chasing a forwarding problem.
func LayerLine(l gopacket.Layer) string {
	switch l := l.(type) {
	case *layers.Ethernet:
		return fmt.Sprintf("Ethernet %s > %s type %s", l.SrcMAC, l.DstMAC, l.EthernetType)
	case *layers.IPv4:
		s := fmt.Sprintf("IPv4 %s > %s proto %s ttl %d id %d len %d", l.SrcIP, l.DstIP, l.Protocol, l.TTL, l.Id, l.Length)
		if l.Flags != 0 {
			s += " flags " + l.Flags.String()
		}
		if l.FragOffset != 0 {
			s += fmt.Sprintf(" frag-offset %d", l.FragOffset*8)
		}
		return s + fmt.Sprintf(" csum 0x%04x", l.Checksum)
	case *layers.IPv6:
		s := fmt.Sprintf("IPv6 %s > %s next %s hlim %d len %d", l.SrcIP, l.DstIP, l.NextHeader, l.HopLimit, l.Length)
		if l.FlowLabel != 0 {
			s += fmt.Sprintf(" flow 0x%05x", l.FlowLabel)
		}
		return s
	case *layers.ICMPv6:
		return fmt.Sprintf("ICMPv6 %s csum 0x%04x", l.TypeCode, l.Checksum)
	case *layers.TCP:
		var flags []string
		for _, f := range []struct {
			on   bool
			name string
		}{{l.SYN, "SYN"}, {l.ACK, "ACK"}, {l.FIN, "FIN"}, {l.RST, "RST"}, {l.PSH, "PSH"}, {l.URG, "URG"}} {
			if f.on {
				flags = append(flags, f.name)
			}
		}
		s := fmt.Sprintf("TCP %d > %d [%s] seq %d", l.SrcPort, l.DstPort, strings.Join(flags, ","), l.Seq)
		if l.ACK {
			s += fmt.Sprintf(" ack %d", l.Ack)
		}
		s += fmt.Sprintf(" win %d payload %d", l.Window, len(l.Payload))
		for _, o := range l.Options {
			if o.OptionType == layers.TCPOptionKindMSS && len(o.OptionData) == 2 {
				s += fmt.Sprintf(" mss %d", int(o.OptionData[0])<<8|int(o.OptionData[1]))
			}
		}
		return s
	case *layers.UDP:
		return fmt.Sprintf("UDP %d > %d len %d csum 0x%04x", l.SrcPort, l.DstPort, l.Length, l.Checksum)
	case *layers.ICMPv4:
		return fmt.Sprintf("ICMPv4 %s id %d seq %d", l.TypeCode, l.Id, l.Seq)
	case *layers.VXLAN:
		return fmt.Sprintf("VXLAN vni %d: the inner frame", l.VNI)
	case *layers.ARP:
		return fmt.Sprintf("ARP op %d %v (%v) > %v (%v)", l.Operation, l.SourceProtAddress, l.SourceHwAddress, l.DstProtAddress, l.DstHwAddress)
	case *gopacket.Payload:
		return fmt.Sprintf("payload %d bytes", len(*l))
	case *gopacket.DecodeFailure:
		return fmt.Sprintf("undecodable: %v", l.Error())
	}
	return fmt.Sprintf("%s %d bytes", l.LayerType(), len(l.LayerContents())+len(l.LayerPayload()))
}
