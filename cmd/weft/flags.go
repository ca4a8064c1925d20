package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// stringList is a repeatable flag (--iface a --iface b), also accepting a
// comma-separated list as flanneld's environment variables do.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}

// flanneldFlags are flanneld v0.28.9's own flag names: each is read from
// FLANNELD_<NAME> as flanneld reads it. Every other flag of `weft run` is
// weft's own and is read from WEFT_<NAME>. The list is explicit so that a
// new weft flag can never take a FLANNELD_ variable by accident
// (TestEnvNames checks it against the flag set).
var flanneldFlags = map[string]bool{
	"etcd-endpoints": true, "etcd-prefix": true, "etcd-keyfile": true, "etcd-certfile": true, "etcd-cafile": true,
	"etcd-username": true, "etcd-password": true,
	"iface": true, "iface-regex": true, "iface-can-reach": true, "public-ip": true, "public-ipv6": true,
	"subnet-file": true, "subnet-lease-renew-margin": true,
	"ip-masq": true, "ip-masq-fully-random-disable": true, "iptables-resync": true, "iptables-forward-rules": true,
	"iptables-nft-rules": true, "ip-blackhole-route": true, "healthz-ip": true, "healthz-port": true,
	"v": true, "vmodule": true, "log_backtrace_at": true, // klog's, copied onto flanneld's flag set
	"kube-subnet-mgr": true, "kube-api-url": true, "kubeconfig-file": true, "kube-annotation-prefix": true,
	"net-config-path": true, "set-node-network-unavailable": true, "use-multicluster-cidr": true,
	"version": true, // read before the environment, as flanneld's main does: FLANNELD_VERSION changes nothing
}

// envName is the environment variable of flag name: FLANNELD_ETCD_ENDPOINTS
// for --etcd-endpoints, WEFT_BATCH_SIZE for --batch-size.
func envName(name string) string {
	prefix := "WEFT_"
	if flanneldFlags[name] {
		prefix = "FLANNELD_"
	}
	return prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// applyEnv sets every flag not given on the command line from its
// environment variable (when set and not empty), as flanneld does.
func applyEnv(fs *flag.FlagSet, nameFor func(flag string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		key := nameFor(f.Name)
		// An empty variable counts as unset, as in flanneld.
		if v := os.Getenv(key); v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment variable %s: %v", key, e)
			}
		}
	})
	return err
}

// refusedFlags are flanneld flags of modes weft does not have. They are
// accepted by the parser only to be refused with a clear message, never
// silently ignored (also when they come from FLANNELD_* variables).
var refusedFlags = map[string]string{
	"use-multicluster-cidr": "multi-cluster CIDRs are not supported",
	"iptables-nft-rules":    "not supported (nor by flanneld v0.28.9): set \"EnableNFTables\": true in the network config for nftables rules",
}

// refusedBool are the refused flags that take no value in flanneld.
var refusedBool = map[string]bool{
	"use-multicluster-cidr": true, "iptables-nft-rules": true,
}

type refusedFlag struct {
	name string
	set  *[]string
}

func (r refusedFlag) String() string { return "" }
func (r refusedFlag) Set(string) error {
	*r.set = append(*r.set, r.name)
	return nil
}

// boolRefusedFlag is a refused flag that takes no value.
type boolRefusedFlag struct{ refusedFlag }

func (boolRefusedFlag) IsBoolFlag() bool { return true }
