package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weft-net/weft/lease"
)

// Defaults of flanneld v0.28.
const (
	DefaultNetConfPath = "/etc/kube-flannel/net-conf.json"
	// syncTimeout bounds the wait for the Node watch's first list, as
	// flanneld's nodeControllerSyncTimeout.
	syncTimeout = 10 * time.Minute
	// ownNodeWait bounds the wait for this host's Node to appear.
	ownNodeWait = 30 * time.Second
)

// Options configure the store. The zero value of each field takes
// flanneld's default.
type Options struct {
	APIURL     string // --kube-api-url
	Kubeconfig string // --kubeconfig-file; neither: in-cluster config
	// REST, when set, is used instead of APIURL and Kubeconfig.
	REST *rest.Config

	AnnotationPrefix string // --kube-annotation-prefix
	NetConfPath      string // --net-config-path
	// SetNodeNetworkUnavailable: Keep sets the Node's NetworkUnavailable
	// condition to False (reason FlannelIsUp) once the host is up
	// (--set-node-network-unavailable, default true in flanneld; the
	// zero value here is false, so callers pass the flag).
	SetNodeNetworkUnavailable bool

	// NodeName is this host's Node; "" reads NODE_NAME, else the Pod
	// POD_NAME in POD_NAMESPACE (its spec.nodeName), as flanneld.
	NodeName string
	// Getenv reads the environment (default os.Getenv): NODE_NAME,
	// POD_NAME, POD_NAMESPACE, CONT_WHEN_CACHE_NOT_READY,
	// EVENT_QUEUE_DEPTH.
	Getenv func(string) string

	// OwnNodeWait bounds the wait for this host's Node (default 30 s).
	OwnNodeWait time.Duration

	Logger *slog.Logger
}

// Store is the Kubernetes lease.Manager. It is safe for concurrent use.
type Store struct {
	o    Options
	log  *slog.Logger
	ann  annotations
	api  *apiClient
	conf *lease.Config // from NetConfPath; SubnetLen filled in by start

	startMu  sync.Mutex
	started  bool
	startErr error
	node     string // this host's Node
	nodes    *nodeCache
	stop     context.CancelFunc

	mu       sync.Mutex
	leases   map[string]nodeLease        // by Node name: annotated Nodes with a valid lease
	changed  chan struct{}               // closed and replaced on every change
	refused  map[string]string           // by Node name: why its annotations make no lease (logged once)
	claims   map[netip.Prefix][]string   // by lease ID: the Nodes whose lease has it, the one standing first
	shadowed map[string]netip.Prefix     // by Node name: the ID another Node holds (logged and counted once)
	watchers map[*changeWatcher]struct{} // the WatchChanges running
	ownAttrs lease.Attrs                 // as Acquire wrote them
	acquired bool                        // ownAttrs is set
	// unreadable counts the times an annotated Node started to have no
	// valid lease (Unreadable).
	unreadable atomic.Uint64
	duplicates atomic.Uint64 // Duplicates
	actedRV    string        // resourceVersion of the own Node Acquire patched
}

var _ lease.Manager = (*Store)(nil)

// New checks the options and reads the network config file. It makes no
// request: the first Config, Acquire or Watch connects, finds this host's
// Node and starts the Node watch.
func New(o Options) (*Store, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.AnnotationPrefix == "" {
		o.AnnotationPrefix = DefaultAnnotationPrefix
	}
	if o.NetConfPath == "" {
		o.NetConfPath = DefaultNetConfPath
	}
	if o.OwnNodeWait == 0 {
		o.OwnNodeWait = ownNodeWait
	}
	ann, err := newAnnotations(o.AnnotationPrefix)
	if err != nil {
		return nil, err
	}
	if v := o.Getenv("EVENT_QUEUE_DEPTH"); v != "" {
		// flanneld's bound on queued Node events. weft sends the latest
		// snapshot or coalesced changes (never a queue that can fill), so
		// only its format is checked.
		if _, err := strconv.Atoi(v); err != nil {
			return nil, fmt.Errorf("env EVENT_QUEUE_DEPTH=%s format error: %v", v, err)
		}
	}
	data, err := os.ReadFile(o.NetConfPath)
	if err != nil {
		return nil, fmt.Errorf("--net-config-path: failed to read net conf: %w", err)
	}
	conf, err := lease.ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("--net-config-path %s: %w", o.NetConfPath, err)
	}
	cfg := o.REST
	if cfg == nil {
		// flanneld's order: --kube-api-url / --kubeconfig-file, else
		// the in-cluster config.
		if cfg, err = clientcmd.BuildConfigFromFlags(o.APIURL, o.Kubeconfig); err != nil {
			return nil, fmt.Errorf("fail to create kubernetes config: %v", err)
		}
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = "weft"
	}
	api, err := newAPIClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("unable to initialize client: %v", err)
	}
	return &Store{o: o, log: o.Logger, ann: ann, api: api, conf: conf, changed: make(chan struct{})}, nil
}

// NodeName is this host's Node, once the store has started ("" before).
func (s *Store) NodeName() string {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	return s.node
}

// Unreadable is how many times a Node annotated kube-subnet-manager=true
// has been left out of the peers because its podCIDRs or annotations
// make no lease (unreadable public-ip, public-ipv6, backend-data,
// backend-v6-data, ...): each Node counted once until it is readable
// again or deleted, however often it changes meanwhile. The daemon
// reports it among its refusals.
func (s *Store) Unreadable() uint64 { return s.unreadable.Load() }

// AnnotationPrefix is the prefix of the annotations the store writes.
func (s *Store) AnnotationPrefix() string { return s.ann.prefix() }

// Close stops the Node watch.
func (s *Store) Close() {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if s.stop != nil {
		s.stop()
	}
}

// start, once: finds this host's Node name, checks the permissions,
// starts the Node watch and waits for its first list.
func (s *Store) start(ctx context.Context) error {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if s.started {
		return s.startErr
	}
	err := s.doStart(ctx)
	if ctx.Err() != nil && err != nil {
		return err // not final: a later call may start again
	}
	s.started, s.startErr = true, err
	return err
}

func (s *Store) doStart(ctx context.Context) error {
	node, err := s.nodeName(ctx)
	if err != nil {
		return err
	}
	if err := s.checkAccess(ctx); err != nil {
		return err
	}
	s.node = node
	ictx, stop := context.WithCancel(context.Background())
	s.nodes = newNodeCache(s, node)
	s.stop = stop
	go s.nodes.run(ictx)
	s.log.Info("waiting for the first list of Nodes", "timeout", syncTimeout)
	sctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	select {
	case <-s.nodes.listed:
	case <-sctx.Done():
	}
	if !s.nodes.synced.Load() {
		if ctx.Err() != nil {
			stop()
			s.nodes, s.stop = nil, nil
			return ctx.Err()
		}
		if v, _ := strconv.ParseBool(s.o.Getenv("CONT_WHEN_CACHE_NOT_READY")); !v {
			stop()
			return fmt.Errorf("error waiting for the list of Nodes within %s (set CONT_WHEN_CACHE_NOT_READY=true to go on without it)", syncTimeout)
		}
		s.log.Warn("no list of Nodes yet; going on (CONT_WHEN_CACHE_NOT_READY)")
	} else {
		s.log.Info("Nodes listed", "nodes", s.nodes.len())
	}
	return nil
}

// nodeName is flanneld's: NODE_NAME, else the Node of Pod POD_NAME in
// POD_NAMESPACE.
func (s *Store) nodeName(ctx context.Context) (string, error) {
	if s.o.NodeName != "" {
		return s.o.NodeName, nil
	}
	if n := s.o.Getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	pod, ns := s.o.Getenv("POD_NAME"), s.o.Getenv("POD_NAMESPACE")
	if pod == "" || ns == "" {
		return "", errors.New("kube subnet manager: set NODE_NAME, or POD_NAME and POD_NAMESPACE (env variables POD_NAME and POD_NAMESPACE must be set)")
	}
	name, err := s.api.podNodeName(ctx, ns, pod)
	if err != nil {
		return "", fmt.Errorf("error retrieving pod spec for '%s/%s': %w%s", ns, pod, err, forbiddenHint(err, "get", "pods"))
	}
	if name == "" {
		return "", fmt.Errorf("node name not present in pod spec '%s/%s'", ns, pod)
	}
	return name, nil
}

// Config returns the network config of --net-config-path. In kube mode
// the subnets are the Nodes' podCIDRs, so SubnetLen is this host's IPv4
// podCIDR length (every Node's should have it) and SubnetMin/SubnetMax
// span the whole network; likewise IPv6SubnetLen/Min/Max with the IPv6
// podCIDR and IPv6Network. The file's SubnetLen/Min/Max and
// IPv6SubnetLen/Min/Max do not apply.
func (s *Store) Config(ctx context.Context) (*lease.Config, error) {
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	n, err := s.ownNode(ctx)
	if err != nil {
		return nil, err
	}
	own, own6, err := s.ownSubnets(n)
	if err != nil {
		return nil, err
	}
	c := *s.conf
	if c.EnableIPv4 {
		c.SubnetLen = own.Bits()
		c.SubnetMin = c.Network.Addr()
		c.SubnetMax = lastSubnet(c.Network, own.Bits())
	}
	if c.EnableIPv6 {
		c.IPv6SubnetLen = own6.Bits()
		c.IPv6SubnetMin = c.IPv6Network.Addr()
		c.IPv6SubnetMax = lastSubnet(c.IPv6Network, own6.Bits())
	}
	return &c, nil
}

// lastSubnet is the network address of network's last /bits subnet
// (IPv4 or IPv6).
func lastSubnet(network netip.Prefix, bits int) netip.Addr {
	a := network.Addr().AsSlice()
	for i := range a {
		for b := range 8 {
			pos := i*8 + b
			mask := byte(0x80) >> b
			switch {
			case pos >= bits:
				a[i] &^= mask
			case pos >= network.Bits():
				a[i] |= mask
			}
		}
	}
	out, _ := netip.AddrFromSlice(a)
	return out
}
