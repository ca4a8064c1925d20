// Package lab builds hosts out of network namespaces on one machine, so
// tests, the demo and the bench can run several weft engines side by side
// without touching the machine's own network.
//
// A lab is a "switch" namespace holding a Linux bridge, and per host a host
// namespace joined to the bridge by a veth (the underlay, 192.0.2.0/24,
// TEST-NET-1, used only inside these namespaces) plus a pod namespace behind
// a second veth. Every namespace carries the lab's run-unique prefix; links
// are created directly inside their namespaces and never exist in the
// caller's, so deleting the namespaces removes everything. Processes started
// through the lab are tracked and killed by Close, and Cleanup removes what
// a crashed run left behind.
//
// Linux only; needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's
// `ip` for namespace creation and `ip netns exec`.
package lab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
)

// Underlay addressing. TEST-NET-1 is reserved for documentation, so it can
// never clash with a real network the machine is attached to.
var (
	UnderlayNet = netip.MustParsePrefix("192.0.2.0/24")
	// SwitchIP is the bridge's address in the switch namespace, where
	// lab-wide services (etcd) listen.
	SwitchIP = netip.MustParseAddr("192.0.2.254")
)

// IPv6 underlay addressing of a lab with Options.IPv6: 2001:db8::/32 is
// reserved for documentation (RFC 3849).
var (
	UnderlayNet6 = netip.MustParsePrefix("2001:db8::/64")
	SwitchIP6    = netip.MustParseAddr("2001:db8::fe")
)

// MaxHosts is the largest lab: host i gets 192.0.2.(i+1), below SwitchIP.
const MaxHosts = 200

// GeneratedPrefix matches the prefixes New generates; Cleanup("") removes
// labs whose names match it.
var GeneratedPrefix = regexp.MustCompile(`^wl[0-9a-f]{4}$`)

// validPrefix keeps the longest link name ("<prefix>h200p") within the
// kernel's 15 characters (IFNAMSIZ-1).
var validPrefix = regexp.MustCompile(`^[a-z][a-z0-9]{0,7}$`)

// Options configure New. The zero value gives a one-host lab.
type Options struct {
	// Prefix names every namespace ("<prefix>-sw", "<prefix>-h1", ...) and
	// link of the lab: 1-8 lower-case letters or digits, starting with a
	// letter. Default: "wl" and four random hex digits.
	Prefix string
	// Hosts is the number of hosts, 1..MaxHosts. Default 1.
	Hosts int
	// UnderlayMTU is the MTU of the bridge and the underlay veths.
	// Default 1500.
	UnderlayMTU int
	// Dir is the state directory (logs, per-host directories). Default: a
	// new temporary directory, removed by Close unless KeepDir is set. A
	// directory given here belongs to the caller and is never removed.
	Dir string
	// KeepDir keeps a generated Dir after Close (for reading logs).
	KeepDir bool
	// IPv6 gives the underlay IPv6 addresses too (host i: 2001:db8::(i+1),
	// the bridge SwitchIP6, without duplicate address detection), and
	// lets AttachPod6 give pods IPv6. Without it IPv6 is off in every
	// namespace, so router solicitations and DAD stay out of captures.
	IPv6 bool
}

// Lab is a running lab. Its fields are read-only.
type Lab struct {
	Prefix string
	Dir    string
	// Switch is the switch namespace; Bridge the bridge inside it, which
	// holds SwitchIP.
	Switch string
	Bridge string
	MTU    int
	Hosts  []*Host
	IPv6   bool // Options.IPv6

	mu         sync.Mutex
	closed     bool
	closeErr   error
	namespaces []string // created so far, in creation order
	procs      []*Proc
	ownDir     bool
	keepDir    bool
}

// Host is one host of the lab.
type Host struct {
	Index    int    // 1-based
	Name     string // host namespace
	Underlay string // underlay veth, inside Name
	IP       netip.Addr
	IP6      netip.Addr // the underlay IPv6 address (Options.IPv6)
	// Pod is the pod namespace; PodVeth the host side of its veth (in Name),
	// PodPeer the pod side (in Pod).
	Pod     string
	PodVeth string
	PodPeer string
	// PodSubnet and PodIP are set by AttachPod; PodSubnet6 and PodIP6 by
	// AttachPod6.
	PodSubnet  netip.Prefix
	PodIP      netip.Addr
	PodSubnet6 netip.Prefix
	PodIP6     netip.Addr
	// Dir is the host's own state directory (subnet file, sockets, logs).
	Dir string

	lab *Lab
}

// New builds a lab. On error everything created so far is removed.
func New(opts Options) (*Lab, error) {
	if opts.Hosts == 0 {
		opts.Hosts = 1
	}
	if opts.Hosts < 1 || opts.Hosts > MaxHosts {
		return nil, fmt.Errorf("lab: Hosts = %d, want 1..%d", opts.Hosts, MaxHosts)
	}
	if opts.UnderlayMTU == 0 {
		opts.UnderlayMTU = 1500
	}
	if opts.UnderlayMTU < 576 || opts.UnderlayMTU > 65535 {
		return nil, fmt.Errorf("lab: UnderlayMTU = %d, want 576..65535", opts.UnderlayMTU)
	}
	if err := checkTools(); err != nil {
		return nil, err
	}
	if opts.Prefix == "" {
		p, err := generatePrefix()
		if err != nil {
			return nil, err
		}
		opts.Prefix = p
	} else if !validPrefix.MatchString(opts.Prefix) {
		return nil, fmt.Errorf("lab: Prefix %q: want 1-8 lower-case letters or digits starting with a letter (link names are limited to 15 characters)", opts.Prefix)
	}
	if nsExists(opts.Prefix + "-sw") {
		return nil, fmt.Errorf("lab: a lab with prefix %q already exists (remove it with lab.Cleanup / weft bench --cleanup)", opts.Prefix)
	}

	l := &Lab{
		Prefix:  opts.Prefix,
		Switch:  opts.Prefix + "-sw",
		Bridge:  opts.Prefix + "br",
		MTU:     opts.UnderlayMTU,
		IPv6:    opts.IPv6,
		keepDir: opts.KeepDir,
	}
	if opts.Dir == "" {
		d, err := os.MkdirTemp("", "weft-lab-"+l.Prefix+"-")
		if err != nil {
			return nil, fmt.Errorf("lab: state dir: %w", err)
		}
		l.Dir, l.ownDir = d, true
	} else {
		if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("lab: state dir: %w", err)
		}
		l.Dir = opts.Dir
	}
	if err := l.register(); err != nil {
		l.Close()
		return nil, err
	}
	for i := 1; i <= opts.Hosts; i++ {
		n := strconv.Itoa(i)
		h := &Host{
			Index:    i,
			Name:     l.Prefix + "-h" + n,
			Underlay: l.Prefix + "h" + n,
			IP:       netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}),
			Pod:      l.Prefix + "-p" + n,
			PodVeth:  l.Prefix + "h" + n + "p",
			PodPeer:  l.Prefix + "p" + n,
			Dir:      filepath.Join(l.Dir, "h"+n),
			lab:      l,
		}
		if opts.IPv6 {
			b := SwitchIP6.As16()
			b[15] = byte(i + 1)
			h.IP6 = netip.AddrFrom16(b)
		}
		l.Hosts = append(l.Hosts, h)
	}
	if err := l.build(); err != nil {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("lab: teardown after failed build: %w", cerr))
		}
		return nil, err
	}
	return l, nil
}

// Host returns host i (1-based), or nil.
func (l *Lab) Host(i int) *Host {
	if i < 1 || i > len(l.Hosts) {
		return nil
	}
	return l.Hosts[i-1]
}

// Namespaces lists the lab's namespaces.
func (l *Lab) Namespaces() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.namespaces...)
}

// LogDir is where process logs go.
func (l *Lab) LogDir() string { return filepath.Join(l.Dir, "logs") }

func (l *Lab) build() error {
	if err := os.MkdirAll(l.LogDir(), 0o755); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	for _, h := range l.Hosts {
		if err := os.MkdirAll(h.Dir, 0o755); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}
	if err := l.addNamespace(l.Switch); err != nil {
		return err
	}
	if err := setupSwitch(l); err != nil {
		return err
	}
	for _, h := range l.Hosts {
		if err := l.addNamespace(h.Name); err != nil {
			return err
		}
		if err := l.addNamespace(h.Pod); err != nil {
			return err
		}
		if err := setupHost(l, h); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) addNamespace(name string) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return errors.New("lab: closed")
	}
	l.namespaces = append(l.namespaces, name)
	l.mu.Unlock()
	return nsAdd(name)
}

// AttachPod gives the pod of h the subnet: the host side of the pod veth
// gets the subnet's first address (.1), the pod side the second (.2) with a
// default route through .1, and IPv4 forwarding is enabled in the host
// namespace, as a CNI bridge/ptp plugin would.
func (h *Host) AttachPod(subnet netip.Prefix) error {
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() || subnet.Bits() > 30 {
		return fmt.Errorf("lab: AttachPod(%s): want an IPv4 subnet of /30 or larger", subnet)
	}
	gw := subnet.Addr().Next()
	pod := gw.Next()
	if err := attachPod(h, netip.PrefixFrom(gw, subnet.Bits()), netip.PrefixFrom(pod, subnet.Bits())); err != nil {
		return fmt.Errorf("lab: AttachPod(%s) on %s: %w", subnet, h.Name, err)
	}
	h.PodSubnet, h.PodIP = subnet, pod
	return nil
}

// AttachPod6 gives the pod of h an IPv6 subnet as AttachPod gives an
// IPv4 one: ::1 on the host side, ::2 in the pod with a default route
// through ::1, IPv6 forwarding on in the host namespace. The lab must
// have Options.IPv6.
func (h *Host) AttachPod6(subnet netip.Prefix) error {
	subnet = subnet.Masked()
	if !h.lab.IPv6 || !subnet.Addr().Is6() || subnet.Bits() > 126 {
		return fmt.Errorf("lab: AttachPod6(%s): want an IPv6 subnet of /126 or larger in a lab with Options.IPv6", subnet)
	}
	gw := subnet.Addr().Next()
	pod := gw.Next()
	if err := attachPod(h, netip.PrefixFrom(gw, subnet.Bits()), netip.PrefixFrom(pod, subnet.Bits())); err != nil {
		return fmt.Errorf("lab: AttachPod6(%s) on %s: %w", subnet, h.Name, err)
	}
	h.PodSubnet6, h.PodIP6 = subnet, pod
	return nil
}

// SetPodMTU sets the MTU of both ends of the pod veth (a CNI plugin sets it
// to the overlay's MTU, FLANNEL_MTU).
func (h *Host) SetPodMTU(mtu int) error {
	if err := setPodMTU(h, mtu); err != nil {
		return fmt.Errorf("lab: SetPodMTU(%d) on %s: %w", mtu, h.Name, err)
	}
	return nil
}

func generatePrefix() (string, error) {
	for range 16 {
		var b [2]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("lab: random prefix: %w", err)
		}
		p := "wl" + hex.EncodeToString(b[:])
		if !nsExists(p+"-sw") && !registered(p) {
			return p, nil
		}
	}
	return "", errors.New("lab: could not find an unused prefix")
}
