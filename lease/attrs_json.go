package lease

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/weft-net/weft/lease/internal/excerpt"
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
	if err := a.check(); err != nil {
		return nil, err
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
		return fmt.Errorf("lease attrs: PublicIP %s is not an IPv4 address", excerpt.Quote(*j.PublicIP, 64))
	}
	if j.PublicIPv6 != nil {
		if v6, err := netip.ParseAddr(*j.PublicIPv6); err != nil || !v6.Is6() {
			return fmt.Errorf("lease attrs: PublicIPv6 %s is not an IPv6 address", excerpt.Quote(*j.PublicIPv6, 64))
		}
	}
	v := Attrs{PublicIP: ip, BackendType: j.BackendType, BackendData: j.BackendData}
	if err := v.check(); err != nil {
		return err
	}
	*a = v
	if len(j.BackendData) > 0 {
		a.BackendData = append(json.RawMessage(nil), j.BackendData...)
	} else {
		a.BackendData = nil
	}
	return nil
}

// MaxBackendData bounds a lease's BackendData. flanneld's backends write
// well under 1 KiB (vxlan: VNI and VtepMAC; wireguard: a public key); the
// bound keeps a hostile lease from making every host hold and log
// megabytes.
const MaxBackendData = 64 << 10

// maxBackendType bounds BackendType, a backend's name ("vxlan",
// "host-gw", "wireguard", ...), which hosts log.
const maxBackendType = 32

// check refuses Attrs no host can use: a PublicIP CheckPublicIP refuses,
// a BackendType that is not a short name, an oversized BackendData.
func (a Attrs) check() error {
	if err := CheckPublicIP(a.PublicIP); err != nil {
		return fmt.Errorf("lease attrs: %w", err)
	}
	if len(a.BackendType) > maxBackendType || strings.IndexFunc(a.BackendType, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_' || r == '.')
	}) >= 0 {
		return fmt.Errorf("lease attrs: BackendType %s is not a backend name (letters, digits, '-', '_', '.'; at most %d bytes)",
			excerpt.Quote(a.BackendType, maxBackendType+8), maxBackendType)
	}
	if len(a.BackendData) > MaxBackendData {
		return fmt.Errorf("lease attrs: BackendData is %d bytes, more than the %d a backend needs", len(a.BackendData), MaxBackendData)
	}
	return nil
}
