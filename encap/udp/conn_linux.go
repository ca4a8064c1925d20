package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/engine"
)

// mmsghdr is struct mmsghdr from <sys/socket.h>: Go pads it exactly as C
// does on every Linux architecture (to the alignment of msghdr).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

const (
	// udpMaxSegments is the kernel's UDP_MAX_SEGMENTS: the most datagrams
	// one UDP_SEGMENT send may carry (64 since Linux 4.18).
	udpMaxSegments = 64
	// gsoMaxBytes keeps a GSO send's payload inside one IPv4 datagram's
	// 64 KiB, which udp_send_skb requires before segmenting.
	gsoMaxBytes = 65535 - 20 - 8
	oobSize     = 64
)

// sockaddr is room for either family's socket address: a sockaddr_in6,
// or a sockaddr_in in its first bytes (told apart by Family).
type sockaddr = unix.RawSockaddrInet6

// Conn is a batched UDP socket carrying flannel-UDP datagrams (or VXLAN
// frames), over IPv4 or IPv6 as its local address is. ReadBatch is called
// by one goroutine and WriteBatch by another; neither locks.
type Conn struct {
	uc    *net.UDPConn
	rc    syscall.RawConn
	fd    int // for WaitFD only: reads and writes go through rc
	batch int
	gso   atomic.Bool
	gro   bool
	spin  time.Duration
	c     counters

	rx rxState
	tx txState
}

var (
	_ engine.Transport       = (*Conn)(nil)
	_ engine.GatherTransport = (*Conn)(nil)
	_ engine.TrainReceiver   = (*Conn)(nil)
	_ engine.Waitable        = (*Conn)(nil)
)

type rxState struct {
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []sockaddr
	oob   []byte
	bufs  [][]byte // the Conn's own buffers, exchanged with the caller's

	n, next, seg int // messages received, next to hand out, byte offset in it

	fn  func(fd uintptr) bool // bound once: passing a method value allocates
	ret int
	err error
}

type txState struct {
	hdrs  []mmsghdr
	iovs  []unix.Iovec // two per packet: its head and its tail
	names []sockaddr
	oob   []byte
	first []int // index in pkts of each message's first packet
	segs  []int // packets in each message

	fn       func(fd uintptr) bool
	from, to int
	ret      int
	err      error
}

var errSendOnly = errors.New("udp: ReadBatch on a send-only socket")

// Listen opens the socket and probes its offloads.
func Listen(o Options) (*Conn, error) {
	if o.BatchSize == 0 {
		o.BatchSize = 128
	}
	if o.SocketBuffer == 0 {
		o.SocketBuffer = 8 << 20
	}
	network := "udp4"
	v6 := o.Local.Addr().Is6()
	if v6 {
		if o.Local.Addr().Is4In6() {
			return nil, fmt.Errorf("udp: %s is an IPv4-mapped address; use the IPv4 address", o.Local)
		}
		network = "udp6" // IPV6_V6ONLY: IPv4 has a socket of its own
	}
	uc, err := listenUDP(network, o)
	if err != nil {
		return nil, fmt.Errorf("udp: listen on %s: %w", o.Local, err)
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, err
	}
	c := &Conn{uc: uc, rc: rc, batch: o.BatchSize, spin: o.BusyPoll}
	var gsoOK, groOK bool
	err = rc.Control(func(fd uintptr) {
		s := int(fd)
		c.fd = s
		setBuffer(s, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, o.SocketBuffer)
		setBuffer(s, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, o.SocketBuffer)
		// flanneld's datagrams leave with DF set; so do ours. Over IPv6
		// the host would fragment locally otherwise.
		if v6 {
			_ = unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO)
		} else {
			_ = unix.SetsockoptInt(s, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
		}
		if !o.NoGSO {
			// Reading UDP_SEGMENT succeeds on kernels that support it (4.18+).
			_, e := unix.GetsockoptInt(s, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
			gsoOK = e == nil
		}
		if !o.NoGRO {
			groOK = unix.SetsockoptInt(s, unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
		}
	})
	if err != nil {
		uc.Close()
		return nil, err
	}
	c.gso.Store(gsoOK)
	c.gro = groOK
	if !o.SendOnly {
		c.initRx()
	}
	c.initTx()
	return c, nil
}

func listenUDP(network string, o Options) (*net.UDPConn, error) {
	if !o.ReusePort {
		return net.ListenUDP(network, net.UDPAddrFromAddrPort(o.Local))
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), network, o.Local.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// ListenGroup opens n sockets on o.Local: with n 1 the one socket of
// Listen, with more an SO_REUSEPORT group (o.ReusePort set for all), one
// per queue of the engine. A port of 0 is the one the kernel gives the
// first socket.
func ListenGroup(o Options, n int) ([]*Conn, error) {
	if n < 1 {
		return nil, fmt.Errorf("udp: a group of %d sockets", n)
	}
	if n == 1 {
		c, err := Listen(o)
		if err != nil {
			return nil, err
		}
		return []*Conn{c}, nil
	}
	o.ReusePort = true
	var cs []*Conn
	for range n {
		c, err := Listen(o)
		if err != nil {
			for _, c := range cs {
				c.Close()
			}
			return nil, err
		}
		cs = append(cs, c)
		o.Local = netip.AddrPortFrom(o.Local.Addr(), c.LocalAddr().Port())
	}
	return cs, nil
}

func setBuffer(fd, force, plain, size int) {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, size) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, size)
	}
}

func (c *Conn) initRx() {
	n := c.batch
	r := &c.rx
	r.hdrs = make([]mmsghdr, n)
	r.iovs = make([]unix.Iovec, n)
	r.names = make([]sockaddr, n)
	r.oob = make([]byte, n*oobSize)
	r.bufs = engine.NewBuffers(n)
	r.fn = c.recvmmsg
}

func (c *Conn) initTx() {
	n := c.batch
	t := &c.tx
	t.hdrs = make([]mmsghdr, n)
	t.iovs = make([]unix.Iovec, 2*n)
	t.names = make([]sockaddr, n)
	t.oob = make([]byte, n*oobSize)
	t.first = make([]int, n)
	t.segs = make([]int, n)
	t.fn = c.sendmmsg
}

// BatchSize implements engine.Transport.
func (c *Conn) BatchSize() int { return c.batch }

// LocalAddr is the bound address (useful with port 0 in tests).
func (c *Conn) LocalAddr() netip.AddrPort { return c.uc.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close implements engine.Transport.
func (c *Conn) Close() error { return c.uc.Close() }

// Stats returns the Conn's counters.
func (c *Conn) Stats() Stats {
	return Stats{
		GSO: c.gso.Load(), GRO: c.gro,
		GSOFallbacks: c.c.gsoFallbacks.Load(),
		RecvCalls:    c.c.recvCalls.Load(), RecvDatagrams: c.c.recvDatagrams.Load(), RecvSegments: c.c.recvSegments.Load(),
		SendCalls: c.c.sendCalls.Load(), SendMessages: c.c.sendMessages.Load(), SendSegments: c.c.sendSegments.Load(),
		Truncated: c.c.truncated.Load(), SendErrors: c.c.sendErrors.Load(), LastSendErrno: c.c.lastSendErrno.Load(),
		ReceiveDrops: c.receiveDrops(),
	}
}

// skMeminfoDrops is SK_MEMINFO_DROPS, the index of sk_drops in what
// SO_MEMINFO returns (include/uapi/linux/sock_diag.h); skMeminfoVars is
// SK_MEMINFO_VARS, how many there are.
const skMeminfoDrops, skMeminfoVars = 8, 9

// receiveDrops reads the socket's drop count, which the kernel keeps
// whether or not anyone asks (SO_RXQ_OVFL would put it on every received
// message instead). A send-only socket receives nothing and drops
// nothing; on error (a closed socket, a kernel before 4.12) it is 0.
func (c *Conn) receiveDrops() uint64 {
	if c.rx.bufs == nil {
		return 0
	}
	var mem [skMeminfoVars]uint32
	var drops uint64
	_ = c.rc.Control(func(fd uintptr) {
		n := uint32(unsafe.Sizeof(mem))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&mem[0])), uintptr(unsafe.Pointer(&n)), 0)
		if errno == 0 && n > skMeminfoDrops*4 {
			drops = uint64(mem[skMeminfoDrops])
		}
	})
	return drops
}

func (c *Conn) recvmmsg(fd uintptr) bool {
	r := &c.rx
	var until time.Time
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno == unix.EAGAIN {
			// Busy-poll for a moment before parking: a wakeup through the
			// netpoller costs tens of microseconds of latency per hop.
			if c.spin <= 0 {
				return false
			}
			now := time.Now()
			if until.IsZero() {
				until = now.Add(c.spin)
			}
			if now.Before(until) {
				continue
			}
			return false
		}
		r.ret, r.err = int(n), nil
		if errno != 0 {
			r.ret, r.err = 0, errno
		}
		return true
	}
}

func (c *Conn) sendmmsg(fd uintptr) bool {
	t := &c.tx
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&t.hdrs[t.from])), uintptr(t.to-t.from), 0, 0, 0)
	if errno == unix.EAGAIN || errno == unix.EINTR {
		return false
	}
	t.ret, t.err = int(n), nil
	if errno != 0 {
		t.ret, t.err = 0, errno
	}
	return true
}

// WaitFD implements engine.Waitable: the socket, or -1 while the Conn
// still holds datagrams of its last recvmmsg for ReadBatch to hand out.
func (c *Conn) WaitFD() int {
	if c.rx.next < c.rx.n {
		return -1
	}
	return c.fd
}

// ReadBatch implements engine.Transport. Datagrams the kernel coalesced
// (UDP GRO) are split into the following slots; what does not fit waits in
// the Conn for the next call, so nothing is dropped for lack of room.
func (c *Conn) ReadBatch(bufs [][]byte, sizes []int, srcs []netip.AddrPort, offset int) (int, error) {
	r := &c.rx
	if err := c.fill(offset); err != nil {
		return 0, err
	}
	out := 0
	for r.next < r.n && out < len(bufs) {
		size, src, gso, ok := c.datagram()
		if !ok {
			continue
		}
		if gso == 0 || size <= gso {
			// One packet: hand over the buffer itself, take the caller's.
			bufs[out], r.bufs[r.next] = r.bufs[r.next], bufs[out]
			sizes[out], srcs[out] = size, src
			out++
			r.next++
			continue
		}
		for r.seg < size && out < len(bufs) {
			end := min(r.seg+gso, size)
			copy(bufs[out][offset:], r.bufs[r.next][offset+r.seg:offset+end])
			sizes[out], srcs[out] = end-r.seg, src
			out++
			r.seg = end
		}
		if r.seg >= size {
			r.next, r.seg = r.next+1, 0
		}
	}
	c.c.recvSegments.Add(uint64(out))
	return out, nil
}

// ReadTrains implements engine.TrainReceiver: ReadBatch without copying a
// GRO train apart. A datagram, or a whole train, is handed over in its
// receive buffer (exchanged for one of the caller's, as ReadBatch does
// for single datagrams), each of the train's datagrams as a slice of it.
// A train with more datagrams than pkts has room left for waits for the
// next call; one that could never fit (more datagrams than pkts holds)
// is copied apart as ReadBatch does.
func (c *Conn) ReadTrains(bufs, pkts [][]byte, srcs []netip.AddrPort, offset int) (int, error) {
	r := &c.rx
	if err := c.fill(offset); err != nil {
		return 0, err
	}
	out, used := 0, 0 // datagrams handed over, elements of bufs taken
	for r.next < r.n && out < len(pkts) {
		size, src, gso, ok := c.datagram()
		if !ok {
			continue
		}
		segs := 1
		if gso > 0 && size > gso {
			segs = (size + gso - 1) / gso
		}
		if r.seg > 0 || segs > len(pkts) {
			// Begun by ReadBatch, or too long for any call: copy apart.
			for r.seg < size && out < len(pkts) {
				end := min(r.seg+gso, size)
				b := bufs[used][:offset+end-r.seg]
				copy(b[offset:], r.bufs[r.next][offset+r.seg:offset+end])
				pkts[out], srcs[out] = b[:len(b):len(b)], src
				out, used = out+1, used+1
				r.seg = end
			}
			if r.seg >= size {
				r.next, r.seg = r.next+1, 0
			}
			continue
		}
		if segs > len(pkts)-out {
			break // the next call takes the train whole
		}
		train := r.bufs[r.next]
		bufs[used], r.bufs[r.next] = train, bufs[used]
		used++
		step := size
		if segs > 1 {
			step = gso
		}
		for k := range segs { // an empty datagram too: one packet
			at := k * step
			end := offset + min(at+step, size)
			pkts[out], srcs[out] = train[at:end:end], src
			out++
		}
		r.next++
	}
	c.c.recvSegments.Add(uint64(out))
	return out, nil
}

// fill receives the next datagrams once the last recvmmsg's are handed
// out.
func (c *Conn) fill(offset int) error {
	r := &c.rx
	if r.next < r.n {
		return nil
	}
	if r.bufs == nil {
		return errSendOnly
	}
	return c.receive(offset)
}

// datagram is the next received datagram's length, sender and GRO
// segment size (0: one datagram). A datagram the kernel truncated is
// counted and skipped: ok is false, and the next one is up.
func (c *Conn) datagram() (size int, src netip.AddrPort, gso int, ok bool) {
	r := &c.rx
	h := &r.hdrs[r.next]
	if h.hdr.Flags&unix.MSG_TRUNC != 0 {
		c.c.truncated.Add(1)
		r.next++
		return 0, netip.AddrPort{}, 0, false
	}
	if c.gro {
		gso = groSize(r.oob[r.next*oobSize : r.next*oobSize+int(h.hdr.Controllen)])
	}
	return int(h.len), addrPort(&r.names[r.next]), gso, true
}

func (c *Conn) receive(offset int) error {
	r := &c.rx
	for i := range r.hdrs {
		b := r.bufs[i]
		r.iovs[i].Base = &b[offset]
		r.iovs[i].SetLen(len(b) - offset)
		h := &r.hdrs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Flags = 0
		if c.gro {
			h.Control = &r.oob[i*oobSize]
			h.SetControllen(oobSize)
		} else {
			h.Control = nil
			h.SetControllen(0)
		}
	}
	for {
		if err := c.rc.Read(r.fn); err != nil {
			return err
		}
		if r.err != nil {
			return fmt.Errorf("recvmmsg: %w", r.err)
		}
		if r.ret > 0 {
			break
		}
	}
	r.n, r.next, r.seg = r.ret, 0, 0
	c.c.recvCalls.Add(1)
	c.c.recvDatagrams.Add(uint64(r.ret))
	return nil
}

// groSize returns the segment size of a UDP_GRO control message, or 0.
func groSize(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(2) {
			return int(*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])))
		}
		oob = oob[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(oob)):]
	}
	return 0
}

// addrPort reads the address the kernel wrote into sa: a sockaddr_in or
// a sockaddr_in6 (without its zone: underlay addresses are global).
func addrPort(sa *sockaddr) netip.AddrPort {
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	port := uint16(p[0])<<8 | uint16(p[1])
	if sa.Family == unix.AF_INET {
		return netip.AddrPortFrom(netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(sa)).Addr), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
}

// setAddrPort writes ap into sa as its family's socket address and
// returns the address's length.
func setAddrPort(sa *sockaddr, ap netip.AddrPort) uint32 {
	if ap.Addr().Is4() {
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		s4.Family = unix.AF_INET
		p := (*[2]byte)(unsafe.Pointer(&s4.Port))
		p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
		s4.Addr = ap.Addr().As4()
		return unix.SizeofSockaddrInet4
	}
	*sa = sockaddr{Family: unix.AF_INET6, Addr: ap.Addr().As16()}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	return unix.SizeofSockaddrInet6
}

// WriteBatch implements engine.Transport. A run of packets to one peer
// whose sizes are equal (the last may be shorter) goes out as one GSO
// message: the kernel cuts it back into one datagram per packet, so the
// wire format is unchanged, and the iovecs point at the packets where they
// lie, so nothing is copied to build it.
func (c *Conn) WriteBatch(pkts [][]byte, dsts []netip.AddrPort) (refused int, err error) {
	return c.WriteBatchGather(pkts, nil, dsts)
}

// WriteBatchGather implements engine.GatherTransport: WriteBatch for
// datagrams in two pieces, each packet an iovec for its head and one for
// its tail, so a TSO segment goes out from its headers and its payload
// where the TUN read left it. A GSO message's segment size is the first
// datagram's whole length; the kernel cuts the message's bytes at it
// wherever the iovecs end, so the datagrams are the same as from joined
// packets. tails may be nil (no packet has one).
func (c *Conn) WriteBatchGather(pkts, tails [][]byte, dsts []netip.AddrPort) (refused int, err error) {
	t := &c.tx
	i := 0
	for i < len(pkts) {
		m := c.pack(pkts, tails, dsts, i)
		next := t.first[m-1] + t.segs[m-1] // messages cover pkts[i:next]
		sent := 0
		for sent < m {
			t.from, t.to = sent, m
			if err := c.rc.Write(t.fn); err != nil {
				return refused, err
			}
			c.c.sendCalls.Add(1)
			if t.err == nil {
				for k := sent; k < sent+t.ret; k++ {
					c.c.sendSegments.Add(uint64(t.segs[k]))
				}
				c.c.sendMessages.Add(uint64(t.ret))
				sent += t.ret
				continue
			}
			errno, _ := t.err.(unix.Errno)
			if t.segs[sent] > 1 && (errno == unix.EIO || errno == unix.EINVAL) && c.gso.Load() {
				// EIO: the route's device cannot checksum in hardware, which
				// UDP_SEGMENT requires (udp_send_skb). EINVAL: the kernel
				// rejects the segmentation request. Either way, send this
				// and everything after it one datagram per message.
				c.gso.Store(false)
				c.c.gsoFallbacks.Add(1)
				next = t.first[sent]
				break
			}
			c.c.sendErrors.Add(1)
			c.c.lastSendErrno.Store(uint64(errno))
			refused += t.segs[sent]
			sent++
		}
		i = next
	}
	return refused, nil
}

// pack fills the message headers with pkts[i:], one message per GSO run
// (or per packet without GSO), and returns how many messages it filled.
func (c *Conn) pack(pkts, tails [][]byte, dsts []netip.AddrPort, i int) int {
	t := &c.tx
	gso := c.gso.Load()
	whole := func(k int) int {
		if tails == nil {
			return len(pkts[k])
		}
		return len(pkts[k]) + len(tails[k])
	}
	m, iov := 0, 0
	for i < len(pkts) && m < len(t.hdrs) && iov+2 <= len(t.iovs) {
		size := whole(i)
		segs, total, start := 1, size, iov
		iov = c.addIovecs(pkts, tails, i, iov)
		j := i + 1
		if gso {
			for j < len(pkts) && segs < udpMaxSegments && iov+2 <= len(t.iovs) &&
				dsts[j] == dsts[i] && whole(j) <= size && whole(j) > 0 && total+whole(j) <= gsoMaxBytes {
				// (An empty datagram adds no bytes: in a GSO message it would vanish.)
				iov = c.addIovecs(pkts, tails, j, iov)
				segs++
				total += whole(j)
				j++
				if whole(j-1) < size {
					break // a shorter datagram can only end a GSO run
				}
			}
		}
		h := &t.hdrs[m].hdr
		h.Namelen = setAddrPort(&t.names[m], dsts[i])
		h.Name = (*byte)(unsafe.Pointer(&t.names[m]))
		h.Iov = &t.iovs[start]
		h.SetIovlen(iov - start)
		h.Flags = 0
		if segs > 1 {
			oob := t.oob[m*oobSize : m*oobSize+unix.CmsgSpace(2)]
			ch := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
			ch.Level, ch.Type = unix.SOL_UDP, unix.UDP_SEGMENT
			ch.SetLen(unix.CmsgLen(2))
			*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = uint16(size)
			h.Control = &oob[0]
			h.SetControllen(len(oob))
		} else {
			h.Control = nil
			h.SetControllen(0)
		}
		t.first[m], t.segs[m] = i, segs
		m++
		i = j
	}
	return m
}

// addIovecs puts packet k's iovecs at t.iovs[iov:]: its head, and its tail
// if it has one. It returns the next free index.
func (c *Conn) addIovecs(pkts, tails [][]byte, k, iov int) int {
	c.tx.iovs[iov] = iovec(pkts[k])
	iov++
	if tails != nil && len(tails[k]) > 0 {
		c.tx.iovs[iov] = iovec(tails[k])
		iov++
	}
	return iov
}

func iovec(b []byte) unix.Iovec {
	v := unix.Iovec{}
	if len(b) > 0 {
		v.Base = &b[0]
	}
	v.SetLen(len(b))
	return v
}
