package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
	"github.com/weft-net/weft/bench/traffic"
)

// TestUDPQueues runs the udp backend with --queues 2 (issue 18 goal 5):
// flannel0 is a multi-queue TUN, ping and verified TCP of several streams
// cross both ways, many UDP flows echo intact, and the per-queue counters
// show both queues carrying flows. The peer runs either 2 queues too or
// the single-queue device of earlier releases: the wire format is the
// same, so the two interoperate.
func TestUDPQueues(t *testing.T) {
	for _, q2 := range []string{"2", "1"} {
		t.Run("peer-queues-"+q2, func(t *testing.T) { testUDPQueues(t, q2) })
	}
}

func testUDPQueues(t *testing.T, peerQueues string) {
	l := labtest.New(t, lab.Options{Hosts: 2})
	exe := self(t)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	subnets := []netip.Prefix{netip.MustParsePrefix("10.6.1.0/24"), netip.MustParsePrefix("10.6.2.0/24")}
	queues := []string{"2", peerQueues}
	procs := make([]*lab.Proc, 2)
	for i, h := range l.Hosts {
		p, err := l.Start(h.Name, "weft", exe, "run",
			"--iface", h.Underlay,
			"--static-network", "10.6.0.0/16",
			"--static-subnet", subnets[i].String(),
			"--static-peer", fmt.Sprintf("%s=%s", subnets[1-i], l.Hosts[1-i].IP),
			"--subnet-file", filepath.Join(h.Dir, "subnet.env"),
			"--debug-socket", filepath.Join(h.Dir, "debug.sock"),
			"--queues", queues[i])
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
		if mq, want := tunMultiQueue(t, h.Name, "flannel0"), queues[i] != "1"; mq != want {
			t.Errorf("%s flannel0 (--queues %s): multi_queue %v, want %v", h.Name, queues[i], mq, want)
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

	// Four streams each way, every byte verified: a flow that moved
	// between queues mid-stream could arrive out of order, which TCP
	// hides; the sha256 does not care, but the retransmit-free speed and
	// the per-flow counts below do.
	for _, c := range [][2]*lab.Host{{h1, h2}, {h2, h1}} {
		t.Run(fmt.Sprintf("tcp-4-streams-%s-to-%s", c[0].Name, c[1].Name), func(t *testing.T) {
			srv, err := l.Start(c[1].Pod, "traffic-server", exe, "traffic", "server")
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Stop()
			const n = 64 << 20
			var out []byte
			for deadline := time.Now().Add(10 * time.Second); ; {
				out, err = l.ExecContext(ctx, c[0].Pod, exe, "traffic", "tcp", "--to", c[1].PodIP.String(), "--streams", "4", "--bytes", fmt.Sprint(n), "--verify", "sha256")
				if err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(200 * time.Millisecond) // the server may still be starting
			}
			if err != nil {
				t.Fatalf("transfer failed: %v\n%s", err, out)
			}
			var res traffic.Result
			if err := json.Unmarshal(out, &res); err != nil || res.Bytes != n {
				t.Fatalf("server verified %d bytes (%v), want %d", res.Bytes, err, n)
			}
		})
	}

	t.Run("udp-flows-echo", func(t *testing.T) {
		echo, err := l.Start(h2.Pod, "udp-echo", "env", "WEFT_TEST_HELPER=udp-echo", helperBin, "0.0.0.0:7001")
		if err != nil {
			t.Fatal(err)
		}
		defer echo.Stop()
		// Each udp-check is a socket of its own: a flow of its own.
		for f := range 24 {
			out, err := l.ExecContext(ctx, h1.Pod, "env", "WEFT_TEST_HELPER=udp-check", helperBin,
				h2.PodIP.String()+":7001", "18", "1000", "1444")
			if err != nil {
				t.Fatalf("flow %d: %v\n%s", f, err, out)
			}
		}
	})

	for i, h := range l.Hosts {
		s := weftStats(t, l, h, exe)
		want := 2
		if queues[i] == "1" {
			want = 1
		}
		if len(s.Engine.Queues) != want {
			t.Fatalf("%s: %d queues in stats, want %d", h.Name, len(s.Engine.Queues), want)
		}
		var tx, rx uint64
		for q, qs := range s.Engine.Queues {
			tx += qs.TxPackets
			rx += qs.RxPackets
			// Flows go out of every queue: the kernel spreads flows over
			// the TUN's queues, and the rx loops write each flow into the
			// queue it hashes to, which its replies then leave from.
			if want > 1 && qs.TxPackets == 0 {
				t.Errorf("%s: queue %d sent nothing: %+v", h.Name, q, s.Engine.Queues)
			}
		}
		if tx != s.Engine.TxPackets || rx != s.Engine.RxPackets {
			t.Errorf("%s: queues sum to tx %d rx %d; engine tx %d rx %d", h.Name, tx, rx, s.Engine.TxPackets, s.Engine.RxPackets)
		}
		t.Logf("%s (--queues %s): per queue %+v", h.Name, queues[i], s.Engine.Queues)
	}
	for i, p := range procs {
		if p.Exited() {
			t.Errorf("weft on %s exited during the test:\n%s", l.Hosts[i].Name, p.Log())
		}
		if err := p.Stop(); err != nil && !strings.Contains(err.Error(), "signal") {
			t.Errorf("stopping weft on %s: %v", l.Hosts[i].Name, err)
		}
	}
}

// tunMultiQueue reads whether a TUN was made with IFF_MULTI_QUEUE.
func tunMultiQueue(t *testing.T, ns, link string) bool {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-d", "-j", "link", "show", link).Output()
	if err != nil {
		t.Fatalf("ip -n %s -d link show %s: %v", ns, link, err)
	}
	var links []struct {
		LinkInfo struct {
			InfoData struct {
				MultiQueue bool `json:"multi_queue"`
			} `json:"info_data"`
		} `json:"linkinfo"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -d -j link show %s: %v\n%s", link, err, out)
	}
	return links[0].LinkInfo.InfoData.MultiQueue
}
