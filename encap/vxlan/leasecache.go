package vxlan

import (
	"encoding/json"
	"net"
	"sync"

	"github.com/weft-net/weft/lease"
)

// LeaseCache keeps the parsed BackendData of the last snapshot's leases,
// keyed by its bytes (a lease's revision changes them or not at all), so a
// snapshot of 5,000 leases costs one JSON parse per lease that changed,
// not 5,000. It holds exactly the last snapshot's values: memory follows
// the cluster, not its history. The zero value is ready.
type LeaseCache struct {
	// V6 makes the cache read BackendV6Data, of the leases with an IPv6
	// subnet, instead of BackendData. Set it before first use.
	V6 bool

	mu       sync.Mutex
	m, spare map[string]parsedData // spare: the map before, reused
}

type parsedData struct {
	d   LeaseData
	mac net.HardwareAddr // shared: callers never modify it
	err error
}

// Parse is ParseLeaseData (ParseLeaseV6Data with V6), answered from the
// last snapshot when it held the same bytes.
func (c *LeaseCache) Parse(raw json.RawMessage) (LeaseData, net.HardwareAddr, error) {
	c.mu.Lock()
	p, ok := c.m[string(raw)]
	c.mu.Unlock()
	if ok {
		return p.d, p.mac, p.err
	}
	return c.parse(raw)
}

func (c *LeaseCache) parse(raw json.RawMessage) (LeaseData, net.HardwareAddr, error) {
	if c.V6 {
		return ParseLeaseV6Data(raw)
	}
	return ParseLeaseData(raw)
}

// Snapshot parses the BackendData (with V6: the BackendV6Data of the
// leases with an IPv6 subnet) of every lease of a snapshot (from the
// cache where it can) and keeps exactly those. macs[i] is leases[i]'s
// VtepMAC, nil when its data does not parse or, with V6, it has no IPv6
// subnet.
func (c *LeaseCache) Snapshot(leases []lease.Lease) (macs []net.HardwareAddr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := c.spare
	if next == nil {
		next = make(map[string]parsedData, len(leases))
	}
	clear(next)
	macs = make([]net.HardwareAddr, len(leases))
	for i, l := range leases {
		raw := l.Attrs.BackendData
		if c.V6 {
			if !l.IPv6Subnet.IsValid() {
				continue
			}
			raw = l.Attrs.BackendV6Data
		}
		p, ok := c.m[string(raw)]
		if !ok {
			p.d, p.mac, p.err = c.parse(raw)
		}
		next[string(raw)] = p
		if p.err == nil {
			macs[i] = p.mac
		}
	}
	c.m, c.spare = next, c.m
	return macs
}
