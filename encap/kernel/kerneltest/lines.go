package kerneltest

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/encap/kernel"
)

// StateLines renders the kernel state the kernel backends manage as
// iproute2 prints it in the fixtures' kernel-state files, sorted: routes
// of the main table the kernel did not make (`ip route`, `ip -6 route`),
// permanent neighbours (`ip neigh`) and FDB entries with a remote (`bridge
// fdb show`). A route's protocol is left out (weft tags its routes
// "proto 87" where flanneld's are "proto boot", which iproute2 does not
// print), and so is an IPv6 route's "pref" (the netlink library does not
// read it); FixtureLines drops the same.
func (n *NS) StateLines(t testing.TB) []string {
	t.Helper()
	names := map[int]string{}
	links, err := kernel.Dump(n.H.LinkList)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var out []string
	routes, err := kernel.Dump(func() ([]netlink.Route, error) {
		return n.H.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		s := "default"
		if r.Dst != nil {
			s = r.Dst.String()
		}
		if r.Gw != nil {
			s += " via " + r.Gw.String()
		}
		s += " dev " + names[r.LinkIndex]
		if r.Family == netlink.FAMILY_V6 || r.Priority != 0 {
			s += fmt.Sprintf(" metric %d", r.Priority)
		}
		if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			s += " onlink"
		}
		out = append(out, s)
	}
	neighs, err := kernel.Dump(func() ([]netlink.Neigh, error) { return n.H.NeighList(0, netlink.FAMILY_ALL) })
	if err != nil {
		t.Fatal(err)
	}
	for _, nb := range neighs {
		if nb.Family != netlink.FAMILY_V4 && nb.Family != netlink.FAMILY_V6 || nb.State != netlink.NUD_PERMANENT {
			continue
		}
		out = append(out, fmt.Sprintf("%s dev %s lladdr %s PERMANENT", nb.IP, names[nb.LinkIndex], nb.HardwareAddr))
	}
	fdb, err := kernel.Dump(func() ([]netlink.Neigh, error) { return n.H.NeighList(0, unix.AF_BRIDGE) })
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fdb {
		if f.IP == nil {
			continue
		}
		s := fmt.Sprintf("%s dev %s dst %s", f.HardwareAddr, names[f.LinkIndex], net.IP(f.IP))
		if f.Flags&netlink.NTF_SELF != 0 {
			s += " self"
		}
		if f.State&netlink.NUD_PERMANENT != 0 {
			s += " permanent"
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// FixtureLines reads from a fixture's kernel-state file the lines
// StateLines renders: the routes of its `ip route` and `ip -6 route`
// sections without "proto kernel" (their "pref medium" dropped), the
// PERMANENT neighbours of its `ip neigh` sections and the `bridge fdb
// show` entries with a dst, sorted.
func FixtureLines(t testing.TB, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cmd, ok := strings.CutPrefix(line, "### "); ok {
			_, section, _ = strings.Cut(cmd, " exec ")
			section = section[strings.Index(section, " ")+1:] // drop the namespace
			continue
		}
		switch {
		case line == "":
		case section == "ip route" || section == "ip -6 route":
			if !strings.Contains(line, " proto kernel") {
				out = append(out, strings.TrimSuffix(line, " pref medium"))
			}
		case section == "ip neigh" || section == "ip -6 neigh":
			if strings.HasSuffix(line, " PERMANENT") {
				out = append(out, line)
			}
		case section == "bridge fdb show":
			if strings.Contains(line, " dst ") {
				out = append(out, line)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// UDPRoundTrip sends size bytes of UDP from address from in cli to
// address to in srv, where an echo server answers, and waits for the echo,
// trying a few times (the first datagram may wait for the underlay's
// neighbour resolution).
func UDPRoundTrip(cli, srv *NS, from, to netip.Addr, size int) error {
	var ln *net.UDPConn
	if err := srv.Do(func() (err error) {
		ln, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(to, 0)))
		return err
	}); err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, a, err := ln.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			ln.WriteToUDPAddrPort(buf[:n], a)
		}
	}()
	var c *net.UDPConn
	if err := cli.Do(func() (err error) {
		c, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), ln.LocalAddr().(*net.UDPAddr))
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte(i)
	}
	buf := make([]byte, 65536)
	var err error
	for range 5 {
		if _, err = c.Write(msg); err != nil {
			continue
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		var n int
		if n, err = c.Read(buf); err == nil {
			if n != size || string(buf[:n]) != string(msg) {
				return fmt.Errorf("echo of %d bytes differs", n)
			}
			return nil
		}
	}
	return err
}
