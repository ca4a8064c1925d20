package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/traffic"
)

// TestUserspaceVXLANQueues runs userspace VXLAN with --queues 2 (issue 18
// goal 5) beside a kernel vxlan host and a single-queue userspace one:
// flannel.1 is a multi-queue TUN, traffic crosses every pair, many UDP
// flows from both peers echo intact, and both queues of h2 carry flows in
// both directions: the peers' per-flow source ports spread their frames
// over h2's SO_REUSEPORT group. h2 still answers a kernel peer's ARP.
func TestUserspaceVXLANQueues(t *testing.T) {
	k := newKCluster(t, 3, `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}`, nil)
	l := k.Lab
	k.start(nil, 1)
	k.start([]string{"--no-kernel-vxlan", "--queues", "2"}, 2)
	k.start([]string{"--no-kernel-vxlan", "--queues", "1"}, 3)
	for i, want := range map[int]bool{2: true, 3: false} {
		if mq := tunMultiQueue(t, l.Host(i).Name, "flannel.1"); mq != want {
			t.Errorf("h%d flannel.1: multi_queue %v, want %v", i, mq, want)
		}
	}
	for _, i := range []int{2, 3} {
		k.eventually(fmt.Sprintf("h%d knows both peers", i), 10*time.Second, func() (bool, string) {
			s := k.uvxlanStats(i)
			return len(s.Peers) == 2, fmt.Sprint(s.Peers)
		})
	}
	if ports := k.uvxlanStats(2).Transport.SourcePorts; len(ports) != 2*8 {
		t.Errorf("h2 sends from %d source ports (%v), want 8 per queue", len(ports), ports)
	}
	for a := 1; a <= 3; a++ {
		for b := 1; b <= 3; b++ {
			if a != b {
				k.ping(a, b)
			}
		}
	}

	// Four streams each way between h2 and each peer, every byte verified.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, c := range [][2]int{{1, 2}, {2, 1}, {3, 2}, {2, 3}} {
		srv, err := l.Start(l.Host(c[1]).Pod, fmt.Sprintf("traffic-h%d", c[1]), k.Binary, "traffic", "server")
		if err != nil {
			t.Fatal(err)
		}
		const n = 32 << 20
		var out []byte
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			out, err = l.ExecContext(ctx, l.Host(c[0]).Pod, k.Binary, "traffic", "tcp", "--to", l.Host(c[1]).PodIP.String(),
				"--streams", "4", "--bytes", fmt.Sprint(n), "--verify", "sha256")
			if err == nil || time.Now().After(deadline) {
				break // else the server may still be starting
			}
		}
		srv.Stop()
		var res traffic.Result
		if err != nil || json.Unmarshal(out, &res) != nil || res.Bytes != n {
			t.Fatalf("tcp h%d -> h%d, 4 streams: %v, server verified %d of %d bytes\n%s", c[0], c[1], err, res.Bytes, n, out)
		}
	}

	// Many UDP flows into h2 from the kernel peer and the userspace one:
	// each udp-check is a socket, so a flow, of its own.
	echo, err := l.Start(l.Host(2).Pod, "udp-echo", "env", "WEFT_TEST_HELPER=udp-echo", helperBin, "0.0.0.0:7001")
	if err != nil {
		t.Fatal(err)
	}
	for _, from := range []int{1, 3} {
		for f := range 16 {
			out, err := l.ExecContext(ctx, l.Host(from).Pod, "env", "WEFT_TEST_HELPER=udp-check", helperBin,
				l.Host(2).PodIP.String()+":7001", "18", "1000", "1400")
			if err != nil {
				t.Fatalf("flow %d from h%d: %v\n%s", f, from, err, out)
			}
		}
	}
	echo.Stop()

	s := k.uvxlanStats(2)
	if len(s.Engine.Queues) != 2 {
		t.Fatalf("h2: %d queues in stats, want 2", len(s.Engine.Queues))
	}
	var tx, rx uint64
	for q, qs := range s.Engine.Queues {
		tx += qs.TxPackets
		rx += qs.RxPackets
		if qs.TxPackets == 0 || qs.RxPackets == 0 {
			t.Errorf("h2: queue %d did not carry flows both ways: %+v", q, s.Engine.Queues)
		}
	}
	if tx != s.Engine.TxPackets || rx != s.Engine.RxPackets {
		t.Errorf("h2: queues sum to tx %d rx %d; engine tx %d rx %d", tx, rx, s.Engine.TxPackets, s.Engine.RxPackets)
	}
	if got := s.Transport.Receive.RecvSegments; got < rx {
		t.Errorf("h2: the group's sockets received %d packets, fewer than the %d the queues forwarded", got, rx)
	}
	t.Logf("h2 (--queues 2): per queue %+v", s.Engine.Queues)

	// The kernel peer's neighbour entry for h2's gateway made stale: its
	// unicast ARP probe reaches whichever of h2's sockets its source port
	// hashes to, and the reply goes out through the first queue's.
	gw2 := k.Envs[1].Subnet.Addr().String()
	mac2 := s.MAC
	arpBefore := s.Encap.ARPReplies
	k.sh(1, "ip", "neigh", "replace", gw2, "dev", "flannel.1", "lladdr", mac2, "nud", "stale")
	k.ping(1, 2)
	k.eventually("h2 answers h1's kernel's ARP", 15*time.Second, func() (bool, string) {
		n := k.sh(1, "ip", "neigh", "show", gw2, "dev", "flannel.1")
		return k.uvxlanStats(2).Encap.ARPReplies > arpBefore && strings.Contains(n, "REACHABLE"), n
	})
	k.stop(1, 2, 3)
}
