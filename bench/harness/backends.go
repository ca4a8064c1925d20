package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/bench/lab"
)

// Backend names accepted by the bench.
const (
	BackendVeth         = "veth"
	BackendUDP          = "udp"
	BackendUDPUnbatched = "udp-unbatched"
	BackendUDPRealtime  = "udp-rt"
	BackendUDPQueues2   = "udp-q2"
	BackendVXLAN        = "vxlan"
	BackendHostGW       = "host-gw"
	BackendUVXLAN       = "uvxlan"
	BackendUVXLANQueues = "uvxlan-q2"
	// BackendFlanneld is real flanneld hosts (--flanneld PATH) with the
	// UDP backend; not in Backends, since it needs a binary weft lacks.
	BackendFlanneld = "flanneld"
)

// Backends lists every backend, in the order the bench reports them.
var Backends = []string{BackendVeth, BackendHostGW, BackendVXLAN, BackendUVXLAN, BackendUVXLANQueues, BackendUDP, BackendUDPQueues2, BackendUDPRealtime, BackendUDPUnbatched}

// BackendLabel says what a row measures.
func BackendLabel(name string) string {
	switch name {
	case BackendVeth:
		return "bare underlay (host to host over the veth/bridge, no overlay)"
	case BackendUDP:
		return "weft UDP backend (batched, offloads on)"
	case BackendUDPRealtime:
		return "weft UDP backend with --realtime-priority 1 (forwarding loops at SCHED_FIFO)"
	case BackendUDPQueues2:
		return "weft UDP backend with --queues 2 (a multi-queue TUN, a loop pair and a socket per queue)"
	case BackendUDPUnbatched:
		return "weft UDP backend with --batch-size 1 and every offload off (flannel's one-packet-per-syscall design)"
	case BackendVXLAN:
		return "kernel vxlan, configured by the bench with netlink exactly as flanneld's vxlan backend does"
	case BackendUVXLAN:
		return "weft userspace VXLAN (Backend.Type vxlan with --no-kernel-vxlan; leases from etcd, which carry the VtepMACs)"
	case BackendUVXLANQueues:
		return "weft userspace VXLAN with --queues 2 (a multi-queue TUN, a loop pair and a Transport per queue)"
	case BackendHostGW:
		return "host-gw routes, configured by the bench with netlink exactly as flanneld's host-gw backend does"
	case BackendFlanneld:
		return "flanneld itself (the --flanneld binary), UDP backend, leases from the same etcd"
	}
	return name
}

// BackendLabel6 says what a row measures with BenchConfig.IPv6.
func BackendLabel6(name string) string {
	switch name {
	case BackendVeth:
		return "bare underlay over IPv6 (host to host, no overlay)"
	case BackendVXLAN:
		return "kernel vxlan over IPv6 (flannel-v6.1 on the IPv6 underlay), configured by weft's vxlan backend as flanneld's"
	case BackendHostGW:
		return "host-gw IPv6 routes, configured by weft's host-gw backend as flanneld's"
	}
	return BackendLabel(name) + ", IPv6 inner packets"
}

// unbatchedFlags make weft move one packet per system call with no
// offloads: flannel's UDP design on weft's code.
var unbatchedFlags = []string{"--batch-size=1", "--no-tun-offload", "--no-udp-gso", "--no-udp-gro"}

// Leases say where the weft backends get their peers from.
const (
	LeasesEtcd   = "etcd"   // weft etcd in the switch namespace (the real setup)
	LeasesStatic = "static" // --static-* flags (no etcd)
)

// benchNetwork is the cluster network of every backend; host i gets
// 10.5.i.0/24 where the bench assigns subnets itself.
var benchNetwork = netip.MustParsePrefix("10.5.0.0/16")

// benchNetwork6 is the IPv6 network of a dual-stack bench (BenchConfig.IPv6).
var benchNetwork6 = netip.MustParsePrefix("fd00:10:5::/56")

func benchSubnet(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24)
}

// Path is where a backend's traffic flows: client namespace to server
// namespace and address.
type Path struct {
	ClientNS, ServerNS string
	ServerIP           netip.Addr
}

// SetupBackend configures backend on c's lab and returns the measured
// path: pod of host 1 to pod of host 2 (host to host for veth).
func SetupBackend(ctx context.Context, c *Cluster, backend, leases string) (Path, error) {
	p, err := setupBackend(ctx, c, backend, leases)
	if err != nil {
		return p, err
	}
	if _, err := WaitPath(ctx, p.ClientNS, p.ServerIP, 15*time.Second); err != nil {
		return p, fmt.Errorf("backend %s: %w", backend, err)
	}
	return p, nil
}

func setupBackend(ctx context.Context, c *Cluster, backend, leases string) (Path, error) {
	l := c.Lab
	h1, h2 := l.Host(1), l.Host(2)
	if h2 == nil {
		return Path{}, fmt.Errorf("backend %s: needs at least 2 hosts", backend)
	}
	podPath := func() Path { return Path{ClientNS: h1.Pod, ServerNS: h2.Pod, ServerIP: h2.PodIP} }
	if c.IPv6 {
		podPath = func() Path { return Path{ClientNS: h1.Pod, ServerNS: h2.Pod, ServerIP: h2.PodIP6} }
	}
	switch backend {
	case BackendVeth:
		if c.IPv6 {
			return Path{ClientNS: h1.Name, ServerNS: h2.Name, ServerIP: h2.IP6}, nil
		}
		return Path{ClientNS: h1.Name, ServerNS: h2.Name, ServerIP: h2.IP}, nil
	case BackendUDP, BackendUDPRealtime, BackendUDPQueues2, BackendUDPUnbatched:
		var extra []string
		switch backend {
		case BackendUDPQueues2:
			extra = []string{"--queues=2"}
		case BackendUDPUnbatched:
			extra = unbatchedFlags
		case BackendUDPRealtime:
			extra = []string{"--realtime-priority=1"}
		}
		if err := startWeftAll(ctx, c, leases, "udp", extra); err != nil {
			return Path{}, err
		}
		return podPath(), nil
	case BackendUVXLAN, BackendUVXLANQueues:
		// Static peers carry no VtepMAC, so these rows always lease
		// through etcd.
		extra := []string{"--no-kernel-vxlan"}
		if backend == BackendUVXLANQueues {
			extra = append(extra, "--queues=2")
		}
		if err := startWeftAll(ctx, c, LeasesEtcd, "vxlan", extra); err != nil {
			return Path{}, err
		}
		return podPath(), nil
	case BackendFlanneld:
		if c.Flanneld == "" {
			return Path{}, fmt.Errorf("backend %s: give the flanneld binary with --flanneld PATH", backend)
		}
		if err := c.StartEtcd(ctx, `{"Network":"`+benchNetwork.String()+`","SubnetLen":24,"Backend":{"Type":"udp"}}`); err != nil {
			return Path{}, fmt.Errorf("etcd: %w", err)
		}
		for _, h := range l.Hosts {
			if err := c.StartFlanneld(h); err != nil {
				return Path{}, err
			}
		}
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := c.WaitSubnets(wctx); err != nil {
			return Path{}, err
		}
		return podPath(), nil
	case BackendVXLAN, BackendHostGW:
		if c.IPv6 {
			if err := startWeftAll(ctx, c, LeasesEtcd, backend, nil); err != nil {
				return Path{}, err
			}
			return podPath(), nil
		}
		subnets := make([]netip.Prefix, len(l.Hosts))
		for i := range subnets {
			subnets[i] = benchSubnet(i + 1)
		}
		var err error
		if backend == BackendVXLAN {
			err = setupVXLAN(l, subnets)
		} else {
			err = setupHostGW(l, subnets)
		}
		if err != nil {
			return Path{}, fmt.Errorf("backend %s: %w", backend, err)
		}
		mtu := l.MTU
		if backend == BackendVXLAN {
			mtu = l.MTU - 50
		}
		for i, h := range l.Hosts {
			if err := h.AttachPod(subnets[i]); err != nil {
				return Path{}, err
			}
			if err := h.SetPodMTU(mtu); err != nil {
				return Path{}, err
			}
		}
		return podPath(), nil
	}
	return Path{}, fmt.Errorf("unknown backend %q (want one of %s)", backend, strings.Join(Backends, ", "))
}

func startWeftAll(ctx context.Context, c *Cluster, leases, backendType string, extra []string) error {
	switch leases {
	case LeasesEtcd:
		v6 := ""
		if c.IPv6 {
			v6 = `"EnableIPv6":true,"IPv6Network":"` + benchNetwork6.String() + `",`
		}
		if err := c.StartEtcd(ctx, `{"Network":"`+benchNetwork.String()+`","SubnetLen":24,`+v6+`"Backend":{"Type":"`+backendType+`"}}`); err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		for _, h := range c.Lab.Hosts {
			if err := c.StartWeft(h, extra...); err != nil {
				return err
			}
		}
	case LeasesStatic:
		subnets := make([]netip.Prefix, len(c.Lab.Hosts))
		for i := range subnets {
			subnets[i] = benchSubnet(i + 1)
		}
		for _, h := range c.Lab.Hosts {
			if err := c.StartWeftStatic(h, benchNetwork, subnets, extra...); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("leases %q: want etcd or static", leases)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return c.WaitSubnets(wctx)
}

// WeftStats returns `weft stats` of host h's engine (raw JSON), or nil.
func (c *Cluster) WeftStats(ctx context.Context, h *lab.Host) json.RawMessage {
	if c.Runs[h.Index-1] == nil {
		return nil
	}
	out, err := c.Lab.ExecContext(ctx, h.Name, c.Binary, "stats", "--debug-socket="+DebugSocket(h))
	if err != nil || !json.Valid(out) {
		return nil
	}
	return out
}

// withHandle runs fn with a netlink handle inside namespace ns.
func withHandle(ns string, fn func(h *netlink.Handle) error) error {
	nsh, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("namespace %s: %w", ns, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", ns, err)
	}
	defer h.Close()
	return fn(h)
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// setupHostGW routes each peer's subnet via the peer's underlay address,
// as flanneld's host-gw backend does (pkg/backend/hostgw).
func setupHostGW(l *lab.Lab, subnets []netip.Prefix) error {
	for i, h := range l.Hosts {
		err := withHandle(h.Name, func(nh *netlink.Handle) error {
			under, err := nh.LinkByName(h.Underlay)
			if err != nil {
				return err
			}
			for j, peer := range l.Hosts {
				if j == i {
					continue
				}
				r := &netlink.Route{Dst: ipnet(subnets[j]), Gw: peer.IP.AsSlice(), LinkIndex: under.Attrs().Index}
				if err := nh.RouteReplace(r); err != nil {
					return fmt.Errorf("route %s via %s: %w", subnets[j], peer.IP, err)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
	}
	return nil
}

// vxlanDev, vxlanVNI and vxlanPort are flanneld's defaults.
const (
	vxlanDev  = "flannel.1"
	vxlanVNI  = 1
	vxlanPort = 8472
)

// setupVXLAN builds flanneld's vxlan backend (pkg/backend/vxlan): a
// flannel.1 device (VNI 1, port 8472, no learning) holding the subnet's
// network address as /32, and per peer an onlink route to the peer's
// subnet via its VTEP address (the peer subnet's .0), a permanent ARP entry
// for that address and an FDB entry sending the VTEP's MAC to the peer's
// underlay address.
func setupVXLAN(l *lab.Lab, subnets []netip.Prefix) error {
	macs := make([]net.HardwareAddr, len(l.Hosts))
	for i, h := range l.Hosts {
		err := withHandle(h.Name, func(nh *netlink.Handle) error {
			under, err := nh.LinkByName(h.Underlay)
			if err != nil {
				return err
			}
			attrs := netlink.NewLinkAttrs()
			attrs.Name, attrs.MTU = vxlanDev, l.MTU-50
			vx := &netlink.Vxlan{LinkAttrs: attrs, VxlanId: vxlanVNI, VtepDevIndex: under.Attrs().Index,
				SrcAddr: h.IP.AsSlice(), Port: vxlanPort, Learning: false}
			if err := nh.LinkAdd(vx); err != nil {
				return fmt.Errorf("add %s: %w", vxlanDev, err)
			}
			link, err := nh.LinkByName(vxlanDev)
			if err != nil {
				return err
			}
			addr := &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(subnets[i].Addr(), 32))}
			if err := nh.AddrReplace(link, addr); err != nil {
				return fmt.Errorf("address on %s: %w", vxlanDev, err)
			}
			if err := nh.LinkSetUp(link); err != nil {
				return err
			}
			macs[i] = link.Attrs().HardwareAddr
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
	}
	for i, h := range l.Hosts {
		err := withHandle(h.Name, func(nh *netlink.Handle) error {
			link, err := nh.LinkByName(vxlanDev)
			if err != nil {
				return err
			}
			idx := link.Attrs().Index
			for j, peer := range l.Hosts {
				if j == i {
					continue
				}
				vtep := subnets[j].Addr()
				arp := &netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
					Type: unix.RTN_UNICAST, IP: vtep.AsSlice(), HardwareAddr: macs[j]}
				if err := nh.NeighSet(arp); err != nil {
					return fmt.Errorf("neigh %s: %w", vtep, err)
				}
				fdb := &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
					Flags: netlink.NTF_SELF, IP: peer.IP.AsSlice(), HardwareAddr: macs[j]}
				if err := nh.NeighSet(fdb); err != nil {
					return fmt.Errorf("fdb %s -> %s: %w", macs[j], peer.IP, err)
				}
				r := &netlink.Route{LinkIndex: idx, Dst: ipnet(subnets[j]), Gw: vtep.AsSlice(), Flags: int(netlink.FLAG_ONLINK)}
				if err := nh.RouteReplace(r); err != nil {
					return fmt.Errorf("route %s via %s onlink: %w", subnets[j], vtep, err)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
	}
	return nil
}
