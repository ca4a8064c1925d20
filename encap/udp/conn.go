package udp

import (
	"net/netip"
	"sync/atomic"
	"time"
)

// DefaultPort is flannel's UDP backend port.
const DefaultPort = 8285

// Options configure a Conn.
type Options struct {
	// Local is the address and port to bind (IPv4 or IPv6, which makes the
	// socket that family's): the interface's address and
	// the backend port. Binding an address (not 0.0.0.0) makes every
	// datagram leave from the address peers know this host by (or, behind
	// a NAT, the one the NAT maps to it).
	Local netip.AddrPort
	// BatchSize is the most datagrams per recvmmsg/sendmmsg (default 128).
	BatchSize int
	// NoGSO and NoGRO switch the UDP segmentation offloads off; each is
	// also switched off at runtime when the kernel refuses it.
	NoGSO, NoGRO bool
	// SocketBuffer is SO_RCVBUF and SO_SNDBUF in bytes (default 8 MiB),
	// forced past net.core.[rw]mem_max when running with CAP_NET_ADMIN, so
	// bursts are not dropped before the engine sees them.
	SocketBuffer int
	// SendOnly allocates no receive buffers (batch x 64 KiB): for the
	// extra sockets a sender binds only for their source ports.
	SendOnly bool
	// BusyPoll is how long a receive keeps polling the socket before it
	// parks the goroutine (0: park at once).
	BusyPoll time.Duration
	// ReusePort binds with SO_REUSEPORT, so that the sockets of a
	// ListenGroup share the one address: the kernel hands each datagram to
	// one of them by a hash of its 4-tuple, and each sends from it.
	ReusePort bool
}

// Stats are a Conn's own counters, beside the engine's.
type Stats struct {
	GSO, GRO      bool   // offloads in use now
	GSOFallbacks  uint64 // times the kernel refused GSO and it was switched off
	RecvCalls     uint64 // recvmmsg calls that returned datagrams
	RecvDatagrams uint64 // datagrams (before GRO splitting)
	RecvSegments  uint64 // packets after GRO splitting
	SendCalls     uint64 // sendmmsg calls
	SendMessages  uint64 // messages sent (a GSO message carries many packets)
	SendSegments  uint64 // packets sent
	Truncated     uint64 // datagrams longer than a buffer, dropped
	SendErrors    uint64 // messages the kernel refused
	LastSendErrno uint64 // errno of the last refusal, 0 if none
	// ReceiveDrops are datagrams the kernel dropped at the socket before
	// weft received them, nearly always for a full receive buffer (the
	// socket's sk_drops, read by SO_MEMINFO when Stats is called; 0
	// before Linux 4.12).
	ReceiveDrops uint64
}

type counters struct {
	gsoFallbacks, recvCalls, recvDatagrams, recvSegments atomic.Uint64
	sendCalls, sendMessages, sendSegments                atomic.Uint64
	truncated, sendErrors, lastSendErrno                 atomic.Uint64
}
