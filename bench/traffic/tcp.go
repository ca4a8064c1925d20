package traffic

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// The stream is a pseudo-random block of patternPeriod bytes repeated; the
// period is not a power of two, so a lost, duplicated or reordered segment
// shifts the stream against it and shows up at once. Checking costs a
// memcmp, cheap enough to run at tens of Gbit/s on the receiving side.
const (
	patternPeriod = 1<<20 + 4099
	chunk         = 128 << 10
)

// Verify modes.
const (
	VerifyStream = "stream" // compare every byte with the expected stream
	VerifySHA256 = "sha256" // also hash both ends and compare
	VerifyNone   = "none"   // count only
)

// pattern returns the expected stream for seed, with chunk extra bytes so
// any chunk starting inside the period is one contiguous slice.
func pattern(seed uint64) []byte {
	p := make([]byte, patternPeriod+chunk)
	r := rand.NewChaCha8([32]byte{0: byte(seed), 1: byte(seed >> 8), 2: byte(seed >> 16), 3: byte(seed >> 24),
		4: byte(seed >> 32), 5: byte(seed >> 40), 6: byte(seed >> 48), 7: byte(seed >> 56)})
	r.Read(p[:patternPeriod])
	copy(p[patternPeriod:], p[:chunk])
	return p
}

// bulkResult is the server's reply when a stream ends.
type bulkResult struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256,omitempty"`
	Error  string `json:"error,omitempty"`
}

func receiveBulk(r io.Reader, h hello) bulkResult {
	var res bulkResult
	var pat []byte
	var sum hash.Hash
	switch h.Verify {
	case VerifyNone:
	case VerifySHA256:
		sum = sha256.New()
		fallthrough
	case VerifyStream, "":
		pat = pattern(h.Seed)
	default:
		return bulkResult{Error: "unknown verify mode " + h.Verify}
	}
	buf := make([]byte, chunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			b := buf[:n]
			if pat != nil && res.Error == "" {
				off := int(res.Bytes % patternPeriod)
				if !bytes.Equal(b, pat[off:off+n]) {
					i := 0
					for i < n && b[i] == pat[off+i] {
						i++
					}
					res.Error = fmt.Sprintf("stream mismatch at byte %d", res.Bytes+int64(i))
				}
			}
			if sum != nil {
				sum.Write(b)
			}
			res.Bytes += int64(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			res.Error = "read: " + err.Error()
			break
		}
	}
	if sum != nil {
		res.SHA256 = hex.EncodeToString(sum.Sum(nil))
	}
	return res
}

// countTimeout bounds the wait for the server's count once a stream has
// sent its last byte.
const countTimeout = 60 * time.Second

// TCPOptions configure RunTCP.
type TCPOptions struct {
	Addr    string // server host:port
	Streams int    // default 1
	// Bytes is the total to send, split over the streams; if 0, the streams
	// send for Duration.
	Bytes    int64
	Duration time.Duration
	Verify   string // VerifyStream (default), VerifySHA256 or VerifyNone
	Seed     uint64 // first stream's seed; stream i uses Seed+i
}

// RunTCP runs a bulk transfer and returns its result. Throughput counts the
// bytes the server received and verified, over the time from the first
// connection until every server has confirmed its last byte. Any mismatch
// is an error.
func RunTCP(ctx context.Context, o TCPOptions) (*Result, error) {
	if o.Streams == 0 {
		o.Streams = 1
	}
	if o.Verify == "" {
		o.Verify = VerifyStream
	}
	switch {
	case o.Streams < 1 || o.Streams > 256:
		return nil, fmt.Errorf("traffic: streams = %d, want 1..256", o.Streams)
	case o.Bytes < 0 || (o.Bytes == 0 && o.Duration <= 0):
		return nil, errors.New("traffic: give a byte count or a duration")
	case o.Verify != VerifyStream && o.Verify != VerifySHA256 && o.Verify != VerifyNone:
		return nil, fmt.Errorf("traffic: verify = %q, want stream, sha256 or none", o.Verify)
	}
	if o.Seed == 0 {
		o.Seed = rand.Uint64()
	}
	type streamOut struct {
		sent int64
		res  bulkResult
		sum  string
		err  error
	}
	outs := make([]streamOut, o.Streams)
	conns := make([]*net.TCPConn, o.Streams)
	readers := make([]*bufio.Reader, o.Streams)
	for i := range conns {
		c, r, err := dial(ctx, o.Addr, hello{Mode: "tcp", Seed: o.Seed + uint64(i), Verify: o.Verify})
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return nil, err
		}
		conns[i], readers[i] = c, r
	}
	start := time.Now()
	var deadline time.Time
	if o.Bytes == 0 {
		deadline = start.Add(o.Duration)
	}
	var wg sync.WaitGroup
	for i, c := range conns {
		quota := o.Bytes / int64(o.Streams)
		if i < int(o.Bytes%int64(o.Streams)) {
			quota++
		}
		wg.Go(func() {
			defer c.Close()
			stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
			defer stop()
			out := &outs[i]
			out.sent, out.sum, out.err = sendBulk(c, o.Seed+uint64(i), quota, deadline, o.Verify == VerifySHA256)
			if out.err != nil {
				return
			}
			if err := c.CloseWrite(); err != nil {
				out.err = err
				return
			}
			// Bounded: a path that broke mid-transfer must fail the run,
			// not hang it (the server answers as soon as it has read the
			// last byte the network delivers).
			c.SetReadDeadline(time.Now().Add(countTimeout))
			line, err := readers[i].ReadBytes('\n')
			if err != nil {
				out.err = fmt.Errorf("waiting for the server's count: %w", err)
				return
			}
			out.err = json.Unmarshal(line, &out.res)
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res := &Result{Mode: "tcp", Target: o.Addr, Streams: o.Streams, Verify: o.Verify, Seconds: elapsed.Seconds()}
	for i, out := range outs {
		switch {
		case out.err != nil:
			return nil, fmt.Errorf("traffic: stream %d: %w", i, out.err)
		case out.res.Error != "":
			return nil, fmt.Errorf("traffic: stream %d: server: %s", i, out.res.Error)
		case out.res.Bytes != out.sent:
			return nil, fmt.Errorf("traffic: stream %d: sent %d bytes, server received %d", i, out.sent, out.res.Bytes)
		case o.Verify == VerifySHA256 && out.res.SHA256 != out.sum:
			return nil, fmt.Errorf("traffic: stream %d: SHA-256 differs: sent %s, received %s", i, out.sum, out.res.SHA256)
		}
		res.Bytes += out.res.Bytes
		res.StreamBytes = append(res.StreamBytes, out.res.Bytes)
	}
	res.BitsPerSecond = float64(res.Bytes) * 8 / elapsed.Seconds()
	return res, nil
}

// sendBulk writes the stream for seed until quota bytes are sent or, with
// quota 0, until deadline.
func sendBulk(c *net.TCPConn, seed uint64, quota int64, deadline time.Time, hashIt bool) (int64, string, error) {
	pat := pattern(seed)
	var sum hash.Hash
	if hashIt {
		sum = sha256.New()
	}
	if !deadline.IsZero() {
		c.SetWriteDeadline(deadline)
	}
	var sent int64
	for quota == 0 || sent < quota {
		n := chunk
		if quota > 0 && quota-sent < int64(n) {
			n = int(quota - sent)
		}
		off := int(sent % patternPeriod)
		w, err := c.Write(pat[off : off+n])
		if sum != nil {
			sum.Write(pat[off : off+w])
		}
		sent += int64(w)
		if err != nil {
			var ne net.Error
			if !deadline.IsZero() && errors.As(err, &ne) && ne.Timeout() && time.Now().After(deadline) {
				break
			}
			return sent, "", err
		}
	}
	c.SetWriteDeadline(time.Time{})
	var hexSum string
	if sum != nil {
		hexSum = hex.EncodeToString(sum.Sum(nil))
	}
	return sent, hexSum, nil
}
