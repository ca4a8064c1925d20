package lease

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseSubnetKey(t *testing.T) {
	for in, want := range map[string]string{
		"10.5.42.0-24":           "10.5.42.0/24",
		"10.5.42.0-24&fd00::-64": "10.5.42.0/24+fd00::/64",
		"0.0.0.0-0":              "0.0.0.0/0",
		// Keys of dual-stack and IPv6-only flanneld (the fixtures' README).
		"10.5.83.0-24&fd00:10:5:62::-64": "10.5.83.0/24+fd00:10:5:62::/64",
		"0.0.0.0-0&fd00:10:5:12::-64":    "fd00:10:5:12::/64",
		"10.0.0.0-0&fd00:10:5:12::-64":   "",
		"0.0.0.0-8&fd00:10:5:12::-64":    "0.0.0.0/8+fd00:10:5:12::/64",
		"10.5.42.0/24":                   "",
		"10.5.42.1-24":                   "",
		"10.5.42.0-33":                   "",
		"fd00::-64":                      "",
		"10.5.42.0-x":                    "",
		// Other spellings of 10.5.2.0-24: each would be a second key
		// for one subnet (issue 14, item 3).
		"10.5.2.0-024":                    "",
		"10.5.2.0-+24":                    "",
		"10.5.2.0- 24":                    "",
		"10.5.2.0-24 ":                    "",
		" 10.5.2.0-24":                    "",
		"10.5.2.0 -24":                    "",
		"010.5.2.0-24":                    "",
		"10.5.2.1-24":                     "",
		"::ffff:10.5.2.0-24":              "",
		"::ffff:10.5.2.0-120":             "",
		"10.5.2.0-0x18":                   "",
		"10.5.2.0--24":                    "",
		"10.5.2.0-24-24":                  "",
		"10.5.2.0-":                       "",
		"-24":                             "",
		"10.5.2.0-24\n":                   "",
		"10.5.2.0-24&":                    "",
		"10.5.2.0-24&fd00::-064":          "",
		"10.5.2.0-24&fd00:0::-64":         "",
		"10.5.2.0-24&FD00::-64":           "",
		"10.5.2.0-24&fd00::1-64":          "",
		"10.5.2.0-24&fd00::%eth0-64":      "",
		"10.5.2.0-24&::ffff:10.5.2.0-120": "",
		"10.5.2.0-24&10.5.2.0-24":         "",
		"10.5.2.0-24&fd00::-64&x":         "",
	} {
		v4, v6, err := ParseSubnetKey(in)
		l := Lease{Subnet: v4, IPv6Subnet: v6}
		if (want == "") != (err != nil) || (err == nil && l.String() != want) {
			t.Errorf("%q: %v, %v; want %q", in, l, err, want)
		}
		if err == nil && l.Key() != in {
			t.Errorf("%q: Key gives %q", in, l.Key())
		}
	}
}

// A key parses only if it is exactly what SubnetKey (and, after "&",
// flanneld's IPv6 spelling) writes; every prefix SubnetKey writes parses
// back to itself.
func FuzzParseSubnetKey(f *testing.F) {
	for _, s := range []string{"10.5.42.0-24", "10.5.42.0-24&fd00::-64", "10.5.2.0-024", "10.5.2.0-+24",
		"::ffff:10.5.2.0-24", "10.5.2.1-24", "0.0.0.0-0", "255.255.255.255-32", "10.5.2.0-24&fd00::%x-64"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p, p6, err := ParseSubnetKey(in)
		if err == nil {
			if got := LeaseKey(p, p6); got != in {
				t.Fatalf("%q parses as %s %s, whose key is %q", in, p, p6, got)
			}
			_, v6, dual := strings.Cut(in, "&")
			if dual {
				p6, err := netip.ParsePrefix(strings.Replace(v6, "-", "/", 1))
				if err != nil || !p6.Addr().Is6() || p6.Addr().Is4In6() || p6.Masked() != p6 ||
					strings.Replace(p6.String(), "/", "-", 1) != v6 {
					t.Fatalf("%q: IPv6 part %q is not canonical, yet accepted", in, v6)
				}
			}
		}
		// The other way: a masked IPv4 prefix spelled any way netip
		// accepts has one key, which parses back to it.
		if q, err := netip.ParsePrefix(in); err == nil && q.Addr().Is4() {
			q = q.Masked()
			back, _, err := ParseSubnetKey(SubnetKey(q))
			if err != nil || back != q {
				t.Fatalf("%s: key %q parses as %v, %v", q, SubnetKey(q), back, err)
			}
		}
	})
}

// A lease is identified by its IPv4 subnet, or by its IPv6 subnet when it
// has none; CompareID puts IPv4-identified leases first.
func TestLeaseID(t *testing.T) {
	v4 := Lease{Subnet: netip.MustParsePrefix("10.5.42.0/24")}
	dual := Lease{Subnet: netip.MustParsePrefix("10.5.7.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:10:5:1::/64")}
	v6 := Lease{IPv6Subnet: netip.MustParsePrefix("fd00:10:5:12::/64")}
	v6b := Lease{IPv6Subnet: netip.MustParsePrefix("fd00:10:5:3::/64")}
	for _, c := range []struct {
		l    Lease
		want string
	}{{v4, "10.5.42.0/24"}, {dual, "10.5.7.0/24"}, {v6, "fd00:10:5:12::/64"}} {
		if got := c.l.ID().String(); got != c.want {
			t.Errorf("%s: ID %s, want %s", c.l, got, c.want)
		}
	}
	leases := []Lease{v6, v4, v6b, dual}
	slices.SortFunc(leases, CompareID)
	var got []string
	for _, l := range leases {
		got = append(got, l.ID().String())
	}
	if want := "10.5.7.0/24 10.5.42.0/24 fd00:10:5:3::/64 fd00:10:5:12::/64"; strings.Join(got, " ") != want {
		t.Errorf("sorted by ID: %v, want %s", got, want)
	}
}
