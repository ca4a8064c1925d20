package scale

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/daemon"
	"github.com/weft-net/weft/encap/kernel"
)

// kernelBackend: vxlan and host-gw program the kernel; udp and uvxlan
// (vxlan from userspace, --no-kernel-vxlan) program the engine's table.
func kernelBackend(typ string) bool { return typ == "vxlan" || typ == "host-gw" }

// checker tells whether a weft host holds exactly the wanted peers: the
// kernel's tagged routes (and, for vxlan, the permanent neighbours and FDB
// entries of flannel.1) for the kernel backends, the admitted peers of
// `weft status` for udp.
type checker struct {
	typ    string
	h      *netlink.Handle
	ns     netns.NsHandle
	status daemon.Client
}

func newChecker(typ, nsName, debugSocket string) (*checker, error) {
	c := &checker{typ: typ, status: daemon.Client{Socket: debugSocket}}
	if !kernelBackend(typ) {
		return c, nil
	}
	ns, err := netns.GetFromName(nsName)
	if err != nil {
		return nil, err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, err
	}
	c.h, c.ns = h, ns
	return c, nil
}

func (c *checker) close() {
	if c.h != nil {
		c.h.Close()
		c.ns.Close()
	}
}

// correct reports whether the host holds exactly want, and if not, a short
// account of what it holds.
func (c *checker) correct(want map[netip.Prefix]bool) (bool, string, error) {
	if !kernelBackend(c.typ) {
		return c.udpCorrect(want)
	}
	routes, err := kernel.Dump(func() ([]netlink.Route, error) {
		return c.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: kernel.RouteProtocol},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		return false, "", err
	}
	got := 0
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(r.Dst.IP)
		bits, _ := r.Dst.Mask.Size()
		if !want[netip.PrefixFrom(ip.Unmap(), bits)] {
			return false, fmt.Sprintf("unwanted route %s", r.Dst), nil
		}
		got++
	}
	if got != len(want) {
		return false, fmt.Sprintf("%d of %d routes", got, len(want)), nil
	}
	if c.typ != "vxlan" {
		return true, "", nil
	}
	link, err := c.h.LinkByName("flannel.1")
	if err != nil {
		return false, "", err
	}
	neighs, err := kernel.Dump(func() ([]netlink.Neigh, error) { return c.h.NeighList(link.Attrs().Index, netlink.FAMILY_V4) })
	if err != nil {
		return false, "", err
	}
	n := 0
	for _, nb := range neighs {
		if nb.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		ip, _ := netip.AddrFromSlice(nb.IP)
		if !want[netip.PrefixFrom(ip.Unmap(), SubnetLen)] {
			return false, fmt.Sprintf("unwanted neighbour %s", ip), nil
		}
		n++
	}
	if n != len(want) {
		return false, fmt.Sprintf("%d of %d neighbours", n, len(want)), nil
	}
	fdb, err := kernel.Dump(func() ([]netlink.Neigh, error) { return c.h.NeighList(link.Attrs().Index, unix.AF_BRIDGE) })
	if err != nil {
		return false, "", err
	}
	n = 0
	for _, f := range fdb {
		if f.LinkIndex == link.Attrs().Index && f.IP != nil {
			n++
		}
	}
	if n != len(want) {
		return false, fmt.Sprintf("%d of %d fdb entries", n, len(want)), nil
	}
	return true, "", nil
}

func (c *checker) udpCorrect(want map[netip.Prefix]bool) (bool, string, error) {
	b, err := c.status.Get("/status")
	if err != nil {
		return false, "", err
	}
	var r struct {
		Peers []struct {
			Subnet netip.Prefix `json:"subnet"`
		} `json:"peers"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return false, "", err
	}
	for _, p := range r.Peers {
		if !want[p.Subnet] {
			return false, fmt.Sprintf("unwanted peer %s", p.Subnet), nil
		}
	}
	if len(r.Peers) != len(want) {
		return false, fmt.Sprintf("%d of %d peers", len(r.Peers), len(want)), nil
	}
	return true, "", nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux architecture weft runs on.
const clockTicks = 100

// cpuTime is the process's CPU time so far: its threads' on-CPU time in
// nanoseconds (OnCPU) where the kernel keeps schedstat, else
// /proc/<pid>/stat's user and system time, in 10 ms clock ticks (too
// coarse for a churn of a few events, and for leaving out the checks a
// churn's figure must not hold).
func cpuTime(pid int) (time.Duration, error) {
	if d, ok := OnCPU(pid); ok {
		return d, nil
	}
	return statTime(pid)
}

// OnCPU is the time the process's threads have run so far
// (/proc/<pid>/task/*/schedstat, nanoseconds); false where the kernel
// has no schedstat. Threads that exited are not counted (Go's rarely do).
func OnCPU(pid int) (time.Duration, bool) {
	paths, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var sum time.Duration
	n := 0
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread exited
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			if ns, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				sum += time.Duration(ns)
				n++
			}
		}
	}
	return sum, n > 0
}

// statTime is the process's user+system CPU time so far, from
// /proc/<pid>/stat.
func statTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces), from field 3.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64) // field 14, utime
	st, err2 := strconv.ParseUint(f[12], 10, 64) // field 15, stime
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// rss is the process's resident set size in bytes (VmRSS).
func rss(pid int) (uint64, error) { return procStatus(pid, "VmRSS:") }

// rssAnon is its anonymous part (RssAnon).
func rssAnon(pid int) (uint64, error) { return procStatus(pid, "RssAnon:") }

// memory is the most of a process's VmRSS and of its anonymous part seen
// over some samples (each its own maximum: the file-backed part moves on
// its own, as the kernel maps and unmaps the binary's pages).
type memory struct{ rss, anon uint64 }

// sample adds pid's current figures.
func (m *memory) sample(pid int) {
	if r, err := rss(pid); err == nil {
		m.rss = max(m.rss, r)
	}
	if a, err := rssAnon(pid); err == nil {
		m.anon = max(m.anon, a)
	}
}

// add merges o's maxima.
func (m *memory) add(o memory) { m.rss, m.anon = max(m.rss, o.rss), max(m.anon, o.anon) }

// procStatus reads a size in kB from /proc/<pid>/status, in bytes.
func procStatus(pid int, field string) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, strings.TrimSuffix(field, ":"))
}

// deleteOne deletes the route to sn (and, for vxlan, its neighbour and
// FDB entry) as someone might by hand.
func (c *checker) deleteOne(sn netip.Prefix) error {
	dst := &net.IPNet{IP: sn.Addr().AsSlice(), Mask: net.CIDRMask(sn.Bits(), 32)}
	if err := c.h.RouteDel(&netlink.Route{Dst: dst, Table: unix.RT_TABLE_MAIN}); err != nil {
		return fmt.Errorf("deleting the route to %s: %w", sn, err)
	}
	if c.typ != "vxlan" {
		return nil
	}
	link, err := c.h.LinkByName("flannel.1")
	if err != nil {
		return err
	}
	nb := &netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4, IP: sn.Addr().AsSlice()}
	neighs, err := c.h.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	var mac net.HardwareAddr
	for _, n := range neighs {
		if n.IP.Equal(nb.IP) {
			mac = n.HardwareAddr
		}
	}
	if err := c.h.NeighDel(nb); err != nil {
		return fmt.Errorf("deleting the neighbour %s: %w", sn.Addr(), err)
	}
	fdb, err := c.h.NeighList(link.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return err
	}
	for _, f := range fdb {
		if mac != nil && f.HardwareAddr.String() == mac.String() {
			f.Family, f.Flags = unix.AF_BRIDGE, f.Flags|netlink.NTF_SELF
			if err := c.h.NeighDel(&f); err != nil {
				return fmt.Errorf("deleting the fdb entry of %s: %w", mac, err)
			}
		}
	}
	return nil
}
