package lab

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// PingResult is the outcome of Ping.
type PingResult struct {
	Sent     int
	Received int
	RTTs     []time.Duration // one per reply, in order
}

// Median returns the median RTT, or 0 with no replies.
func (r PingResult) Median() time.Duration { return r.Quantile(0.5) }

// Quantile returns the q-quantile (0..1) of the RTTs (nearest rank).
func (r PingResult) Quantile(q float64) time.Duration {
	if len(r.RTTs) == 0 {
		return 0
	}
	s := slices.Clone(r.RTTs)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Ping sends count ICMP echo requests from namespace ns to dst, one every
// interval, each waiting at most timeout for its reply, and returns what
// came back; dst may be IPv4 or IPv6. It needs no ping binary: the raw ICMP socket is opened inside
// the namespace and used from here. The error is non-nil if no reply came.
func Ping(ctx context.Context, ns string, dst netip.Addr, count int, interval, timeout time.Duration) (PingResult, error) {
	var res PingResult
	network, listen, proto := "ip4:icmp", "0.0.0.0", 1
	var echo, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	switch {
	case dst.Is6() && !dst.Is4In6():
		network, listen, proto = "ip6:ipv6-icmp", "::", 58
		echo, reply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	case !dst.Is4():
		return res, fmt.Errorf("lab: Ping: %s is neither IPv4 nor IPv6", dst)
	}
	var conn *icmp.PacketConn
	err := InNamespace(ns, func() error {
		var err error
		conn, err = icmp.ListenPacket(network, listen)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("lab: Ping from %s: %w", ns, err)
	}
	defer conn.Close()
	// Another Ping in the same namespace sees our replies too (raw
	// sockets get every ICMP packet); the random id keeps them apart.
	id := rand.IntN(0xffff) + 1
	to := &net.IPAddr{IP: dst.AsSlice()}
	buf := make([]byte, 1500)
	for seq := 1; seq <= count; seq++ {
		if seq > 1 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(interval):
			}
		}
		// The kernel fills in the ICMPv6 checksum (it needs the
		// pseudo-header); Marshal without one leaves it zero.
		msg := icmp.Message{Type: echo, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("weft-lab-ping")}}
		b, _ := msg.Marshal(nil)
		sent := time.Now()
		if _, err := conn.WriteTo(b, to); err != nil {
			return res, fmt.Errorf("lab: Ping %s from %s: %w", dst, ns, err)
		}
		res.Sent++
		deadline := sent.Add(timeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = conn.SetReadDeadline(deadline)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return res, fmt.Errorf("lab: Ping %s from %s: %w", dst, ns, err)
			}
			if a, ok := from.(*net.IPAddr); !ok || !a.IP.Equal(to.IP) {
				continue
			}
			m, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || m.Type != reply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq {
				res.Received++
				res.RTTs = append(res.RTTs, time.Since(sent))
				break
			}
		}
	}
	if res.Received == 0 {
		return res, fmt.Errorf("lab: Ping %s from %s: no reply to %d echo requests", dst, ns, res.Sent)
	}
	return res, nil
}
