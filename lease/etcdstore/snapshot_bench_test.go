package etcdstore

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/lease"
)

// BenchmarkSnapshot5000 is the sorted snapshot the watch builds for every
// response at 5,000 leases (issue 19).
func BenchmarkSnapshot5000(b *testing.B) {
	m := &Store{log: slog.New(slog.DiscardHandler)}
	st := &watchState{leases: map[string]lease.Lease{}}
	for i := range 5000 {
		sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		st.leases[lease.SubnetKey(sn)] = lease.Lease{Subnet: sn, Revision: int64(i),
			Attrs: lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})}}
	}
	b.ReportAllocs()
	for b.Loop() {
		if len(m.snapshot(st)) != 5000 {
			b.Fatal("short snapshot")
		}
	}
}

// BenchmarkSnapshot5000DualStack is the same with dual-stack leases, whose
// IPv6 subnets are checked too.
func BenchmarkSnapshot5000DualStack(b *testing.B) {
	m := &Store{log: slog.New(slog.DiscardHandler)}
	st := &watchState{leases: map[string]lease.Lease{}}
	for i := range 5000 {
		sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		sn6 := netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0, 5, byte(i >> 8), byte(i)}), 64)
		st.leases[lease.LeaseKey(sn, sn6)] = lease.Lease{Subnet: sn, IPv6Subnet: sn6, Revision: int64(i), CreateRevision: int64(i),
			Attrs: lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})}}
	}
	b.ReportAllocs()
	for b.Loop() {
		if len(m.snapshot(st)) != 5000 {
			b.Fatal("short snapshot")
		}
	}
}
