package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 (and `ip netns exec`) keeps named namespaces.
const netnsDir = "/run/netns"

func checkTools() error {
	if os.Geteuid() != 0 {
		return errors.New("lab: needs root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("lab: needs iproute2's `ip` in PATH (apt-get install iproute2)")
	}
	return nil
}

// Namespaces are created with `ip netns add` rather than netns.NewNamed:
// iproute2 makes /run/netns a shared mount, so a deletion propagates into
// the mount namespaces `ip netns exec` creates, and no copy pins a deleted
// namespace.
func nsAdd(name string) error {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("lab: ip netns add %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func nsDel(name string) error {
	if !nsExists(name) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("lab: ip netns del %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func nsExists(name string) bool {
	_, err := os.Stat(netnsDir + "/" + name)
	return err == nil
}

// listNamespaces returns the named namespaces.
func listNamespaces() ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// nsPids returns the processes whose network namespace is name, found as
// `ip netns pids` does: by comparing /proc/PID/ns/net with the namespace's
// inode.
func nsPids(name string) []int {
	var want syscall.Stat_t
	if err := syscall.Stat(netnsDir+"/"+name, &want); err != nil {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name()+"/ns/net", &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			pids = append(pids, pid)
		}
	}
	return pids
}

// InNamespace runs fn on an OS thread switched into the named network
// namespace. Sockets fn opens stay in that namespace and may be used from
// any goroutine afterwards. The thread is switched back afterwards and
// released only if that worked; otherwise it stays locked and exits with
// its goroutine, so no other goroutine ever runs in the wrong namespace.
// (Never leaving it behind matters: when the thread is the process's main
// thread, Go parks it instead of exiting it, and /proc/PID/ns/net, which
// reads the main thread, would then name the lab's namespace.)
func InNamespace(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("lab: current namespace: %w", err)
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: namespace %s: %w", name, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("lab: enter namespace %s: %w", name, err)
			return
		}
		ferr := fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// WriteSysctl writes a sysctl (path under /proc/sys, e.g.
// "net/ipv4/ip_forward") inside a namespace. Network sysctls resolve to the
// namespace of the thread that opens them.
func WriteSysctl(ns, key, value string) error {
	return InNamespace(ns, func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	})
}

// handle returns a netlink handle operating inside the named namespace, and
// the namespace's fd (valid until the handle is closed).
func handle(name string) (*netlink.Handle, netns.NsHandle, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, 0, fmt.Errorf("lab: namespace %s: %w", name, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, 0, fmt.Errorf("lab: netlink in %s: %w", name, err)
	}
	return h, ns, nil
}

func linkUp(h *netlink.Handle, ns, name string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("lab: %s in %s: %w", name, ns, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("lab: set %s up in %s: %w", name, ns, err)
	}
	return nil
}

func addAddr(h *netlink.Handle, ns, name string, p netip.Prefix) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("lab: %s in %s: %w", name, ns, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD // usable at once, as the recordings' `nodad`
	}
	if err := h.AddrReplace(link, a); err != nil {
		return fmt.Errorf("lab: address %s on %s in %s: %w", p, name, ns, err)
	}
	return nil
}

// quietIPv6 turns IPv6 off in a namespace so router solicitations and DAD
// do not show up in captures and counters. Kernels without IPv6 lack the
// key, which is fine.
func quietIPv6(ns string) {
	_ = WriteSysctl(ns, "net/ipv6/conf/all/disable_ipv6", "1")
	_ = WriteSysctl(ns, "net/ipv6/conf/default/disable_ipv6", "1")
}

// labIPv6 sets a namespace up for a lab with IPv6: on, but without router
// advertisements or duplicate address detection, so addresses are usable
// at once and nothing but the test's traffic is sent.
func labIPv6(ns string) {
	for _, k := range []string{"all", "default"} {
		_ = WriteSysctl(ns, "net/ipv6/conf/"+k+"/accept_ra", "0")
		_ = WriteSysctl(ns, "net/ipv6/conf/"+k+"/accept_dad", "0")
		_ = WriteSysctl(ns, "net/ipv6/conf/"+k+"/router_solicitations", "0")
	}
}

// ipv6Setup is quietIPv6 or, in a lab with IPv6, labIPv6.
func (l *Lab) ipv6Setup(ns string) {
	if l.IPv6 {
		labIPv6(ns)
	} else {
		quietIPv6(ns)
	}
}

func setupSwitch(l *Lab) error {
	l.ipv6Setup(l.Switch)
	h, ns, err := handle(l.Switch)
	if err != nil {
		return err
	}
	defer ns.Close()
	defer h.Close()
	if err := linkUp(h, l.Switch, "lo"); err != nil {
		return err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = l.Bridge, l.MTU
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		return fmt.Errorf("lab: bridge %s in %s: %w", l.Bridge, l.Switch, err)
	}
	if err := addAddr(h, l.Switch, l.Bridge, netip.PrefixFrom(SwitchIP, UnderlayNet.Bits())); err != nil {
		return err
	}
	if l.IPv6 {
		if err := addAddr(h, l.Switch, l.Bridge, netip.PrefixFrom(SwitchIP6, UnderlayNet6.Bits())); err != nil {
			return err
		}
	}
	return linkUp(h, l.Switch, l.Bridge)
}

// newVeth creates a veth pair with one end in the namespace of h and the
// other in peerNs, so neither end ever exists in the caller's namespace.
func newVeth(h *netlink.Handle, name, peer string, peerNs netns.NsHandle, mtu int) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = name, mtu
	v := &netlink.Veth{LinkAttrs: attrs, PeerName: peer, PeerTxQLen: -1, PeerNamespace: netlink.NsFd(peerNs)}
	return h.LinkAdd(v)
}

func setupHost(l *Lab, host *Host) error {
	l.ipv6Setup(host.Name)
	l.ipv6Setup(host.Pod)
	sw, swNs, err := handle(l.Switch)
	if err != nil {
		return err
	}
	defer swNs.Close()
	defer sw.Close()
	h, hNs, err := handle(host.Name)
	if err != nil {
		return err
	}
	defer hNs.Close()
	defer h.Close()
	p, pNs, err := handle(host.Pod)
	if err != nil {
		return err
	}
	defer pNs.Close()
	defer p.Close()

	// Underlay: host <-> switch bridge.
	swPort := l.Prefix + "s" + strconv.Itoa(host.Index)
	if err := newVeth(h, host.Underlay, swPort, swNs, l.MTU); err != nil {
		return fmt.Errorf("lab: veth %s (%s) <-> %s (%s): %w", host.Underlay, host.Name, swPort, l.Switch, err)
	}
	br, err := sw.LinkByName(l.Bridge)
	if err != nil {
		return fmt.Errorf("lab: %s in %s: %w", l.Bridge, l.Switch, err)
	}
	port, err := sw.LinkByName(swPort)
	if err != nil {
		return fmt.Errorf("lab: %s in %s: %w", swPort, l.Switch, err)
	}
	if err := sw.LinkSetMaster(port, br); err != nil {
		return fmt.Errorf("lab: attach %s to %s: %w", swPort, l.Bridge, err)
	}
	if err := linkUp(sw, l.Switch, swPort); err != nil {
		return err
	}
	for _, n := range []string{"lo", host.Underlay} {
		if err := linkUp(h, host.Name, n); err != nil {
			return err
		}
	}
	if err := addAddr(h, host.Name, host.Underlay, netip.PrefixFrom(host.IP, UnderlayNet.Bits())); err != nil {
		return err
	}
	if l.IPv6 {
		if err := addAddr(h, host.Name, host.Underlay, netip.PrefixFrom(host.IP6, UnderlayNet6.Bits())); err != nil {
			return err
		}
	}

	// Pod: host <-> pod, addressed later by AttachPod.
	if err := newVeth(h, host.PodVeth, host.PodPeer, pNs, 1500); err != nil {
		return fmt.Errorf("lab: veth %s (%s) <-> %s (%s): %w", host.PodVeth, host.Name, host.PodPeer, host.Pod, err)
	}
	if err := linkUp(h, host.Name, host.PodVeth); err != nil {
		return err
	}
	for _, n := range []string{"lo", host.PodPeer} {
		if err := linkUp(p, host.Pod, n); err != nil {
			return err
		}
	}
	return nil
}

func attachPod(host *Host, gw, pod netip.Prefix) error {
	h, hNs, err := handle(host.Name)
	if err != nil {
		return err
	}
	defer hNs.Close()
	defer h.Close()
	p, pNs, err := handle(host.Pod)
	if err != nil {
		return err
	}
	defer pNs.Close()
	defer p.Close()
	if err := addAddr(h, host.Name, host.PodVeth, gw); err != nil {
		return err
	}
	if err := addAddr(p, host.Pod, host.PodPeer, pod); err != nil {
		return err
	}
	link, err := p.LinkByName(host.PodPeer)
	if err != nil {
		return err
	}
	def := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.Addr().AsSlice(),
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
	if gw.Addr().Is6() {
		def.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	if err := p.RouteReplace(def); err != nil {
		return fmt.Errorf("default route via %s: %w", gw.Addr(), err)
	}
	if gw.Addr().Is6() {
		return WriteSysctl(host.Name, "net/ipv6/conf/all/forwarding", "1")
	}
	return WriteSysctl(host.Name, "net/ipv4/ip_forward", "1")
}

func setPodMTU(host *Host, mtu int) error {
	for _, e := range []struct{ ns, link string }{{host.Name, host.PodVeth}, {host.Pod, host.PodPeer}} {
		h, ns, err := handle(e.ns)
		if err != nil {
			return err
		}
		link, err := h.LinkByName(e.link)
		if err == nil {
			err = h.LinkSetMTU(link, mtu)
		}
		h.Close()
		ns.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", e.link, err)
		}
	}
	return nil
}
