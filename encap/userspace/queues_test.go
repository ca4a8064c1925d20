package userspace

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/lease"
)

// TestDefaultQueues: one queue up to 7 CPUs (where a second loop pair
// measured no faster), then one per four, at most 8.
func TestDefaultQueues(t *testing.T) {
	for cpus, want := range map[int]int{1: 1, 2: 1, 4: 1, 7: 1, 8: 2, 16: 4, 32: 8, 64: 8, 256: 8} {
		if got := defaultQueues(cpus); got != want {
			t.Errorf("%d CPUs: %d queues, want %d", cpus, got, want)
		}
	}
	if q := DefaultQueues(); q < 1 || q > 8 {
		t.Errorf("DefaultQueues() = %d", q)
	}
}

// TestQueuesChecked: both flavours take 0 (DefaultQueues) or
// 1..MaxQueues and refuse more, naming the flag.
func TestQueuesChecked(t *testing.T) {
	cfg, err := lease.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}`))
	if err != nil {
		t.Fatal(err)
	}
	host := encap.Host{Iface: "eth0", IfaceMTU: 1500}
	if _, err := NewUDP(host, cfg, Options{Queues: MaxQueues + 1}); err == nil || !strings.Contains(err.Error(), "--queues") {
		t.Errorf("udp with %d queues: %v", MaxQueues+1, err)
	}
	for _, q := range []int{0, 1, 2, MaxQueues} {
		b, err := NewUDP(host, cfg, Options{Queues: q})
		if err != nil {
			t.Errorf("udp with %d queues: %v", q, err)
		} else if q > 0 && b.queues != q {
			t.Errorf("udp with %d queues runs %d", q, b.queues)
		}
	}
	vcfg, err := lease.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	vhost := host
	vhost.PublicIP = netip.MustParseAddr("192.0.2.1")
	if _, err := NewVXLAN(vhost, vcfg, Options{Queues: MaxQueues + 1, StateDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "--queues") {
		t.Errorf("userspace vxlan with %d queues: %v", MaxQueues+1, err)
	}
	for _, q := range []int{0, 1, 2, MaxQueues} {
		want := q
		if q == 0 {
			want = DefaultQueues()
		}
		b, err := NewVXLAN(vhost, vcfg, Options{Queues: q, StateDir: t.TempDir()})
		if err != nil {
			t.Errorf("userspace vxlan with %d queues: %v", q, err)
		} else if b.queues != want {
			t.Errorf("userspace vxlan with %d queues runs %d, want %d", q, b.queues, want)
		}
	}
}
