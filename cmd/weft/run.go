package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/daemon"
	"github.com/weft-net/weft/encap/userspace"
	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/internal/memlimit"
	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/kube"
)

func init() {
	register("run", "run the overlay on this host (flanneld's flags)", runRun)
}

// runFlags are flanneld v0.28's flags (names, meanings, defaults) plus
// weft's own, which all have flanneld-free names.
type runFlags struct {
	etcd                                 etcdClientFlags
	ifaces, ifaceRegex, ifaceCanReach    stringList
	publicIP                             string
	publicIPv6                           string
	subnetFile                           string
	renewMargin                          int
	ipMasq, ipMasqNoRandom               bool
	iptablesResync                       int
	iptablesForward, blackhole           bool
	healthzIP                            string
	healthzPort                          int
	verbosity                            int
	klog                                 klogFlags
	kubeSubnetMgr, setNodeNetUnavailable bool
	kubeAPIURL, kubeconfigFile           string
	kubeAnnotationPrefix, netConfigPath  string
	version                              bool

	// weft's own
	tunName                     string
	batchSize                   int
	queues                      int
	noTUNOffload, noGSO, noGRO  bool
	tunPackageWrite             bool
	copySegments                bool
	copyTrains                  bool
	tunTxQueueLen               int
	busyPoll                    time.Duration
	realtimePriority            int
	routeNexthops               bool
	antiSpoof                   bool
	sourcePortCheck             bool
	noKernelVXLAN               bool
	debugSocket                 string
	debugAddr, metricsAddr      string
	logFormat                   string
	staticNetwork, staticSubnet string
	staticPeers                 stringList
	staticPeersFile             string
	refused                     []string
	forwardExplicit             bool     // --iptables-forward-rules given, not defaulted
	etcdExplicit                []string // --etcd-* flags given (or from FLANNELD_*)
}

func (f *runFlags) register(fs *flag.FlagSet) {
	f.etcd.register(fs)
	fs.Var(&f.ifaces, "iface", "interface to use (IP or name) for inter-host communication; repeatable")
	fs.Var(&f.ifaceRegex, "iface-regex", "regex expression to match the first interface to use (IP or name); repeatable")
	fs.Var(&f.ifaceCanReach, "iface-can-reach", "detect the interface to use by the route to this IP address")
	fs.StringVar(&f.publicIP, "public-ip", "", "IP accessible by other nodes for inter-host communication (default: the interface's address)")
	fs.StringVar(&f.publicIPv6, "public-ipv6", "", "IPv6 accessible by other nodes for inter-host communication on a network with IPv6 (default: the interface's IPv6 address)")
	fs.StringVar(&f.subnetFile, "subnet-file", lease.DefaultSubnetFile, "filename where env variables (subnet, MTU, ...) will be written to")
	fs.IntVar(&f.renewMargin, "subnet-lease-renew-margin", 60, "subnet lease renewal margin, in minutes, ranging from 1 to 1439")
	fs.BoolVar(&f.ipMasq, "ip-masq", false, "setup IP masquerade rule for traffic destined outside of overlay network")
	fs.BoolVar(&f.ipMasqNoRandom, "ip-masq-fully-random-disable", false, "disable --random-fully in the masquerade rule")
	fs.IntVar(&f.iptablesResync, "iptables-resync", 5, "resync period for iptables rules, in seconds")
	fs.BoolVar(&f.iptablesForward, "iptables-forward-rules", true, "add default accept rules to FORWARD chain in iptables")
	fs.BoolVar(&f.blackhole, "ip-blackhole-route", false, "add a blackhole route for this host's subnet")
	fs.BoolVar(&f.routeNexthops, "route-nexthops", false, "vxlan and host-gw: add each IPv4 peer route by a nexthop object of its own (ip route shows \"nhid N\"; kernel 5.3+, else plain routes), so that adding one costs the same at 5,000 peers as at 5; off: plain routes, as flanneld's (docs/scale.md)")
	fs.StringVar(&f.healthzIP, "healthz-ip", "0.0.0.0", "the IP address for the healthz server to listen on")
	fs.IntVar(&f.healthzPort, "healthz-port", 0, "the port for the healthz server to listen on (0 to disable)")
	fs.IntVar(&f.verbosity, "v", 0, "log level for V logs, as klog's -v (0: info, 1 or more: debug)")
	f.klog.register(fs)
	fs.BoolVar(&f.kubeSubnetMgr, "kube-subnet-mgr", false, "contact the Kubernetes API for subnet assignment instead of etcd")
	fs.StringVar(&f.kubeAPIURL, "kube-api-url", "", "Kubernetes API server URL; only with --kube-subnet-mgr (default: in-cluster config)")
	fs.StringVar(&f.kubeconfigFile, "kubeconfig-file", "", "kubeconfig file location; only with --kube-subnet-mgr (default: in-cluster config)")
	fs.StringVar(&f.kubeAnnotationPrefix, "kube-annotation-prefix", kube.DefaultAnnotationPrefix, "Kubernetes annotation prefix of the Node annotations")
	fs.StringVar(&f.netConfigPath, "net-config-path", kube.DefaultNetConfPath, "path to the network configuration file (with --kube-subnet-mgr)")
	fs.BoolVar(&f.setNodeNetUnavailable, "set-node-network-unavailable", true, "set the Node's NetworkUnavailable condition to False once up (with --kube-subnet-mgr)")
	fs.BoolVar(&f.version, "version", false, "print version and exit")

	fs.StringVar(&f.tunName, "tun-name", "flannel0", "name of the TUN device (udp backend)")
	fs.IntVar(&f.batchSize, "batch-size", 128, "most packets moved per system call in each direction (1 to 1024)")
	fs.IntVar(&f.queues, "queues", 0, "udp backend and userspace vxlan: TUN queues, each with a forwarding loop pair and a socket of an SO_REUSEPORT group (1 to 16; 1: the single-queue TUN of earlier releases; 0: one per four CPUs, at most 8)")
	fs.BoolVar(&f.noTUNOffload, "no-tun-offload", false, "open the TUN without virtio-net offloads (no TSO/USO/GRO)")
	fs.BoolVar(&f.noGSO, "no-udp-gso", false, "do not use UDP segmentation offload (UDP_SEGMENT) when sending")
	fs.IntVar(&f.tunTxQueueLen, "tun-txqueuelen", 5000, "packets the kernel queues on the TUN for the engine to read (0: the kernel's 500); more absorbs bursts while the engine is off its CPU")
	fs.BoolVar(&f.tunPackageWrite, "tun-package-write", false, "coalesce TUN writes with the tun package's GRO (verifies every checksum) instead of weft's, for comparison")
	fs.BoolVar(&f.copyTrains, "copy-gro-trains", false, "copy each UDP GRO train's datagrams apart before writing them into the TUN, instead of writing them from where they were received, for comparison")
	fs.BoolVar(&f.copySegments, "copy-tso-segments", false, "split TSO super-packets read from the TUN by copying each segment, instead of sending each from its headers and its payload where it was read, for comparison")
	fs.DurationVar(&f.busyPoll, "busy-poll", 0, "how long each loop polls for packets before it sleeps (lower latency, more CPU; 0 to sleep at once)")
	fs.IntVar(&f.realtimePriority, "realtime-priority", 0, "SCHED_FIFO priority (1 to 99) of the userspace data path's forwarding threads, so packets are forwarded ahead of ordinary tasks as the kernel's own paths are (needs CAP_SYS_NICE; without it they run at normal priority); 0: normal scheduling")
	fs.BoolVar(&f.noGRO, "no-udp-gro", false, "do not use UDP receive coalescing (UDP_GRO)")
	fs.BoolVar(&f.antiSpoof, "anti-spoof", true, "drop datagrams from non-peers, inner sources outside the sender's subnet and inner destinations outside this host's subnet (flanneld accepts them: false for parity)")
	fs.BoolVar(&f.sourcePortCheck, "udp-source-port-check", true, "udp backend, with --anti-spoof: drop datagrams from a peer's address that do not come from the cluster's UDP port (flanneld and weft send from it; false behind a NAT that rewrites ports)")
	fs.BoolVar(&f.noKernelVXLAN, "no-kernel-vxlan", false, "behave as if the kernel had no vxlan: Backend.Type vxlan (and auto, for an all-vxlan cluster) speaks VXLAN from userspace")
	fs.StringVar(&f.debugSocket, "debug-socket", daemon.DefaultDebugSocket, "Unix socket for 'weft stats' and other local debugging (empty to disable)")
	fs.StringVar(&f.debugAddr, "debug-addr", "", "also serve the debug endpoints (status, capture) on this TCP HOST:PORT, loopback if only a port; captures show tenant traffic, so keep it local (empty: off)")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at /metrics on this TCP HOST:PORT, loopback if only a port (empty: off)")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.staticNetwork, "static-network", "", "use no etcd: the cluster network (with --static-subnet and --static-peer)")
	fs.StringVar(&f.staticSubnet, "static-subnet", "", "use no etcd: this host's subnet")
	fs.Var(&f.staticPeers, "static-peer", "use no etcd: a peer as SUBNET=PUBLIC-IP; repeatable")
	fs.StringVar(&f.staticPeersFile, "static-peers", "", "use no etcd: a JSON file with a list of {\"Subnet\":..., \"PublicIP\":...}")
	for name := range refusedFlags {
		var v flag.Value = refusedFlag{name: name, set: &f.refused}
		if refusedBool[name] {
			v = boolRefusedFlag{refusedFlag{name: name, set: &f.refused}}
		}
		fs.Var(v, name, "not supported by weft")
	}
}

func runRun(args []string) error {
	fs := flag.NewFlagSet("weft run", flag.ContinueOnError)
	var f runFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	// As flanneld's main: --version anywhere on the command line, before
	// the environment is read, on standard error.
	if f.version {
		fmt.Fprintln(os.Stderr, version)
		return nil
	}
	if err := applyEnv(fs, envName); err != nil {
		return err
	}
	if len(f.refused) > 0 {
		return fmt.Errorf("--%s: %s", f.refused[0], refusedFlags[f.refused[0]])
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	fs.Visit(func(fl *flag.Flag) {
		f.forwardExplicit = f.forwardExplicit || fl.Name == "iptables-forward-rules"
		if strings.HasPrefix(fl.Name, "etcd-") {
			f.etcdExplicit = append(f.etcdExplicit, fl.Name)
		}
	})
	log := newLogger(f.logFormat, f.verbosity)
	slog.SetDefault(log)
	f.klog.warnUnused(log)
	soft, ceiling, cg, limitErr := memlimit.Apply()
	switch {
	case errors.Is(limitErr, memlimit.ErrSet):
	case limitErr != nil:
		log.Warn("reading the cgroup's memory limit", "err", limitErr)
	case cg > 0:
		log.Info("Go memory limit set, at most the cgroup's limit less a reserve", "limit", soft, "ceiling", ceiling, "cgroup-limit", cg)
	default:
		log.Debug("Go memory limit set (no cgroup limit)", "limit", soft)
	}
	o, err := f.options(log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if soft > 0 {
		go memlimit.FollowLive(ctx, 10*time.Second, ceiling)
	}
	return daemon.Run(ctx, o)
}

// options turns the flags into the daemon's options, building the lease
// store they name.
func (f *runFlags) options(log *slog.Logger) (daemon.Options, error) {
	if err := f.validate(); err != nil {
		return daemon.Options{}, err
	}
	o := daemon.Options{
		Interface:  daemon.InterfaceOptions{Ifaces: f.ifaces, IfaceRegex: f.ifaceRegex, IfaceCanReach: f.ifaceCanReach},
		SubnetFile: f.subnetFile,
		IPMasq:     f.ipMasq, IPMasqNoRandom: f.ipMasqNoRandom, IPTablesResync: time.Duration(f.iptablesResync) * time.Second,
		IPTablesForward: f.iptablesForward, ForwardExplicit: f.forwardExplicit, Blackhole: f.blackhole, RouteNexthops: f.routeNexthops,
		HealthzIP: f.healthzIP, HealthzPort: f.healthzPort,
		Datapath: userspace.Options{
			TUNName: f.tunName, BatchSize: f.batchSize, Queues: f.queues, NoTUNOffload: f.noTUNOffload, TunPackageWrite: f.tunPackageWrite, CopySegments: f.copySegments, CopyTrains: f.copyTrains,
			TxQueueLen: f.tunTxQueueLen, NoGSO: f.noGSO, NoGRO: f.noGRO, BusyPoll: f.busyPoll, RealtimePriority: f.realtimePriority, AntiSpoof: f.antiSpoof, CheckSourcePort: f.sourcePortCheck,
		},
		NoKernelVXLAN: f.noKernelVXLAN,
		DebugSocket:   f.debugSocket, DebugAddr: f.debugAddr, MetricsAddr: f.metricsAddr,
		Log: log,
	}
	if f.publicIP != "" {
		o.Interface.PublicIP = netip.MustParseAddr(f.publicIP) // validated
	}
	if f.publicIPv6 != "" {
		o.Interface.PublicIPv6 = netip.MustParseAddr(f.publicIPv6) // validated
	}
	var err error
	if f.kubeSubnetMgr {
		o.StoreName = "kube"
		o.Store, err = f.kubeManager(log)
	} else if f.staticNetwork != "" {
		o.StoreName = "static"
		o.Store, err = f.staticManager()
	} else {
		o.StoreName = "etcd"
		o.Store, err = f.etcdManager(log)
	}
	if err != nil {
		return daemon.Options{}, err
	}
	return o, o.Validate()
}

// validate checks the flags that the daemon's options do not carry as
// given (and names each flag).
func (f *runFlags) validate() error {
	if f.renewMargin < 1 || f.renewMargin > 1439 {
		return fmt.Errorf("--subnet-lease-renew-margin: %d is outside 1..1439 minutes", f.renewMargin)
	}
	if f.batchSize < 1 || f.batchSize > engine.MaxBatch {
		return fmt.Errorf("--batch-size: %d is outside 1..%d", f.batchSize, engine.MaxBatch)
	}
	if f.tunTxQueueLen < 0 || f.tunTxQueueLen > 1<<20 {
		return fmt.Errorf("--tun-txqueuelen: %d is outside 0..%d packets", f.tunTxQueueLen, 1<<20)
	}
	if err := daemon.CheckQueues(f.queues); err != nil {
		return err
	}
	if err := daemon.CheckListenAddr("debug-addr", f.debugAddr); err != nil {
		return err
	}
	if err := daemon.CheckListenAddr("metrics-addr", f.metricsAddr); err != nil {
		return err
	}
	if f.logFormat != "text" && f.logFormat != "json" {
		return fmt.Errorf("--log-format: %q is neither text nor json", f.logFormat)
	}
	if f.publicIP != "" {
		a, err := netip.ParseAddr(f.publicIP)
		if err != nil || !a.Is4() {
			return fmt.Errorf("--public-ip: %q is not an IPv4 address", f.publicIP)
		}
		if err := lease.CheckPublicIP(a); err != nil {
			return fmt.Errorf("--public-ip: %v", err)
		}
	}
	if f.publicIPv6 != "" {
		a, err := netip.ParseAddr(f.publicIPv6)
		if err != nil || !a.Is6() || a.Is4In6() {
			return fmt.Errorf("--public-ipv6: %q is not an IPv6 address", f.publicIPv6)
		}
		if err := lease.CheckPublicIPv6(a); err != nil {
			return fmt.Errorf("--public-ipv6: %v", err)
		}
	}
	static := f.staticNetwork != "" || f.staticSubnet != "" || len(f.staticPeers) > 0 || f.staticPeersFile != ""
	if static && (f.staticNetwork == "" || f.staticSubnet == "") {
		return errors.New("--static-network and --static-subnet go together (with --static-peer or --static-peers)")
	}
	return f.validateKube(static)
}

// validateKube checks the Kubernetes subnet manager's flags: one store
// at a time, and flanneld's rule for the annotation prefix.
func (f *runFlags) validateKube(static bool) error {
	if err := kube.CheckAnnotationPrefix(f.kubeAnnotationPrefix); err != nil {
		return err
	}
	if !f.kubeSubnetMgr {
		return nil
	}
	if len(f.etcdExplicit) > 0 {
		return fmt.Errorf("--kube-subnet-mgr: the Kubernetes API is the store, so --%s (etcd) does not apply; give one or the other", f.etcdExplicit[0])
	}
	if static {
		return errors.New("--kube-subnet-mgr: the Kubernetes API is the store, so --static-* do not apply; give one or the other")
	}
	return nil
}

func newLogger(format string, v int) *slog.Logger {
	opts := &slog.HandlerOptions{Level: logLevel(v)}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// staticManager builds the static store from the --static-* flags.
func (f *runFlags) staticManager() (lease.Manager, error) {
	network, err := netip.ParsePrefix(f.staticNetwork)
	if err != nil {
		return nil, fmt.Errorf("--static-network: %v", err)
	}
	own, err := netip.ParsePrefix(f.staticSubnet)
	if err != nil {
		return nil, fmt.Errorf("--static-subnet: %v", err)
	}
	var peers []lease.StaticPeer
	for _, s := range f.staticPeers {
		sub, ip, ok := strings.Cut(s, "=")
		if !ok {
			return nil, fmt.Errorf("--static-peer: %q is not SUBNET=PUBLIC-IP", s)
		}
		p, err := netip.ParsePrefix(sub)
		if err != nil {
			return nil, fmt.Errorf("--static-peer %q: %v", s, err)
		}
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, fmt.Errorf("--static-peer %q: %v", s, err)
		}
		peers = append(peers, lease.StaticPeer{Subnet: p, PublicIP: a})
	}
	if f.staticPeersFile != "" {
		data, err := os.ReadFile(f.staticPeersFile)
		if err != nil {
			return nil, fmt.Errorf("--static-peers: %v", err)
		}
		var more []lease.StaticPeer
		if err := json.Unmarshal(data, &more); err != nil {
			return nil, fmt.Errorf("--static-peers %s: %v", f.staticPeersFile, err)
		}
		peers = append(peers, more...)
	}
	return lease.NewStatic(network, own, peers)
}
