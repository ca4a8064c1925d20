// Package harness runs weft inside a namespace lab: an embedded etcd in the
// switch namespace, one `weft run` per host, pods attached to the leased
// subnets, and the built-in traffic generator between pods. The demo and
// the bench are built from it.
package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/traffic"
)

// EtcdPort is where the lab's etcd listens, on lab.SwitchIP.
const EtcdPort = 2379

// EtcdPrefix is flanneld's default etcd prefix.
const EtcdPrefix = "/coreos.com/network"

// EtcdEndpoint is the lab etcd's client URL.
func EtcdEndpoint() string {
	return "http://" + net.JoinHostPort(lab.SwitchIP.String(), strconv.Itoa(EtcdPort))
}

// Cluster is weft running in a lab.
type Cluster struct {
	Lab *lab.Lab
	// IPv6 makes the backends' network configs dual-stack and the
	// measured path the pods' IPv6 addresses (BenchConfig.IPv6).
	IPv6   bool
	Binary string // the weft binary children run
	// Flanneld is the flanneld binary of the "flanneld" row, if any.
	Flanneld string
	Etcd     *lab.Proc
	Runs     []*lab.Proc // one per host, nil before StartWeft
	Envs     []SubnetEnv // one per host, after WaitSubnets
}

// New wraps a lab; binary is the weft executable for child processes.
func New(l *lab.Lab, binary string) *Cluster {
	return &Cluster{Lab: l, Binary: binary, Runs: make([]*lab.Proc, len(l.Hosts)), Envs: make([]SubnetEnv, len(l.Hosts))}
}

// StartEtcd starts `weft etcd` in the switch namespace with the network
// config netconf (flanneld's JSON) and waits until it accepts connections.
func (c *Cluster) StartEtcd(ctx context.Context, netconf string) error {
	dir := filepath.Join(c.Lab.Dir, "etcd")
	p, err := c.Lab.Start(c.Lab.Switch, "etcd", c.Binary, "etcd",
		"--data-dir", dir, "--listen-client-urls", EtcdEndpoint(), "--network-config", netconf)
	if err != nil {
		return err
	}
	c.Etcd = p
	addr := net.JoinHostPort(lab.SwitchIP.String(), strconv.Itoa(EtcdPort))
	dial := lab.DialContext(c.Lab.Switch)
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		conn, err := dial(dctx, "tcp4", addr)
		cancel()
		if err == nil {
			conn.Close()
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("weft etcd exited: %v\n%s", p.Wait(), p.Log())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// SubnetFile is host h's subnet file.
func SubnetFile(h *lab.Host) string { return filepath.Join(h.Dir, "subnet.env") }

// DebugSocket is host h's debug socket.
func DebugSocket(h *lab.Host) string { return filepath.Join(h.Dir, "debug.sock") }

// StartWeft starts `weft run` on host h against the lab's etcd, with
// every path it writes inside the host's directory. extra are more flags
// (e.g. --batch-size 1).
func (c *Cluster) StartWeft(h *lab.Host, extra ...string) error {
	os.Remove(SubnetFile(h))
	argv := []string{c.Binary, "run",
		"--etcd-endpoints=" + EtcdEndpoint(),
		"--iface=" + h.Underlay,
		"--subnet-file=" + SubnetFile(h),
		"--debug-socket=" + DebugSocket(h),
	}
	p, err := c.Lab.Start(h.Name, "weft-"+strconv.Itoa(h.Index), append(argv, extra...)...)
	if err != nil {
		return err
	}
	c.Runs[h.Index-1] = p
	return nil
}

// StartFlanneld starts c.Flanneld on host h against the lab's etcd with
// flanneld's own flags (the ones weft run shares), writing its subnet file
// where StartWeft would, so WaitSubnets serves both. extra flags come last
// (so --iptables-forward-rules=true turns the forward rules back on).
func (c *Cluster) StartFlanneld(h *lab.Host, extra ...string) error {
	os.Remove(SubnetFile(h))
	argv := []string{c.Flanneld,
		"--etcd-endpoints=" + EtcdEndpoint(),
		"--iface=" + h.Underlay,
		"--subnet-file=" + SubnetFile(h),
		"--iptables-forward-rules=false",
		"--healthz-port=0",
	}
	p, err := c.Lab.Start(h.Name, "flanneld-"+strconv.Itoa(h.Index), append(argv, extra...)...)
	if err != nil {
		return err
	}
	c.Runs[h.Index-1] = p
	return nil
}

// WaitSubnets waits for every started host's subnet file (weft writes it
// once its data path is up), then attaches each host's pod to its subnets
// (IPv4, IPv6 or both, as the file names them) with the overlay's MTU.
func (c *Cluster) WaitSubnets(ctx context.Context) error {
	for i, h := range c.Lab.Hosts {
		p := c.Runs[i]
		if p == nil {
			continue
		}
		env, err := waitSubnetFile(ctx, SubnetFile(h), p)
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		c.Envs[i] = env
		if env.Subnet.IsValid() {
			if err := h.AttachPod(env.Subnet); err != nil {
				return err
			}
		}
		if env.IPv6Subnet.IsValid() && c.Lab.IPv6 {
			if err := h.AttachPod6(env.IPv6Subnet); err != nil {
				return err
			}
		}
		if env.MTU > 0 {
			if err := h.SetPodMTU(env.MTU); err != nil {
				return err
			}
		}
	}
	return nil
}

// SubnetEnv is what a subnet file says.
type SubnetEnv struct {
	Network netip.Prefix
	Subnet  netip.Prefix // masked: FLANNEL_SUBNET is the host's .1 address; zero on an IPv6-only network
	// IPv6Network and IPv6Subnet (masked) are a host's with IPv6.
	IPv6Network netip.Prefix
	IPv6Subnet  netip.Prefix
	MTU         int
	IPMasq      bool
}

func waitSubnetFile(ctx context.Context, path string, p *lab.Proc) (SubnetEnv, error) {
	for {
		if b, err := os.ReadFile(path); err == nil {
			if env, err := ParseSubnetEnv(b); err == nil {
				return env, nil
			}
		}
		if p.Exited() {
			return SubnetEnv{}, fmt.Errorf("weft run exited before writing %s: %v\n%s", path, p.Wait(), p.Log())
		}
		select {
		case <-ctx.Done():
			return SubnetEnv{}, fmt.Errorf("waiting for %s: %w\n%s", path, ctx.Err(), p.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ParseSubnetEnv reads flanneld's subnet.env.
func ParseSubnetEnv(b []byte) (SubnetEnv, error) {
	var env SubnetEnv
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "FLANNEL_NETWORK":
			env.Network, err = netip.ParsePrefix(v)
		case "FLANNEL_SUBNET":
			env.Subnet, err = netip.ParsePrefix(v)
			env.Subnet = env.Subnet.Masked()
		case "FLANNEL_IPV6_NETWORK":
			env.IPv6Network, err = netip.ParsePrefix(v)
		case "FLANNEL_IPV6_SUBNET":
			env.IPv6Subnet, err = netip.ParsePrefix(v)
			env.IPv6Subnet = env.IPv6Subnet.Masked()
		case "FLANNEL_MTU":
			env.MTU, err = strconv.Atoi(v)
		case "FLANNEL_IPMASQ":
			env.IPMasq = v == "true"
		}
		if err != nil {
			return env, fmt.Errorf("subnet file: %s: %w", k, err)
		}
	}
	if !env.Subnet.IsValid() && !env.IPv6Subnet.IsValid() {
		return env, errors.New("subnet file: neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET")
	}
	return env, nil
}

// Lease is one entry of the lab etcd's subnet registry.
type Lease struct {
	Subnet   string `json:"subnet"`
	PublicIP string `json:"public_ip"`
	Backend  string `json:"backend"`
}

// Leases reads the leases from the lab's etcd, as flanneld stores them.
func (c *Cluster) Leases(ctx context.Context) ([]Lease, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{EtcdEndpoint()},
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return lab.DialContext(c.Lab.Switch)(ctx, "tcp4", addr)
		})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, EtcdPrefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	var out []Lease
	for _, kv := range resp.Kvs {
		var v struct{ PublicIP, BackendType string }
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			continue
		}
		key := strings.TrimPrefix(string(kv.Key), EtcdPrefix+"/subnets/")
		if v.BackendType == "" {
			v.BackendType = "udp"
		}
		out = append(out, Lease{Subnet: strings.Replace(key, "-", "/", 1), PublicIP: v.PublicIP, Backend: v.BackendType})
	}
	slices.SortFunc(out, func(a, b Lease) int { return strings.Compare(a.PublicIP, b.PublicIP) })
	return out, nil
}

// Traffic runs one `weft traffic` client in namespace ns (args after
// "traffic", e.g. "tcp", "--to", ...) and returns its result.
func (c *Cluster) Traffic(ctx context.Context, ns string, args ...string) (*traffic.Result, error) {
	out, err := c.Lab.ExecContext(ctx, ns, append([]string{c.Binary, "traffic"}, args...)...)
	if err != nil {
		return nil, err
	}
	var r traffic.Result
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("weft traffic %s: bad result %q: %w", strings.Join(args, " "), out, err)
	}
	return &r, nil
}

// StartTrafficServer starts `weft traffic server` in namespace ns.
func (c *Cluster) StartTrafficServer(ns, logName string, ipv6 bool) (*lab.Proc, error) {
	if ipv6 {
		return c.Lab.Start(ns, logName, c.Binary, "traffic", "server", "--listen", net.JoinHostPort("::", strconv.Itoa(traffic.DefaultPort)))
	}
	return c.Lab.Start(ns, logName, c.Binary, "traffic", "server")
}

// StartWeftStatic starts `weft run` on host h with no etcd: host i owns
// subnets[i-1] of network and every other host is a static peer. It is the
// lab without the lease machinery, for tests of the data path alone.
func (c *Cluster) StartWeftStatic(h *lab.Host, network netip.Prefix, subnets []netip.Prefix, extra ...string) error {
	if len(subnets) != len(c.Lab.Hosts) {
		return fmt.Errorf("harness: %d subnets for %d hosts", len(subnets), len(c.Lab.Hosts))
	}
	os.Remove(SubnetFile(h))
	argv := []string{c.Binary, "run",
		"--iface=" + h.Underlay,
		"--subnet-file=" + SubnetFile(h),
		"--debug-socket=" + DebugSocket(h),
		"--static-network=" + network.String(),
		"--static-subnet=" + subnets[h.Index-1].String(),
	}
	for _, o := range c.Lab.Hosts {
		if o != h {
			argv = append(argv, "--static-peer="+subnets[o.Index-1].String()+"="+o.IP.String())
		}
	}
	p, err := c.Lab.Start(h.Name, "weft-"+strconv.Itoa(h.Index), append(argv, extra...)...)
	if err != nil {
		return err
	}
	c.Runs[h.Index-1] = p
	return nil
}

// WaitPath pings from ns to dst until a reply comes (engines learn their
// peers from the lease watch a moment after they are up), for at most
// timeout. It returns how long that took.
func WaitPath(ctx context.Context, ns string, dst netip.Addr, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		if _, err := lab.Ping(ctx, ns, dst, 1, 0, 200*time.Millisecond); err == nil {
			return time.Since(start), nil
		} else if time.Since(start) > timeout || ctx.Err() != nil {
			return 0, fmt.Errorf("no path from %s to %s after %v: %w", ns, dst, timeout, err)
		}
	}
}
