package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Why batches: a full pass at start programs every peer's entries, three
// requests a peer for vxlan (route, neighbour, FDB entry), 15,000 at 5,000
// peers. One request each is a sendmsg, a recvmsg for its
// acknowledgement, and the Go runtime's work around two system calls; the
// kernel's own work for an entry is a fraction of that. A batch puts up
// to batchMax requests in one sendmsg. rtnetlink handles each message of
// a sendmsg in order, in the sender's system call, and acknowledges only
// what fails, except the last message, which asks for an acknowledgement
// (NLM_F_ACK): once that is read, every request has been handled and
// every failure read before it. Each request's outcome goes to its own
// callback, so a batch reports per entry, as single requests do.
//
// Batches are for adds whose requests do not depend on each other's
// outcome (a failure of one changes nothing for the next): the full
// pass's neighbours, FDB entries and plain routes, and its nexthop
// objects before the routes that use them.

// batchMax bounds the requests, and batchBytes the bytes, of one sendmsg
// (well inside a netlink socket's default send buffer, 208 KiB).
const (
	batchMax   = 256
	batchBytes = 32 << 10
)

// batchTimeout bounds the wait for a batch's acknowledgement: the kernel
// handles a batch inside the sendmsg, so it is there at once unless the
// socket failed.
const batchTimeout = 10 * time.Second

// batchSock is a Netlink's socket for batches and its sequence numbers.
type batchSock struct {
	once sync.Once
	s    *nl.NetlinkSocket
	err  error
	mu   sync.Mutex // one batch on the socket at a time
	seq  atomic.Uint32
}

// batch collects requests for one sendmsg (Netlink.newBatch).
type batch struct {
	n    *Netlink
	buf  []byte
	last int // offset of the last message's header in buf
	seqs []uint32
	done []func(error)
}

// newBatch returns an empty batch on n's batch socket.
func (n *Netlink) newBatch() *batch { return &batch{n: n} }

// add queues a request of type typ (NLM_F_REQUEST is added, NLM_F_ACK is
// managed by the batch) carrying data; done gets its outcome, when the
// batch is sent: first when it is full, else at flush.
func (b *batch) add(typ uint16, flags uint16, data []nl.NetlinkRequestData, done func(error)) {
	if len(b.seqs) >= batchMax || len(b.buf) >= batchBytes {
		b.flush()
	}
	// Sequence numbers run on across batches, so that an answer to an
	// earlier batch is never taken for one of this.
	seq := b.n.bs.seq.Add(1)
	req := nl.NetlinkRequest{NlMsghdr: unix.NlMsghdr{Type: typ, Flags: unix.NLM_F_REQUEST | flags&^unix.NLM_F_ACK, Seq: seq}}
	for _, d := range data {
		req.AddData(d)
	}
	b.last = len(b.buf)
	b.buf = append(b.buf, req.Serialize()...)
	b.seqs = append(b.seqs, seq)
	b.done = append(b.done, done)
}

// errBatchSocket wraps failures of the batch socket itself (as opposed
// to a request's own error, which goes to its callback).
var errBatchSocket = errors.New("netlink batch")

// flush sends the queued requests and hands each its outcome. A failure
// of the socket fails every request not yet answered, and is returned.
func (b *batch) flush() error {
	if len(b.seqs) == 0 {
		return nil
	}
	seqs, done := b.seqs, b.done
	b.seqs, b.done = nil, nil
	buf := b.buf
	b.buf = b.buf[:0]
	// The last message asks for an acknowledgement (nlmsghdr.nlmsg_flags
	// is at offset 6).
	f := binary.NativeEndian.Uint16(buf[b.last+6:])
	binary.NativeEndian.PutUint16(buf[b.last+6:], f|unix.NLM_F_ACK)
	b.n.ops.requests.Add(uint64(len(seqs)))
	b.n.ops.batches.Add(1)
	err := b.n.sendBatch(buf, seqs, done)
	if err != nil {
		err = fmt.Errorf("%w: %w", errBatchSocket, err)
		for _, d := range done {
			if d != nil {
				d(err)
			}
		}
	}
	return err
}

// sendBatch sends buf, whose messages carry seqs in order, and reads the
// answers up to the last one's acknowledgement, calling done[i] with the
// outcome of message i (nil when no error came for it). On a failure of
// the socket it returns the error, and the callbacks already called have
// been set to nil.
func (n *Netlink) sendBatch(buf []byte, seqs []uint32, done []func(error)) error {
	s, err := n.batchSocket()
	if err != nil {
		return err
	}
	n.bs.mu.Lock()
	defer n.bs.mu.Unlock()
	fd := s.GetFd()
	if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	// A batch's sequence numbers are consecutive (add runs under the
	// reconciler's lock; a wrap of the counter makes a batch's answers
	// look foreign and the wait times out, failing that batch only).
	first, lastSeq := seqs[0], seqs[len(seqs)-1]
	failed := map[uint32]error{}
	for {
		msgs, _, err := s.Receive()
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || m.Header.Seq < first || m.Header.Seq > lastSeq {
				continue // not an answer to this batch
			}
			var e error
			if len(m.Data) >= 4 {
				if errno := -int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
					e = unix.Errno(errno)
				}
			}
			if e != nil {
				failed[m.Header.Seq] = e
			}
			if m.Header.Seq == lastSeq {
				for i, seq := range seqs {
					if done[i] != nil {
						done[i](failed[seq])
						done[i] = nil
					}
				}
				return nil
			}
		}
	}
}

// openSocket opens a NETLINK_ROUTE socket in the Netlink's namespace.
func (n *Netlink) openSocket() (*nl.NetlinkSocket, error) {
	ns := netns.None()
	if n.NS != nil {
		ns = *n.NS
	}
	return nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
}

// batchSocket is the Netlink's socket for batches, opened in its
// namespace on first use, with a receive timeout.
func (n *Netlink) batchSocket() (*nl.NetlinkSocket, error) {
	n.bs.once.Do(func() {
		s, err := n.openSocket()
		if err != nil {
			n.bs.err = err
			return
		}
		tv := unix.NsecToTimeval(batchTimeout.Nanoseconds())
		if err := s.SetReceiveTimeout(&tv); err != nil {
			s.Close()
			n.bs.err = err
			return
		}
		n.bs.s = s
	})
	return n.bs.s, n.bs.err
}
