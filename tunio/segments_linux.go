package tunio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// ReadSegments implements engine.SegmentingDevice: Read (wait) or ReadMore
// (!wait) without copying a super-packet's payload apart. The read goes
// into bufs[0] itself, its virtio-net header in front of offset, and the
// super-packet is cut where it lies: segment 0 keeps the super-packet's
// headers and its payload in bufs[0]; segment i > 0 gets a copy of the
// headers in bufs[i] and its payload as tails[i], a slice of bufs[0]. Each
// segment's headers are patched and its checksum computed as the tun
// package's split does (virtio_wg.go): only the copy of the payload goes.
// A UDP GSO send puts each segment's two pieces back together in the
// kernel (engine.GatherTransport), which copies every byte into its own
// buffers anyway. Like Read, it is called by one goroutine at a time.
func (d *Device) ReadSegments(bufs [][]byte, sizes []int, tails [][]byte, offset int, wait bool) (int, error) {
	if d.fd < 0 || d.rc == nil {
		if !wait {
			return 0, nil
		}
		n, err := d.Read(bufs, sizes, offset)
		clear(tails[:n])
		return n, err
	}
	into := bufs[0][offset:]
	if d.TSO {
		if offset < virtioNetHdrLen {
			return 0, fmt.Errorf("tunio: read offset %d leaves no room for the virtio-net header", offset)
		}
		into = bufs[0][offset-virtioNetHdrLen:]
	}
	var n int
	var err error
	if wait {
		n, err = d.readWait(into)
	} else {
		n, err = d.readNow(into)
		if err == nil && n < 0 {
			return 0, nil // nothing waiting
		}
	}
	if err != nil {
		return 0, err
	}
	if !d.TSO {
		sizes[0], tails[0] = n, nil
		return 1, nil
	}
	return splitInPlace(into[:n], bufs, sizes, tails, offset)
}

// readNow is one non-blocking read(2); -1 and no error when nothing is
// waiting.
func (d *Device) readNow(into []byte) (int, error) {
	for {
		n, err := unix.Read(d.fd, into)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return -1, nil
		case errors.Is(err, unix.EBADFD), errors.Is(err, unix.EBADF):
			return 0, os.ErrClosed
		case err != nil:
			return 0, fmt.Errorf("tunio: read %s: %w", d.Name, err)
		}
		return n, nil
	}
}

// readWait reads, parking in the netpoller until a packet is there, as the
// tun package's Read does (the descriptor is non-blocking).
func (d *Device) readWait(into []byte) (int, error) {
	d.wr.into = into
	err := d.rc.Read(d.wr.fn)
	d.wr.into = nil
	if err != nil {
		// The file is closed (or closing): the raw connection says so
		// without os.ErrClosed.
		return 0, fmt.Errorf("tunio: read %s: %w (%v)", d.Name, os.ErrClosed, err)
	}
	return d.wr.n, d.wr.err
}

// waitRead is readWait's state: fn is bound once, since a method value
// made per call would allocate.
type waitRead struct {
	into []byte
	n    int
	err  error
	fn   func(fd uintptr) bool
}

func (d *Device) initWaitRead() {
	d.wr.fn = func(uintptr) bool {
		n, err := d.readNow(d.wr.into)
		if err == nil && n < 0 {
			return false // wait for the descriptor to become readable
		}
		d.wr.n, d.wr.err = n, err
		return true
	}
}

// splitInPlace turns what read(2) returned (virtio-net header, packet)
// into segments, in place: see ReadSegments. in must be bufs[0][offset-10:]
// up to the read's end.
func splitInPlace(in []byte, bufs [][]byte, sizes []int, tails [][]byte, offset int) (int, error) {
	hdr, pkt, err := wgParseVirtio(in, len(bufs[0])-offset)
	if err != nil {
		return 0, err
	}
	if hdr.gsoType == unix.VIRTIO_NET_HDR_GSO_NONE {
		sizes[0], tails[0] = len(pkt), nil
		return 1, nil
	}
	hl, cs, gso := int(hdr.hdrLen), int(hdr.csumStart), int(hdr.gsoSize)
	n := (len(pkt) - hl + gso - 1) / gso
	if n > len(bufs) {
		return 0, tun.ErrTooManySegments
	}
	isV6 := pkt[0]>>4 == 6
	srcAt, addrLen := wgIPv4SrcAddrOffset, 4
	if isV6 {
		srcAt, addrLen = wgIPv6SrcAddrOffset, 16
	} else {
		pkt[10], pkt[11] = 0, 0 // the IPv4 header checksum, recomputed per segment
	}
	csAt := cs + int(hdr.csumOffset)
	pkt[csAt], pkt[csAt+1] = 0, 0
	tcp := hdr.gsoType != unix.VIRTIO_NET_HDR_GSO_UDP_L4
	proto := uint8(unix.IPPROTO_UDP)
	if tcp {
		proto = unix.IPPROTO_TCP
	}
	seq := binary.BigEndian.Uint32(pkt[cs+4:])
	src, dst := pkt[srcAt:srcAt+addrLen], pkt[srcAt+addrLen:srcAt+2*addrLen]
	// Segment 0's headers are the template the others copy: patch it last.
	for i := n - 1; i >= 0; i-- {
		start := hl + i*gso
		end := min(start+gso, len(pkt))
		payload := pkt[start:end]
		h := pkt[:hl]
		if i > 0 {
			h = bufs[i][offset : offset+hl]
			copy(h, pkt[:hl])
		}
		total := hl + len(payload)
		if isV6 {
			// (The tun package writes total-cs, wrong after extension headers.)
			binary.BigEndian.PutUint16(h[4:], uint16(total-40))
		} else {
			binary.BigEndian.PutUint16(h[4:], binary.BigEndian.Uint16(h[4:])+uint16(i))
			binary.BigEndian.PutUint16(h[2:], uint16(total))
			binary.BigEndian.PutUint16(h[10:], ^wgChecksum(h[:cs], 0))
		}
		if tcp {
			binary.BigEndian.PutUint32(h[cs+4:], seq+uint32(i*gso))
			if end != len(pkt) {
				h[cs+wgTCPFlagsOffset] &^= wgTCPFlagFIN | wgTCPFlagPSH // only on the last segment
			}
		} else {
			binary.BigEndian.PutUint16(h[cs+4:], uint16(total-cs))
		}
		// The transport header is even in length (TCP: a multiple of 4,
		// UDP: 8), so the payload's sum goes on from the header's.
		sum := wgPseudoHeaderChecksumNoFold(proto, src, dst, uint16(total-cs))
		sum = wgChecksumNoFold(h[cs:hl], sum)
		binary.BigEndian.PutUint16(h[csAt:], ^wgChecksum(payload, sum))
		if i == 0 {
			sizes[0], tails[0] = total, nil // contiguous where it was read
		} else {
			sizes[i], tails[i] = hl, payload
		}
	}
	return n, nil
}
