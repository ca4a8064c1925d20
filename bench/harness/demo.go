package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/weft-net/weft/bench/lab"
)

// DemoNetconf is the demo's network config.
const DemoNetconf = `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}`

// DemoOptions configure Demo.
type DemoOptions struct {
	Binary   string        // the weft binary the lab runs
	Hosts    int           // hosts in the lab (2..10)
	Duration time.Duration // length of each throughput test
	KeepLogs bool          // keep the lab's state directory after the demo
	Out      io.Writer     // the story and the result table
	Err      io.Writer     // failures and the lab's logs
}

// Demo is `weft demo`: a lab of o.Hosts hosts, etcd, weft's udp backend
// on each, pods pinging and streaming across them, a result table, and
// the lab torn down at the end (also when ctx ends).
func Demo(ctx context.Context, o DemoOptions) (err error) {
	if o.Hosts < 2 || o.Hosts > 10 {
		return fmt.Errorf("--hosts: %d, want 2..10", o.Hosts)
	}
	ctx, guard := lab.NewGuard(ctx, 15*time.Second)
	defer guard.Stop()
	out := o.Out
	start := time.Now()
	step := func(n int, format string, a ...any) {
		fmt.Fprintf(out, "[%d/7] "+format+"\n", append([]any{n}, a...)...)
	}
	fmt.Fprintf(out, "weft demo: %d hosts made of network namespaces, joined by a bridge, carrying a pod network over weft's UDP backend.\n", o.Hosts)
	fmt.Fprintf(out, "Nothing outside the namespaces is touched; everything is removed at the end, also on Ctrl-C.\n\n")

	step(1, "building the lab: %d host namespaces on underlay %s, each with a pod namespace behind a veth", o.Hosts, lab.UnderlayNet)
	l, err := lab.New(lab.Options{Hosts: o.Hosts, KeepDir: o.KeepLogs})
	if err != nil {
		return err
	}
	guard.Add(l)
	failed := true
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = errors.New("interrupted")
		}
		fmt.Fprintf(out, "\n[7/7] tearing down lab %s (processes, namespaces, links)\n", l.Prefix)
		if failed && ctx.Err() == nil {
			fmt.Fprintf(o.Err, "weft demo: failed; logs of the lab's processes:\n%s", l.Logs())
		}
		if err := l.Close(); err != nil {
			fmt.Fprintf(o.Err, "weft demo: teardown: %v (weft bench --cleanup removes leftovers)\n", err)
		} else if o.KeepLogs {
			fmt.Fprintf(out, "      logs kept in %s\n", l.Dir)
		}
		if !failed {
			fmt.Fprintf(out, "\nweft demo: done in %.0f s. For a full comparison with kernel vxlan and host-gw: weft bench\n", time.Since(start).Seconds())
		}
	}()
	fmt.Fprintf(out, "      namespaces %s-sw (bridge), %s-h1..h%d (hosts), %s-p1..p%d (pods)\n", l.Prefix, l.Prefix, o.Hosts, l.Prefix, o.Hosts)
	if err := ctx.Err(); err != nil {
		return err
	}

	c := New(l, o.Binary)
	step(2, "starting etcd in %s on %s, network config %s", l.Switch, EtcdEndpoint(), DemoNetconf)
	if err := c.StartEtcd(ctx, DemoNetconf); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}

	step(3, "starting 'weft run' on every host (TUN flannel0, UDP port 8285), waiting for each data path")
	for _, h := range l.Hosts {
		if err := c.StartWeft(h); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = c.WaitSubnets(wctx)
	cancel()
	if err != nil {
		return err
	}
	for i, h := range l.Hosts {
		env := c.Envs[i]
		fmt.Fprintf(out, "      %s: subnet %s, MTU %d; pod %s at %s\n", h.Name, env.Subnet, env.MTU, h.Pod, h.PodIP)
	}

	step(4, "leases in etcd (%s/subnets):", EtcdPrefix)
	leases, err := c.Leases(ctx)
	if err != nil {
		return err
	}
	for _, ls := range leases {
		fmt.Fprintf(out, "      %-16s -> %-12s (%s)\n", ls.Subnet, ls.PublicIP, ls.Backend)
	}
	if len(leases) != o.Hosts {
		return fmt.Errorf("etcd holds %d leases for %d hosts", len(leases), o.Hosts)
	}

	step(5, "ping pod to pod across hosts")
	h1 := l.Host(1)
	for _, h := range l.Hosts[1:] {
		took, err := WaitPath(ctx, h1.Pod, h.PodIP, 15*time.Second)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "      path %s -> %s up after %.0f ms (the engines learn peers from the etcd watch)\n", h1.PodIP, h.PodIP, ms(took))
	}
	var pingMedian, pingP99 time.Duration
	for _, h := range l.Hosts[1:] {
		r, err := lab.Ping(ctx, h1.Pod, h.PodIP, 5, 20*time.Millisecond, time.Second)
		if err != nil {
			return fmt.Errorf("pod %s -> pod %s: %w", h1.PodIP, h.PodIP, err)
		}
		fmt.Fprintf(out, "      %s (%s) -> %s (%s): %d/%d replies, median %.3f ms\n", h1.PodIP, h1.Pod, h.PodIP, h.Pod, r.Received, r.Sent, ms(r.Median()))
		if h.Index == 2 {
			pingMedian, pingP99 = r.Median(), r.Quantile(0.99)
		}
	}

	h2 := l.Host(2)
	step(6, "measuring pod %s -> pod %s through weft, and host %s -> host %s over the bare underlay (%v each)", h1.PodIP, h2.PodIP, h1.IP, h2.IP, o.Duration)
	rows, err := demoMeasure(ctx, c, o.Duration)
	if err != nil {
		return err
	}
	rows[0].pingMedian, rows[0].pingP99 = pingMedian, pingP99
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "      path\tTCP Gbit/s\tMB sent, verified\tRR median ms\tRR p99 ms\tping median ms")
	for _, r := range rows {
		p := "-"
		if r.pingMedian > 0 {
			p = strconv.FormatFloat(ms(r.pingMedian), 'f', 3, 64)
		}
		fmt.Fprintf(tw, "      %s\t%.2f\t%d\t%.3f\t%.3f\t%s\n", r.name, r.gbps, r.bytes/1e6, r.rrMedian/1000, r.rrP99/1000, p)
	}
	tw.Flush()
	failed = false
	return nil
}

type demoRow struct {
	name                string
	gbps                float64
	bytes               int64
	rrMedian, rrP99     float64 // microseconds
	pingMedian, pingP99 time.Duration
}

// demoMeasure runs a TCP stream and request/response through the overlay
// (pod 1 -> pod 2) and the same over the bare underlay (host 1 -> host 2)
// for reference.
func demoMeasure(ctx context.Context, c *Cluster, dur time.Duration) ([]demoRow, error) {
	l := c.Lab
	h1, h2 := l.Host(1), l.Host(2)
	paths := []struct {
		name           string
		client, server string
		to             string
	}{
		{"pod -> pod via weft udp", h1.Pod, h2.Pod, h2.PodIP.String()},
		{"host -> host bare veth", h1.Name, h2.Name, h2.IP.String()},
	}
	var rows []demoRow
	for i, p := range paths {
		srv, err := c.StartTrafficServer(p.server, "traffic-server-"+strconv.Itoa(i), false)
		if err != nil {
			return nil, err
		}
		tcp, err := c.Traffic(ctx, p.client, "tcp", "--to", p.to, "--duration", dur.String())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		rr, err := c.Traffic(ctx, p.client, "rr", "--to", p.to, "--duration", "1s")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		srv.Stop()
		rows = append(rows, demoRow{name: p.name, gbps: tcp.BitsPerSecond / 1e9, bytes: tcp.Bytes, rrMedian: rr.RTTMedianUs, rrP99: rr.RTTP99Us})
	}
	return rows, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
