package engine

import "golang.org/x/sys/unix"

// NewBuffers returns n packet buffers of BufferSize bytes, mapped outside
// the Go heap. Packet buffers hold no pointers, and keeping them out of
// the heap keeps them out of the garbage collector's pacing: with GOGC=100
// the heap may grow by as much as is live before a collection, and the
// udp backend's three batches of 128 buffers (24 MiB, mostly never
// touched) let a host handling lease churn grow its RSS by about that
// much in garbage. Like fresh heap memory, the mapping is zeroed and
// costs RAM only where written. It is never unmapped: a buffer handed to
// the tun package may be kept by it (its Write may swap buffers), so the
// buffers live as long as the process. On failure it falls back to the
// heap.
func NewBuffers(n int) [][]byte {
	out := make([][]byte, n)
	if n == 0 {
		return out
	}
	mem, err := unix.Mmap(-1, 0, n*BufferSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		for i := range out {
			out[i] = make([]byte, BufferSize)
		}
		return out
	}
	for i := range out {
		out[i] = mem[i*BufferSize : (i+1)*BufferSize : (i+1)*BufferSize]
	}
	return out
}
