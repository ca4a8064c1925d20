package userspace

import (
	"encoding/json"
	"testing"
)

// FuzzParseUDPLeaseV6: a udp lease's BackendV6Data comes from any host
// that can write the store. Any bytes give an error or a value; null and
// nothing mean none; a value read back from its own JSON is the same.
func FuzzParseUDPLeaseV6(f *testing.F) {
	for _, s := range []string{``, `null`, `{"Port":8285}`, `{"Port":-1}`, `{"Port":1e99}`, `{"port":"x"}`, `[]`, `{`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		d, ok, err := ParseUDPLeaseV6(raw)
		if err != nil {
			if ok {
				t.Fatalf("%q: an error and a value", raw)
			}
			return
		}
		if !ok {
			return
		}
		b, _ := json.Marshal(d)
		again, ok2, err := ParseUDPLeaseV6(b)
		if err != nil || !ok2 || again != d {
			t.Fatalf("%q: %+v does not read back (%+v %v %v)", raw, d, again, ok2, err)
		}
	})
}
