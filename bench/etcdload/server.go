package etcdload

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/procfs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// server is a `weft etcd` process on a free loopback port.
type server struct {
	cmd      *exec.Cmd
	proc     procfs.Proc
	endpoint string // http://127.0.0.1:port
	port     uint16
	dir      string
	done     chan struct{} // closed when the process has exited
}

// startServer runs `bin etcd` in a fresh data directory with netconf
// stored, and returns once it serves.
func startServer(ctx context.Context, bin, netconf string) (*server, error) {
	dir, err := os.MkdirTemp("", "weft-etcdload-")
	if err != nil {
		return nil, err
	}
	s := &server{dir: dir, done: make(chan struct{})}
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer logf.Close()
	s.cmd = exec.Command(bin, "etcd", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", "http://127.0.0.1:0", "--network-config", netconf)
	s.cmd.Stderr = logf
	// The bench's end, even by a crash, is the server's.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("starting %s etcd: %w", bin, err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	// The first line on stdout is the client URL, once etcd serves.
	line := make(chan string, 1)
	go func() {
		r := bufio.NewReader(out)
		l, _ := r.ReadString('\n')
		line <- strings.TrimSpace(l)
		io.Copy(io.Discard, r)
	}()
	select {
	case s.endpoint = <-line:
	case <-time.After(2 * time.Minute):
	case <-ctx.Done():
	}
	u, err := url.Parse(s.endpoint)
	var port uint64
	if err == nil {
		port, err = strconv.ParseUint(u.Port(), 10, 16)
	}
	if s.endpoint == "" || err != nil {
		s.close()
		log, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
		return nil, fmt.Errorf("weft etcd did not start (first line %q): %s", s.endpoint, log)
	}
	s.port = uint16(port)
	if s.proc, err = procfs.NewProc(s.cmd.Process.Pid); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// alive reports an error once the server has exited.
func (s *server) alive() error {
	select {
	case <-s.done:
		log, _ := os.ReadFile(filepath.Join(s.dir, "etcd.log"))
		return fmt.Errorf("weft etcd exited: %s; its log: %s", s.cmd.ProcessState, tail(log, 2000))
	default:
		return nil
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (s *server) close() {
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(20 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
	}
	os.RemoveAll(s.dir)
}

// usage is a process's CPU time so far and its memory now.
type usage struct {
	cpu      time.Duration // user and system
	sys      time.Duration // system
	rss, hwm uint64        // VmRSS, VmHWM (its peak)
}

func procUsage(p procfs.Proc) (usage, error) {
	st, err := p.Stat()
	if err != nil {
		return usage{}, err
	}
	ps, err := p.NewStatus()
	if err != nil {
		return usage{}, err
	}
	// /proc's times are in USER_HZ, 100 on every Linux weft runs on.
	return usage{cpu: time.Duration(st.CPUTime() * float64(time.Second)), sys: time.Duration(st.STime) * 10 * time.Millisecond,
		rss: ps.VmRSS, hwm: ps.VmHWM}, nil
}

// rssPeak samples a process's VmRSS every 100 ms, keeping the largest
// since the last reset.
type rssPeak struct {
	max  atomic.Uint64
	stop chan struct{}
}

func sampleRSS(p procfs.Proc) *rssPeak {
	r := &rssPeak{stop: make(chan struct{})}
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if ps, err := p.NewStatus(); err == nil {
				for {
					m := r.max.Load()
					if ps.VmRSS <= m || r.max.CompareAndSwap(m, ps.VmRSS) {
						break
					}
				}
			}
			select {
			case <-t.C:
			case <-r.stop:
				return
			}
		}
	}()
	return r
}

// reset starts a new phase and returns the previous one's peak.
func (r *rssPeak) reset() uint64 { return r.max.Swap(0) }

// metrics is what etcd's /metrics says, by name; the gRPC counters by
// name and method ("grpc_server_msg_received_total/Range").
type metrics map[string]float64

// Metrics the bench reads.
const (
	mWatchStreams = "etcd_debugging_mvcc_watch_stream_total"
	mWatchers     = "etcd_debugging_mvcc_watcher_total"
	mSlowWatchers = "etcd_debugging_mvcc_slow_watcher_total"
	mEventsSent   = "etcd_debugging_mvcc_events_total"
	mRenewed      = "etcd_debugging_lease_renewed_total"
	mBytesIn      = "etcd_network_client_grpc_received_bytes_total"
	mBytesOut     = "etcd_network_client_grpc_sent_bytes_total"
	mMsgsIn       = "grpc_server_msg_received_total" // per method: requests, stream messages included
	mGoroutines   = "go_goroutines"
	mHeapInuse    = "go_memstats_heap_inuse_bytes"
	mStackInuse   = "go_memstats_stack_inuse_bytes"
)

func (s *server) metrics(ctx context.Context) (metrics, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.endpoint+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("etcd metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("etcd metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("etcd metrics: %w", err)
	}
	m := metrics{}
	for name, f := range fams {
		for _, x := range f.GetMetric() {
			var v float64
			switch {
			case x.GetCounter() != nil:
				v = x.GetCounter().GetValue()
			case x.GetGauge() != nil:
				v = x.GetGauge().GetValue()
			default:
				continue
			}
			key := name
			for _, l := range x.GetLabel() {
				if l.GetName() == "grpc_method" {
					key += "/" + l.GetValue()
				}
			}
			m[key] += v
		}
	}
	for _, k := range []string{mWatchStreams, mWatchers, mRenewed, mMsgsIn + "/Range"} {
		if _, ok := m[k]; !ok {
			return nil, fmt.Errorf("etcd metrics: no %s", k)
		}
	}
	return m, nil
}

// requestsPerSecond is, by gRPC method, the messages clients sent between
// two scrapes (unary requests, and each message on a stream: a watch
// created, a lease renewed), per second; methods with none are left out.
func requestsPerSecond(a, b metrics, d time.Duration) map[string]float64 {
	out := map[string]float64{}
	for k, v := range b {
		if m, ok := strings.CutPrefix(k, mMsgsIn+"/"); ok && v > a[k] {
			out[m] = (v - a[k]) / d.Seconds()
		}
	}
	return out
}

// tcpCounts are the server side's TCP counters, summed over its client
// connections.
type tcpCounts struct {
	conns   int
	perConn map[uint16][2]uint32 // client port: data segments in, segments out
}

// tcp reads the server's connections' counters (sock_diag, as ss does).
func (s *server) tcp() (tcpCounts, error) {
	socks, err := netlink.SocketDiagTCPInfo(unix.AF_INET)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return tcpCounts{}, fmt.Errorf("sock_diag: %w", err)
	}
	c := tcpCounts{perConn: map[uint16][2]uint32{}}
	for _, sk := range socks {
		m := sk.InetDiagMsg
		if m == nil || sk.TCPInfo == nil || m.ID.SourcePort != s.port || m.State != netlink.TCP_ESTABLISHED || !m.ID.Source.IsLoopback() {
			continue
		}
		c.conns++
		c.perConn[m.ID.DestinationPort] = [2]uint32{sk.TCPInfo.Data_segs_in, sk.TCPInfo.Segs_out}
	}
	return c, err
}

// segsPerSecond is the data segments the server received and the segments
// it sent per second between two readings, over the connections in both.
func segsPerSecond(a, b tcpCounts, d time.Duration) (in, out float64) {
	var si, so uint64
	for port, v := range b.perConn {
		if w, ok := a.perConn[port]; ok {
			si += uint64(v[0] - w[0])
			so += uint64(v[1] - w[1])
		}
	}
	return float64(si) / d.Seconds(), float64(so) / d.Seconds()
}
