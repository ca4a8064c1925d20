package kernel

import (
	"net"
	"net/netip"
	"testing"
)

func benchState(n, dev int) State {
	s := State{Dev: dev}
	for i := range n {
		sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		mac := net.HardwareAddr{0x0e, 0x57, 0, 0, byte(i >> 8), byte(i)}
		s.Routes = append(s.Routes, Route{Dst: sn, Gw: sn.Addr(), LinkIndex: dev, Onlink: true})
		s.Neighs = append(s.Neighs, Neigh{IP: sn.Addr(), MAC: mac})
		s.FDB = append(s.FDB, FDB{MAC: mac, Dst: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})})
	}
	return s
}

// BenchmarkDiff5000 is the CPU of an update's diff at 5,000 vxlan peers,
// one leaving and one joining (no netlink): what stays O(N) per event.
func BenchmarkDiff5000(b *testing.B) {
	var old, x index
	old.fill(benchState(5000, 7))
	s := benchState(5001, 7)
	s.Routes, s.Neighs, s.FDB = s.Routes[1:], s.Neighs[1:], s.FDB[1:]
	b.ReportAllocs()
	for b.Loop() {
		x.fill(s)
		n := 0
		x.diff(&old, func(entry) { n++ }, func(entry) { n++ })
		if n != 6 {
			b.Fatalf("%d changes; want 6", n)
		}
	}
}
