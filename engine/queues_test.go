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

// udp4 is packet4 with UDP ports: a flow of its own per port pair.
func udp4(src, dst string, sport, dport uint16) []byte {
	p := packet4(src, dst, 64)
	binary.BigEndian.PutUint16(p[20:], sport)
	binary.BigEndian.PutUint16(p[22:], dport)
	binary.BigEndian.PutUint16(p[24:], 8)
	return p
}

// TestQueues runs a host of two queues against a host of one. Its peer
// sends to the cluster's port only, so one queue's socket receives
// everything (as SO_REUSEPORT does with flannel's fixed port); the rx loop
// still writes each flow into one TUN queue, both queues get flows, and
// what both tx loops send reaches the peer. Per-queue counters sum to the
// engine's.
func TestQueues(t *testing.T) {
	nw := enginetest.NewNetwork()
	n := engine.Networks{Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24}
	a, b := netip.MustParseAddrPort("192.0.2.1:8285"), netip.MustParseAddrPort("192.0.2.2:8285")
	peers := []engine.PeerSpec{
		{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Endpoint: a},
		{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Endpoint: b},
	}
	cfg := engine.Config{MTU: 1472, AntiSpoof: true}
	devA := []*enginetest.Device{enginetest.NewDevice(), enginetest.NewDevice()}
	// The fake network names sockets by address: the second queue's
	// socket sends from another port (CheckSourcePort is off).
	ea, err := engine.NewQueues([]engine.Queue{
		{Device: devA[0], Transport: nw.Listen(a)},
		{Device: devA[1], Transport: nw.Listen(netip.AddrPortFrom(a.Addr(), a.Port()+1))},
	}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	devB := enginetest.NewDevice()
	eb, err := engine.New(devB, nw.Listen(b), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range []*engine.Engine{ea, eb} {
		own := n
		own.Own = peers[i].Subnet
		tab, err := engine.NewTableFor(own, peers, nil)
		if err != nil {
			t.Fatal(err)
		}
		e.SetTable(tab)
	}
	if ea.Queues() != 2 {
		t.Fatalf("Queues() = %d", ea.Queues())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- ea.Run(ctx) }()
	go func() { done <- eb.Run(ctx) }()
	defer func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	}()

	// Peer to the two-queue host: 32 flows, 4 packets each.
	const flows, per = 32, 4
	for k := range per {
		for f := range flows {
			p := udp4("10.5.2.3", "10.5.1.4", uint16(1000+f), 5201)
			p[27] = byte(k)
			devB.Inject(p)
		}
	}
	queueOf := map[uint16]int{}
	got := [2]int{}
	for range flows * per {
		var p []byte
		q := 0
		select {
		case p = <-devA[0].Written:
		case p = <-devA[1].Written:
			q = 1
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d packets arrived", got[0]+got[1])
		}
		got[q]++
		sport := binary.BigEndian.Uint16(p[20:])
		if was, ok := queueOf[sport]; ok && was != q {
			t.Errorf("flow from port %d written into queues %d and %d", sport, was, q)
		}
		queueOf[sport] = q
	}
	if got[0] == 0 || got[1] == 0 {
		t.Errorf("flows by queue: %v; want both queues used", got)
	}

	// The two-queue host's tx loops, each from its own queue.
	for q := range 2 {
		for f := range 8 {
			devA[q].Inject(udp4("10.5.1.4", "10.5.2.3", 5201, uint16(2000+f)))
		}
	}
	for i := range 16 {
		select {
		case <-devB.Written:
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d packets reached the peer", i)
		}
	}
	s, qs := ea.Stats(), ea.QueueStats()
	var tx, rx uint64
	for _, q := range qs {
		tx += q.TxPackets
		rx += q.RxPackets
	}
	if tx != s.TxPackets || rx != s.RxPackets || qs[0].TxPackets != 8 || qs[1].TxPackets != 8 || qs[0].RxPackets != flows*per || qs[1].RxPackets != 0 {
		t.Errorf("queue stats %+v do not add up to tx %d, rx %d", qs, s.TxPackets, s.RxPackets)
	}
}

func TestNewQueuesRefuses(t *testing.T) {
	if _, err := engine.NewQueues(nil, engine.Config{}); err == nil {
		t.Error("no queues accepted")
	}
}
