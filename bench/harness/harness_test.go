package harness

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
)

var weftBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "weft-harness-test-")
	if err != nil {
		panic(err)
	}
	weftBin = filepath.Join(dir, "weft")
	out, err := exec.Command("go", "build", "-o", weftBin, "github.com/weft-net/weft/cmd/weft").CombinedOutput()
	if err != nil {
		os.Stderr.Write(out)
		os.RemoveAll(dir)
		panic("building weft: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestParseSubnetEnv(t *testing.T) {
	env, err := ParseSubnetEnv([]byte("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.42.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"))
	if err != nil {
		t.Fatal(err)
	}
	if env.Subnet != netip.MustParsePrefix("10.5.42.0/24") || env.MTU != 1472 || env.Network.Bits() != 16 {
		t.Fatalf("%+v", env)
	}
	if _, err := ParseSubnetEnv([]byte("FLANNEL_MTU=x\n")); err == nil {
		t.Fatal("bad MTU accepted")
	}
}

// Two hosts with static peers: pods reach each other through weft and a
// TCP transfer arrives verified.
func TestStaticUDP(t *testing.T) {
	l := labtest.New(t, lab.Options{Hosts: 2})
	c := New(l, weftBin)
	network := netip.MustParsePrefix("10.6.0.0/16")
	subnets := []netip.Prefix{netip.MustParsePrefix("10.6.1.0/24"), netip.MustParsePrefix("10.6.2.0/24")}
	for _, h := range l.Hosts {
		if err := c.StartWeftStatic(h, network, subnets); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitSubnets(ctx); err != nil {
		t.Fatal(err)
	}
	h1, h2 := l.Host(1), l.Host(2)
	if h2.PodSubnet != subnets[1] || c.Envs[0].MTU != l.MTU-28 {
		t.Fatalf("pod subnet %s, env %+v", h2.PodSubnet, c.Envs[0])
	}
	if _, err := lab.Ping(ctx, h1.Pod, h2.PodIP, 3, 10*time.Millisecond, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartTrafficServer(h2.Pod, "server", false); err != nil {
		t.Fatal(err)
	}
	r, err := c.Traffic(ctx, h1.Pod, "tcp", "--to", h2.PodIP.String(), "--bytes", "20000000", "--streams", "2")
	if err != nil {
		t.Fatal(err)
	}
	if r.Bytes != 20000000 {
		t.Fatalf("%+v", r)
	}
}
