package tunio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// virtioRead is what a TUN read with offloads returns for pkt (built at
// off by build or build6, checksums complete) handed over as a
// super-packet of gso-byte segments: the virtio-net header, then the
// packet with its transport checksum holding only the pseudo-header sum
// (CHECKSUM_PARTIAL), as the kernel leaves it.
func virtioRead(t *testing.T, pkt []byte, gso int) []byte {
	t.Helper()
	p := append([]byte(nil), pkt[off:]...)
	v6 := p[0]>>4 == 6
	iph, proto := 20, p[9]
	if v6 {
		iph, proto = 40, p[6]
	}
	gsoType, csumOff := byte(virtioGSOTCPv4), 16
	switch {
	case proto == protoUDP:
		gsoType, csumOff = virtioGSOUDPL4, 6
	case v6:
		gsoType = virtioGSOTCPv6
	}
	binary.BigEndian.PutUint16(p[iph+csumOff:], foldedSum(nil, pseudoSum(p, proto, len(p)-iph)))
	h := make([]byte, virtioNetHdrLen)
	h[0], h[1] = virtioFlagNeedsCsum, gsoType
	binary.NativeEndian.PutUint16(h[2:], uint16(iph+20)) // the kernel's hdr_len; not trusted
	binary.NativeEndian.PutUint16(h[4:], uint16(gso))
	binary.NativeEndian.PutUint16(h[6:], uint16(iph))
	binary.NativeEndian.PutUint16(h[8:], uint16(csumOff))
	return append(h, p...)
}

// splitBoth cuts in both ways, the tun package's copy and ReadSegments'
// split in place, and returns each one's packets (the latter joined from
// their two pieces). It fails the test if the two differ.
func splitBoth(t *testing.T, in []byte) (copied, joined [][]byte) {
	t.Helper()
	bufs, sizes := testBufs(128), make([]int, 128)
	n, err := wgHandleVirtioRead(append([]byte(nil), in...), bufs, sizes, off)
	if err != nil {
		t.Fatalf("copy split: %v", err)
	}
	for i := range n {
		copied = append(copied, append([]byte(nil), bufs[i][off:off+sizes[i]]...))
	}
	bufs, tails := testBufs(128), make([][]byte, 128)
	raw := bufs[0][off-virtioNetHdrLen:]
	m, err := splitInPlace(raw[:copy(raw, in)], bufs, sizes, tails, off)
	if err != nil {
		t.Fatalf("split in place: %v", err)
	}
	for i := range m {
		head := bufs[i][off : off+sizes[i]]
		if i > 0 && len(tails[i]) == 0 {
			t.Fatalf("segment %d of %d has no tail", i, m)
		}
		if i == 0 && tails[0] != nil {
			t.Fatalf("segment 0 has a tail: it is whole where it was read")
		}
		joined = append(joined, append(append([]byte(nil), head...), tails[i]...))
	}
	if n != m {
		t.Fatalf("copy split gave %d segments, in place %d", n, m)
	}
	for i := range n {
		if !bytes.Equal(copied[i], joined[i]) {
			t.Fatalf("segment %d differs:\ncopy     %x\nin place %x", i, copied[i][:min(80, len(copied[i]))], joined[i][:min(80, len(joined[i]))])
		}
	}
	return copied, joined
}

func testBufs(n int) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, off+65535)
	}
	return bufs
}

// TestSplitInPlace cuts TCP and UDP super-packets of both families, with
// and without a short last segment (odd-sized, so the checksum's last
// byte is padded), and one that is a single segment: the segments must be
// byte for byte those of the tun package's copy, each a valid packet
// (lengths, IPv4 header checksum, transport checksum over header and
// payload), carrying the payload in order, TCP sequence numbers following
// it, and PSH and FIN only on the last.
func TestSplitInPlace(t *testing.T) {
	for _, c := range []struct {
		v6, udp      bool
		payload, gso int
	}{
		{payload: 10*1400 + 333, gso: 1400},
		{payload: 8 * 1400, gso: 1400},
		{payload: 900, gso: 1400},
		{payload: 65535 - 20 - 32 - 1, gso: 1448},
		{v6: true, payload: 7*1380 + 1, gso: 1380},
		{v6: true, payload: 4 * 1380, gso: 1380},
		{udp: true, payload: 9*1000 + 501, gso: 1000 + 8},
		{v6: true, udp: true, payload: 5 * 1200, gso: 1200 + 8},
	} {
		t.Run(fmt.Sprintf("v6=%v,udp=%v,%d/%d", c.v6, c.udp, c.payload, c.gso), func(t *testing.T) {
			s := seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1000, seq: 0xfffff000, ack: 77, payload: c.payload, psh: true, fin: true}
			if c.udp {
				s.proto, s.psh, s.fin = "udp", false, false
			}
			var pkt []byte
			if c.v6 {
				s.src, s.dst = "fd00:10:5:1::2", "fd00:10:5:2::2"
				pkt = build6(t, s)
			} else {
				pkt = build(t, s)
			}
			iph := 20
			if c.v6 {
				iph = 40
			}
			l4h := 32 // TCP with the timestamp option
			if c.udp {
				l4h = 8
			}
			gso := c.gso
			if c.udp {
				gso -= 8 // USO's segment size counts the payload only
			}
			_, segs := splitBoth(t, virtioRead(t, pkt, gso))
			want := (c.payload + gso - 1) / gso
			if len(segs) != want {
				t.Fatalf("%d segments, want %d", len(segs), want)
			}
			payload := pkt[off+iph+l4h:]
			for i, p := range segs {
				at := i * gso
				wantPay := payload[at:min(at+gso, len(payload))]
				if !bytes.Equal(p[iph+l4h:], wantPay) {
					t.Fatalf("segment %d: payload of %d bytes is not the super-packet's %d at %d", i, len(p)-iph-l4h, len(wantPay), at)
				}
				if err := validSegment(p); err != nil {
					t.Fatalf("segment %d: %v", i, err)
				}
				if c.udp {
					continue
				}
				if seq := binary.BigEndian.Uint32(p[iph+4:]); seq != s.seq+uint32(at) {
					t.Fatalf("segment %d: seq %d, want %d", i, seq, s.seq+uint32(at))
				}
				last := i == len(segs)-1
				if flags := p[iph+13]; (flags&tcpFlagPSH != 0) != last || (flags&1 != 0) != last {
					t.Fatalf("segment %d of %d: flags %#x", i, len(segs), flags)
				}
			}
		})
	}
}

// validSegment checks a packet's lengths and checksums by the RFCs, not by
// the code under test.
func validSegment(p []byte) error {
	v6 := p[0]>>4 == 6
	iph, proto := 20, p[9]
	if v6 {
		iph, proto = 40, p[6]
		if int(binary.BigEndian.Uint16(p[4:])) != len(p)-40 {
			return fmt.Errorf("IPv6 payload length %d, want %d", binary.BigEndian.Uint16(p[4:]), len(p)-40)
		}
	} else {
		if int(binary.BigEndian.Uint16(p[2:])) != len(p) {
			return fmt.Errorf("IPv4 total length %d, want %d", binary.BigEndian.Uint16(p[2:]), len(p))
		}
		if foldedSum(p[:20], 0) != 0xffff {
			return fmt.Errorf("IPv4 header checksum wrong")
		}
	}
	if proto == protoUDP && int(binary.BigEndian.Uint16(p[iph+4:])) != len(p)-iph {
		return fmt.Errorf("UDP length %d, want %d", binary.BigEndian.Uint16(p[iph+4:]), len(p)-iph)
	}
	if foldedSum(p[iph:], pseudoSum(p, proto, len(p)-iph)) != 0xffff {
		return fmt.Errorf("transport checksum wrong")
	}
	return nil
}

// TestSplitInPlaceIPIDs: IPv4 segments number their IDs on from the
// super-packet's, as the kernel's GSO and the tun package do.
func TestSplitInPlaceIPIDs(t *testing.T) {
	pkt := build(t, seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1, seq: 1, payload: 5000})
	binary.BigEndian.PutUint16(pkt[off+4:], 0xfffe)
	binary.BigEndian.PutUint16(pkt[off+10:], 0)
	binary.BigEndian.PutUint16(pkt[off+10:], ^foldedSum(pkt[off:off+20], 0))
	_, segs := splitBoth(t, virtioRead(t, pkt, 1000))
	for i, p := range segs {
		if id := binary.BigEndian.Uint16(p[4:]); id != uint16(0xfffe+i) {
			t.Fatalf("segment %d: IP ID %#x, want %#x", i, id, uint16(0xfffe+i))
		}
	}
}

// TestSplitInPlaceTooManySegments: a super-packet with more segments than
// buffers is refused whole, nothing half-written reported as read.
func TestSplitInPlaceTooManySegments(t *testing.T) {
	in := virtioRead(t, build(t, seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1, payload: 5000}), 1000)
	bufs, sizes, tails := testBufs(4), make([]int, 4), make([][]byte, 4)
	raw := bufs[0][off-virtioNetHdrLen:]
	if n, err := splitInPlace(raw[:copy(raw, in)], bufs, sizes, tails, off); err == nil || n != 0 {
		t.Fatalf("5 segments into 4 buffers: %d, %v", n, err)
	}
}

// FuzzSplitInPlace feeds both splits what a TUN read could return: the
// split in place must never panic or write outside the buffers, and
// wherever the tun package's copy succeeds it must give the same packets
// (except an IPv6 payload length after extension headers, which the tun
// package gets wrong).
func FuzzSplitInPlace(f *testing.F) {
	f.Add(virtioRead(&testing.T{}, build(&testing.T{}, seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1, payload: 3333}), 1000))
	f.Add(virtioRead(&testing.T{}, build6(&testing.T{}, seg{src: "fd00::1", dst: "fd00::2", sport: 1, payload: 2001}), 700))
	f.Add(virtioRead(&testing.T{}, build(&testing.T{}, seg{src: "10.5.1.2", dst: "10.5.2.2", sport: 1, payload: 3001, proto: "udp"}), 1000))
	const nbufs = 16
	cb, cs := make([][]byte, nbufs), make([]int, nbufs)
	pb, ps, pt := make([][]byte, nbufs), make([]int, nbufs), make([][]byte, nbufs)
	for i := range nbufs {
		cb[i] = make([]byte, off+65535)
		pb[i] = make([]byte, off+65535)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > virtioNetHdrLen+65535 {
			return
		}
		raw := pb[0][off-virtioNetHdrLen:]
		raw = raw[:copy(raw, in)]
		m, perr := splitInPlace(raw, pb, ps, pt, off)
		if perr != nil {
			return
		}
		if m < 0 || m > nbufs {
			t.Fatalf("%d packets", m)
		}
		for i := range m {
			if ps[i] < 0 || ps[i] > len(pb[i])-off {
				t.Fatalf("packet %d: size %d", i, ps[i])
			}
		}
		n, cerr := wgHandleVirtioRead(append([]byte(nil), in...), cb, cs, off)
		if cerr != nil {
			return
		}
		if n != m {
			t.Fatalf("copy split %d packets, in place %d", n, m)
		}
		v6ext := len(in) > virtioNetHdrLen && in[virtioNetHdrLen]>>4 == 6 && binary.NativeEndian.Uint16(in[6:]) != 40
		for i := range n {
			c := cb[i][off : off+cs[i]]
			j := append(append([]byte(nil), pb[i][off:off+ps[i]]...), pt[i]...)
			if v6ext && len(j) >= 6 && len(c) >= 6 {
				copy(j[4:6], c[4:6])
			}
			if !bytes.Equal(c, j) {
				t.Fatalf("packet %d differs", i)
			}
		}
	})
}

// TestReadSegments reads through a real TUN: nothing waiting is (0, nil)
// at once without waiting; a datagram arrives whole; a UDP super-packet
// (UDP_SEGMENT, as a pod sending with GSO makes) comes back as segments
// whose joined pieces are valid datagrams carrying the payload in order;
// a read that waits returns the packet sent while it waited; and closing
// the device ends a waiting read with os.ErrClosed.
func TestReadSegments(t *testing.T) {
	inFreshNetns(t, func() error {
		const name = "wtseg0"
		d, err := Create(Options{Name: name, MTU: 1500})
		if err != nil {
			return err
		}
		defer d.Close()
		own := netip.MustParseAddr("10.97.1.0")
		if err := Configure(name, Addrs{Addr: own, Network: netip.MustParsePrefix("10.97.0.0/16")}); err != nil {
			return err
		}
		bufs, sizes, tails := testBufs(128), make([]int, 128), make([][]byte, 128)
		if n, err := d.ReadSegments(bufs, sizes, tails, off, false); n != 0 || err != nil {
			return fmt.Errorf("ReadSegments with nothing queued: %d, %v; want 0, nil", n, err)
		}
		conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IP(own.AsSlice()), Port: 4000}, &net.UDPAddr{IP: net.IPv4(10, 97, 2, 5), Port: 9})
		if err != nil {
			return err
		}
		defer conn.Close()
		read := func(wait bool) ([][]byte, error) {
			n, err := d.ReadSegments(bufs, sizes, tails, off, wait)
			if err != nil {
				return nil, err
			}
			var out [][]byte
			for i := range n {
				out = append(out, append(append([]byte(nil), bufs[i][off:off+sizes[i]]...), tails[i]...))
			}
			return out, nil
		}
		go func() {
			time.Sleep(50 * time.Millisecond)
			conn.Write([]byte("hello"))
		}()
		pkts, err := read(true)
		if err != nil {
			return err
		}
		if len(pkts) != 1 || string(pkts[0][28:]) != "hello" {
			return fmt.Errorf("one datagram, waited for: read %d packets (%x)", len(pkts), pkts)
		}
		if err := validUDP4(pkts[0]); err != nil {
			return err
		}
		if d.USO {
			rc, err := conn.SyscallConn()
			if err != nil {
				return err
			}
			var serr error
			rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, 1000) })
			if serr != nil {
				return serr
			}
			payload := make([]byte, 9501)
			for i := range payload {
				payload[i] = byte(i * 7)
			}
			if _, err := conn.Write(payload); err != nil {
				return err
			}
			if pkts, err = read(false); err != nil {
				return err
			}
			if len(pkts) != 10 {
				return fmt.Errorf("a 9,501-byte super-packet of 1,000-byte segments: read %d packets, want 10", len(pkts))
			}
			for i, p := range pkts {
				if err := validUDP4(p); err != nil {
					return fmt.Errorf("segment %d: %w", i, err)
				}
				if want := payload[i*1000 : min((i+1)*1000, len(payload))]; !bytes.Equal(p[28:], want) {
					return fmt.Errorf("segment %d carries %d bytes, not the payload's %d at %d", i, len(p)-28, len(want), i*1000)
				}
			}
		}
		done := make(chan error, 1)
		go func() {
			_, err := d.ReadSegments(bufs, sizes, tails, off, true)
			done <- err
		}()
		time.Sleep(50 * time.Millisecond)
		d.Close()
		select {
		case err := <-done:
			if !errors.Is(err, os.ErrClosed) {
				return fmt.Errorf("a waiting read after Close: %v, want os.ErrClosed", err)
			}
		case <-time.After(2 * time.Second):
			return fmt.Errorf("Close did not end a waiting read")
		}
		return nil
	})
}

// TestTUNWriteAndReadAllocateNothing: Write's writev of a coalesced train
// and ReadSegments on a real TUN allocate nothing per call.
func TestTUNWriteAndReadAllocateNothing(t *testing.T) {
	inFreshNetns(t, func() error {
		const name = "wtalloc0"
		d, err := Create(Options{Name: name, MTU: 1500})
		if err != nil {
			return err
		}
		defer d.Close()
		local := netip.MustParseAddrPort("10.98.0.1:9")
		remote := netip.MustParseAddrPort("10.98.0.2:1234")
		if err := Configure(name, Addrs{Addr: local.Addr(), Network: netip.MustParsePrefix("10.98.0.0/24")}); err != nil {
			return err
		}
		var train [][]byte
		for range 40 {
			train = append(train, udpTo(remote, local, make([]byte, 1400))) // to a closed port: dropped
		}
		bufs := make([][]byte, len(train))
		if a := testing.AllocsPerRun(50, func() {
			copy(bufs, train)
			if n, err := d.Write(bufs, off); err != nil || n != len(bufs) {
				t.Errorf("Write: %d, %v", n, err)
			}
		}); a != 0 {
			return fmt.Errorf("%v allocations per Write, want 0", a)
		}
		rb, sizes, tails := testBufs(64), make([]int, 64), make([][]byte, 64)
		conn, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(local), &net.UDPAddr{IP: net.IPv4(10, 98, 0, 7), Port: 9})
		if err != nil {
			return err
		}
		defer conn.Close()
		msg := []byte("x")
		if a := testing.AllocsPerRun(50, func() {
			conn.Write(msg)
			if n, err := d.ReadSegments(rb, sizes, tails, off, true); err != nil || n != 1 {
				t.Errorf("ReadSegments: %d, %v", n, err)
			}
		}); a != 0 {
			return fmt.Errorf("%v allocations per ReadSegments, want 0", a)
		}
		return nil
	})
}

// TestWriteTouchesOnlyPackets: Write (with offloads) changes nothing in
// front of a packet's offset or past its end, so packets may lie back to
// back in one buffer (engine.InPlaceWriter): a UDP train and a TCP train
// written from one buffer each, with canary bytes around every packet,
// arrive whole while every canary stays.
func TestWriteTouchesOnlyPackets(t *testing.T) {
	inFreshNetns(t, func() error {
		const name = "wtinpl0"
		d, err := Create(Options{Name: name, MTU: 1500})
		if err != nil {
			return err
		}
		defer d.Close()
		if !d.WritesInPlace() {
			return fmt.Errorf("no in-place writes with offloads on")
		}
		local := netip.MustParseAddrPort("10.96.0.1:9999")
		remote := netip.MustParseAddrPort("10.96.0.2:1234")
		if err := Configure(name, Addrs{Addr: local.Addr(), Network: netip.MustParsePrefix("10.96.0.0/24")}); err != nil {
			return err
		}
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
		if err != nil {
			return err
		}
		defer conn.Close()
		// One buffer: [canary | packet | canary | packet ...], each packet
		// handed over as buf[start-off : end] (its capacity ending with it).
		one := make([]byte, 0, 1<<20)
		var bufs [][]byte
		var payloads [][]byte
		for i := range 30 {
			one = append(one, bytes.Repeat([]byte{0xa5}, off)...)
			p := make([]byte, 1000)
			for j := range p {
				p[j] = byte(i + j)
			}
			payloads = append(payloads, p)
			start := len(one)
			one = append(one, udpTo(remote, local, p)[off:]...)
			bufs = append(bufs, one[start-off:len(one):len(one)])
		}
		snapshot := append([]byte(nil), one...)
		if n, err := d.Write(bufs, off); err != nil || n != len(bufs) {
			return fmt.Errorf("Write: %d, %v", n, err)
		}
		at := 0
		for i := range bufs {
			if !bytes.Equal(one[at:at+off], snapshot[at:at+off]) {
				return fmt.Errorf("Write changed the %d bytes in front of packet %d", off, i)
			}
			at += len(bufs[i])
		}
		buf := make([]byte, 2048)
		for i, want := range payloads {
			conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			m, _, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return fmt.Errorf("datagram %d: %v", i, err)
			}
			if !bytes.Equal(buf[:m], want) {
				return fmt.Errorf("datagram %d altered", i)
			}
		}
		return nil
	})
}
