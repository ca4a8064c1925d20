package e2e

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
	"github.com/weft-net/weft/bench/traffic"
	"github.com/weft-net/weft/capture"
	"github.com/weft-net/weft/daemon"
	"github.com/weft-net/weft/engine"
)

// TestCaptureStatusMetrics runs two engines in a namespace lab and checks
// issue 6 as an operator would use it: a capture taken while a transfer
// runs opens in gopacket and tcpdump with packets at every point, a
// spoofed datagram shows up as a drop with its reason, a live pipe into
// tcpdump works, a reader that never reads does not stall forwarding, and
// decode, status and metrics tell the same story.
func TestCaptureStatusMetrics(t *testing.T) {
	l := labtest.New(t, lab.Options{Hosts: 2})
	exe := self(t)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	subnets := []netip.Prefix{netip.MustParsePrefix("10.6.1.0/24"), netip.MustParsePrefix("10.6.2.0/24")}
	idleSubnet, idlePeerIP := netip.MustParsePrefix("10.6.3.0/24"), netip.MustParseAddr("192.0.2.250")
	sock := filepath.Join(h1.Dir, "debug.sock")
	procs := make([]*lab.Proc, 2)
	for i, h := range l.Hosts {
		args := []string{exe, "run", "--iface", h.Underlay,
			"--static-network", "10.6.0.0/16", "--static-subnet", subnets[i].String(),
			"--static-peer", fmt.Sprintf("%s=%s", subnets[1-i], l.Hosts[1-i].IP),
			"--subnet-file", filepath.Join(h.Dir, "subnet.env"),
			"--debug-socket", filepath.Join(h.Dir, "debug.sock")}
		if i == 0 {
			// Only ports: both must listen on loopback (in h1's namespace).
			args = append(args, "--metrics-addr", "9101", "--debug-addr", ":9102")
			// A peer that never sends or receives: no series of its own.
			args = append(args, "--static-peer", idleSubnet.String()+"="+idlePeerIP.String())
		}
		p, err := l.Start(h.Name, "weft", args...)
		if err != nil {
			t.Fatal(err)
		}
		procs[i] = p
	}
	for i, h := range l.Hosts {
		waitFile(t, procs[i], filepath.Join(h.Dir, "subnet.env"))
		if err := h.AttachPod(subnets[i]); err != nil {
			t.Fatal(err)
		}
		if err := h.SetPodMTU(1472); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	srv, err := l.Start(h2.Pod, "traffic-server", exe, "traffic", "server")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	transfer := func(n int64) {
		t.Helper()
		out, err := l.ExecContext(ctx, h1.Pod, exe, "traffic", "tcp", "--to", h2.PodIP.String(), "--bytes", fmt.Sprint(n), "--verify", "sha256")
		var res traffic.Result
		if err != nil || json.Unmarshal(out, &res) != nil || res.Bytes != n {
			t.Fatalf("transfer of %d bytes: %v\n%s", n, err, out)
		}
	}
	// waitCaptures waits until n captures are attached to h1's engine.
	waitCaptures := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			out, err := l.Exec(h1.Name, exe, "status", "--json", "--debug-socket", sock)
			var r daemon.StatusReport
			if err == nil && json.Unmarshal(out, &r) == nil && r.Captures == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d captures did not start: %v\n%s", n, err, out)
			}
		}
	}
	spoof := func() {
		t.Helper()
		payload := hex.EncodeToString(innerUDP(t, "10.6.9.9", h1.PodIP.String()))
		if out, err := l.Exec(h2.Name, "env", "WEFT_TEST_HELPER=send-udp", helperBin, h1.IP.String()+":8285", "8285", payload); err != nil {
			t.Fatalf("spoofed datagram: %v\n%s", err, out)
		}
	}
	file := filepath.Join(h1.Dir, "during-transfer.pcapng")

	t.Run("capture-during-transfer", func(t *testing.T) {
		start := time.Now()
		cp, err := l.Start(h1.Name, "capture", exe, "capture", "--debug-socket", sock, "-w", file)
		if err != nil {
			t.Fatal(err)
		}
		// A second capture at the same time, of drops only: fan-out.
		drops := filepath.Join(h1.Dir, "drops.pcapng")
		dp, err := l.Start(h1.Name, "capture-drops", exe, "capture", "--debug-socket", sock, "-w", drops, "drop")
		if err != nil {
			t.Fatal(err)
		}
		waitCaptures(2)
		transfer(20 << 20)
		if res, err := lab.Ping(ctx, h1.Pod, h2.PodIP, 3, 50*time.Millisecond, 2*time.Second); err != nil || res.Received != 3 {
			t.Fatalf("ping: %+v %v", res, err)
		}
		spoof()
		time.Sleep(200 * time.Millisecond)
		cp.Signal(syscall.SIGINT) // ends the capture cleanly, with its counts
		if err := cp.WaitContext(ctx); err != nil {
			t.Fatalf("weft capture: %v\n%s", err, cp.Log())
		}
		end := time.Now()
		if !strings.Contains(cp.Log(), "packets captured") {
			t.Errorf("no summary on stderr:\n%s", cp.Log())
		}
		dp.Signal(syscall.SIGINT)
		if err := dp.WaitContext(ctx); err != nil {
			t.Fatalf("weft capture drop: %v\n%s", err, dp.Log())
		}
		if out, err := exec.Command("tcpdump", "-nr", drops).Output(); err != nil || !strings.Contains(string(out), "10.6.9.9.9 > "+h1.PodIP.String()+".9: UDP") {
			t.Errorf("the drops-only capture does not hold the spoofed datagram: %v\n%s", err, out)
		}
		n := checkPcapng(t, file, start, end, h1, h2)
		// tcpdump reads it too, one line per packet.
		out, err := exec.Command("tcpdump", "-nr", file).Output()
		if err != nil {
			t.Fatalf("tcpdump -r: %v", err)
		}
		if lines := strings.Count(string(out), "\n"); lines != n {
			t.Errorf("tcpdump printed %d lines for %d packets", lines, n)
		}
	})

	t.Run("decode", func(t *testing.T) {
		out, err := exec.Command(exe, "decode", file).CombinedOutput()
		if err != nil {
			t.Fatalf("%v\n%.2000s", err, out)
		}
		for _, want := range []string{
			"[from-tun]", "[to-tun peer " + h2.IP.String() + ":8285]",
			"[drop reason=spoofed-source peer " + h2.IP.String() + ":", // the sender's port: send-udp's is random
			"IPv4 10.6.9.9 > " + h1.PodIP.String() + " proto UDP", "UDP 9 > 9",
			"IPv4 " + h1.PodIP.String() + " > " + h2.PodIP.String() + " proto TCP", "[SYN]", "ICMPv4 EchoRequest",
		} {
			if !strings.Contains(string(out), want) {
				t.Errorf("decode output lacks %q", want)
			}
		}
	})

	t.Run("live-pipe-to-tcpdump-with-filter", func(t *testing.T) {
		out := filepath.Join(h1.Dir, "pipe.txt")
		cp, err := l.Start(h1.Name, "capture-pipe", "sh", "-c",
			fmt.Sprintf("%s capture --debug-socket %s -c 4 -w - 'icmp and to-tun' | tcpdump -nr - > %s", exe, sock, out))
		if err != nil {
			t.Fatal(err)
		}
		waitCaptures(1)
		lab.Ping(ctx, h1.Pod, h2.PodIP, 6, 50*time.Millisecond, 2*time.Second)
		if err := cp.WaitContext(ctx); err != nil {
			t.Fatalf("%v\n%s", err, cp.Log())
		}
		b, _ := os.ReadFile(out)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 4 {
			t.Fatalf("tcpdump printed %d lines, want 4 (-c 4):\n%s\n%s", len(lines), b, cp.Log())
		}
		for _, line := range lines {
			// to-tun: the replies from h2's pod, delivered to h1.
			if !strings.Contains(line, h2.PodIP.String()+" > "+h1.PodIP.String()+": ICMP echo reply") {
				t.Errorf("not an ICMP reply delivered to the TUN: %s", line)
			}
		}
	})

	t.Run("text-mode-over-debug-addr", func(t *testing.T) {
		type result struct {
			out []byte
			err error
		}
		done := make(chan result, 1)
		go func() {
			out, err := l.ExecContext(ctx, h1.Name, exe, "capture", "--debug-addr", "127.0.0.1:9102", "-c", "2", "--points", "from-tun", "icmp")
			done <- result{out, err}
		}()
		waitCaptures(1)
		lab.Ping(ctx, h1.Pod, h2.PodIP, 3, 50*time.Millisecond, 2*time.Second)
		r := <-done
		lines := strings.Split(strings.TrimSpace(string(r.out)), "\n")
		if r.err != nil || len(lines) != 2 {
			t.Fatalf("%v: %d lines:\n%s", r.err, len(lines), r.out)
		}
		for _, line := range lines {
			if !strings.Contains(line, " from-tun IPv4 "+h1.PodIP.String()+" > "+h2.PodIP.String()+" proto ICMPv4") || !strings.Contains(line, "EchoRequest") {
				t.Errorf("line %q", line)
			}
		}
		t.Logf("weft capture -c 2 --points from-tun icmp:\n%s", r.out)
	})

	t.Run("bad-filter-refused", func(t *testing.T) {
		out, err := exec.Command(exe, "capture", "--debug-socket", sock, "tcp", "port", "http").CombinedOutput()
		if err == nil || !strings.Contains(string(out), `"http"`) {
			t.Errorf("bad filter: %v, %s", err, out)
		}
	})

	t.Run("reader-that-never-reads-does-not-stall", func(t *testing.T) {
		c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
		resp, err := c.Get("http://weft/capture?" + capture.Params{Queue: 256 << 10}.Query())
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%v %v", resp, err)
		}
		defer resp.Body.Close()
		transfer(100 << 20) // completes although nobody reads the capture
		r, err := c.Post("http://weft/capture/stop?id="+resp.Header.Get(capture.HeaderID), "", nil)
		if err != nil || r.StatusCode != http.StatusNoContent {
			t.Fatalf("stop: %v %v", r, err)
		}
		res, err := capture.Stream(resp, io.Discard)
		if err != nil || !res.Complete || res.Overflow == 0 {
			t.Fatalf("stalled capture: %+v %v; want complete with overflow > 0", res, err)
		}
		t.Logf("stalled capture: %s", res.Summary)
	})

	t.Run("status", func(t *testing.T) {
		out, err := l.Exec(h1.Name, exe, "status", "--debug-addr", "127.0.0.1:9102")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("weft status:\n%s", out)
		for _, want := range []string{"backend:", "udp", "lease:", subnets[0].String(), subnets[1].String(), h2.IP.String(),
			"spoofed-source", "TUN TSO", "UDP GSO", "packets per call:", "kernel drops:", "peers (2):"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("weft status lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("metrics", func(t *testing.T) {
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: lab.DialContext(h1.Name)}}
		resp, err := hc.Get("http://127.0.0.1:9101/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		val := func(name string, labels ...string) float64 {
			f := fams[name]
			if f == nil {
				t.Errorf("no metric %s", name)
				return -1
			}
		next:
			for _, m := range f.GetMetric() {
				for i := 0; i+1 < len(labels); i += 2 {
					if labelValue(m, labels[i]) != labels[i+1] {
						continue next
					}
				}
				if m.GetCounter() != nil {
					return m.GetCounter().GetValue()
				}
				return m.GetGauge().GetValue()
			}
			t.Errorf("no %s%v", name, labels)
			return -1
		}
		if v := val("weft_packets_total", "direction", "tx"); v < 20<<20/1500 {
			t.Errorf("weft_packets_total{tx} = %v after a 120 MB transfer", v)
		}
		if v := val("weft_drops_total", "reason", "spoofed-source"); v < 1 {
			t.Errorf("weft_drops_total{spoofed-source} = %v", v)
		}
		if v := val("weft_peers"); v != 2 {
			t.Errorf("weft_peers = %v, want 2 (h2 and the idle peer)", v)
		}
		if v := val("weft_peer_packets_total", "subnet", subnets[1].String(), "direction", "tx"); v < 1 {
			t.Errorf("weft_peer_packets_total{%s,tx} = %v", subnets[1], v)
		}
		for _, name := range []string{"weft_peer_packets_total", "weft_peer_bytes_total"} {
			for _, m := range fams[name].GetMetric() {
				if labelValue(m, "subnet") == idleSubnet.String() {
					t.Errorf("%s has a series for %s, a peer that never carried a packet", name, idleSubnet)
				}
			}
		}
		if v := val("weft_capture_overflow_total"); v < 1 {
			t.Errorf("weft_capture_overflow_total = %v after a stalled capture", v)
		}
		if v := val("weft_packets_per_batch", "direction", "tx"); v < 1 {
			t.Errorf("weft_packets_per_batch{tx} = %v", v)
		}
		val("weft_offload_enabled", "offload", "gso")
		val("weft_backend_info", "backend", "udp")
		// Counted by the kernel, read on each scrape; nothing here fills
		// a ring or a buffer, so any value is right, but both are there.
		val("weft_kernel_drops_total", "where", "tun")
		val("weft_kernel_drops_total", "where", "socket")
		// The batch-size histogram: every read counted once, and a bulk
		// transfer's TUN reads carry more than one packet (TSO splits).
		if f := fams["weft_batch_size_packets"]; f == nil {
			t.Error("no weft_batch_size_packets histogram")
		} else {
			for _, m := range f.GetMetric() {
				h := m.GetHistogram()
				if labelValue(m, "direction") != "tx" || h == nil {
					continue
				}
				batches := val("weft_batches_total", "direction", "tx")
				if float64(h.GetSampleCount()) != batches {
					t.Errorf("histogram counts %d reads, weft_batches_total{tx} = %v", h.GetSampleCount(), batches)
				}
				if h.GetSampleSum() <= float64(h.GetSampleCount()) {
					t.Errorf("tx reads averaged %v packets during a bulk transfer; want more than 1", h.GetSampleSum()/float64(h.GetSampleCount()))
				}
			}
		}
	})

	for i, p := range procs {
		if p.Exited() {
			t.Errorf("weft on %s exited during the test:\n%s", l.Hosts[i].Name, p.Log())
		}
	}

	t.Run("daemon-stop-ends-captures-cleanly", func(t *testing.T) {
		cp, err := l.Start(h1.Name, "capture-at-stop", exe, "capture", "--debug-socket", sock, "-w", filepath.Join(h1.Dir, "at-stop.pcapng"))
		if err != nil {
			t.Fatal(err)
		}
		waitCaptures(1)
		procs[0].Signal(syscall.SIGTERM)
		if err := procs[0].WaitContext(ctx); err != nil {
			t.Errorf("weft run after SIGTERM with a capture running: %v", err)
		}
		if err := cp.WaitContext(ctx); err != nil || !strings.Contains(cp.Log(), "packets captured") {
			t.Errorf("weft capture when the daemon stopped: %v\n%s", err, cp.Log())
		}
	})
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// checkPcapng reads a capture made during the transfer and returns how
// many packets it holds.
func checkPcapng(t *testing.T, path string, start, end time.Time, h1, h2 *lab.Host) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	var perPoint [engine.NumPoints]int
	spoofSeen, n := false, 0
	for {
		data, ci, opts, err := r.ReadPacketDataWithOptions()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("packet %d: %v", n+1, err)
		}
		n++
		intf, _ := r.Interface(ci.InterfaceIndex)
		pt, ok := capture.ParsePoint(intf.Name)
		if !ok || intf.LinkType != layers.LinkTypeIPv4 {
			t.Fatalf("packet %d on interface %q, link type %v", n, intf.Name, intf.LinkType)
		}
		perPoint[pt]++
		if ci.Timestamp.Before(start.Add(-time.Second)) || ci.Timestamp.After(end.Add(time.Second)) {
			t.Errorf("packet %d: timestamp %v outside the capture (%v .. %v)", n, ci.Timestamp, start, end)
		}
		if ci.CaptureLength != ci.Length || len(data) != ci.Length {
			t.Errorf("packet %d: captured %d of %d bytes, data %d", n, ci.CaptureLength, ci.Length, len(data))
		}
		if pt != engine.PointDrop && (len(data) < 20 || int(binary.BigEndian.Uint16(data[2:])) != len(data) || len(data) > 1472) {
			t.Errorf("packet %d at %s: %d bytes, IPv4 total length %d", n, pt, len(data), binary.BigEndian.Uint16(data[2:]))
		}
		comment := strings.Join(opts.Comments, ";")
		if pt == engine.PointToTUN && comment != "to-tun peer "+h2.IP.String()+":8285" {
			t.Errorf("packet %d: comment %q", n, comment)
		}
		if pt == engine.PointDrop && strings.HasPrefix(comment, "drop reason=spoofed-source peer "+h2.IP.String()+":") &&
			netip.AddrFrom4([4]byte(data[12:16])) == netip.MustParseAddr("10.6.9.9") {
			spoofSeen = true
		}
	}
	if perPoint[engine.PointFromTUN] < 1000 || perPoint[engine.PointToTUN] < 100 {
		t.Errorf("packets per point %v: want the transfer's data from the TUN and its ACKs to it", perPoint)
	}
	if !spoofSeen {
		t.Errorf("the spoofed datagram is not in the capture as a spoofed-source drop (points %v)", perPoint)
	}
	t.Logf("%d packets: from-tun %d, to-tun %d, drop %d", n, perPoint[0], perPoint[1], perPoint[2])
	return n
}
