package capture

import (
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/weft-net/weft/engine"
)

// Writer writes captured packets as pcapng: one interface per capture
// point (from-tun, to-tun, drop, in that order: interface ids 0, 1, 2),
// each LINKTYPE_IPV4 (bare IPv4 packets) or, on a network with IPv6,
// LINKTYPE_ETHERNET (see NewWriter), nanosecond timestamps. Each
// packet's comment says where it was seen, the peer and, for drops, the
// reason, so Wireshark shows them beside the packet ("pkt_comment").
//
// LINKTYPE_IPV4 (228) rather than LINKTYPE_RAW (101): libpcap 1.10 maps
// 101 to DLT_RAW (12) for the first interface and then refuses the second
// ("an interface has a type 101 different from the type of the first
// interface"), so tcpdump could not read a file with several; 228 maps to
// itself.
type Writer struct {
	ng    *pcapgo.NgWriter
	buf   []byte // comment scratch
	ether bool   // LINKTYPE_ETHERNET: each packet behind a made-up header
	frame []byte // the header and packet, scratch
	// The comment of the last packet, kept: packets of a flow share one,
	// so most packets cost no new string.
	lastKey  commentKey
	comments []string
}

type commentKey struct {
	point  engine.Point
	reason engine.DropReason
	peer   netip.AddrPort
}

// InterfaceDescription is the pcapng interface description of a point.
func InterfaceDescription(p engine.Point) string {
	switch p {
	case engine.PointFromTUN:
		return "weft: inner packets read from the TUN device, before routing"
	case engine.PointToTUN:
		return "weft: inner packets from peers, accepted and written to the TUN device"
	case engine.PointDrop:
		return "weft: packets not forwarded; the packet comment gives the reason"
	}
	return ""
}

// NewWriter writes the section header and the three interfaces. filter
// and snap are recorded in the interfaces (if_filter, if_snaplen).
//
// ipv6 says the network carries IPv6, so a capture may hold packets of
// both versions. LINKTYPE_IPV4 cannot say IPv6, LINKTYPE_RAW is what
// libpcap cannot read with several interfaces (above), and libpcap
// refuses interfaces of different link types in one file; so such a
// capture is LINKTYPE_ETHERNET, each packet behind a 14-byte header with
// zero addresses and the EtherType of its version (0x0800, 0x86dd; a
// userspace VXLAN datagram dropped before decapsulation: 0x88b5, the
// IEEE's local experimental type, with the comment's DatagramNote). The
// lengths recorded include the header.
func NewWriter(w io.Writer, filter string, snap int, ipv6 bool) (*Writer, error) {
	// pcapgo writes if_filter as a type byte then the string.
	filter = fitOption(filter, maxOptionLen-1)
	link := layers.LinkTypeIPv4
	if ipv6 {
		link = layers.LinkTypeEthernet
		if snap > 0 { // 0: no limit
			snap += etherLen
		}
	}
	intf := func(p engine.Point) pcapgo.NgInterface {
		return pcapgo.NgInterface{
			Name: p.String(), Description: fitOption(InterfaceDescription(p), maxOptionLen), Filter: filter,
			OS: runtime.GOOS, LinkType: link, SnapLength: uint32(snap),
			TimestampResolution: 9,
		}
	}
	ng, err := pcapgo.NewNgWriterInterface(w, intf(0), pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{
		Hardware: runtime.GOARCH, OS: runtime.GOOS, Application: "weft capture",
	}})
	if err != nil {
		return nil, err
	}
	for p := engine.Point(1); p < engine.NumPoints; p++ {
		if _, err := ng.AddInterface(intf(p)); err != nil {
			return nil, err
		}
	}
	return &Writer{ng: ng, ether: ipv6}, nil
}

// etherLen is the made-up Ethernet header of a capture with IPv6.
const etherLen = 14

// EtherTypeDatagram is the EtherType of a VXLAN datagram dropped before
// decapsulation, in a capture with IPv6 (IEEE 802 local experimental).
const EtherTypeDatagram = 0x88b5

// etherFrame puts data behind a made-up Ethernet header in w.frame.
func (w *Writer) etherFrame(r *Record) []byte {
	typ := uint16(EtherTypeDatagram)
	if !(r.Point == engine.PointDrop && EncapDrop(r.Reason)) && len(r.Data) > 0 {
		switch r.Data[0] >> 4 {
		case 4:
			typ = 0x0800
		case 6:
			typ = 0x86dd
		}
	}
	f := append(w.frame[:0], make([]byte, 12)...)
	f = append(f, byte(typ>>8), byte(typ))
	w.frame = append(f, r.Data...)
	return w.frame
}

// maxOptionLen is the longest value of a pcapng option: its length field
// is 16 bits. pcapgo writes the whole value but only the low 16 bits of
// its length, so a longer value corrupts the file; every option weft
// writes goes through fitOption.
const maxOptionLen = 0xffff

// fitOption cuts s to at most n bytes, at a UTF-8 character boundary.
func fitOption(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Comment is the packet comment weft writes for a record:
// "from-tun", "to-tun peer 192.0.2.2:8285",
// "drop reason=spoofed-source peer 192.0.2.2:8285".
func Comment(buf []byte, r *Record) []byte {
	buf = append(buf[:0], r.Point.String()...)
	if r.Point == engine.PointDrop {
		buf = append(buf, " reason="...)
		buf = append(buf, r.Reason.String()...)
	}
	if r.Peer.IsValid() {
		buf = append(buf, " peer "...)
		buf = r.Peer.AppendTo(buf)
	}
	if r.Point == engine.PointDrop && EncapDrop(r.Reason) {
		buf = append(buf, " "+DatagramNote...)
	}
	return buf
}

// DatagramNote marks, in a packet comment, a drop whose bytes are the VXLAN
// datagram's payload (VXLAN header, inner Ethernet frame) rather than an
// IPv4 packet: the engine refused it before decapsulating. A pcapng has one
// link type for every interface (libpcap refuses mixed ones), so the mark
// is how readers such as weft decode know.
const DatagramNote = "data=vxlan-datagram"

// EncapDrop reports whether a drop for reason r shows the encapsulated
// datagram (userspace VXLAN's header checks) instead of the inner packet.
func EncapDrop(r engine.DropReason) bool {
	switch r {
	case engine.DropBadEncap, engine.DropWrongVNI, engine.DropWrongMAC, engine.DropARPAnswered, engine.DropNotIPv4Frame:
		return true
	}
	return false
}

// Write writes one record.
func (w *Writer) Write(r *Record) error {
	key := commentKey{r.Point, r.Reason, r.Peer}
	if w.comments == nil || key != w.lastKey {
		w.buf = Comment(w.buf, r)
		w.comments = []string{fitOption(string(w.buf), maxOptionLen)}
		w.lastKey = key
	}
	ci := gopacket.CaptureInfo{
		Timestamp:      time.Unix(0, r.Time),
		CaptureLength:  len(r.Data),
		Length:         r.Length,
		InterfaceIndex: int(r.Point),
	}
	data := r.Data
	if w.ether {
		data = w.etherFrame(r)
		ci.CaptureLength, ci.Length = len(data), r.Length+etherLen
	}
	return w.ng.WritePacketWithOptions(ci, data, pcapgo.NgPacketOptions{Comments: w.comments})
}

// Flush writes out what is buffered.
func (w *Writer) Flush() error { return w.ng.Flush() }

// Close writes an interface statistics block per point (packets captured,
// and lost to overflow as if_dropped) and flushes. It does not close the
// underlying writer.
func (w *Writer) Close(s Stats) error {
	now := time.Now()
	for p := engine.Point(0); p < engine.NumPoints; p++ {
		err := w.ng.WriteInterfaceStats(int(p), pcapgo.NgInterfaceStatistics{
			LastUpdate: now, StartTime: s.Started, EndTime: now,
			PacketsReceived: s.Captured[p], PacketsDropped: s.Overflow[p],
		})
		if err != nil {
			return err
		}
	}
	return w.ng.Flush()
}

// Summary is the line `weft capture` prints at the end, tcpdump style.
func (s Stats) Summary() string {
	return fmt.Sprintf("%d packets captured (%s), %d lost to a full capture queue (%s)",
		s.TotalCaptured(), perPoint(s.Captured), s.TotalOverflow(), perPoint(s.Overflow))
}

func perPoint(v [engine.NumPoints]uint64) string {
	out := ""
	for p := engine.Point(0); p < engine.NumPoints; p++ {
		if p > 0 {
			out += " "
		}
		out += p.String() + "=" + strconv.FormatUint(v[p], 10)
	}
	return out
}
