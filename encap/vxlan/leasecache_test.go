package vxlan

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/lease"
)

func leaseWith(subnet, data string) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(subnet),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.9"), BackendType: "vxlan", BackendData: json.RawMessage(data)}}
}

// TestLeaseCache: a snapshot reuses the parse of unchanged BackendData,
// parses what changed, keeps only the last snapshot's values, and answers
// Accept from them.
func TestLeaseCache(t *testing.T) {
	var c LeaseCache
	a := leaseWith("10.5.1.0/24", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`)
	b := leaseWith("10.5.2.0/24", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"}`)
	bad := leaseWith("10.5.3.0/24", `{"VNI":1,"VtepMAC":"nope"}`)
	first := c.Snapshot([]lease.Lease{a, b, bad})
	if first[0].String() != "0e:00:00:00:00:01" || first[1].String() != "0e:00:00:00:00:02" || first[2] != nil {
		t.Fatalf("macs %v", first)
	}
	b2 := leaseWith("10.5.2.0/24", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:22"}`)
	second := c.Snapshot([]lease.Lease{a, b2})
	if &second[0][0] != &first[0][0] {
		t.Error("unchanged BackendData was parsed again")
	}
	if second[1].String() != "0e:00:00:00:00:22" {
		t.Errorf("changed BackendData: %v", second[1])
	}
	if len(c.m) != 2 {
		t.Errorf("cache holds %d values; want the last snapshot's 2", len(c.m))
	}
	if _, mac, err := c.Parse(a.Attrs.BackendData); err != nil || &mac[0] != &first[0][0] {
		t.Errorf("Parse did not answer from the cache: %v %v", mac, err)
	}
	accept := AcceptLeaseCached(1, &c)
	if accept(a.Attrs) != nil || accept(bad.Attrs) == nil || AcceptLeaseCached(2, &c)(a.Attrs) == nil {
		t.Error("AcceptLeaseCached decides differently from AcceptLease")
	}
}
