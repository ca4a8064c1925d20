// Package traffic is weft's built-in traffic generator: one server and three
// client workloads, so the lab and the bench need nothing installed.
//
//   - TCP bulk: S streams send N bytes, or for a duration, of a deterministic
//     pseudo-random stream that the server checks byte for byte (or hashes
//     with SHA-256); a mismatch is an error, not a figure.
//   - UDP: datagrams of a given payload size at a target rate, or flat out,
//     for a duration; the server counts what arrives, giving packets/s sent
//     and delivered and the loss.
//   - Request/response: small messages echoed over TCP, giving median and
//     p99 round-trip times.
//
// The server listens on one port for TCP (data and control) and UDP. Each
// TCP connection starts with one JSON line saying what it is for; results
// are JSON.
package traffic

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
)

// DefaultPort is the server's TCP and UDP port.
const DefaultPort = 7575

// hello is the first line of every TCP connection.
type hello struct {
	Mode    string `json:"mode"` // "tcp", "rr", "udp"
	Seed    uint64 `json:"seed,omitempty"`
	Verify  string `json:"verify,omitempty"`
	Size    int    `json:"size,omitempty"`
	Session uint32 `json:"session,omitempty"`
}

// Server answers every client workload. Its zero value is not usable; use
// Listen.
type Server struct {
	tcp *net.TCPListener
	udp *net.UDPConn

	mu       sync.Mutex
	sessions map[uint32]*udpSession
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
	closed   atomic.Bool
}

type udpSession struct {
	packets atomic.Int64
	bytes   atomic.Int64
	maxSeq  atomic.Uint64
	reorder atomic.Int64
}

// Listen opens the server's TCP and UDP sockets on addr (host:port; port 0
// picks one, the same for both when possible).
func Listen(addr string) (*Server, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("traffic: listen address %q: %w", addr, err)
	}
	for range 10 {
		tl, err := net.Listen(Network("tcp", host), net.JoinHostPort(host, port))
		if err != nil {
			return nil, fmt.Errorf("traffic: %w", err)
		}
		p := strconv.Itoa(tl.Addr().(*net.TCPAddr).Port)
		uc, err := net.ListenPacket(Network("udp", host), net.JoinHostPort(host, p))
		if err != nil {
			tl.Close()
			if port == "0" {
				continue // the UDP twin of a random port was taken
			}
			return nil, fmt.Errorf("traffic: %w", err)
		}
		u := uc.(*net.UDPConn)
		// A deep receive queue, so the figure is the path's loss and not
		// this process's scheduling (capped by net.core.rmem_max).
		_ = u.SetReadBuffer(8 << 20)
		return &Server{tcp: tl.(*net.TCPListener), udp: u,
			sessions: map[uint32]*udpSession{}, conns: map[net.Conn]struct{}{}}, nil
	}
	return nil, errors.New("traffic: no port free for both TCP and UDP")
}

// Addr is the TCP (and UDP) address the server listens on.
func (s *Server) Addr() *net.TCPAddr { return s.tcp.Addr().(*net.TCPAddr) }

// Serve answers clients until ctx ends or Close is called.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	s.wg.Go(s.readUDP)
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			if s.closed.Load() {
				s.wg.Wait()
				return nil
			}
			return fmt.Errorf("traffic: accept: %w", err)
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.handle(c.(*net.TCPConn))
		})
	}
}

// Close stops the server and ends every connection.
func (s *Server) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.tcp.Close()
	s.udp.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	return nil
}

func (s *Server) handle(c *net.TCPConn) {
	r := bufio.NewReaderSize(c, 256<<10)
	line, err := r.ReadBytes('\n')
	if err != nil {
		return
	}
	var h hello
	if err := json.Unmarshal(line, &h); err != nil {
		writeJSON(c, map[string]string{"error": "bad hello: " + err.Error()})
		return
	}
	switch h.Mode {
	case "tcp":
		res := receiveBulk(r, h)
		writeJSON(c, res)
	case "rr":
		echo(c, r, h.Size)
	case "udp":
		s.udpControl(c, r, h.Session)
	default:
		writeJSON(c, map[string]string{"error": "unknown mode " + strconv.Quote(h.Mode)})
	}
}

func writeJSON(w io.Writer, v any) error {
	b, _ := json.Marshal(v)
	_, err := w.Write(append(b, '\n'))
	return err
}

func echo(c net.Conn, r *bufio.Reader, size int) {
	if size <= 0 || size > 1<<20 {
		return
	}
	_ = c.(*net.TCPConn).SetNoDelay(true)
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(r, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// udpHeader is what starts every datagram: magic, session, sequence.
const (
	udpMagic     = 0x57465455 // "WFTU"
	udpHeaderLen = 16
)

type udpReport struct {
	Received  int64  `json:"received"`
	Bytes     int64  `json:"bytes"`
	Reordered int64  `json:"reordered"`
	Error     string `json:"error,omitempty"`
}

func (s *Server) udpControl(c net.Conn, r *bufio.Reader, id uint32) {
	sess := &udpSession{}
	s.mu.Lock()
	if _, dup := s.sessions[id]; dup {
		s.mu.Unlock()
		writeJSON(c, udpReport{Error: "session id in use"})
		return
	}
	s.sessions[id] = sess
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.sessions, id)
		s.mu.Unlock()
	}()
	if writeJSON(c, udpReport{}) != nil {
		return
	}
	// The client's next line says it has stopped sending (and waited for
	// stragglers); anything arriving later is not counted.
	if _, err := r.ReadBytes('\n'); err != nil {
		return
	}
	writeJSON(c, udpReport{Received: sess.packets.Load(), Bytes: sess.bytes.Load(), Reordered: sess.reorder.Load()})
}

// readUDP counts datagrams per session, many per system call (recvmmsg),
// so the server is not what limits the delivered rate.
func (s *Server) readUDP() {
	const batch = 64
	pc := ipv4.NewPacketConn(s.udp)
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 65536)}
	}
	var last uint32
	var lastSess *udpSession
	for {
		n, err := pc.ReadBatch(msgs, 0)
		if err != nil {
			if s.closed.Load() {
				return
			}
			continue
		}
		for i := range n {
			b := msgs[i].Buffers[0][:msgs[i].N]
			if len(b) < udpHeaderLen || binary.BigEndian.Uint32(b) != udpMagic {
				continue
			}
			id := binary.BigEndian.Uint32(b[4:])
			sess := lastSess
			if sess == nil || id != last {
				s.mu.Lock()
				sess = s.sessions[id]
				s.mu.Unlock()
				if sess == nil {
					continue
				}
				last, lastSess = id, sess
			}
			seq := binary.BigEndian.Uint64(b[8:])
			if seq < sess.maxSeq.Load() {
				sess.reorder.Add(1)
			} else {
				sess.maxSeq.Store(seq)
			}
			sess.packets.Add(1)
			sess.bytes.Add(int64(len(b)))
		}
	}
}

// dial connects to the server, retrying while it is not up yet (the bench
// starts server and client in different namespaces at about the same
// time), and sends the hello line.
func dial(ctx context.Context, addr string, h hello) (*net.TCPConn, *bufio.Reader, error) {
	deadline := time.Now().Add(5 * time.Second)
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, Network("tcp", hostOf(addr)), addr)
		if err == nil {
			tc := c.(*net.TCPConn)
			if err := writeJSON(tc, h); err != nil {
				tc.Close()
				return nil, nil, fmt.Errorf("traffic: %s: %w", addr, err)
			}
			return tc, bufio.NewReader(tc), nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("traffic: connect to server: %w", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Network is "tcp4" or "udp4" for an IPv4 host (or a name), "tcp6" or
// "udp6" for an IPv6 literal: each address family on its own, so a test
// of one family never passes over the other.
func Network(proto, host string) string {
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() && !a.Is4In6() {
		return proto + "6"
	}
	return proto + "4"
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}
