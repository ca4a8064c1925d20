package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/engine"
)

// udpIn opens a UDP socket inside namespace ns, bound to local.
func udpIn(t *testing.T, ns string, local string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := lab.InNamespace(ns, func() error {
		a, err := net.ResolveUDPAddr("udp4", local)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp4", a)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// innerPacket is a well-formed IPv4/UDP packet of size bytes in all.
func innerPacket(t *testing.T, src, dst netip.Addr, size int) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	u := &layers.UDP{SrcPort: 9, DstPort: 9}
	u.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	payload := make([]byte, size-28)
	copy(payload, "hostile")
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, u, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestHostileInput: a storm of malformed and spoofed datagrams at h1's
// UDP port, mixed with real traffic both ways: none of it reaches h1's
// pod, every datagram is counted under its reason, and the real traffic
// (pings both ways, a verified TCP stream) goes on untouched.
func TestHostileInput(t *testing.T) {
	f := newFLab(t, 2, udpNetconf)
	f.start(1)
	f.start(2)
	h1, h2 := f.Lab.Host(1), f.Lab.Host(2)
	if _, err := harness.WaitPath(context.Background(), h1.Pod, h2.PodIP, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	// A listener on the port every hostile inner packet is sent to.
	pod := udpIn(t, h1.Pod, "0.0.0.0:9")
	var reached atomic.Int64
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := pod.ReadFrom(buf); err != nil {
				return
			}
			reached.Add(1)
		}
	}()
	// The peer's own port (8285, as its flannel daemon sends from), and
	// another process on the peer host.
	fromPeer := rawUDPIn(t, h2.Name, 8285)
	fromPeerProcess := udpIn(t, h2.Name, h2.IP.String()+":0")
	fromStranger := udpIn(t, f.Lab.Switch, lab.SwitchIP.String()+":0")
	target := &net.UDPAddr{IP: h1.IP.AsSlice(), Port: 8285}

	valid := innerPacket(t, h2.PodIP, h1.PodIP, 100)
	badLen := append([]byte(nil), valid...)
	binary.BigEndian.PutUint16(badLen[2:4], 1000) // says 1000, carries 100
	badVer := append([]byte(nil), valid...)
	badVer[0] = 0x55 // version 5: neither IPv4 nor IPv6
	badIHL := append([]byte(nil), valid...)
	badIHL[0] = 0x43
	storm := []struct {
		reason engine.DropReason
		conn   udpSender
		dgram  []byte
	}{
		{engine.DropShort, fromPeer, valid[:10]},
		{engine.DropBadVersion, fromPeer, badVer},
		{engine.DropBadHeaderLen, fromPeer, badIHL},
		{engine.DropBadLength, fromPeer, badLen},
		{engine.DropSpoofedSource, fromPeer, innerPacket(t, netip.MustParseAddr("10.8.251.9"), h1.PodIP, 100)},
		{engine.DropNotLocal, fromPeer, innerPacket(t, h2.PodIP, netip.MustParseAddr("10.8.252.1"), 100)},
		{engine.DropOversize, fromPeer, innerPacket(t, h2.PodIP, h1.PodIP, f.Envs[0].MTU+8)},
		{engine.DropUnknownPeer, fromStranger, valid},
		{engine.DropWrongSourcePort, fromPeerProcess, valid},
	}
	n := int(soakDuration(1000, 50000)) // of each kind

	before := f.mustStats(1).Engine.DropsByReason
	rcvbuf0, _ := kernelDrops(f.Lab, h1.Name)
	pings := []*pinger{startPinger(h1.Pod, h2.PodIP.String(), 20*time.Millisecond), startPinger(h2.Pod, h1.PodIP.String(), 20*time.Millisecond)}
	srv, err := f.Lab.Start(h1.Pod, "traffic-server", f.Binary, "traffic", "server")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	var wg sync.WaitGroup
	var tcpRes *harnessResult
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		r, err := f.Traffic(ctx, h2.Pod, "tcp", "--to", h1.PodIP.String(), "--bytes", fmt.Sprint(256<<20), "--verify", "sha256")
		tcpRes = &harnessResult{err: err}
		if r != nil {
			tcpRes.bytes = r.Bytes
		}
	}()
	// Bursts of 16 of each kind in turn, paced so the storm is counted
	// by the engine rather than lost in the kernel's socket buffer on a
	// busy CI machine.
	start := time.Now()
	for sent := 0; sent < n; sent += 16 {
		for _, s := range storm {
			for range min(16, n-sent) {
				if _, err := s.conn.WriteToUDP(s.dgram, target); err != nil {
					t.Fatalf("storm: %v", err)
				}
			}
		}
		time.Sleep(time.Millisecond)
	}
	stormTime := time.Since(start)
	wg.Wait()
	var sent, lost int64
	for _, p := range pings {
		s, l := p.Stop()
		sent, lost = sent+s, lost+l
	}

	var after map[string]uint64
	var diff []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		after = f.mustStats(1).Engine.DropsByReason
		diff = nil
		for _, s := range storm {
			if d := after[s.reason.String()] - before[s.reason.String()]; d != uint64(n) {
				diff = append(diff, fmt.Sprintf("%s: %d counted, %d sent", s.reason, d, n))
			}
		}
		if len(diff) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(diff) > 0 {
		rcvbuf, _ := kernelDrops(f.Lab, h1.Name)
		t.Errorf("hostile datagrams not each counted under its reason (kernel UDP rcvbuf drops meanwhile: %d):\n%s", rcvbuf-rcvbuf0, strings.Join(diff, "\n"))
	}
	if r := reached.Load(); r != 0 {
		t.Errorf("%d hostile datagrams reached h1's pod", r)
	}
	if tcpRes == nil || tcpRes.err != nil || tcpRes.bytes != 256<<20 {
		t.Errorf("verified TCP stream through the storm: %+v", tcpRes)
	}
	if lost != 0 {
		t.Errorf("%d of %d pings lost during the storm", lost, sent)
	}
	figure(t, "%d hostile datagrams (%d each of %d kinds) in %s beside real traffic: each counted under its reason, 0 reached the pod, %d pings 0 lost, 256 MiB TCP verified",
		n*len(storm), n, len(storm), stormTime.Round(time.Millisecond), sent)
	f.stopAndClean()
}

type harnessResult struct {
	bytes int64
	err   error
}
