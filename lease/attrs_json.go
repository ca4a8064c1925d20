package lease

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
)

// MarshalJSON writes flanneld's LeaseAttrs bytes: compact, keys in the
// order PublicIP, PublicIPv6 (always null: weft is IPv4-only), then
// BackendType and BackendData only when set (flanneld's omitempty), e.g.
//
//	{"PublicIP":"192.0.2.1","PublicIPv6":null}
//	{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"8e:d7:4b:96:29:eb"}}
//
// BackendData is compacted, as encoding/json does for flanneld's
// json.RawMessage.
func (a Attrs) MarshalJSON() ([]byte, error) {
	if !a.PublicIP.Is4() {
		return nil, fmt.Errorf("lease attrs: PublicIP %q is not an IPv4 address", a.PublicIP)
	}
	b := make([]byte, 0, 64+len(a.BackendData))
	b = append(b, `{"PublicIP":"`...)
	b = a.PublicIP.AppendTo(b)
	b = append(b, `","PublicIPv6":null`...)
	if a.BackendType != "" {
		t, err := json.Marshal(a.BackendType)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"BackendType":`...)
		b = append(b, t...)
	}
	if len(a.BackendData) > 0 {
		var c bytes.Buffer
		if err := json.Compact(&c, a.BackendData); err != nil {
			return nil, fmt.Errorf("lease attrs: BackendData is not valid JSON: %w", err)
		}
		b = append(b, `,"BackendData":`...)
		b = append(b, c.Bytes()...)
	}
	return append(b, '}'), nil
}

// attrsJSON is flanneld's LeaseAttrs as encoding/json sees it. Fields weft
// does not use (PublicIPv6, BackendV6Data, written by dual-stack flanneld
// hosts) are accepted and dropped.
type attrsJSON struct {
	PublicIP      *string
	PublicIPv6    *string
	BackendType   string
	BackendData   json.RawMessage
	BackendV6Data json.RawMessage
}

// UnmarshalJSON reads a lease value written by flanneld or weft. A value
// without a valid IPv4 PublicIP is an error: such a lease cannot be routed.
func (a *Attrs) UnmarshalJSON(data []byte) error {
	var j attrsJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return fmt.Errorf("lease attrs: %w", err)
	}
	if j.PublicIP == nil {
		return errors.New("lease attrs: no PublicIP")
	}
	ip, err := netip.ParseAddr(*j.PublicIP)
	if err != nil || !ip.Is4() {
		return fmt.Errorf("lease attrs: PublicIP %q is not an IPv4 address", *j.PublicIP)
	}
	if j.PublicIPv6 != nil {
		if v6, err := netip.ParseAddr(*j.PublicIPv6); err != nil || !v6.Is6() {
			return fmt.Errorf("lease attrs: PublicIPv6 %q is not an IPv6 address", *j.PublicIPv6)
		}
	}
	*a = Attrs{PublicIP: ip, BackendType: j.BackendType}
	if len(j.BackendData) > 0 {
		a.BackendData = append(json.RawMessage(nil), j.BackendData...)
	}
	return nil
}
