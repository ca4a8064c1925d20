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
// order PublicIP ("0.0.0.0" on an IPv6-only host, as flanneld writes it),
// PublicIPv6 (null without IPv6), then BackendType, BackendData and
// BackendV6Data only when set (flanneld's omitempty), e.g.
//
//	{"PublicIP":"192.0.2.1","PublicIPv6":null}
//	{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"8e:d7:4b:96:29:eb"}}
//	{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1","BackendType":"host-gw"}
//	{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::2","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"16:3a:6e:17:9c:3a"}}
//
// BackendData and BackendV6Data are compacted, as encoding/json does for
// flanneld's json.RawMessage.
func (a Attrs) MarshalJSON() ([]byte, error) {
	if err := a.check(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 96+len(a.BackendData)+len(a.BackendV6Data))
	b = append(b, `{"PublicIP":"`...)
	if a.PublicIP.IsValid() {
		b = a.PublicIP.AppendTo(b)
	} else {
		b = append(b, "0.0.0.0"...)
	}
	if a.PublicIPv6.IsValid() {
		b = append(b, `","PublicIPv6":"`...)
		b = a.PublicIPv6.AppendTo(b)
		b = append(b, '"')
	} else {
		b = append(b, `","PublicIPv6":null`...)
	}
	if a.BackendType != "" {
		t, err := json.Marshal(a.BackendType)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"BackendType":`...)
		b = append(b, t...)
	}
	for _, d := range []struct {
		key  string
		data json.RawMessage
	}{{"BackendData", a.BackendData}, {"BackendV6Data", a.BackendV6Data}} {
		if len(d.data) == 0 {
			continue
		}
		var c bytes.Buffer
		if err := json.Compact(&c, d.data); err != nil {
			return nil, fmt.Errorf("lease attrs: %s is not valid JSON: %w", d.key, err)
		}
		b = append(b, `,"`+d.key+`":`...)
		b = append(b, c.Bytes()...)
	}
	return append(b, '}'), nil
}

// attrsJSON is flanneld's LeaseAttrs as encoding/json sees it. Unknown
// fields are accepted and dropped.
type attrsJSON struct {
	PublicIP      *string
	PublicIPv6    *string
	BackendType   string
	BackendData   json.RawMessage
	BackendV6Data json.RawMessage
}

// UnmarshalJSON reads a lease value written by flanneld or weft. A value
// must name a host others can reach: a valid IPv4 PublicIP, or, on an
// IPv6-only host, PublicIP "0.0.0.0" (as flanneld writes it, read here as
// no IPv4 address) with a valid PublicIPv6.
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
	var v6 netip.Addr
	if j.PublicIPv6 != nil {
		if v6, err = netip.ParseAddr(*j.PublicIPv6); err != nil || !v6.Is6() {
			return fmt.Errorf("lease attrs: PublicIPv6 %s is not an IPv6 address", excerpt.Quote(*j.PublicIPv6, 64))
		}
	}
	if ip.IsUnspecified() && v6.IsValid() {
		ip = netip.Addr{} // an IPv6-only host
	}
	v := Attrs{PublicIP: ip, PublicIPv6: v6, BackendType: j.BackendType, BackendData: j.BackendData, BackendV6Data: j.BackendV6Data}
	if err := v.check(); err != nil {
		return err
	}
	v.BackendData = cloneRaw(j.BackendData)
	v.BackendV6Data = cloneRaw(j.BackendV6Data)
	*a = v
	return nil
}

// cloneRaw copies a JSON value out of the decoder's buffer; null and
// absent both give nil, as flanneld's omitempty writes neither.
func cloneRaw(r json.RawMessage) json.RawMessage {
	if len(r) == 0 || string(r) == "null" {
		return nil
	}
	return append(json.RawMessage(nil), r...)
}

// MaxBackendData bounds a lease's BackendData. flanneld's backends write
// well under 1 KiB (vxlan: VNI and VtepMAC; wireguard: a public key); the
// bound keeps a hostile lease from making every host hold and log
// megabytes.
const MaxBackendData = 64 << 10

// maxBackendType bounds BackendType, a backend's name ("vxlan",
// "host-gw", "wireguard", ...), which hosts log.
const maxBackendType = 32

// check refuses Attrs no host can use: no address at all, a PublicIP
// CheckPublicIP refuses or a PublicIPv6 CheckPublicIPv6 refuses, a
// BackendType that is not a short name, an oversized BackendData or
// BackendV6Data.
func (a Attrs) check() error {
	if !a.PublicIP.IsValid() && !a.PublicIPv6.IsValid() {
		return errors.New("lease attrs: neither PublicIP nor PublicIPv6 is set")
	}
	if a.PublicIP.IsValid() {
		if err := CheckPublicIP(a.PublicIP); err != nil {
			return fmt.Errorf("lease attrs: %w", err)
		}
	}
	if a.PublicIPv6.IsValid() {
		if err := CheckPublicIPv6(a.PublicIPv6); err != nil {
			return fmt.Errorf("lease attrs: %w", err)
		}
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
	if len(a.BackendV6Data) > MaxBackendData {
		return fmt.Errorf("lease attrs: BackendV6Data is %d bytes, more than the %d a backend needs", len(a.BackendV6Data), MaxBackendData)
	}
	return nil
}
