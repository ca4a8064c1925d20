package traffic

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"golang.org/x/net/ipv4"
)

// UDPOptions configure RunUDP.
type UDPOptions struct {
	Addr     string        // server host:port (TCP control and UDP data)
	Size     int           // UDP payload bytes, >= 16; default 64
	Rate     int           // target packets/s; 0 sends flat out
	Duration time.Duration // default 5s
	// Drain is how long to wait after the last datagram before asking the
	// server for its count; default 200ms.
	Drain time.Duration
}

// sendBatch datagrams go out per sendmmsg, so the sender is not what
// limits a flat-out run.
const sendBatch = 64

// RunUDP sends datagrams to the server and reports how many arrived.
func RunUDP(ctx context.Context, o UDPOptions) (*Result, error) {
	if o.Size == 0 {
		o.Size = 64
	}
	if o.Duration == 0 {
		o.Duration = 5 * time.Second
	}
	if o.Drain == 0 {
		o.Drain = 200 * time.Millisecond
	}
	switch {
	case o.Size < udpHeaderLen || o.Size > 65507:
		return nil, fmt.Errorf("traffic: UDP payload size %d, want %d..65507", o.Size, udpHeaderLen)
	case o.Rate < 0:
		return nil, fmt.Errorf("traffic: rate %d packets/s, want >= 0", o.Rate)
	case o.Duration < 0:
		return nil, fmt.Errorf("traffic: duration %v", o.Duration)
	}
	session := rand.Uint32()
	ctl, r, err := dial(ctx, o.Addr, hello{Mode: "udp", Session: session})
	if err != nil {
		return nil, err
	}
	defer ctl.Close()
	stop := context.AfterFunc(ctx, func() { ctl.SetDeadline(time.Now()) })
	defer stop()
	var rep udpReport
	if line, err := r.ReadBytes('\n'); err != nil {
		return nil, fmt.Errorf("traffic: UDP session: %w", err)
	} else if err := json.Unmarshal(line, &rep); err != nil || rep.Error != "" {
		return nil, fmt.Errorf("traffic: UDP session refused: %v%s", err, rep.Error)
	}
	uc, err := net.Dial(Network("udp", hostOf(o.Addr)), o.Addr)
	if err != nil {
		return nil, fmt.Errorf("traffic: %w", err)
	}
	defer uc.Close()
	_ = uc.(*net.UDPConn).SetWriteBuffer(4 << 20)

	sent, sendErrs, skipped, elapsed, err := sendUDP(ctx, uc.(*net.UDPConn), session, o)
	if err != nil {
		return nil, err
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(o.Drain):
	}
	if err := writeJSON(ctl, map[string]int64{"sent": sent}); err != nil {
		return nil, fmt.Errorf("traffic: UDP session: %w", err)
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("traffic: waiting for the server's count: %w", err)
	}
	rep = udpReport{}
	if err := json.Unmarshal(line, &rep); err != nil || rep.Error != "" {
		return nil, fmt.Errorf("traffic: server count: %v%s", err, rep.Error)
	}
	res := &Result{Mode: "udp", Target: o.Addr, PayloadSize: o.Size, TargetRate: o.Rate, Seconds: elapsed.Seconds(),
		Sent: sent, SendErrors: sendErrs, PaceSkipped: skipped, Delivered: rep.Received, Reordered: rep.Reordered, Bytes: rep.Bytes}
	res.SentPPS = float64(sent) / elapsed.Seconds()
	res.DeliveredPPS = float64(rep.Received) / elapsed.Seconds()
	res.BitsPerSecond = float64(rep.Bytes) * 8 / elapsed.Seconds()
	loss := 0.0
	if sent > 0 {
		loss = max(0, 1-float64(rep.Received)/float64(sent))
	}
	res.Loss = &loss
	return res, nil
}

func sendUDP(ctx context.Context, uc *net.UDPConn, session uint32, o UDPOptions) (sent, errs, skipped int64, elapsed time.Duration, err error) {
	pc := ipv4.NewPacketConn(uc)
	msgs := make([]ipv4.Message, sendBatch)
	for i := range msgs {
		b := make([]byte, o.Size)
		binary.BigEndian.PutUint32(b, udpMagic)
		binary.BigEndian.PutUint32(b[4:], session)
		for j := udpHeaderLen; j < len(b); j++ {
			b[j] = byte(j)
		}
		msgs[i].Buffers = [][]byte{b}
	}
	start := time.Now()
	end := start.Add(o.Duration)
	var pace *pacer
	if o.Rate > 0 {
		pace = newPacer(o.Rate, start)
	}
	var seq uint64
	for {
		now := time.Now()
		if !now.Before(end) || ctx.Err() != nil {
			break
		}
		n := sendBatch
		if pace != nil {
			if n = pace.due(now, sendBatch); n == 0 {
				time.Sleep(min(pace.wait(now), end.Sub(now)))
				continue
			}
		}
		for i := range n {
			binary.BigEndian.PutUint64(msgs[i].Buffers[0][8:], seq+uint64(i))
		}
		w, werr := pc.WriteBatch(msgs[:n], 0)
		sent += int64(max(w, 0))
		if werr != nil {
			// ENOBUFS from a full queue, ECONNREFUSED from an ICMP
			// unreachable: the datagram is lost, count it and go on.
			errs++
			if w <= 0 {
				w = 1
			}
			var ne net.Error
			if errors.As(werr, &ne) && !ne.Timeout() && errs > 1e6 {
				return 0, 0, 0, 0, fmt.Errorf("traffic: UDP send: %w", werr)
			}
		}
		seq += uint64(w)
		if pace != nil {
			pace.took(w)
		}
	}
	if pace != nil {
		skipped = pace.skipped
	}
	return sent, errs, skipped, time.Since(start), nil
}
