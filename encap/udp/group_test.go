package udp

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/engine"
)

// TestListenGroup: a group of two sockets shares one address. Datagrams
// from many source ports spread over both (the kernel hashes the
// 4-tuple), all of one source on one socket; each socket sends from the
// group's port.
func TestListenGroup(t *testing.T) {
	if _, err := ListenGroup(Options{Local: netip.MustParseAddrPort("127.0.0.1:0")}, 0); err == nil {
		t.Error("a group of 0 sockets")
	}
	cs, err := ListenGroup(Options{Local: netip.MustParseAddrPort("127.0.0.1:0"), BatchSize: 64}, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		t.Cleanup(func() { c.Close() })
	}
	addr := cs[0].LocalAddr()
	if cs[1].LocalAddr() != addr || addr.Port() == 0 {
		t.Fatalf("group bound %s and %s", addr, cs[1].LocalAddr())
	}
	// A third socket without SO_REUSEPORT cannot take the port.
	if c, err := Listen(Options{Local: addr}); err == nil {
		c.Close()
		t.Error("a plain socket joined the group's port")
	}

	const senders, per = 16, 4
	for s := range senders {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
		if err != nil {
			t.Fatal(err)
		}
		for i := range per {
			c.Write(fmt.Appendf(nil, "%d %d", s, i))
		}
		c.Close()
	}
	bufs := engine.NewBuffers(64)
	sizes := make([]int, 64)
	srcs := make([]netip.AddrPort, 64)
	got := [2]int{}
	socketOf := map[netip.AddrPort]int{}
	deadline := time.Now().Add(5 * time.Second)
	for got[0]+got[1] < senders*per && time.Now().Before(deadline) {
		for i, c := range cs {
			if !readable(c) {
				continue
			}
			n, err := c.ReadBatch(bufs, sizes, srcs, engine.Headroom)
			if err != nil {
				t.Fatal(err)
			}
			for _, src := range srcs[:n] {
				if was, ok := socketOf[src]; ok && was != i {
					t.Errorf("datagrams from %s on sockets %d and %d", src, was, i)
				}
				socketOf[src] = i
			}
			got[i] += n
		}
	}
	if got[0]+got[1] != senders*per || got[0] == 0 || got[1] == 0 {
		t.Errorf("datagrams per socket %v, want %d over both", got, senders*per)
	}

	peer, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	to := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	for i, c := range cs {
		if refused, err := c.WriteBatch([][]byte{[]byte("hi")}, []netip.AddrPort{to}); refused != 0 || err != nil {
			t.Fatalf("socket %d: refused %d, %v", i, refused, err)
		}
		peer.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, from, err := peer.ReadFromUDPAddrPort(make([]byte, 16))
		if err != nil || from.Port() != addr.Port() {
			t.Fatalf("socket %d sent from %s (%v), want port %d", i, from, err, addr.Port())
		}
	}
}

// readable tells whether a ReadBatch on c returns at once.
func readable(c *Conn) bool {
	fd := c.WaitFD()
	if fd < 0 {
		return true
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, 0)
	return err == nil && n > 0
}
