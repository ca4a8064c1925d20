package kernel

import (
	"context"
	"encoding/binary"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Of the kernel's route, neighbour and nexthop notifications the loop acts
// on deletions only (see watch); additions are every entry weft itself
// programs (three or four per lease event) and every neighbour state
// change of the host (ARP and NDP of every pod on every bridge). One
// socket subscribes to all three with a socket filter that drops every
// message but a deletion in the kernel, so neither wakes the daemon.

// deletionGroups are the multicast groups of the deletions socket.
var deletionGroups = []uint{unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE, unix.RTNLGRP_NEIGH, unix.RTNLGRP_NEXTHOP}

// deletionFilter is a classic BPF program over one netlink message that
// keeps RTM_DELROUTE, RTM_DELNEIGH and RTM_DELNEXTHOP. A notification's
// skb holds one message; nlmsg_type is at offset 4 in host byte order,
// which BPF's 16-bit load reads as big-endian, hence loadedAs.
func deletionFilter() []unix.SockFilter {
	const (
		ldh   = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		jeq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret   = unix.BPF_RET | unix.BPF_K
		keep  = 0xffff
		typeO = 4
	)
	return []unix.SockFilter{
		{Code: ldh, K: typeO},
		{Code: jeq, K: loadedAs(unix.RTM_DELROUTE), Jt: 3},
		{Code: jeq, K: loadedAs(unix.RTM_DELNEIGH), Jt: 2},
		{Code: jeq, K: loadedAs(unix.RTM_DELNEXTHOP), Jt: 1},
		{Code: ret, K: 0},
		{Code: ret, K: keep},
	}
}

// loadedAs is how BPF's big-endian 16-bit load reads t stored in host
// byte order.
func loadedAs(t uint16) uint32 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], t)
	return uint32(binary.BigEndian.Uint16(b[:]))
}

// deletion is what the loop needs of a deleted entry.
type deletion struct {
	typ    uint16
	link   int    // a neighbour's or FDB entry's device
	proto  uint8  // a route's protocol
	nh     uint32 // a nexthop object's id
	e      entry  // ownKey's form: the route's destination, the neighbour's address, the FDB entry's MAC and remote
	tagged bool   // a nexthop object tagged RouteProtocol
}

// subscribeDeletions opens the filtered socket in the Netlink's namespace.
func (n *Netlink) subscribeDeletions() (*nl.NetlinkSocket, error) {
	ns := netns.None()
	if n.NS != nil {
		ns = *n.NS
	}
	s, err := nl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE, deletionGroups...)
	if err != nil {
		// A kernel without nexthop objects has no such group either.
		s, err = nl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE, deletionGroups[:3]...)
		if err != nil {
			return nil, err
		}
	}
	f := deletionFilter()
	prog := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	if err := unix.SetsockoptSockFprog(s.GetFd(), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.SetReceiveBufferSize(subscribeBuffer, true); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// readDeletions calls fn with each deletion s receives until ctx ends
// (nil) or the socket fails (ENOBUFS: events were lost).
func readDeletions(ctx context.Context, s *nl.NetlinkSocket, fn func(deletion)) error {
	go func() {
		<-ctx.Done()
		s.Close()
	}()
	for {
		msgs, _, err := s.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, m := range msgs {
			if d, ok := parseDeletion(m.Header.Type, m.Data); ok {
				fn(d)
			}
		}
	}
}

// parseDeletion reads the fields the loop uses of one deletion message.
func parseDeletion(typ uint16, m []byte) (deletion, bool) {
	d := deletion{typ: typ}
	switch typ {
	case unix.RTM_DELROUTE:
		if len(m) < unix.SizeofRtMsg {
			return d, false
		}
		d.proto = m[5]
		d.e.kind = kindRoute
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofRtMsg:])
		if err != nil {
			return d, false
		}
		for _, a := range attrs {
			if a.Attr.Type == unix.RTA_DST {
				if ip, ok := netip.AddrFromSlice(a.Value); ok {
					d.e.dst = netip.PrefixFrom(ip.Unmap(), int(m[1]))
				}
			}
		}
		return d, true
	case unix.RTM_DELNEIGH:
		if len(m) < unix.SizeofNdMsg {
			return d, false
		}
		d.link = int(int32(binary.NativeEndian.Uint32(m[4:8])))
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofNdMsg:])
		if err != nil {
			return d, false
		}
		var hw []byte
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.NDA_DST:
				if ip, ok := netip.AddrFromSlice(a.Value); ok {
					d.e.ip = ip.Unmap()
				}
			case unix.NDA_LLADDR:
				hw = a.Value
			}
		}
		if m[0] == unix.AF_BRIDGE {
			d.e.kind, d.e.mac = kindFDB, macOf(hw)
		} else {
			d.e.kind = kindNeigh
		}
		return d, true
	case unix.RTM_DELNEXTHOP:
		id, _, ok := parseNexthop(m)
		d.nh, d.tagged = id, ok
		return d, true
	}
	return d, false
}
