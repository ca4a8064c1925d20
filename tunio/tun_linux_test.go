package tunio

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netns"
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
