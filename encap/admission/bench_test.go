package admission

import (
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
