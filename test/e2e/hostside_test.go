package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
)

// TestHostSideEffects: --ip-masq and --iptables-forward-rules install
// flanneld's chains, --ip-blackhole-route its route (each put back when
// removed), --healthz-port answers /healthz and /readyz, and weft cleanup
// takes it all away.
func TestHostSideEffects(t *testing.T) {
	l := labtest.New(t, lab.Options{Hosts: 1})
	exe := self(t)
	h := l.Hosts[0]
	p, err := l.Start(h.Name, "weft", exe, "run", "--iface", h.Underlay,
		"--static-network", "10.7.0.0/16", "--static-subnet", "10.7.3.0/24",
		"--subnet-file", filepath.Join(h.Dir, "subnet.env"), "--debug-socket", filepath.Join(h.Dir, "debug.sock"),
		"--ip-masq", "--iptables-forward-rules", "--iptables-resync", "1", "--ip-blackhole-route",
		"--healthz-ip", h.IP.String(), "--healthz-port", "8471")
	if err != nil {
		t.Fatal(err)
	}
	env := string(waitFile(t, p, filepath.Join(h.Dir, "subnet.env")))
	if !strings.Contains(env, "FLANNEL_IPMASQ=true\n") {
		t.Errorf("subnet.env does not say FLANNEL_IPMASQ=true:\n%s", env)
	}
	ipt := func(args ...string) string {
		out, err := l.Exec(h.Name, append([]string{"iptables"}, args...)...)
		if err != nil {
			return "error: " + err.Error()
		}
		return string(out)
	}
	masq := ipt("-t", "nat", "-S", "FLANNEL-POSTRTG")
	for _, want := range []string{"-s 10.7.0.0/16 ! -d 224.0.0.0/4", "MASQUERADE", "-s 10.7.3.0/24 -d 10.7.0.0/16", "0x4000/0x4000"} {
		if !strings.Contains(masq, want) {
			t.Errorf("FLANNEL-POSTRTG lacks %q:\n%s", want, masq)
		}
	}
	if fwd := ipt("-S", "FLANNEL-FWD"); !strings.Contains(fwd, "-s 10.7.0.0/16") || !strings.Contains(fwd, "-d 10.7.0.0/16") {
		t.Errorf("FLANNEL-FWD:\n%s", fwd)
	}
	// Flushed by someone else: back within the resync period.
	ipt("-t", "nat", "-F", "FLANNEL-POSTRTG")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(ipt("-t", "nat", "-S", "FLANNEL-POSTRTG"), "MASQUERADE") {
		if time.Now().After(deadline) {
			t.Fatal("flushed masquerade rules not restored within 10s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	routes, _ := l.Exec(h.Name, "ip", "route", "show", "type", "blackhole")
	if !strings.Contains(string(routes), "blackhole 10.7.3.0/24") {
		t.Errorf("no blackhole route for the lease:\n%s", routes)
	}
	// Deleted by someone else: put back at the next resync, as flanneld's
	// loop re-adds it every --iptables-resync seconds (main.go).
	if out, err := l.Exec(h.Name, "ip", "route", "del", "blackhole", "10.7.3.0/24"); err != nil {
		t.Fatalf("deleting the blackhole route: %v\n%s", err, out)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		routes, _ := l.Exec(h.Name, "ip", "route", "show", "type", "blackhole")
		if strings.Contains(string(routes), "blackhole 10.7.3.0/24") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("deleted blackhole route not put back within 10s")
		}
		time.Sleep(200 * time.Millisecond)
	}

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return lab.DialContext(h.Name)(ctx, network, addr)
	}}}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := client.Get("http://" + h.IP.String() + ":8471" + path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %s %s", path, resp.Status, body)
		}
	}

	if err := p.Stop(); err != nil && !strings.Contains(err.Error(), "signal") {
		t.Errorf("stop: %v", err)
	}
	if out, err := l.Exec(h.Name, exe, "cleanup", "--debug-socket", filepath.Join(h.Dir, "debug.sock")); err != nil {
		t.Fatalf("weft cleanup: %v\n%s", err, out)
	}
	if out := ipt("-t", "nat", "-S"); strings.Contains(out, "FLANNEL") {
		t.Errorf("nat rules left after cleanup:\n%s", out)
	}
	if out := ipt("-S"); strings.Contains(out, "FLANNEL") {
		t.Errorf("filter rules left after cleanup:\n%s", out)
	}
	if routes, _ := l.Exec(h.Name, "ip", "route", "show", "type", "blackhole"); strings.Contains(string(routes), "10.7.3.0") {
		t.Errorf("blackhole route left after cleanup:\n%s", routes)
	}
}

// TestPublicIPNotLocal: --public-ip may name an address the host does not
// have (a NAT in front of it); weft binds its socket to the interface's
// address and advertises the public one.
func TestPublicIPNotLocal(t *testing.T) {
	l := labtest.New(t, lab.Options{Hosts: 1})
	exe := self(t)
	h := l.Hosts[0]
	// The lab keeps IPv6 off; a real host has it on for new devices.
	for _, k := range []string{"all", "default"} {
		if err := lab.WriteSysctl(h.Name, "net/ipv6/conf/"+k+"/disable_ipv6", "0"); err != nil {
			t.Fatal(err)
		}
	}
	p, err := l.Start(h.Name, "weft", exe, "run", "--iface", h.Underlay, "--public-ip", "203.0.113.9",
		"--static-network", "10.7.0.0/16", "--static-subnet", "10.7.3.0/24",
		"--subnet-file", filepath.Join(h.Dir, "subnet.env"), "--debug-socket", filepath.Join(h.Dir, "debug.sock"))
	if err != nil {
		t.Fatal(err)
	}
	waitFile(t, p, filepath.Join(h.Dir, "subnet.env"))
	out, err := l.Exec(h.Name, exe, "stats", "--debug-socket", filepath.Join(h.Dir, "debug.sock"))
	if err != nil {
		t.Fatalf("weft stats: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `"public_ip": "203.0.113.9"`) {
		t.Errorf("stats do not advertise the public IP:\n%s", out)
	}
	// An idle engine drops nothing: in particular the TUN carries no IPv6
	// (router solicitations the kernel would send within seconds of link
	// up, once its link-local address passed duplicate detection).
	time.Sleep(3 * time.Second)
	if st := weftStats(t, l, h, exe); len(st.Engine.DropsByReason) != 0 {
		t.Errorf("an idle engine counted drops: %v", st.Engine.DropsByReason)
	}
	ss, _ := l.Exec(h.Name, "ss", "-uln")
	if !strings.Contains(string(ss), h.IP.String()+":8285") {
		t.Errorf("the socket is not bound to the interface address %s:\n%s", h.IP, ss)
	}
}
