package tunio

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// FuzzVirtioRead feeds wgHandleVirtioRead (ReadMore's parser, copied from
// the tun package) what a TUN read could return: a virtio-net header from
// the kernel and a packet whose bytes a pod chose. It must never panic or
// write past the buffers, whatever either says.
func FuzzVirtioRead(f *testing.F) {
	hdr := func(flags, gsoType uint8, hdrLen, gsoSize, csumStart, csumOffset uint16, pkt []byte) []byte {
		b := make([]byte, virtioNetHdrLen, virtioNetHdrLen+len(pkt))
		b[0], b[1] = flags, gsoType
		binary.NativeEndian.PutUint16(b[2:], hdrLen)
		binary.NativeEndian.PutUint16(b[4:], gsoSize)
		binary.NativeEndian.PutUint16(b[6:], csumStart)
		binary.NativeEndian.PutUint16(b[8:], csumOffset)
		return append(b, pkt...)
	}
	udp := udpTo(netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:2"), make([]byte, 3000))[off:]
	f.Add(hdr(0, 0, 0, 0, 0, 0, udp))
	f.Add(hdr(1, 0, 0, 0, 20, 6, udp))
	f.Add(hdr(1, 5, 28, 1000, 20, 6, udp))  // UDP_L4
	f.Add(hdr(1, 1, 40, 1000, 20, 16, udp)) // TCPV4 over a UDP packet
	f.Add(hdr(1, 5, 28, 0, 20, 6, udp))
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = make([]byte, off+2048)
	}
	sizes := make([]int, len(bufs))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > virtioNetHdrLen+65535 {
			return
		}
		n, err := wgHandleVirtioRead(in, bufs, sizes, off)
		if err == nil && (n < 0 || n > len(bufs)) {
			t.Fatalf("%d packets", n)
		}
		for i := 0; err == nil && i < n; i++ {
			if sizes[i] < 0 || sizes[i] > len(bufs[i])-off {
				t.Fatalf("packet %d: size %d", i, sizes[i])
			}
		}
	})
}
