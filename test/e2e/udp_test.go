package e2e

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
	"github.com/weft-net/weft/bench/traffic"
	"github.com/weft-net/weft/daemon"
)

// self is the weft binary under test (built by TestMain).
func self(t *testing.T) string {
	t.Helper()
	return weftBin
}

// waitFile waits for a file the daemon writes once it is ready.
func waitFile(t *testing.T, p *lab.Proc, path string) []byte {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil {
			return b
		}
		if p.Exited() {
			t.Fatalf("weft exited before writing %s:\n%s", path, p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not written within 30s:\n%s", path, p.Log())
	return nil
}

func weftStats(t *testing.T, l *lab.Lab, h *lab.Host, exe string) daemon.StatusReport {
	t.Helper()
	out, err := l.Exec(h.Name, exe, "stats", "--debug-socket", filepath.Join(h.Dir, "debug.sock"))
	if err != nil {
		t.Fatalf("weft stats on %s: %v\n%s", h.Name, err, out)
	}
	var u daemon.StatusReport
	if err := json.Unmarshal(out, &u); err != nil || u.Backend != "udp" || u.Engine == nil {
		t.Fatalf("weft stats: not a udp backend's stats (%v):\n%s", err, out)
	}
	return u
}

// tunTxQueueLen reads a link's transmit queue length in a namespace.
func tunTxQueueLen(t *testing.T, ns, link string) int {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-j", "link", "show", link).Output()
	if err != nil {
		t.Fatalf("ip -n %s link show %s: %v", ns, link, err)
	}
	var links []struct {
		TxQLen int `json:"txqlen"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j link show %s: %v\n%s", link, err, out)
	}
	return links[0].TxQLen
}

// TestUDPBackendStatic runs two engines with static peers in a namespace
// lab and checks what issue 2 promises a user: ping both ways, a large
// verified TCP transfer, UDP datagrams of every size up to the MTU intact,
// and spoofed datagrams dropped and counted instead of delivered.
func TestUDPBackendStatic(t *testing.T) {
	// h2 either runs the same way, or the way flanneld's proxy works (one
	// packet per system call, no offloads): the two must interoperate.
	for _, h2flags := range [][]string{nil, {"--batch-size", "1", "--no-tun-offload", "--no-udp-gso", "--no-udp-gro"}} {
		name := "batched-both"
		if h2flags != nil {
			name = "with-unbatched-peer"
		}
		t.Run(name, func(t *testing.T) { testUDPBackendStatic(t, h2flags) })
	}
}

func testUDPBackendStatic(t *testing.T, h2flags []string) {
	l := labtest.New(t, lab.Options{Hosts: 2})
	exe := self(t)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	subnets := []netip.Prefix{netip.MustParsePrefix("10.6.1.0/24"), netip.MustParsePrefix("10.6.2.0/24")}
	procs := make([]*lab.Proc, 2)
	for i, h := range l.Hosts {
		other := l.Hosts[1-i]
		args := []string{exe, "run",
			"--iface", h.Underlay,
			"--static-network", "10.6.0.0/16",
			"--static-subnet", subnets[i].String(),
			"--static-peer", fmt.Sprintf("%s=%s", subnets[1-i], other.IP),
			"--subnet-file", filepath.Join(h.Dir, "subnet.env"),
			"--debug-socket", filepath.Join(h.Dir, "debug.sock")}
		if i == 1 {
			args = append(args, h2flags...)
			args = append(args, "--tun-txqueuelen", "700")
		}
		p, err := l.Start(h.Name, "weft", args...)
		if err != nil {
			t.Fatal(err)
		}
		procs[i] = p
	}
	for i, h := range l.Hosts {
		env := string(waitFile(t, procs[i], filepath.Join(h.Dir, "subnet.env")))
		want := fmt.Sprintf("FLANNEL_NETWORK=10.6.0.0/16\nFLANNEL_SUBNET=%s/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n", subnets[i].Addr().Next())
		if env != want {
			t.Fatalf("%s subnet.env:\n%s\nwant:\n%s", h.Name, env, want)
		}
		if err := h.AttachPod(subnets[i]); err != nil {
			t.Fatal(err)
		}
		if err := h.SetPodMTU(1472); err != nil {
			t.Fatal(err)
		}
		// The default queue, and one given by the flag.
		if q, want := tunTxQueueLen(t, h.Name, "flannel0"), []int{5000, 700}[i]; q != want {
			t.Errorf("%s flannel0: txqueuelen %d, want %d", h.Name, q, want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("ping", func(t *testing.T) {
		for _, c := range [][2]*lab.Host{{h1, h2}, {h2, h1}} {
			res, err := lab.Ping(ctx, c[0].Pod, c[1].PodIP, 5, 50*time.Millisecond, 2*time.Second)
			if err != nil || res.Received != 5 {
				t.Errorf("ping %s -> %s: %d of 5 replies, %v", c[0].Pod, c[1].PodIP, res.Received, err)
			}
		}
	})

	srv, err := l.Start(h2.Pod, "traffic-server", exe, "traffic", "server")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()

	t.Run("tcp-200MB-verified", func(t *testing.T) {
		const n = 200 << 20
		out, err := l.ExecContext(ctx, h1.Pod, exe, "traffic", "tcp", "--to", h2.PodIP.String(), "--bytes", fmt.Sprint(n), "--verify", "sha256")
		if err != nil {
			t.Fatalf("transfer failed: %v\n%s", err, out)
		}
		var res traffic.Result
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if res.Bytes != n {
			t.Fatalf("server verified %d bytes, want %d", res.Bytes, n)
		}
		t.Logf("200 MB through the tunnel at %.2f Gbit/s", res.BitsPerSecond/1e9)
	})

	// Four streams interleave inside the GRO trains the receiver writes in
	// place: every byte must still arrive in order.
	t.Run("tcp-4-streams-verified", func(t *testing.T) {
		const n = 128 << 20
		out, err := l.ExecContext(ctx, h1.Pod, exe, "traffic", "tcp", "--to", h2.PodIP.String(), "--streams", "4", "--bytes", fmt.Sprint(n), "--verify", "sha256")
		if err != nil {
			t.Fatalf("transfer failed: %v\n%s", err, out)
		}
		var res traffic.Result
		if err := json.Unmarshal(out, &res); err != nil || res.Bytes != n {
			t.Fatalf("server verified %d bytes (%v), want %d", res.Bytes, err, n)
		}
	})

	t.Run("udp-sizes-intact", func(t *testing.T) {
		echo, err := l.Start(h2.Pod, "udp-echo", "env", "WEFT_TEST_HELPER=udp-echo", helperBin, "0.0.0.0:7001")
		if err != nil {
			t.Fatal(err)
		}
		defer echo.Stop()
		// 1444 = 1472 (flannel0 MTU) - 20 (IP) - 8 (UDP): the largest that
		// fits one inner packet.
		out, err := l.ExecContext(ctx, h1.Pod, "env", "WEFT_TEST_HELPER=udp-check", helperBin,
			h2.PodIP.String()+":7001", "1", "18", "100", "512", "1000", "1400", "1443", "1444")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	})

	t.Run("spoofed-dropped-and-counted", func(t *testing.T) {
		before := weftStats(t, l, h1, exe)
		// From h2 (a peer), an inner packet whose source is outside h2's
		// subnet; and from the switch (no lease), a well-formed packet.
		spoofed := innerUDP(t, "10.6.9.9", h1.PodIP.String())
		fromPeer := innerUDP(t, h2.PodIP.String(), h1.PodIP.String())
		send := func(ns string, payload []byte) {
			out, err := l.Exec(ns, "env", "WEFT_TEST_HELPER=send-udp", helperBin, h1.IP.String()+":8285", "8285", hex.EncodeToString(payload))
			if err != nil {
				t.Fatalf("send from %s: %v\n%s", ns, err, out)
			}
		}
		send(h2.Name, spoofed)
		send(l.Switch, fromPeer)
		send(h2.Name, []byte{0x45, 0, 0}) // truncated
		var after daemon.StatusReport
		deadline := time.Now().Add(5 * time.Second)
		for {
			after = weftStats(t, l, h1, exe)
			d := func(r string) uint64 { return after.Engine.DropsByReason[r] - before.Engine.DropsByReason[r] }
			if d("spoofed-source") == 1 && d("unknown-peer") == 1 && d("short") == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("drops before %v, after %v; want +1 spoofed-source, +1 unknown-peer, +1 short", before.Engine.DropsByReason, after.Engine.DropsByReason)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if after.Engine.RxPackets != before.Engine.RxPackets {
			t.Errorf("rx packets went from %d to %d: a spoofed datagram was delivered", before.Engine.RxPackets, after.Engine.RxPackets)
		}
	})

	t.Run("no-route-counted", func(t *testing.T) {
		before := weftStats(t, l, h1, exe)
		res, _ := lab.Ping(ctx, h1.Pod, netip.MustParseAddr("10.6.77.1"), 1, 10*time.Millisecond, 500*time.Millisecond)
		if res.Received != 0 {
			t.Fatal("a ping to a subnet nobody holds was answered")
		}
		after := weftStats(t, l, h1, exe)
		if after.Engine.Drops[1] <= before.Engine.Drops[1] || after.Engine.ICMPErrors <= before.Engine.ICMPErrors {
			t.Errorf("no-route drops %d -> %d, ICMP errors %d -> %d: want both to grow",
				before.Engine.Drops[1], after.Engine.Drops[1], before.Engine.ICMPErrors, after.Engine.ICMPErrors)
		}
	})

	for i, p := range procs {
		if p.Exited() {
			t.Errorf("weft on %s exited during the test:\n%s", l.Hosts[i].Name, p.Log())
		}
		if err := p.Stop(); err != nil && !strings.Contains(err.Error(), "signal") {
			t.Errorf("stopping weft on %s: %v", l.Hosts[i].Name, err)
		}
	}
}

func innerUDP(t *testing.T, src, dst string) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: netip.MustParseAddr(src).AsSlice(), DstIP: netip.MustParseAddr(dst).AsSlice()}
	u := &layers.UDP{SrcPort: 9, DstPort: 9}
	u.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, u, gopacket.Payload("spoof")); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
