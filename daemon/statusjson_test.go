package daemon

import (
	"io"
	"net/netip"
	"testing"
	"time"
)

// A /status of 5,000 peers, the JSON alone: ~9.5 ms and ~7 MB allocated
// a call here (the Encoder grows its buffers by doubling); with the
// collections those allocations bring on under the lean heap limit, a
// /status costs the daemon 50-70 ms of CPU at 5,000 peers (weft bench
// --scale prints it). A pooled output buffer took the allocations to 1.6
// MB and the whole request 10-25 % lower, but kept its megabytes
// resident between requests; not done.
func BenchmarkStatusJSON5000(b *testing.B) {
	r := StatusReport{Backend: "udp", Subnet: netip.MustParsePrefix("10.5.0.0/24")}
	for i := range 5000 {
		r.Peers = append(r.Peers, PeerStatus{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
			PublicIP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), Backend: "udp", FirstSeen: time.Unix(1700000000, int64(i))})
	}
	b.ReportAllocs()
	for b.Loop() {
		writeJSON(io.Discard, r)
	}
}
