package main

import (
	"strings"
	"testing"
)

// TestNetconfSetRefusesWhatRunRefuses: out-of-range Backend fields are
// refused by `weft netconf set` before it contacts etcd (the endpoint here
// answers nothing), with the same error weft run gives (one function,
// daemon.ValidateBackend), naming the key.
func TestNetconfSetRefusesWhatRunRefuses(t *testing.T) {
	for conf, key := range map[string]string{
		`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":99999999}}`:   "Backend.VNI",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","Port":99999}}`:     "Backend.Port",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":100}}`:        "Backend.MTU",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":99999}}`:       "Backend.Port",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":"x"}}`:         "Backend",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"auto","VNI":-1}}`:          "Backend.VNI",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"auto","Port":65536}}`:      "Backend.Port",
		`{"Network":"10.5.0.0/16","SubnetLen":31,"Backend":{"Type":"host-gw"}}`: "SubnetLen",
	} {
		err := runNetconf([]string{"set", "--etcd-endpoints", "http://127.0.0.1:9", "--timeout", "1ms", conf})
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: %v; want an error naming %s", conf, err, key)
		}
		if err2 := checkNetconf([]byte(conf)); err2 == nil || err2.Error() != err.Error() {
			t.Errorf("%s: netconf set said %v, the shared check %v", conf, err, err2)
		}
	}
	for _, conf := range []string{
		`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":16777215,"Port":4789,"MTU":9000}}`,
		`{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":8285}}`,
		`{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`,
		`{"Network":"10.5.0.0/16","Backend":{"Type":"auto"}}`,
		`{"Network":"10.5.0.0/16"}`,
	} {
		if err := checkNetconf([]byte(conf)); err != nil {
			t.Errorf("%s: %v", conf, err)
		}
	}
}
