package tunio

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inFreshNetns runs fn on a thread of its own in a new, unnamed network
// namespace. The thread stays locked and exits with the goroutine, so the
// namespace and every device in it vanish with it, also when fn fails.
func inFreshNetns(t *testing.T, fn func() error) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (CI=true)")
		}
		t.Skip("needs root for a network namespace and a TUN device")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		ns, err := netns.New()
		if err != nil {
			errc <- fmt.Errorf("new netns: %w", err)
			return
		}
		defer ns.Close()
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// udpTo builds an IPv4/UDP packet at bufs offset off with room to grow.
func udpTo(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, off, off+65535)
	n := 28 + len(payload)
	p := make([]byte, n)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(n))
	p[6] = 0x40
	p[8] = 64
	p[9] = protoUDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:], s4[:])
	copy(p[16:], d4[:])
	binary.BigEndian.PutUint16(p[10:], ^foldedSum(p[:20], 0))
	binary.BigEndian.PutUint16(p[20:], src.Port())
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	ps := uint64(binary.BigEndian.Uint16(p[12:])) + uint64(binary.BigEndian.Uint16(p[14:])) +
		uint64(binary.BigEndian.Uint16(p[16:])) + uint64(binary.BigEndian.Uint16(p[18:])) + protoUDP + uint64(8+len(payload))
	cs := ^foldedSum(p[20:], ps)
	if cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(p[26:], cs)
	return append(b, p...)
}

// TestTUNWriteDeliversEveryDatagram writes trains of one UDP flow through
// a real TUN device (with its offloads, as the engine opens it) and reads
// them from a socket behind it: every datagram must arrive, in order,
// including zero-length ones (which no UDP super-packet can carry: the
// kernel refuses gso_size 0 with EINVAL) and trains longer than the 64
// segments a UDP super-packet may hold (UDP_MAX_SEGMENTS).
func TestTUNWriteDeliversEveryDatagram(t *testing.T) {
	inFreshNetns(t, func() error {
		const name = "wtzero0"
		d, err := Create(Options{Name: name, MTU: 1500})
		if err != nil {
			return err
		}
		defer d.Close()
		local := netip.MustParseAddrPort("10.99.0.1:9999")
		remote := netip.MustParseAddrPort("10.99.0.2:1234")
		if err := Configure(name, Addrs{Addr: local.Addr(), Network: netip.MustParsePrefix("10.99.0.0/24")}); err != nil {
			return err
		}
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := conn.SetReadBuffer(4 << 20); err != nil {
			return err
		}
		trains := []struct {
			name     string
			payloads [][]byte
		}{
			{"two empty", [][]byte{{}, {}}},
			{"data then empty", [][]byte{[]byte("abcdefgh"), {}, {}}},
			{"empty then data", [][]byte{{}, []byte("abcdefgh"), []byte("abcdefgh")}},
			{"200 small", func() (out [][]byte) {
				for i := range 200 {
					out = append(out, []byte(fmt.Sprintf("%08d", i)))
				}
				return out
			}()},
		}
		for _, tr := range trains {
			var bufs [][]byte
			for _, p := range tr.payloads {
				bufs = append(bufs, udpTo(remote, local, p))
			}
			n, err := d.Write(bufs, off)
			if err != nil || n != len(bufs) {
				return fmt.Errorf("%s (USO %v): wrote %d of %d: %v", tr.name, d.USO, n, len(bufs), err)
			}
			buf := make([]byte, 2048)
			for i, want := range tr.payloads {
				conn.SetReadDeadline(time.Now().Add(2 * time.Second))
				m, _, err := conn.ReadFromUDPAddrPort(buf)
				if err != nil {
					return fmt.Errorf("%s: datagram %d of %d: %v", tr.name, i+1, len(tr.payloads), err)
				}
				if !bytes.Equal(buf[:m], want) {
					return fmt.Errorf("%s: datagram %d is %q, want %q", tr.name, i+1, buf[:m], want)
				}
			}
		}
		return nil
	})
}

// tcp6 builds a TCP/IPv6 packet (no options) at bufs offset off with room
// to grow, its checksum complete.
func tcp6(src, dst netip.AddrPort, seq, ack uint32, flags byte, payload []byte) []byte {
	p := make([]byte, 60+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(20+len(payload)))
	p[6], p[7] = protoTCP, 64
	s16, d16 := src.Addr().As16(), dst.Addr().As16()
	copy(p[8:], s16[:])
	copy(p[24:], d16[:])
	binary.BigEndian.PutUint16(p[40:], src.Port())
	binary.BigEndian.PutUint16(p[42:], dst.Port())
	binary.BigEndian.PutUint32(p[44:], seq)
	binary.BigEndian.PutUint32(p[48:], ack)
	p[52], p[53] = 5<<4, flags
	binary.BigEndian.PutUint16(p[54:], 65535)
	copy(p[60:], payload)
	binary.BigEndian.PutUint16(p[56:], ^foldedSum(p[40:], pseudoSum(p, protoTCP, len(p)-40)))
	return append(make([]byte, off, off+65535), p...)
}

// udp6To is udpTo for IPv6.
func udp6To(src, dst netip.AddrPort, payload []byte) []byte {
	p := make([]byte, 48+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(8+len(payload)))
	p[6], p[7] = protoUDP, 64
	s16, d16 := src.Addr().As16(), dst.Addr().As16()
	copy(p[8:], s16[:])
	copy(p[24:], d16[:])
	binary.BigEndian.PutUint16(p[40:], src.Port())
	binary.BigEndian.PutUint16(p[42:], dst.Port())
	binary.BigEndian.PutUint16(p[44:], uint16(8+len(payload)))
	copy(p[48:], payload)
	cs := ^foldedSum(p[40:], pseudoSum(p, protoUDP, len(p)-40))
	if cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(p[46:], cs)
	return append(make([]byte, off, off+65535), p...)
}

// TestTUNWriteIPv6Trains writes coalesced IPv6 trains through a real TUN
// device (offloads on, as the engine opens it): a TCP connection's data
// as one GSO_TCPV6 super-packet, after a handshake done by hand through
// the device, must reach the accepting socket intact and in order, and a
// UDP flow's datagrams (one UDP_L4 super-packet when the kernel has
// USO6, beside a datagram without checksum, which it must drop) each
// reach theirs.
func TestTUNWriteIPv6Trains(t *testing.T) {
	inFreshNetns(t, func() error {
		const name = "wtgro6"
		d, err := Create(Options{Name: name, MTU: 1500})
		if err != nil {
			return err
		}
		defer d.Close()
		if !d.TSO {
			return fmt.Errorf("no TSO on the TUN: nothing to test")
		}
		local := netip.MustParseAddrPort("[fd00:99::1]:9999")
		remote := netip.MustParseAddrPort("[fd00:99::2]:1234")
		if err := Configure(name, Addrs{Addr: netip.MustParseAddr("10.99.0.1"), Network: netip.MustParsePrefix("10.99.0.0/24"),
			Addr6: local.Addr(), Network6: netip.MustParsePrefix("fd00:99::/64")}); err != nil {
			return err
		}
		if err := waitLocal(local.Addr()); err != nil {
			return err
		}

		// UDP: a train, with one datagram without checksum in its middle.
		conn, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(local))
		if err != nil {
			return err
		}
		defer conn.Close()
		var bufs [][]byte
		var want [][]byte
		for i := range 20 {
			p := []byte(fmt.Sprintf("datagram %04d", i))
			b := udp6To(remote, local, p)
			if i == 10 {
				b[off+46], b[off+47] = 0, 0
			} else {
				want = append(want, p)
			}
			bufs = append(bufs, b)
		}
		if n, err := d.Write(bufs, off); err != nil || n != len(bufs) {
			return fmt.Errorf("UDP: wrote %d of %d: %v", n, len(bufs), err)
		}
		if d.USO && len(d.co.runs) != 3 {
			return fmt.Errorf("UDP: %d writes for 20 datagrams, want 3 (USO6)", len(d.co.runs))
		}
		buf := make([]byte, 2048)
		for i, w := range want {
			conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			m, _, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return fmt.Errorf("UDP: datagram %d of %d: %v", i+1, len(want), err)
			}
			if !bytes.Equal(buf[:m], w) {
				return fmt.Errorf("UDP: datagram %d is %q, want %q", i+1, buf[:m], w)
			}
		}

		// TCP: SYN in, SYN-ACK out of the device, then ACK and data in.
		ln, err := net.ListenTCP("tcp6", net.TCPAddrFromAddrPort(local))
		if err != nil {
			return err
		}
		defer ln.Close()
		const isn = 1000
		if _, err := d.Write([][]byte{tcp6(remote, local, isn, 0, 0x02, nil)}, off); err != nil {
			return fmt.Errorf("SYN: %v", err)
		}
		theirs, err := readSynAck(d, remote.Port())
		if err != nil {
			return err
		}
		var data []byte
		bufs = [][]byte{tcp6(remote, local, isn+1, theirs+1, tcpFlagACK, nil)}
		for i := range 8 {
			seg := bytes.Repeat([]byte{byte('a' + i)}, 1400)
			bufs = append(bufs, tcp6(remote, local, isn+1+uint32(len(data)), theirs+1, tcpFlagACK, seg))
			data = append(data, seg...)
		}
		if n, err := d.Write(bufs, off); err != nil || n != len(bufs) {
			return fmt.Errorf("TCP: wrote %d of %d: %v", n, len(bufs), err)
		}
		if len(d.co.runs) != 2 || d.co.runs[1].n != 8 {
			return fmt.Errorf("TCP: %d writes, want the ACK and one super-packet of 8", len(d.co.runs))
		}
		ln.SetDeadline(time.Now().Add(2 * time.Second))
		c, err := ln.AcceptTCP()
		if err != nil {
			return fmt.Errorf("accept: %v", err)
		}
		defer c.Close()
		got := make([]byte, len(data))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("TCP: read: %v", err)
		}
		if !bytes.Equal(got, data) {
			return fmt.Errorf("TCP: the stream arrived changed")
		}
		return nil
	})
}

// readSynAck reads packets the kernel sends into the device until the
// SYN-ACK to port, and returns its sequence number.
func readSynAck(d *Device, port uint16) (uint32, error) {
	type result struct {
		seq uint32
		err error
	}
	done := make(chan result, 1)
	go func() {
		bufs := [][]byte{make([]byte, off+65535)}
		sizes := []int{0}
		for {
			n, err := d.Read(bufs, sizes, off)
			if err != nil {
				done <- result{err: err}
				return
			}
			if n == 0 {
				continue
			}
			p := bufs[0][off : off+sizes[0]]
			if len(p) >= 60 && p[0]>>4 == 6 && p[6] == protoTCP && binary.BigEndian.Uint16(p[42:]) == port && p[53] == 0x12 {
				done <- result{seq: binary.BigEndian.Uint32(p[44:])}
				return
			}
		}
	}()
	select {
	case r := <-done:
		return r.seq, r.err
	case <-time.After(2 * time.Second):
		return 0, fmt.Errorf("no SYN-ACK from the kernel")
	}
}

// waitLocal waits until the kernel delivers packets to addr locally: an
// IPv6 address's local route is inserted from the addrconf work queue
// (addrconf_dad_work, even with IFA_F_NODAD), shortly after the address
// is added, and until then packets to it count as Ip6InAddrErrors.
func waitLocal(addr netip.Addr) error {
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if rs, err := netlink.RouteGet(addr.AsSlice()); err == nil && len(rs) > 0 && rs[0].Type == unix.RTN_LOCAL {
			return nil
		}
	}
	return fmt.Errorf("%s never became a local address", addr)
}

// Packets the kernel cannot queue for a reader that is behind are counted
// as the device's drops: a TUN with a ring of 16 and nobody reading.
func TestKernelDrops(t *testing.T) {
	inFreshNetns(t, func() error {
		const name = "wtdrop0"
		d, err := Create(Options{Name: name, MTU: 1500, TxQueueLen: 16})
		if err != nil {
			return err
		}
		defer d.Close()
		if err := Configure(name, Addrs{Addr: netip.MustParseAddr("10.98.0.1"), Network: netip.MustParsePrefix("10.98.0.0/24")}); err != nil {
			return err
		}
		if n := d.KernelDrops(); n != 0 {
			return fmt.Errorf("a new TUN has %d drops", n)
		}
		conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.98.0.2:9")))
		if err != nil {
			return err
		}
		defer conn.Close()
		const sent = 200
		for range sent {
			if _, err := conn.Write([]byte("x")); err != nil {
				return err
			}
		}
		// The ring holds 16 (the kernel may queue a few more in front of
		// it); everything else is dropped.
		if n := d.KernelDrops(); n < sent/2 || n > sent {
			return fmt.Errorf("%d of %d datagrams counted as dropped, with a ring of 16 and nobody reading", n, sent)
		}
		return nil
	})
}
