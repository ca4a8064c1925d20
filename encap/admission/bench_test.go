package admission

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/lease"
)

// BenchmarkAdmit5000 is admission of one snapshot of 5,000 leases (issue
// 19): it runs on every lease event.
func BenchmarkAdmit5000(b *testing.B) {
	r := Rule{Network: netip.MustParsePrefix("10.0.0.0/8"), SubnetLen: 24,
		Own:    lease.Lease{Subnet: netip.MustParsePrefix("10.255.0.0/24")},
		Accept: func(lease.Attrs) error { return nil }}
	snap := make([]lease.Lease, 5000)
	for i := range snap {
		snap[i] = lease.Lease{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
			Attrs:    lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), BackendType: "udp"},
			Revision: int64(5000 - i), CreateRevision: int64(5000 - i)}
	}
	b.ReportAllocs()
	for b.Loop() {
		Admit(r, snap)
	}
}

// BenchmarkGate5000 is the gate over successive 5,000-lease snapshots, one
// lease replaced each time, as under churn.
func BenchmarkGate5000(b *testing.B) {
	r := Rule{Network: netip.MustParsePrefix("10.0.0.0/8"), SubnetLen: 24,
		Own: lease.Lease{Subnet: netip.MustParsePrefix("10.255.0.0/24")}}
	mk := func(i int) lease.Lease {
		return lease.Lease{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
			Attrs:    lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), BackendType: "udp"},
			Revision: int64(i), CreateRevision: int64(i)}
	}
	snaps := [2][]lease.Lease{}
	for i := range 5000 {
		snaps[0] = append(snaps[0], mk(i))
		snaps[1] = append(snaps[1], mk(i+1))
	}
	g := NewGate(r, slog.New(slog.DiscardHandler))
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		g.Admit(snaps[n%2])
		n++
	}
}
