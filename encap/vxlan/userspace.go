package vxlan

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weft-net/weft/engine"
)

// Userspace VXLAN: the frame layout the kernel's vxlan driver puts inside
// the UDP payload (RFC 7348), written and checked by weft's engine for
// hosts whose kernel cannot create a vxlan device.
//
//	0      8                  22
//	| VXLAN | inner Ethernet  | inner IPv4 (or IPv6) packet ...
//	        | dst | src | type|
//
// On a dual-stack network one Encap speaks for both of a kernel host's
// devices: IPv4 frames as flannel.<VNI> (its VtepMAC, EtherType 0x0800),
// IPv6 frames as flannel-v6.<VNI> (the BackendV6Data VtepMAC, 0x86DD).
const (
	// HeaderLen is VXLAN (8) plus the inner Ethernet header (14): what the
	// engine writes into each buffer's headroom.
	HeaderLen = 8 + 14

	// First 32-bit word of the VXLAN header (include/net/vxlan.h).
	flagVNI          = 0x08000000 // VXLAN_HF_VNI: the I flag
	flagGBP          = 0x80000000 // VXLAN_HF_GBP: the G flag
	gbpDontLearn     = 0x00400000 // VXLAN_GBP_DONT_LEARN
	gbpPolicyApplied = 0x00080000 // VXLAN_GBP_POLICY_APPLIED
	gbpUsedBits      = flagGBP | gbpDontLearn | gbpPolicyApplied | 0xffff

	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	etherTypeIPv6 = 0x86dd
	arpLen        = 28 // Ethernet/IPv4 ARP body

	// arpRepliesPerSecond bounds the replies a flood of requests can make
	// this host send (the kernel rate-limits its own ARP output too).
	arpRepliesPerSecond = 100
)

var broadcastMAC = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// EncapOptions configure NewEncap.
type EncapOptions struct {
	VNI int
	// MAC is this host's VtepMAC: the source of every inner frame it sends
	// and the destination it accepts (besides broadcast).
	MAC net.HardwareAddr
	// MAC6, on a dual-stack network, is this host's IPv6 VtepMAC (the
	// BackendV6Data one): the source of every IPv6 frame, and the only
	// destination an IPv6 frame is accepted for, as flannel-v6.<VNI>
	// would. Nil: IPv6 frames are refused (not-ipv4-frame).
	MAC6 net.HardwareAddr
	// GBP accepts the group-policy extension on receive, as the kernel's
	// vxlan does with "gbp" (vxlan_parse_gbp_hdr); otherwise its bits make
	// a frame malformed. GroupPolicy, when non-zero, is sent in every
	// frame: the kernel sends the skb mark's policy and none for mark 0,
	// and a TUN packet carries no mark, so 0 sends what the kernel would.
	GBP         bool
	GroupPolicy uint16
	// Gateway is this host's overlay address (the lease's network
	// address, which flannel.<VNI> holds): ARP requests for it are
	// answered through SendARP. Invalid: no ARP replies.
	Gateway netip.Addr
	// SendARP sends a reply frame (VXLAN header included) to a peer's
	// endpoint. It runs on a receive loop, rarely, one call at a time (the
	// Encap serialises them); it must not block.
	SendARP func(frame []byte, to netip.AddrPort) error
}

// Encap is the userspace VXLAN engine.Encap.
type Encap struct {
	vni     uint32
	mac     [6]byte
	mac6    [6]byte
	has6    bool
	gbp     bool
	hdr     [8]byte // the VXLAN header every sent frame starts with
	gateway [4]byte
	arpOn   bool
	sendARP func([]byte, netip.AddrPort) error

	// ARP replies: the buffer and the token bucket belong to whichever
	// receive loop holds arpMu. With several queues, several receive loops
	// may get a request at once; a request comes only while a peer lacks
	// its permanent neighbour entry, and replies are rate-limited, so the
	// lock is off the forwarding path. The counters are read by Stats.
	arpMu     sync.Mutex
	arpBuf    [HeaderLen + arpLen]byte
	arpTokens int
	arpRefill time.Time
	arpStats  struct{ replies, limited, sendErrors atomic.Uint64 }
}

var _ engine.Encap = (*Encap)(nil)

// NewEncap checks the options and precomputes the VXLAN header.
func NewEncap(o EncapOptions) (*Encap, error) {
	if o.VNI < 0 || o.VNI > maxVNI {
		return nil, fmt.Errorf("vxlan: VNI %d is outside 0..%d", o.VNI, maxVNI)
	}
	if len(o.MAC) != 6 {
		return nil, fmt.Errorf("vxlan: VtepMAC %q is not an Ethernet address", o.MAC)
	}
	e := &Encap{vni: uint32(o.VNI), gbp: o.GBP, sendARP: o.SendARP}
	copy(e.mac[:], o.MAC)
	if o.MAC6 != nil {
		if len(o.MAC6) != 6 || o.MAC6[0]&1 != 0 {
			return nil, fmt.Errorf("vxlan: IPv6 VtepMAC %q is not a unicast Ethernet address", o.MAC6)
		}
		copy(e.mac6[:], o.MAC6)
		e.has6 = true
	}
	w0 := uint32(flagVNI)
	if o.GBP && o.GroupPolicy != 0 {
		w0 |= flagGBP | uint32(o.GroupPolicy)
	}
	binary.BigEndian.PutUint32(e.hdr[0:4], w0)
	binary.BigEndian.PutUint32(e.hdr[4:8], e.vni<<8)
	if o.Gateway.Is4() && o.SendARP != nil {
		e.arpOn, e.gateway = true, o.Gateway.As4()
	}
	return e, nil
}

// Overhead implements engine.Encap.
func (e *Encap) Overhead() int { return HeaderLen }

// DecrementsTTL implements engine.Encap: the kernel's vxlan leaves the
// inner TTL alone (flanneld's vxlan captures show ttl=64 end to end).
func (e *Encap) DecrementsTTL() bool { return false }

// Encapsulate implements engine.Encap: the frame the kernel's vxlan would
// send for a packet routed via the peer's gateway, whose permanent
// neighbour entry is the peer's VtepMAC (for an IPv6 packet: the peer's
// IPv6 VtepMAC, as flannel-v6.<VNI>'s entry is).
func (e *Encap) Encapsulate(hdr, pkt []byte, p *engine.Peer) {
	_ = hdr[HeaderLen-1]
	copy(hdr[0:8], e.hdr[:])
	if len(pkt) > 0 && pkt[0]>>4 == 6 {
		copy(hdr[8:14], p.HWAddr6[:])
		copy(hdr[14:20], e.mac6[:])
		hdr[20], hdr[21] = etherTypeIPv6>>8, etherTypeIPv6&0xff
		return
	}
	copy(hdr[8:14], p.HWAddr[:])
	copy(hdr[14:20], e.mac[:])
	hdr[20], hdr[21] = etherTypeIPv4>>8, etherTypeIPv4&0xff
}

// Decapsulate implements engine.Encap, in the kernel's order: vxlan_rcv
// drops a frame without the I flag or with flags, reserved bits or
// extensions it was not configured for ("unparsed" bits), then one for a
// VNI it has no device for; the device then drops frames for another MAC
// (eth_type_trans marks them PACKET_OTHERHOST) and the IP layer anything
// that is not IPv4. On a dual-stack network IPv6 frames are accepted for
// the IPv6 VtepMAC only, and IPv4 frames for the IPv4 one only: each
// family reaches the TUN as it would reach its own kernel device, never
// through the other's.
func (e *Encap) Decapsulate(hdr []byte, p *engine.Peer) engine.DropReason {
	if len(hdr) < HeaderLen {
		return engine.DropBadEncap
	}
	w0 := binary.BigEndian.Uint32(hdr[0:4])
	if w0&flagVNI == 0 {
		return engine.DropBadEncap
	}
	w0 &^= flagVNI
	if e.gbp && w0&flagGBP != 0 {
		w0 &^= gbpUsedBits
	}
	if w0 != 0 || hdr[7] != 0 {
		return engine.DropBadEncap
	}
	if uint32(hdr[4])<<16|uint32(hdr[5])<<8|uint32(hdr[6]) != e.vni {
		return engine.DropWrongVNI
	}
	dst := [6]byte(hdr[8:14])
	to4 := dst == e.mac || dst == broadcastMAC
	to6 := e.has6 && dst == e.mac6
	if !to4 && !to6 {
		return engine.DropWrongMAC
	}
	switch binary.BigEndian.Uint16(hdr[20:22]) {
	case etherTypeIPv4:
		if to4 {
			return engine.DropNone
		}
		return engine.DropWrongMAC
	case etherTypeIPv6:
		if to6 {
			return engine.DropNone
		}
		if e.has6 {
			return engine.DropWrongMAC
		}
	case etherTypeARP:
		if to4 && e.answerARP(hdr[:cap(hdr)], p) {
			return engine.DropARPAnswered
		}
	}
	return engine.DropNotIPv4Frame
}

// answerARP replies to an Ethernet/IPv4 ARP request for the gateway
// address from a known peer, as the kernel's flannel.<VNI> would
// (arp_process answers for a local address). flannel's peers hold a
// permanent neighbour entry for it, so a request comes only while that
// entry is missing. frame is the whole datagram.
func (e *Encap) answerARP(frame []byte, p *engine.Peer) bool {
	if !e.arpOn || p == nil || len(frame) < HeaderLen+arpLen {
		return false
	}
	a := frame[HeaderLen : HeaderLen+arpLen]
	// htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request)
	if binary.BigEndian.Uint16(a[0:2]) != 1 || binary.BigEndian.Uint16(a[2:4]) != etherTypeIPv4 ||
		a[4] != 6 || a[5] != 4 || binary.BigEndian.Uint16(a[6:8]) != 1 || [4]byte(a[24:28]) != e.gateway {
		return false
	}
	e.arpMu.Lock()
	defer e.arpMu.Unlock()
	if e.arpTokens == 0 {
		now := time.Now()
		if now.Sub(e.arpRefill) < time.Second {
			e.arpStats.limited.Add(1)
			return false
		}
		e.arpRefill, e.arpTokens = now, arpRepliesPerSecond
	}
	e.arpTokens--
	r := e.arpBuf[:]
	copy(r[0:8], e.hdr[:])
	copy(r[8:14], a[8:14]) // to the requester's hardware address
	copy(r[14:20], e.mac[:])
	r[20], r[21] = etherTypeARP>>8, etherTypeARP&0xff
	b := r[HeaderLen:]
	copy(b[0:6], a[0:6]) // htype, ptype, hlen, plen
	b[6], b[7] = 0, 2    // reply
	copy(b[8:14], e.mac[:])
	copy(b[14:18], e.gateway[:])
	copy(b[18:28], a[8:18]) // target: the requester's MAC and IP
	if err := e.sendARP(r, p.Endpoint); err != nil {
		e.arpStats.sendErrors.Add(1)
		return false
	}
	e.arpStats.replies.Add(1)
	return true
}

// RandomMAC returns a new VtepMAC of the kind the kernel backend gives its
// device (random, locally administered, unicast).
func RandomMAC() (net.HardwareAddr, error) { return randomMAC() }

// EncapStats are the Encap's own counters, beside the engine's drops.
type EncapStats struct {
	ARPReplies     uint64 `json:"arp_replies"`
	ARPRateLimited uint64 `json:"arp_rate_limited"`
	ARPSendErrors  uint64 `json:"arp_send_errors"`
}

// Stats returns the ARP counters.
func (e *Encap) Stats() EncapStats {
	return EncapStats{ARPReplies: e.arpStats.replies.Load(), ARPRateLimited: e.arpStats.limited.Load(), ARPSendErrors: e.arpStats.sendErrors.Load()}
}
