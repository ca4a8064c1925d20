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

// applyEnv sets every flag not given on the command line from its
// environment variable (when set and not empty), as flanneld does: FLANNELD_ETCD_ENDPOINTS for
// --etcd-endpoints. weft's own flags use the WEFT_ prefix.
func applyEnv(fs *flag.FlagSet, prefixFor func(name string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		key := prefixFor(f.Name) + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
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
// silently ignored.
var refusedFlags = map[string]string{
	"kube-subnet-mgr":              "the Kubernetes subnet manager is not supported; use etcd (--etcd-endpoints)",
	"kube-api-url":                 "the Kubernetes subnet manager is not supported; use etcd (--etcd-endpoints)",
	"kubeconfig-file":              "the Kubernetes subnet manager is not supported; use etcd (--etcd-endpoints)",
	"kube-annotation-prefix":       "the Kubernetes subnet manager is not supported; use etcd (--etcd-endpoints)",
	"net-config-path":              "network config from a file is for the Kubernetes subnet manager; store it in etcd (weft netconf set)",
	"set-node-network-unavailable": "the Kubernetes subnet manager is not supported",
	"use-multicluster-cidr":        "multi-cluster CIDRs are not supported",
	"iptables-nft-rules":           "not supported yet",
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
func (r refusedFlag) IsBoolFlag() bool { return true }
