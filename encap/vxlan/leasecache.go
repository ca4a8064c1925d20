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
	mu       sync.Mutex
	m, spare map[string]parsedData // spare: the map before, reused
}

type parsedData struct {
	d   LeaseData
	mac net.HardwareAddr // shared: callers never modify it
	err error
}

// Parse is ParseLeaseData, answered from the last snapshot when it held
// the same bytes.
func (c *LeaseCache) Parse(raw json.RawMessage) (LeaseData, net.HardwareAddr, error) {
	c.mu.Lock()
	p, ok := c.m[string(raw)]
	c.mu.Unlock()
	if ok {
		return p.d, p.mac, p.err
	}
	return ParseLeaseData(raw)
}

// Snapshot parses the BackendData of every lease of a snapshot (from the
// cache where it can) and keeps exactly those. macs[i] is leases[i]'s
// VtepMAC, nil when its data does not parse.
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
		p, ok := c.m[string(raw)]
		if !ok {
			p.d, p.mac, p.err = ParseLeaseData(raw)
		}
		next[string(raw)] = p
		if p.err == nil {
			macs[i] = p.mac
		}
	}
	c.m, c.spare = next, c.m
	return macs
}
