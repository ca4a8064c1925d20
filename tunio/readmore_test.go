package tunio

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReadMore reads what the kernel queues on a real TUN without the tun
// package: nothing waiting is (0, nil) at once; a datagram arrives whole
// with its checksum completed; a UDP super-packet (UDP_SEGMENT, as a pod
// sending with GSO makes) is split into its datagrams, each with valid
// IPv4 and UDP checksums.
func TestReadMore(t *testing.T) {
	inFreshNetns(t, func() error {
		const name = "wtmore0"
		d, err := Create(Options{Name: name, MTU: 1500})
		if err != nil {
			return err
		}
		defer d.Close()
		own := netip.MustParseAddr("10.97.1.0")
		if err := Configure(name, Addrs{Addr: own, Network: netip.MustParsePrefix("10.97.0.0/16")}); err != nil {
			return err
		}
		bufs := make([][]byte, 128)
		for i := range bufs {
			bufs[i] = make([]byte, off+65535)
		}
		sizes := make([]int, len(bufs))
		if n, err := d.ReadMore(bufs, sizes, off); n != 0 || err != nil {
			return fmt.Errorf("ReadMore with nothing queued: %d, %v; want 0, nil", n, err)
		}
		conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IP(own.AsSlice()), Port: 4000}, &net.UDPAddr{IP: net.IPv4(10, 97, 2, 5), Port: 9})
		if err != nil {
			return err
		}
		defer conn.Close()
		// readAll drains the queue with ReadMore alone (the kernel queues
		// synchronously, so the packets are there once Write returns).
		readAll := func() ([][]byte, error) {
			var out [][]byte
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
				n, err := d.ReadMore(bufs, sizes, off)
				if err != nil {
					return nil, err
				}
				if n == 0 && len(out) > 0 {
					return out, nil
				}
				for i := range n {
					out = append(out, append([]byte(nil), bufs[i][off:off+sizes[i]]...))
				}
			}
			return out, nil
		}
		if _, err := conn.Write([]byte("hello")); err != nil {
			return err
		}
		pkts, err := readAll()
		if err != nil {
			return err
		}
		if len(pkts) != 1 || string(pkts[0][28:]) != "hello" {
			return fmt.Errorf("one datagram: read %d packets (%x)", len(pkts), pkts)
		}
		if err := validUDP4(pkts[0]); err != nil {
			return err
		}

		if !d.USO {
			return nil // the kernel would segment before the TUN: nothing to split
		}
		rc, err := conn.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, 1000) })
		if serr != nil {
			return serr
		}
		payload := make([]byte, 9500)
		for i := range payload {
			payload[i] = byte(i)
		}
		if _, err := conn.Write(payload); err != nil {
			return err
		}
		pkts, err = readAll()
		if err != nil {
			return err
		}
		if len(pkts) != 10 {
			return fmt.Errorf("a 9,500-byte super-packet of 1,000-byte segments: read %d packets, want 10", len(pkts))
		}
		for i, p := range pkts {
			if err := validUDP4(p); err != nil {
				return fmt.Errorf("segment %d: %w", i, err)
			}
			want := payload[i*1000 : min((i+1)*1000, len(payload))]
			if string(p[28:]) != string(want) {
				return fmt.Errorf("segment %d carries %d bytes, not the payload's %d at %d", i, len(p)-28, len(want), i*1000)
			}
		}
		return nil
	})
}

// validUDP4 checks an IPv4/UDP packet's lengths and both checksums.
func validUDP4(p []byte) error {
	if len(p) < 28 || p[0] != 0x45 || int(binary.BigEndian.Uint16(p[2:])) != len(p) {
		return fmt.Errorf("bad IPv4 header or length: %x", p[:min(len(p), 28)])
	}
	if foldedSum(p[:20], 0) != 0xffff {
		return fmt.Errorf("IPv4 header checksum wrong")
	}
	if int(binary.BigEndian.Uint16(p[24:])) != len(p)-20 {
		return fmt.Errorf("UDP length %d, want %d", binary.BigEndian.Uint16(p[24:]), len(p)-20)
	}
	ps := uint64(binary.BigEndian.Uint16(p[12:])) + uint64(binary.BigEndian.Uint16(p[14:])) +
		uint64(binary.BigEndian.Uint16(p[16:])) + uint64(binary.BigEndian.Uint16(p[18:])) + protoUDP + uint64(len(p)-20)
	if foldedSum(p[20:], ps) != 0xffff {
		return fmt.Errorf("UDP checksum wrong")
	}
	return nil
}
