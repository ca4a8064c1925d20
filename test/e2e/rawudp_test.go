package e2e

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/bench/lab"
)

// udpSender is what the hostile tests send datagrams with.
type udpSender interface {
	WriteToUDP(b []byte, addr *net.UDPAddr) (int, error)
}

// rawUDP sends UDP datagrams from any source port through a raw socket,
// as root on a peer host can: it may use the port the host's own flannel
// daemon has bound, which weft's source-port check lets through.
type rawUDP struct {
	c   *net.IPConn
	src uint16
}

// rawUDPIn opens a raw UDP sender in namespace ns, sending from port src
// of the namespace's address toward each destination.
func rawUDPIn(t *testing.T, ns string, src uint16) *rawUDP {
	t.Helper()
	var c *net.IPConn
	err := lab.InNamespace(ns, func() (err error) {
		c, err = net.ListenIP("ip4:udp", nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawUDP{c: c, src: src}
}

// WriteToUDP sends b in a UDP header with a zero checksum (allowed over
// IPv4); the kernel adds the IPv4 header.
func (r *rawUDP) WriteToUDP(b []byte, addr *net.UDPAddr) (int, error) {
	d := make([]byte, 8+len(b))
	binary.BigEndian.PutUint16(d[0:], r.src)
	binary.BigEndian.PutUint16(d[2:], uint16(addr.Port))
	binary.BigEndian.PutUint16(d[4:], uint16(len(d)))
	copy(d[8:], b)
	ip, _ := netip.AddrFromSlice(addr.IP)
	_, err := r.c.WriteToIP(d, &net.IPAddr{IP: ip.Unmap().AsSlice()})
	return len(b), err
}
