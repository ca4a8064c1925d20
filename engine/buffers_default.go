//go:build !linux

package engine

// NewBuffers returns n packet buffers of BufferSize bytes.
func NewBuffers(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, BufferSize)
	}
	return out
}
