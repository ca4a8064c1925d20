package etcdstore

import (
	"testing"

	"github.com/weft-net/weft/lease"
)

// FuzzLooseSubnetKey: any key (written by whoever can write to etcd)
// gives at most an aligned IPv4 and an aligned IPv6 subnet, never a /0,
// and for a key ParseSubnetKey reads (but for a /0 it reads and admission
// refuses), the same subnets.
func FuzzLooseSubnetKey(f *testing.F) {
	for _, s := range []string{"10.5.2.0-24", "10.5.2.0-024", "10.5.2.1-24&fd00:10:5:0021::-064", "0.0.0.0-0&fd00::-64",
		"10.5.2.0-24&10.5.3.0-24", "x10.5.2.0-24", "10.5.77.0-24&fd00:10:5:21::-64", "1.2.3.4-99&::-200", "1.2.3.4-24&::ffff:a05:200-120", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		v4, v6 := looseSubnetKey(key)
		if v4.IsValid() && (!v4.Addr().Is4() || v4.Bits() == 0 || v4.Masked() != v4) {
			t.Fatalf("%q: IPv4 part %s", key, v4)
		}
		if v6.IsValid() && (!v6.Addr().Is6() || v6.Addr().Is4In6() || v6.Bits() == 0 || v6.Masked() != v6) {
			t.Fatalf("%q: IPv6 part %s", key, v6)
		}
		p4, p6, err := lease.ParseSubnetKey(key)
		if err != nil || (p4.IsValid() && p4.Bits() == 0) || (p6.IsValid() && p6.Bits() == 0) {
			return
		}
		if v4 != p4 || v6 != p6 {
			t.Fatalf("%q: loosely %s %s, strictly %s %s", key, v4, v6, p4, p6)
		}
	})
}
