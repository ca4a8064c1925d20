package lease

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The lease values flanneld v0.28.9 wrote (testdata/README.md) must
// round-trip byte for byte, and weft must write them from plain values.
func TestAttrsJSONFixtures(t *testing.T) {
	tests := []struct {
		file  string
		attrs Attrs
	}{
		{"lease-udp-10.5.42.0-24.json", Attrs{PublicIP: netip.MustParseAddr("192.0.2.1")}},
		{"lease-udp-10.5.40.0-24.json", Attrs{PublicIP: netip.MustParseAddr("192.0.2.2")}},
		{"lease-host-gw-10.5.21.0-24.json", Attrs{PublicIP: netip.MustParseAddr("192.0.2.1"), BackendType: "host-gw"}},
		{"lease-host-gw-10.5.51.0-24.json", Attrs{PublicIP: netip.MustParseAddr("192.0.2.2"), BackendType: "host-gw"}},
		{"lease-vxlan-10.5.92.0-24.json", Attrs{PublicIP: netip.MustParseAddr("192.0.2.1"), BackendType: "vxlan",
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"8e:d7:4b:96:29:eb"}`)}},
		{"lease-vxlan-10.5.55.0-24.json", Attrs{PublicIP: netip.MustParseAddr("192.0.2.2"), BackendType: "vxlan",
			// Spaces are compacted away, as encoding/json does for flanneld.
			BackendData: json.RawMessage(`{ "VNI": 1, "VtepMAC": "d6:61:c5:27:4e:01" }`)}},
	}
	for _, tt := range tests {
		want, err := os.ReadFile(filepath.Join("testdata", tt.file))
		if err != nil {
			t.Fatal(err)
		}
		got, err := json.Marshal(tt.attrs)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: Marshal\n got %s\nwant %s", tt.file, got, want)
		}
		var a Attrs
		if err := json.Unmarshal(want, &a); err != nil {
			t.Fatalf("%s: %v", tt.file, err)
		}
		if a.PublicIP != tt.attrs.PublicIP || a.BackendType != tt.attrs.BackendType {
			t.Errorf("%s: Unmarshal got %+v", tt.file, a)
		}
		again, err := json.Marshal(a)
		if err != nil || !bytes.Equal(again, want) {
			t.Errorf("%s: round trip\n got %s (%v)\nwant %s", tt.file, again, err, want)
		}
	}
}

func TestAttrsJSONAccepts(t *testing.T) {
	for _, in := range []string{
		`{"PublicIP":"192.0.2.1"}`,                                      // no PublicIPv6
		`{"publicip":"192.0.2.1","PublicIPv6":null}`,                    // encoding/json folds case, as for flanneld
		`{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1"}`,           // dual-stack flanneld host
		`{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendV6Data":{}}`, // dropped
		`{"PublicIP":"192.0.2.1","PublicIPv6":null,"Unknown":[1,2,3]}`,  // future fields
		`{"PublicIP":"192.0.2.1","BackendType":"wireguard"}`,            // another flanneld backend
		`{"PublicIP":"192.0.2.1","BackendData":{"VNI":1,"VtepMAC":"` + strings.Repeat("a", 60000) + `"}}`,
	} {
		var a Attrs
		if err := json.Unmarshal([]byte(in), &a); err != nil || a.PublicIP != netip.MustParseAddr("192.0.2.1") {
			t.Errorf("%.100s: %+v, %v", in, a, err)
		}
	}
	// Link-local and class E unicast: usable on some networks (see
	// CheckPublicIP).
	for _, ip := range []string{"169.254.1.1", "240.0.0.1", "255.255.255.254", "1.0.0.0", "223.255.255.255"} {
		var a Attrs
		in := `{"PublicIP":"` + ip + `"}`
		if err := json.Unmarshal([]byte(in), &a); err != nil || a.PublicIP.String() != ip {
			t.Errorf("%s: %+v, %v", in, a, err)
		}
		if _, err := json.Marshal(a); err != nil {
			t.Errorf("%s: Marshal: %v", ip, err)
		}
	}
}

func TestAttrsJSONRefuses(t *testing.T) {
	for _, in := range []string{
		``, `null`, `[]`, `"x"`, `{`, `{}`,
		`{"PublicIP":null}`,
		`{"PublicIP":""}`,
		`{"PublicIP":"2001:db8::1"}`,
		`{"PublicIP":"192.0.2.300"}`,
		`{"PublicIP":17}`,
		`{"PublicIP":"192.0.2.1","PublicIPv6":"192.0.2.1"}`,
		`{"PublicIP":"192.0.2.1","BackendType":7}`,
		`{"PublicIP":"192.0.2.1"} trailing`,
	} {
		var a Attrs
		if err := json.Unmarshal([]byte(in), &a); err == nil {
			t.Errorf("%q: accepted as %+v", in, a)
		}
	}
	for _, in := range []string{
		// No host can be sent to at these (issue 14, item 4).
		`{"PublicIP":"0.0.0.0"}`,
		`{"PublicIP":"0.1.2.3"}`,
		`{"PublicIP":"127.0.0.1"}`,
		`{"PublicIP":"127.255.0.9"}`,
		`{"PublicIP":"224.0.0.1"}`,
		`{"PublicIP":"239.255.255.250"}`,
		`{"PublicIP":"255.255.255.255"}`,
		`{"PublicIP":"::ffff:192.0.2.1"}`,
		// Values no host should hold and log.
		`{"PublicIP":"192.0.2.1","BackendType":"vxlan\nlevel=ERROR msg=forged"}`,
		`{"PublicIP":"192.0.2.1","BackendType":"` + strings.Repeat("x", 33) + `"}`,
		`{"PublicIP":"192.0.2.1","BackendData":"` + strings.Repeat("x", MaxBackendData) + `"}`,
	} {
		var a Attrs
		if err := json.Unmarshal([]byte(in), &a); err == nil {
			t.Errorf("%.100q: accepted as %+v", in, a)
		} else if !strings.Contains(err.Error(), "lease attrs: ") {
			t.Errorf("%.100q: error %v does not say what it is about", in, err)
		}
	}
	// What an IPv6-only flanneld writes (PublicIP 0.0.0.0).
	v6only, err := os.ReadFile(filepath.Join("testdata", "lease-ipv6only-vxlan-h2.json"))
	if err != nil {
		t.Fatal(err)
	}
	var a Attrs
	if err := json.Unmarshal(v6only, &a); err != nil || a.PublicIP.IsValid() || a.PublicIPv6 != netip.MustParseAddr("2001:db8::2") ||
		len(a.BackendData) != 0 || string(a.BackendV6Data) != `{"VNI":1,"VtepMAC":"16:3a:6e:17:9c:3a"}` {
		t.Errorf("IPv6-only flanneld lease: %+v, %v", a, err)
	}
	if b, err := json.Marshal(a); err != nil || !bytes.Equal(b, v6only) {
		t.Errorf("IPv6-only flanneld lease written back as %s, %v; want %s", b, err, v6only)
	}
	// 0.0.0.0 without a PublicIPv6 names no host.
	if err := json.Unmarshal([]byte(`{"PublicIP":"0.0.0.0","PublicIPv6":null}`), &a); err == nil || !strings.Contains(err.Error(), "PublicIP 0.0.0.0") {
		t.Errorf("PublicIP 0.0.0.0 alone: %+v, %v", a, err)
	}
	for _, ip := range []string{"0.0.0.0", "127.0.0.1", "224.0.0.5", "255.255.255.255"} {
		if _, err := json.Marshal(Attrs{PublicIP: netip.MustParseAddr(ip)}); err == nil || !strings.Contains(err.Error(), "PublicIP") {
			t.Errorf("Marshal with PublicIP %s: %v", ip, err)
		}
	}
	// A huge PublicIP is quoted bounded.
	err = json.Unmarshal([]byte(`{"PublicIP":"`+strings.Repeat("1", 1<<20)+`"}`), &a)
	if err == nil || len(err.Error()) > 256 {
		t.Errorf("huge PublicIP: error of %d bytes", len(fmt.Sprint(err)))
	}
	if _, err := json.Marshal(Attrs{}); err == nil {
		t.Error("Marshal of Attrs without PublicIP succeeded")
	}
	if _, err := json.Marshal(Attrs{PublicIP: netip.MustParseAddr("192.0.2.1"), BackendData: json.RawMessage(`{`)}); err == nil {
		t.Error("Marshal with bad BackendData succeeded")
	}
}

// FuzzAttrsJSON: any bytes decode to an error or to Attrs that encode, and
// what weft writes reads back the same and is stable.
func FuzzAttrsJSON(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "lease-*.json"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var a Attrs
		if err := a.UnmarshalJSON(data); err != nil {
			return
		}
		out, err := a.MarshalJSON()
		if err != nil {
			t.Fatalf("decoded %q to %+v, which does not encode: %v", data, a, err)
		}
		var b Attrs
		if err := b.UnmarshalJSON(out); err != nil {
			t.Fatalf("own output %q does not decode: %v", out, err)
		}
		out2, err := b.MarshalJSON()
		if err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("unstable: %q then %q (%v)", out, out2, err)
		}
		if b.PublicIP != a.PublicIP || b.BackendType != a.BackendType {
			t.Fatalf("round trip changed %+v to %+v", a, b)
		}
	})
}

// TestBackendName: flanneld's udp lease has an empty BackendType, and
// every refusal, log line and status names it udp.
func TestBackendName(t *testing.T) {
	var a Attrs
	if err := json.Unmarshal([]byte(`{"PublicIP":"192.0.2.1"}`), &a); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		a    Attrs
		want string
	}{{a, "udp"}, {Attrs{BackendType: "vxlan"}, "vxlan"}, {Attrs{BackendType: "host-gw"}, "host-gw"}} {
		if got := c.a.BackendName(); got != c.want {
			t.Errorf("BackendType %q: BackendName %q, want %q", c.a.BackendType, got, c.want)
		}
	}
}
