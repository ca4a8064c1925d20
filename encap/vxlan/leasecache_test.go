package vxlan

import (
	"encoding/json"
	"net/netip"
	"strings"
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

// TestLeaseCacheV6: with V6 the cache reads BackendV6Data of the leases
// with an IPv6 subnet only, and reuses unchanged parses the same way.
func TestLeaseCacheV6(t *testing.T) {
	c := LeaseCache{V6: true}
	a := leaseWith("10.5.1.0/24", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`)
	a.IPv6Subnet = netip.MustParsePrefix("fd00:10:5:1::/64")
	a.Attrs.BackendV6Data = json.RawMessage(`{"VNI":1,"VtepMAC":"0e:00:00:00:06:01"}`)
	v4only := leaseWith("10.5.2.0/24", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"}`)
	noData := leaseWith("10.5.3.0/24", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"}`)
	noData.IPv6Subnet = netip.MustParsePrefix("fd00:10:5:3::/64")
	first := c.Snapshot([]lease.Lease{a, v4only, noData})
	if first[0].String() != "0e:00:00:00:06:01" || first[1] != nil || first[2] != nil {
		t.Fatalf("macs %v", first)
	}
	second := c.Snapshot([]lease.Lease{a})
	if &second[0][0] != &first[0][0] {
		t.Error("unchanged BackendV6Data was parsed again")
	}
	if _, _, err := c.Parse(noData.Attrs.BackendV6Data); err == nil || !strings.Contains(err.Error(), "BackendV6Data") {
		t.Errorf("missing BackendV6Data: %v", err)
	}
}

// TestLeaseClaims: a lease claims each VtepMAC it names, spelled one way
// however its data spells it, so admission admits one lease per MAC.
func TestLeaseClaims(t *testing.T) {
	c4, c6 := LeaseCache{}, LeaseCache{V6: true}
	claims := LeaseClaims(&c4, &c6)
	a := leaseWith("10.5.1.0/24", `{"VNI":1,"VtepMAC":"0E-00-00-00-00-01"}`).Attrs
	a.BackendV6Data = json.RawMessage(`{"VNI":1,"VtepMAC":"0e:00:00:00:06:01"}`)
	if got := strings.Join(claims(a), ","); got != "VtepMAC 0e:00:00:00:00:01,IPv6 VtepMAC 0e:00:00:00:06:01" {
		t.Errorf("claims %q", got)
	}
	if got := claims(leaseWith("10.5.2.0/24", `{"VNI":1,"VtepMAC":"zz"}`).Attrs); got != nil {
		t.Errorf("unreadable data claims %q", got)
	}
}
