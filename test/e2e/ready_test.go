package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
)

// TestReadiness: while etcd is away weft answers /healthz but not
// /readyz and tells systemd nothing; once it holds its lease, its data
// path is up and subnet.env is written, /readyz answers 200 and systemd
// gets READY=1 (Type=notify in deploy/weft.service); on SIGTERM it sends
// STOPPING=1 and exits 0.
func TestReadiness(t *testing.T) {
	f := newFLab(t, 1, udpNetconf)
	h := f.Lab.Host(1)
	f.stopEtcd()

	notifyPath := filepath.Join(t.TempDir(), "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	next := func(within time.Duration) (string, error) {
		buf := make([]byte, 4096)
		notify.SetReadDeadline(time.Now().Add(within))
		n, err := notify.Read(buf)
		return string(buf[:n]), err
	}

	p, err := f.Lab.Start(h.Name, "weft-1", "env", "NOTIFY_SOCKET="+notifyPath, f.Binary, "run",
		"--etcd-endpoints="+harness.EtcdEndpoint(), "--iface="+h.Underlay,
		"--subnet-file="+harness.SubnetFile(h), "--debug-socket="+harness.DebugSocket(h),
		"--healthz-ip="+h.IP.String(), "--healthz-port=8471")
	if err != nil {
		t.Fatal(err)
	}
	f.Runs[0] = p
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return lab.DialContext(h.Name)(ctx, network, addr)
	}}}
	get := func(path string) (int, string) {
		resp, err := client.Get("http://" + h.IP.String() + ":8471" + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if code, _ := get("/healthz"); code == 200 {
			break
		}
		if time.Now().After(deadline) || p.Exited() {
			t.Fatalf("/healthz never answered while etcd was away:\n%s", p.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with no lease: %d %s, want 503", code, body)
	}
	if msg, err := next(time.Second); err == nil {
		t.Errorf("systemd told %q before weft had a lease", msg)
	}
	if _, err := os.Stat(harness.SubnetFile(h)); err == nil {
		t.Error("subnet file written with no lease")
	}

	f.startEtcd()
	msg, err := next(60 * time.Second)
	if err != nil || msg != "READY=1" {
		t.Fatalf("notification %q (%v), want READY=1:\n%s", msg, err, p.Log())
	}
	// READY=1 comes after the subnet file and the data path.
	if _, err := os.Stat(harness.SubnetFile(h)); err != nil {
		t.Errorf("READY=1 before the subnet file: %v", err)
	}
	if out, err := f.Lab.Exec(h.Name, "ip", "link", "show", "flannel0"); err != nil || !strings.Contains(string(out), "UP") {
		t.Errorf("READY=1 before flannel0 is up: %v %s", err, out)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz once ready: %d %s", code, body)
	}

	p.Signal(syscall.SIGTERM)
	if msg, err := next(15 * time.Second); err != nil || msg != "STOPPING=1" {
		t.Errorf("on SIGTERM: notification %q (%v), want STOPPING=1", msg, err)
	}
	if err := p.WaitContext(context.Background()); err != nil {
		t.Errorf("SIGTERM: exit %v, want 0:\n%s", err, p.Log())
	}
	f.Runs[0] = nil
	f.stopAndClean()
}
