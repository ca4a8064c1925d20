package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// Headroom is the space every buffer keeps in front of its packet: room
	// for the virtio-net header the TUN device writes in place (10 bytes)
	// and for encapsulation headers written without moving the payload
	// (Ethernet and VXLAN: 22 bytes).
	Headroom = 32
	// MaxPacket is the largest packet a buffer holds: an IPv4 datagram, or
	// a TUN super-packet or UDP GRO train of up to 64 KiB.
	MaxPacket = 65535
	// BufferSize is the length of every buffer the engine and its
	// transports exchange.
	BufferSize = Headroom + MaxPacket
	// MaxBatch is the largest batch size the engine accepts.
	MaxBatch = 1024
)

// Device is the TUN side of the engine. golang.zx2c4.com/wireguard/tun's
// Device satisfies it, and so do tunio.Device and the fake in package
// enginetest.
//
// Who calls what: Read only from the engine's tx loop of its queue; Write
// from every loop at once (each rx loop writes packets from peers, into
// every queue's Device when there are several, the tx loop writes ICMP
// errors back), so Write must be safe for concurrent use. Close may
// be called at any time, once; afterwards, and in a Read or Write it
// interrupts, Read and Write return an error for which
// errors.Is(err, os.ErrClosed) or errors.Is(err, net.ErrClosed) holds.
// (The engine also stops on any error once it is closing, so a Device
// that returns another error after Close cannot make Run hang.)
//
// Optional interfaces: DrainingDevice and ReadableDevice (the tx loop
// drains the queue without sleeping), SegmentingDevice (with a
// GatherTransport: a super-packet's payload is sent from where it was
// read), Waitable (realtime loops wait in poll(2)), LargeTCPWriter and
// LargeTCP6Writer (the rx loops accept TCP packets over IPv4, and over
// IPv6, longer than the MTU), InPlaceWriter (with a TrainReceiver: a UDP
// GRO train's packets are written from where they were received).
type Device interface {
	// Read reads packets into bufs[i][offset:], sets sizes[i] and returns
	// how many it read. It blocks until at least one packet is there.
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	// Write writes bufs[i][offset:] as packets. It may use bufs[i][:offset]
	// and the capacity past len(bufs[i]) as scratch space, and may change
	// the slice headers in bufs; the caller keeps its own copies.
	Write(bufs [][]byte, offset int) (int, error)
	// BatchSize is how many bufs Read may fill at once; fixed for the
	// Device's life.
	BatchSize() int
	io.Closer
}

// DrainingDevice is the optional interface of a Device that reads without
// blocking: the tx loop drains the queue with it, one system call per
// packet, instead of asking Readable before each Read (tunio.Device).
type DrainingDevice interface {
	// ReadMore is Read, except that it returns 0 and no error at once
	// when no packet is waiting.
	ReadMore(bufs [][]byte, sizes []int, offset int) (int, error)
}

// SegmentingDevice is the optional interface of a Device that cuts a TSO
// super-packet into segments without copying their payloads apart
// (tunio.Device): each segment gets its own headers in its own buffer and
// keeps its payload where the super-packet was read. The tx loop reads
// with it instead of Read and ReadMore when the Transport is a
// GatherTransport, which sends each segment from its two pieces.
type SegmentingDevice interface {
	// ReadSegments is Read (wait true) or ReadMore (wait false), except
	// that packet i may go on past bufs[i][offset:offset+sizes[i]] in
	// tails[i] (nil: it does not). A tail is a slice of an element of bufs
	// filled by the same call, so it is the caller's memory and lives as
	// long as the caller leaves that element alone. The packet's IP header
	// is whole in bufs[i], its length fields counting the tail. The
	// elements of bufs must be BufferSize long, and offset at least 10:
	// the super-packet is read into an element whole, its virtio-net
	// header in front of the packet.
	ReadSegments(bufs [][]byte, sizes []int, tails [][]byte, offset int, wait bool) (int, error)
}

// ReadableDevice is the optional interface of a Device that can tell,
// without blocking, whether a Read would return at once: the tx loop then
// reads a burst of small packets in one wakeup (tunio.Device).
type ReadableDevice interface {
	Readable() bool
}

// Transport is the underlay side: a socket that carries encapsulated
// packets to peers in batches.
//
// Who calls what: ReadBatch only from the rx loop, WriteBatch only from
// the tx loop of its queue; they may run at the same time. Close may be called at any
// time, once; afterwards, and in a call it interrupts, ReadBatch and
// WriteBatch return an error for which errors.Is(err, net.ErrClosed) (or
// os.ErrClosed) holds.
//
// Optional interfaces: MultiReceiver (one rx loop per receiving socket,
// each calling its own ReadBatch instead of the Transport's),
// GatherTransport (datagrams sent from two pieces of memory).
type Transport interface {
	// ReadBatch receives datagrams: afterwards bufs[i][offset:offset+sizes[i]]
	// holds the payload of datagram i, sent by srcs[i]. Every element of
	// bufs must be BufferSize long; the transport may exchange an element
	// for one of its own buffers of the same size instead of copying into
	// it, so callers must not keep references to the elements they passed.
	ReadBatch(bufs [][]byte, sizes []int, srcs []netip.AddrPort, offset int) (int, error)
	// WriteBatch sends pkts[i] to dsts[i]; packets for the same destination
	// must be adjacent (GSO sends a run as one message). It returns how
	// many packets the kernel refused; err is only for a transport that
	// can no longer send.
	WriteBatch(pkts [][]byte, dsts []netip.AddrPort) (refused int, err error)
	// BatchSize is the most datagrams ReadBatch fills and WriteBatch takes.
	BatchSize() int
	io.Closer
}

// GatherTransport is the optional interface of a Transport that sends a
// datagram from two pieces of memory: the tx loop then sends a
// SegmentingDevice's segments without joining their headers and payloads.
type GatherTransport interface {
	// WriteBatchGather is WriteBatch for datagrams in two pieces: pkts[i]
	// followed by tails[i] (nil or empty: pkts[i] alone) is datagram i. A
	// run of datagrams to one destination goes out as one GSO send as in
	// WriteBatch, by the datagrams' whole lengths.
	WriteBatchGather(pkts, tails [][]byte, dsts []netip.AddrPort) (refused int, err error)
}

// InPlaceWriter is the optional interface of a Device whose Write changes
// nothing of bufs[i] but the packet, bufs[i][offset:]: no scratch space in
// front of it or past it. The rx loops then hand it packets that lie one
// after another in one buffer, as a TrainReceiver delivers them.
type InPlaceWriter interface {
	WritesInPlace() bool
}

// TrainReceiver is the optional interface of a Receiver (or a
// Transport) that hands a UDP GRO train over in the buffer it was
// received into instead of copying its datagrams apart. The rx loop uses
// it when the Device is an InPlaceWriter.
type TrainReceiver interface {
	// ReadTrains is ReadBatch, except that datagrams are handed over as
	// slices: afterwards pkts[i][offset:] (i < n) is datagram i, and
	// pkts[i] a slice of an element of bufs whose capacity ends with the
	// datagram. Several datagrams may lie in one element, one after
	// another, so the bytes in front of pkts[i][offset:] may be another
	// datagram's. As in ReadBatch, the elements of bufs are BufferSize
	// long and the transport may exchange them for its own; len(pkts) is
	// at most len(bufs).
	ReadTrains(bufs, pkts [][]byte, srcs []netip.AddrPort, offset int) (int, error)
}

// Receiver is one receiving socket of a MultiReceiver: ReadBatch as
// Transport's.
type Receiver interface {
	ReadBatch(bufs [][]byte, sizes []int, srcs []netip.AddrPort, offset int) (int, error)
}

// MultiReceiver is the optional interface of a Transport that receives on
// several sockets (userspace VXLAN on a dual-stack network: one per
// underlay family). The engine runs one receive loop per Receiver, each
// calling only its own ReadBatch, and never calls the Transport's
// ReadBatch. Receivers is called once, by New.
type MultiReceiver interface {
	Receivers() []Receiver
}

// Config tunes an Engine. The zero value of each field means its default.
type Config struct {
	// BatchSize is the most packets moved per system call in each
	// direction (default 128).
	BatchSize int
	// MTU is the TUN device's MTU: packets from peers longer than this are
	// dropped as oversize (when AntiSpoof is on), and IPv6 packets from the
	// TUN longer than this are answered with Packet Too Big. IPv6 needs at
	// least 1280 (RFC 8200); the kernel turns IPv6 off on a smaller link.
	MTU int
	// AntiSpoof drops datagrams from addresses that hold no lease, inner
	// packets whose source is outside the sender's subnet and inner
	// packets not addressed to this host's subnet (of the packet's
	// family: an IPv6 packet against the IPv6 subnets). flanneld accepts them
	// all; weft does not unless this is off.
	AntiSpoof bool
	// CheckSourcePort (with AntiSpoof) also drops a datagram from a peer's
	// address whose source port is not the peer's Endpoint port. flannel's
	// UDP format is sent from the cluster's port by every host, so only
	// another process on the peer host (or a NAT that rewrites ports: turn
	// it off there) sends from elsewhere. VXLAN picks source ports per flow:
	// leave it off.
	CheckSourcePort bool
	// ICMPSource is the source address of ICMP errors the engine writes
	// into the TUN (the TUN's own address). Invalid means no ICMP errors.
	ICMPSource netip.Addr
	// ICMPSource6 is the source address of ICMPv6 errors about IPv6
	// packets (the TUN's own IPv6 address). Invalid means no ICMPv6
	// errors.
	ICMPSource6 netip.Addr
	// ICMPRate is the most ICMP and ICMPv6 errors per second, together,
	// written back into the TUN (default 1000), like the kernel's
	// icmp_ratelimit.
	ICMPRate int
	// BusyPoll is how long the TUN loop polls for packets before a read
	// that may park it (0: never); not for a realtime loop, which must not
	// spin ahead of every other task.
	BusyPoll time.Duration
	// RealtimePriority, from 1 to 99, runs each forwarding loop on a thread
	// of its own at SCHED_FIFO priority RealtimePriority, waiting for
	// packets in poll(2) on that thread (for a Device or Receiver that is
	// Waitable; the others keep the netpoller). The kernel forwards for
	// kernel vxlan and host-gw in softirq, ahead of every task; at normal
	// priority a userspace loop instead waits for a CPU behind the very
	// bulk senders whose packets queue in front of it, and every packet of
	// every other flow waits with them. 0 leaves the loops to the normal
	// scheduler. Where the thread may not be made realtime (no
	// CAP_SYS_NICE, a cgroup without realtime runtime), the loop runs at
	// normal priority and Stats.RealtimeError says why.
	RealtimePriority int
	// Encap is the wire format; nil means flannel's UDP format.
	Encap Encap
	// CopySegments makes the tx loop read super-packets split by copying
	// (Read and ReadMore) even when the Device is a SegmentingDevice and
	// the Transport a GatherTransport, for comparison.
	CopySegments bool
	// CopyTrains makes the rx loops receive UDP GRO trains copied apart
	// (ReadBatch) even when the Receiver is a TrainReceiver and the Device
	// an InPlaceWriter, for comparison.
	CopyTrains bool
	// NoDrain makes each TUN read its own batch (one blocking read per
	// batch), for comparison; by default a batch takes every packet
	// waiting.
	NoDrain bool
	Logger  *slog.Logger
}

// Queue is one queue of the data path: a Device (one queue of a
// multi-queue TUN, or the whole single-queue device) and the Transport its
// loops use. The engine runs a tx loop per Queue, reading only its Device
// and sending only through its Transport, and an rx loop per receiving
// socket of its Transport.
type Queue struct {
	Device    Device
	Transport Transport
}

// MaxQueues is the most queues an engine runs.
const MaxQueues = 64

// Engine forwards packets between Devices and Transports, one tx loop per
// Queue and one rx loop per receiving socket.
type Engine struct {
	queues []Queue
	cfg    Config
	table  TableRef
	tx     []*txLoop // one per queue
	rx     []*rxLoop // one per receiving socket of every queue
	log    *slog.Logger

	wake        int          // readable once closing: ends realtime loops' poll(2) (-1: none)
	rtLoops     atomic.Int32 // loops running at realtime priority
	rtErr       atomic.Pointer[string]
	lastReadLog atomic.Int64 // unix nanoseconds of the last read-error log line
	tap         atomic.Pointer[tapBox]
	closing     atomic.Bool // Run is closing the sides: any error ends a loop
}

// New returns an engine of one queue; it forwards nothing until Run and
// SetTable.
func New(dev Device, tr Transport, cfg Config) (*Engine, error) {
	return NewQueues([]Queue{{Device: dev, Transport: tr}}, cfg)
}

// NewQueues returns an engine of several queues: the queues of one
// multi-queue TUN, each with its own socket of one SO_REUSEPORT group.
// Every rx loop may write into every queue's Device: with more than one
// queue it writes each packet into the queue its flow hashes to (flowQueue),
// so the kernel, which sends a flow's packets out of the TUN through the
// queue its reverse packets came in on, keeps each flow on one tx loop.
func NewQueues(qs []Queue, cfg Config) (*Engine, error) {
	if len(qs) < 1 || len(qs) > MaxQueues {
		return nil, fmt.Errorf("engine: %d queues is outside 1..%d", len(qs), MaxQueues)
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 128
	}
	if cfg.BatchSize < 1 || cfg.BatchSize > MaxBatch {
		return nil, fmt.Errorf("engine: batch size %d is outside 1..%d", cfg.BatchSize, MaxBatch)
	}
	for _, q := range qs {
		if q.Transport.BatchSize() < cfg.BatchSize {
			return nil, fmt.Errorf("engine: transport batch size %d is below the engine's %d", q.Transport.BatchSize(), cfg.BatchSize)
		}
	}
	if cfg.MTU == 0 {
		cfg.MTU = MaxPacket
	}
	if cfg.MTU < 68 || cfg.MTU > MaxPacket { // 68: RFC 791's least MTU
		return nil, fmt.Errorf("engine: MTU %d is outside 68..%d", cfg.MTU, MaxPacket)
	}
	if cfg.ICMPRate == 0 {
		cfg.ICMPRate = 1000
	}
	// A negative rate would never bring the token count back to zero:
	// ICMP errors without any limit.
	if cfg.ICMPRate < 0 {
		return nil, fmt.Errorf("engine: ICMP rate %d per second is negative", cfg.ICMPRate)
	}
	if cfg.BusyPoll < 0 {
		return nil, fmt.Errorf("engine: busy-poll time %v is negative", cfg.BusyPoll)
	}
	if cfg.RealtimePriority < 0 || cfg.RealtimePriority > 99 {
		return nil, fmt.Errorf("engine: realtime priority %d is outside 0..99", cfg.RealtimePriority)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Encap == nil {
		cfg.Encap = flannelUDP{}
	}
	if oh := cfg.Encap.Overhead(); oh < 0 || oh > MaxEncapOverhead {
		return nil, fmt.Errorf("engine: encapsulation overhead %d is outside 0..%d", oh, MaxEncapOverhead)
	}
	e := &Engine{queues: qs, cfg: cfg, log: cfg.Logger, wake: -1}
	for i, q := range qs {
		e.tx = append(e.tx, newTxLoop(e, q))
		var rs []Receiver
		if m, ok := q.Transport.(MultiReceiver); ok {
			rs = m.Receivers()
		}
		if len(rs) == 0 {
			rs = []Receiver{q.Transport}
		}
		for _, r := range rs {
			e.rx = append(e.rx, newRxLoop(e, i, r))
		}
	}
	return e, nil
}

// Queues is how many queues the engine runs.
func (e *Engine) Queues() int { return len(e.queues) }

// SetTable publishes t to both loops; packets already being processed
// finish with the table they started with.
func (e *Engine) SetTable(t *Table) { e.table.Store(t) }

// Table returns the table in use (nil before the first SetTable).
func (e *Engine) Table() *Table { return e.table.Load() }

// Run forwards until ctx ends or a side fails for good. It closes the
// Device and the Transport on return.
func (e *Engine) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		once sync.Once
		ferr error
	)
	fail := func(err error) {
		once.Do(func() { ferr = err })
		cancel()
	}
	if e.cfg.RealtimePriority > 0 {
		fd, err := openWake()
		if err != nil {
			e.realtimeFailed(err)
		} else {
			e.wake = fd
			defer closeWake(fd)
		}
	}
	wg.Add(len(e.tx) + len(e.rx))
	for _, tx := range e.tx {
		go func() { defer wg.Done(); fail(tx.run()) }()
	}
	for _, rx := range e.rx {
		go func() { defer wg.Done(); fail(rx.run()) }()
	}
	<-ctx.Done()
	// Closing is what unblocks a loop waiting in Read; a realtime loop
	// waiting in poll(2) is woken first, so it never polls a closed
	// descriptor (whose number the process may already reuse).
	e.closing.Store(true)
	if e.wake >= 0 {
		signalWake(e.wake)
	}
	for _, q := range e.queues {
		q.Device.Close()
		q.Transport.Close()
	}
	wg.Wait()
	if errors.Is(ferr, errClosed) || ferr == nil {
		return nil
	}
	return ferr
}

var errClosed = errors.New("engine: closed")

// Stats is a snapshot of the engine's counters.
type Stats struct {
	TxPackets, TxBytes uint64 // from the TUN, handed to the transport
	RxPackets, RxBytes uint64 // from the transport, written to the TUN
	TxBatches          uint64 // TUN reads that returned packets
	RxBatches          uint64 // transport reads that returned datagrams
	ICMPErrors         uint64 // ICMP errors written back into the TUN
	ReadErrors         uint64 // failed reads, TUN or transport, not fatal
	Drops              [NumDropReasons]uint64
	// TxRead and RxRead are the packets the reads returned; the batch
	// sizes count reads by how many packets each returned (bucket i:
	// up to BatchSizeBucketMax(i)).
	TxRead, RxRead             uint64
	TxBatchSizes, RxBatchSizes [BatchSizeBuckets]uint64
	// RealtimeLoops is how many loops run at Config.RealtimePriority;
	// RealtimeError, why one that should could not ("" if none failed).
	RealtimeLoops int
	RealtimeError string
	// RealtimeYields counts the times a realtime loop gave up its
	// priority for having had packets waiting for longer than its budget.
	RealtimeYields uint64
}

// DropsByName returns the non-zero drop counters keyed by reason name.
func (s *Stats) DropsByName() map[string]uint64 {
	m := map[string]uint64{}
	for r := DropReason(1); r < NumDropReasons; r++ {
		if s.Drops[r] != 0 {
			m[r.String()] = s.Drops[r]
		}
	}
	return m
}

// Stats sums every loop's counters. It takes no lock the loops take.
func (e *Engine) Stats() Stats {
	var s Stats
	for _, tx := range e.tx {
		tx.c.addTo(&s, true)
	}
	for _, rx := range e.rx {
		rx.c.addTo(&s, false)
	}
	s.RealtimeLoops = int(e.rtLoops.Load())
	for _, tx := range e.tx {
		s.RealtimeYields += tx.rt.yields.Load()
	}
	for _, rx := range e.rx {
		s.RealtimeYields += rx.rt.yields.Load()
	}
	if p := e.rtErr.Load(); p != nil {
		s.RealtimeError = *p
	}
	return s
}

// QueueStats are one queue's packets and bytes: Tx read from its TUN
// queue and handed to its socket, Rx received on its socket(s) and
// written into the TUN (into whichever queue each packet's flow hashes
// to).
type QueueStats struct {
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
}

// QueueStats returns each queue's counters, in queue order; they sum to
// Stats' packet and byte counts.
func (e *Engine) QueueStats() []QueueStats {
	qs := make([]QueueStats, len(e.queues))
	for i, tx := range e.tx {
		qs[i].TxPackets, qs[i].TxBytes = tx.c.packets.Load(), tx.c.bytes.Load()
	}
	for _, rx := range e.rx {
		qs[rx.queue].RxPackets += rx.c.packets.Load()
		qs[rx.queue].RxBytes += rx.c.bytes.Load()
	}
	return qs
}
