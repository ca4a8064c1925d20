package engine_test

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/engine/enginetest"
)

// packet6 builds an IPv6 packet with no upper-layer header (next header
// 59) and n payload bytes: the engine does not look past the fixed header.
func packet6(src, dst string, hops uint8, n int) []byte {
	p := make([]byte, 40+n)
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(n))
	p[6], p[7] = 59, hops
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(p[8:24], s[:])
	copy(p[24:40], d[:])
	return p
}

func packet4(src, dst string, ttl uint8) []byte {
	p := make([]byte, 28)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], 28)
	p[8], p[9] = ttl, 17
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	return p
}

// TestForwardIPv6BothWays runs two dual-stack engines over the fake
// network: IPv6 packets cross both ways with the hop limit lowered on each
// side (flannel's UDP format), IPv4 packets still cross, and a packet to
// no peer comes back into the TUN as an ICMPv6 error.
func TestForwardIPv6BothWays(t *testing.T) {
	nw := enginetest.NewNetwork()
	type host struct {
		dev *enginetest.Device
		e   *engine.Engine
	}
	hosts := map[int]*host{}
	n := engine.Networks{
		Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24,
		Network6: netip.MustParsePrefix("fd00:10:5::/56"), SubnetLen6: 64,
	}
	peers := []engine.PeerSpec{
		{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Subnet6: netip.MustParsePrefix("fd00:10:5:1::/64"), Endpoint: netip.MustParseAddrPort("192.0.2.1:8285")},
		{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Subnet6: netip.MustParsePrefix("fd00:10:5:2::/64"), Endpoint: netip.MustParseAddrPort("192.0.2.2:8285")},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 2)
	for i, p := range peers {
		dev := enginetest.NewDevice()
		e, err := engine.New(dev, nw.Listen(p.Endpoint), engine.Config{
			MTU: 1472, AntiSpoof: true, CheckSourcePort: true,
			ICMPSource: p.Subnet.Addr(), ICMPSource6: p.Subnet6.Addr().Next(),
		})
		if err != nil {
			t.Fatal(err)
		}
		own := n
		own.Own, own.Own6 = p.Subnet, p.Subnet6
		tab, err := engine.NewTableFor(own, peers, nil)
		if err != nil {
			t.Fatal(err)
		}
		e.SetTable(tab)
		hosts[i+1] = &host{dev, e}
		go func() { done <- e.Run(ctx) }()
	}
	recv := func(h *host) []byte {
		t.Helper()
		select {
		case p := <-h.dev.Written:
			return p
		case <-time.After(5 * time.Second):
			t.Fatal("nothing written into the TUN")
			return nil
		}
	}
	hosts[1].dev.Inject(packet6("fd00:10:5:1::2", "fd00:10:5:2::3", 64, 100))
	if p := recv(hosts[2]); len(p) != 140 || p[7] != 62 || netip.AddrFrom16([16]byte(p[24:40])).String() != "fd00:10:5:2::3" {
		t.Fatalf("h2 got % x, want the packet with hop limit 62", p[:40])
	}
	hosts[2].dev.Inject(packet6("fd00:10:5:2::3", "fd00:10:5:1::2", 64, 0))
	if p := recv(hosts[1]); len(p) != 40 || p[7] != 62 {
		t.Fatalf("h1 got % x, want the reply with hop limit 62", p)
	}
	hosts[1].dev.Inject(packet4("10.5.1.2", "10.5.2.3", 64))
	if p := recv(hosts[2]); len(p) != 28 || p[8] != 62 {
		t.Fatalf("h2 got % x, want the IPv4 packet with TTL 62", p)
	}
	hosts[1].dev.Inject(packet6("fd00:10:5:1::2", "fd00:10:5:7::1", 64, 10))
	if p := recv(hosts[1]); len(p) != 40+8+50 || p[6] != 58 || p[40] != 1 || p[41] != 0 {
		t.Fatalf("h1 got % x, want an ICMPv6 destination unreachable", p)
	}
	// Spoofed: h2 sends from h1's IPv6 subnet; h1 drops it.
	if err := nw.Send(peers[1].Endpoint, peers[0].Endpoint, packet6("fd00:10:5:1::9", "fd00:10:5:1::2", 64, 0)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for hosts[1].e.Stats().Drops[engine.DropSpoofedSource] != 1 {
		if time.Now().After(deadline) {
			s := hosts[1].e.Stats()
			t.Fatalf("h1 drops %v, want one spoofed-source", s.DropsByName())
		}
		time.Sleep(time.Millisecond)
	}
	var tx, rx uint64
	for _, p := range hosts[1].e.Table().Peers() {
		s := p.Stats()
		if s.Subnet6.String() != "fd00:10:5:2::/64" {
			t.Errorf("peer stats name %v", s.Subnet6)
		}
		tx, rx = tx+s.TxPackets, rx+s.RxPackets
	}
	if tx != 2 || rx != 1 {
		t.Errorf("h1's peer counters: tx %d rx %d, want 2 and 1 (IPv6 and IPv4 together)", tx, rx)
	}
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
