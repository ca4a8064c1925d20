package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/google/renameio/v2"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/report"
)

func init() {
	register("bench", "measure every backend side by side in a namespace lab (root)", runBench)
}

func runBench(args []string) error {
	fs := flag.NewFlagSet("weft bench", flag.ContinueOnError)
	hosts := fs.Int("hosts", 2, "hosts per backend lab (traffic flows between hosts 1 and 2; more hosts add peers)")
	backends := fs.String("backends", strings.Join(harness.Backends, ","), "backends to compare: "+strings.Join(harness.Backends, ","))
	workloads := fs.String("workloads", "", "workloads (default all: "+strings.Join(report.Workloads, ",")+
		"; the standard tools' ones are left out, with a note, where iperf3, ping or sockperf is not installed, and fail the run if named here)")
	dur := fs.Duration("duration", 5*time.Second, "length of each workload run")
	reps := fs.Int("reps", 3, "repetitions (backends interleaved)")
	jsonOut := fs.String("json", "", "write every sample, the summary and the machine description to this JSON file")
	svgOut := fs.String("svg", "", "write bar charts of the summary to this SVG file")
	leases := fs.String("leases", harness.LeasesEtcd, "where weft backends get peers: etcd (weft etcd in the lab) or static (--static-* flags)")
	mtu := fs.Int("underlay-mtu", 1500, "MTU of the lab's underlay")
	udpRate := fs.Int("udp-rate", 100000, "packets/s of the paced 64 B UDP workload (udp64-paced) when kernel vxlan's flat-out rate of the same rep is not known; 0 skips it then")
	iperf := fs.String("iperf3", "auto", "also run iperf3 (TCP, 1 stream) as a cross-check: auto (when installed), on or off")
	flanneld := fs.String("flanneld", "", "a flanneld binary: adds a row of real flanneld hosts (UDP backend) against the same etcd")
	ipv6 := fs.Bool("ipv6", false, "measure over IPv6: dual-stack labs, traffic to the pods' IPv6 addresses (kernel vxlan and host-gw set up by weft; no flanneld row)")
	cleanup := fs.Bool("cleanup", false, "remove the namespaces, links and processes of crashed weft lab runs, then exit")
	prefix := fs.String("prefix", "", "with --cleanup: remove only the lab with this prefix, even if its owner is alive")
	scaleRun := fs.Bool("scale", false, "run the scale benchmark instead (issue 19): one real host, --hosts minus one simulated peers in etcd")
	sc := scaleFlags(fs)
	etcdLoad := fs.Bool("etcd-load", false, "measure what --hosts hosts cost etcd instead (issue 19): simulated hosts against this binary's weft etcd on loopback; no root needed")
	el := etcdLoadFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	hostsGiven := false
	fs.Visit(func(f *flag.Flag) { hostsGiven = hostsGiven || f.Name == "hosts" })
	if *etcdLoad {
		if !hostsGiven {
			*hosts = 5000
		}
		return runEtcdLoad(el, *hosts, *jsonOut)
	}
	if os.Geteuid() != 0 {
		return errors.New("the bench builds network namespaces: run it as root")
	}
	if *cleanup {
		removed, err := lab.Cleanup(*prefix)
		for _, n := range removed {
			fmt.Printf("removed namespace %s\n", n)
		}
		if err == nil && len(removed) == 0 {
			fmt.Println("nothing to clean up")
		}
		return err
	}
	if *scaleRun {
		if !hostsGiven {
			*hosts = 1000
		}
		return runScale(sc, *hosts, *jsonOut)
	}
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the weft binary: %w", err)
	}
	ctx, guard := lab.NewGuard(context.Background(), 20*time.Second)
	defer guard.Stop()

	_, ttyErr := unix.IoctlGetTermios(int(os.Stderr.Fd()), unix.TCGETS)
	tty := ttyErr == nil
	progress := func(line string) {
		if tty {
			fmt.Fprintf(os.Stderr, "\r\033[K%s", line)
		} else {
			fmt.Fprintln(os.Stderr, line)
		}
	}
	bs := benchList(*backends)
	if *flanneld != "" {
		backendsGiven := false
		fs.Visit(func(f *flag.Flag) { backendsGiven = backendsGiven || f.Name == "backends" })
		if !backendsGiven {
			bs = append(bs, harness.BackendFlanneld)
		}
		if _, err := os.Stat(*flanneld); err != nil {
			return fmt.Errorf("--flanneld: %v", err)
		}
	}
	cfg := harness.BenchConfig{
		Binary: bin, Flanneld: *flanneld, Hosts: *hosts, Backends: bs, Workloads: benchList(*workloads),
		Duration: *dur, Reps: *reps, Leases: *leases, UnderlayMTU: *mtu, Iperf3: *iperf,
		UDPRate: *udpRate, IPv6: *ipv6, Guard: guard, Progress: progress, Command: "weft bench " + strings.Join(args, " "),
	}
	rep, err := harness.RunBench(ctx, cfg)
	if tty {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
	if err != nil {
		return err
	}
	if err := rep.WriteTable(os.Stdout); err != nil {
		return err
	}
	for _, out := range []struct {
		path  string
		write func(*bytes.Buffer) error
	}{
		{*jsonOut, func(b *bytes.Buffer) error { return rep.WriteJSON(b) }},
		{*svgOut, func(b *bytes.Buffer) error { return rep.WriteSVG(b) }},
	} {
		if out.path == "" {
			continue
		}
		var b bytes.Buffer
		if err := out.write(&b); err != nil {
			return err
		}
		if err := renameio.WriteFile(out.path, b.Bytes(), 0o644); err != nil {
			return err
		}
		fmt.Printf("wrote %s\n", out.path)
	}
	failed := 0
	for _, s := range rep.Samples {
		if s.Error != "" {
			failed++
			fmt.Fprintf(os.Stderr, "weft bench: run %d, %s, %s failed: %s\n", s.Rep, s.Backend, s.Workload, s.Error)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d samples failed", failed, len(rep.Samples))
	}
	return nil
}

func benchList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
