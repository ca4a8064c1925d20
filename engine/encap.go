package engine

// Encap is the wire format around each inner packet inside the UDP
// payload. flannel's UDP format has none (the payload is the packet); VXLAN
// puts an 8-byte VXLAN header and a 14-byte Ethernet header before it.
// Headers are written into the buffer's headroom, so encapsulating never
// moves the packet.
type Encap interface {
	// Overhead is the header length, fixed for the Encap's life and at most
	// MaxEncapOverhead.
	Overhead() int
	// Encapsulate writes the header for pkt, bound for p, into hdr (the
	// Overhead bytes right before pkt). It runs on the packet path: no
	// allocation, no lock.
	Encapsulate(hdr, pkt []byte, p *Peer)
	// Decapsulate checks the header of a datagram from p (nil when the
	// sender holds no lease) and returns DropNone to accept the inner
	// packet that follows it. hdr's capacity ends where the datagram
	// does, so hdr[:cap(hdr)] is the whole encapsulated frame.
	Decapsulate(hdr []byte, p *Peer) DropReason
	// DecrementsTTL says whether crossing hosts costs the inner packet one
	// TTL on each side (flannel's UDP proxy does this; the kernel's vxlan
	// does not).
	DecrementsTTL() bool
}

// MaxEncapOverhead leaves the 10 bytes the TUN's virtio-net header needs
// in front of a received inner packet.
const MaxEncapOverhead = Headroom - 10

// flannelUDP is flannel's UDP backend format: no header; the proxy lowers
// the TTL on each side.
type flannelUDP struct{}

func (flannelUDP) Overhead() int                            { return 0 }
func (flannelUDP) Encapsulate(_, _ []byte, _ *Peer)         {}
func (flannelUDP) Decapsulate(_ []byte, _ *Peer) DropReason { return DropNone }
func (flannelUDP) DecrementsTTL() bool                      { return true }
