package daemon

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/engine"
)

// metricsCollector reads the engine's, the socket's and the daemon's
// counters at scrape time. Nothing is updated per packet for metrics: the
// loops keep their own per-loop counters (engine.Stats) and this turns a
// snapshot of them into Prometheus metrics.
//
// Batch size is a histogram of packets per read, per direction, from the
// loops' power-of-two buckets (one counter add per batch, not per packet).
type metricsCollector struct{ d *daemon }

var _ prometheus.Collector = metricsCollector{}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("weft_"+name, help, labels, nil)
}

var (
	mBackend      = desc("backend_info", "The backend in use (1), and why it was chosen.", "backend", "why")
	mMoves        = desc("backend_moves_total", "Times Backend.Type auto moved this host to another backend (the cluster changed).")
	mReady        = desc("ready", "1 once the lease is held, the data path is up and the subnet file written.")
	mPeers        = desc("peers", "Leases of other hosts in the last lease snapshot.")
	mSnapshots    = desc("lease_snapshots_total", "Lease snapshots received from the lease store's watch.")
	mLastSnapshot = desc("lease_last_snapshot_timestamp_seconds", "When the last lease snapshot arrived (unix time).")
	mLeaseExpiry  = desc("lease_acquired_expiry_timestamp_seconds", "Expiry of this host's lease as acquired at startup (renewals move it later; 0 if it never expires).")
	mPackets      = desc("packets_total", "Packets forwarded: tx from the TUN to peers, rx from peers into the TUN.", "direction")
	mBytes        = desc("bytes_total", "Bytes of inner packets forwarded.", "direction")
	mBatches      = desc("batches_total", "Reads that returned packets: TUN reads (tx), socket reads (rx).", "direction")
	mPerBatch     = desc("packets_per_batch", "Forwarded packets per read since start (tx: per TUN read, rx: per socket read).", "direction")
	mBatchSize    = desc("batch_size_packets", "Packets each read returned (tx: per TUN read, rx: per socket read).", "direction")
	mDrops        = desc("drops_total", "Packets not forwarded, by reason.", "reason")
	mICMP         = desc("icmp_errors_total", "ICMP errors written back into the TUN.")
	mReadErrors   = desc("read_errors_total", "Failed reads, TUN or socket, that were not fatal.")
	mPeerPackets  = desc("peer_packets_total", "Packets forwarded per peer (peers that have carried a packet).", "subnet", "endpoint", "direction")
	mPeerBytes    = desc("peer_bytes_total", "Bytes forwarded per peer (peers that have carried a packet).", "subnet", "endpoint", "direction")
	mOffload      = desc("offload_enabled", "1 if the offload is in use: tso, uso (TUN), gso, gro (UDP socket).", "offload")
	mGSOFallback  = desc("udp_gso_fallbacks_total", "Times the kernel refused UDP GSO and weft switched it off.")
	mSyscalls     = desc("udp_syscalls_total", "recvmmsg and sendmmsg calls.", "call")
	mSyscallPkts  = desc("udp_syscall_packets_total", "Packets moved by recvmmsg (after GRO splitting) and sendmmsg (GSO segments).", "call")
	mPerSyscall   = desc("udp_packets_per_syscall", "Packets per recvmmsg or sendmmsg since start.", "call")
	mSendErrors   = desc("udp_send_errors_total", "Messages the kernel refused to send.")
	mKernelDrops  = desc("kernel_drops_total", "Packets the kernel dropped before weft saw them: where=tun, into the TUN while the engine was behind (its ring full); where=socket, at the underlay sockets' full receive buffers.", "where")
	mCaptures     = desc("captures_running", "Live captures attached to the engine.")
	mCaptureLost  = desc("capture_overflow_total", "Packets lost by captures whose queue was full, since start.")
	mCaptureStall = desc("capture_stalled_total", "Captures ended because their reader made no progress.")
	mRefusals     = desc("peer_refusals_total", "Peer leases admission refused, by reason (a lease refused in many snapshots counts once).", "reason")
	mRefused      = desc("peers_refused", "Leases of the last snapshot that admission refused.")
	mRealtime     = desc("realtime_loops", "Forwarding loops running at SCHED_FIFO priority (--realtime-priority).")
	mRTYields     = desc("realtime_yields_total", "Times a realtime loop gave up its priority: busy past its budget, or woken for few packets many times.")
	mQueuePackets = desc("queue_packets_total", "Packets forwarded per queue (--queues): tx read from the queue's TUN descriptor, rx received on the queue's socket(s).", "queue", "direction")
)

func (metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mBackend, mMoves, mReady, mPeers, mSnapshots, mLastSnapshot, mLeaseExpiry, mPackets, mBytes,
		mBatches, mPerBatch, mBatchSize, mDrops, mICMP, mReadErrors, mPeerPackets, mPeerBytes, mOffload, mGSOFallback, mSyscalls,
		mSyscallPkts, mPerSyscall, mSendErrors, mKernelDrops, mCaptures, mCaptureLost, mCaptureStall, mRefusals, mRefused, mRealtime, mRTYields, mQueuePackets} {
		ch <- d
	}
}

func (c metricsCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	gauge := func(dsc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(dsc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(dsc *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(dsc, prometheus.CounterValue, float64(v), labels...)
	}
	b01 := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	st := d.cur.Load()
	gauge(mBackend, 1, st.backend.Type(), st.why)
	moves, _ := d.auto.counts()
	counter(mMoves, moves)
	gauge(mReady, b01(d.ready.Load()))
	exp := 0.0
	if !st.own.Expiration.IsZero() {
		exp = float64(st.own.Expiration.Unix())
	}
	gauge(mLeaseExpiry, exp)
	counts := d.refusals()
	for _, r := range admission.Reasons {
		counter(mRefusals, counts[r], r)
	}
	gauge(mRefused, float64(len(st.gate.Refused())))
	d.obs.mu.Lock()
	peers := st.gate.NumPeers()
	counter(mSnapshots, d.obs.snapshots)
	if !d.obs.lastSnap.IsZero() {
		gauge(mLastSnapshot, float64(d.obs.lastSnap.UnixNano())/1e9)
	}
	d.obs.mu.Unlock()
	gauge(mPeers, float64(peers))

	b := datapathOf(st)
	if b == nil {
		return // a kernel data path: no packet passes weft
	}
	s := b.Engine.Stats()
	for _, dir := range []struct {
		name                    string
		packets, bytes, batches uint64
		read                    uint64
		sizes                   [engine.BatchSizeBuckets]uint64
	}{{"tx", s.TxPackets, s.TxBytes, s.TxBatches, s.TxRead, s.TxBatchSizes}, {"rx", s.RxPackets, s.RxBytes, s.RxBatches, s.RxRead, s.RxBatchSizes}} {
		counter(mPackets, dir.packets, dir.name)
		counter(mBytes, dir.bytes, dir.name)
		counter(mBatches, dir.batches, dir.name)
		gauge(mPerBatch, ratio(dir.packets, dir.batches), dir.name)
		buckets := make(map[float64]uint64, engine.BatchSizeBuckets)
		var cum, count uint64
		for i, n := range dir.sizes {
			cum += n
			buckets[float64(engine.BatchSizeBucketMax(i))] = cum
		}
		count = cum
		ch <- prometheus.MustNewConstHistogram(mBatchSize, count, float64(dir.read), buckets, dir.name)
	}
	for r := engine.DropReason(1); r < engine.NumDropReasons; r++ {
		counter(mDrops, s.Drops[r], r.String())
	}
	counter(mICMP, s.ICMPErrors)
	counter(mReadErrors, s.ReadErrors)
	gauge(mRealtime, float64(s.RealtimeLoops))
	counter(mRTYields, s.RealtimeYields)
	for i, q := range b.Engine.QueueStats() {
		counter(mQueuePackets, q.TxPackets, strconv.Itoa(i), "tx")
		counter(mQueuePackets, q.RxPackets, strconv.Itoa(i), "rx")
	}
	if t := b.Engine.Table(); t != nil {
		for _, p := range t.Peers() {
			ps := p.Stats()
			if ps.TxPackets == 0 && ps.RxPackets == 0 {
				// A peer's series appear once it has carried a packet:
				// four per peer on every host would be 4·N² series in
				// a cluster of N (100 M at 5,000 hosts, ~1.9 MB of
				// text per scrape of each host), most of them zeros
				// of pairs that never talk.
				continue
			}
			sub, ep := ps.Subnet.String(), ps.Endpoint.String()
			counter(mPeerPackets, ps.TxPackets, sub, ep, "tx")
			counter(mPeerPackets, ps.RxPackets, sub, ep, "rx")
			counter(mPeerBytes, ps.TxBytes, sub, ep, "tx")
			counter(mPeerBytes, ps.RxBytes, sub, ep, "rx")
		}
	}
	ts := b.Socket()
	gauge(mOffload, b01(b.TUN.TSO), "tso")
	gauge(mOffload, b01(b.TUN.USO), "uso")
	gauge(mOffload, b01(ts.GSO), "gso")
	gauge(mOffload, b01(ts.GRO), "gro")
	counter(mGSOFallback, ts.GSOFallbacks)
	counter(mSyscalls, ts.RecvCalls, "recvmmsg")
	counter(mSyscalls, ts.SendCalls, "sendmmsg")
	counter(mSyscallPkts, ts.RecvSegments, "recvmmsg")
	counter(mSyscallPkts, ts.SendSegments, "sendmmsg")
	gauge(mPerSyscall, ratio(ts.RecvSegments, ts.RecvCalls), "recvmmsg")
	gauge(mPerSyscall, ratio(ts.SendSegments, ts.SendCalls), "sendmmsg")
	counter(mSendErrors, ts.SendErrors)
	counter(mKernelDrops, b.TUN.KernelDrops(), "tun")
	counter(mKernelDrops, ts.ReceiveDrops, "socket")
	if h := st.hub; h != nil {
		gauge(mCaptures, float64(h.Active()))
		counter(mCaptureLost, h.Overflow())
		counter(mCaptureStall, h.Stalls())
	}
}

// metricsHandler serves the daemon's metrics and the Go runtime's and the
// process's, from a registry of its own.
func metricsHandler(d *daemon) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metricsCollector{d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// LoopbackIfPortOnly turns "9100" or ":9100" into "127.0.0.1:9100": an
// address with no host listens on loopback only, never on every interface.
func LoopbackIfPortOnly(addr string) string {
	if !strings.Contains(addr, ":") {
		return net.JoinHostPort("127.0.0.1", addr)
	}
	if host, port, err := net.SplitHostPort(addr); err == nil && host == "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

// CheckListenAddr refuses an address that is not HOST:PORT or PORT.
func CheckListenAddr(flagName, addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(LoopbackIfPortOnly(addr))
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
		return fmt.Errorf("--%s: %q is not HOST:PORT or PORT", flagName, addr)
	}
	return nil
}
