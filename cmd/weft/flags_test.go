package main

import (
	"flag"
	"strings"
	"testing"
)

// TestRunFlagErrors: every bad flag or combination is refused before
// anything on the host is touched, with a message naming the flag.
func TestRunFlagErrors(t *testing.T) {
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--kube-subnet-mgr", "--etcd-endpoints", "http://127.0.0.1:2379"}, nil, "--etcd-endpoints"},
		{[]string{"--kube-subnet-mgr"}, map[string]string{"FLANNELD_ETCD_PREFIX": "/x"}, "--etcd-prefix"},
		{[]string{"--kube-subnet-mgr", "--static-network", "10.6.0.0/16", "--static-subnet", "10.6.1.0/24"}, nil, "--static-"},
		{[]string{"--kube-subnet-mgr", "--net-config-path", "/nonexistent/net-conf.json"}, nil, "--net-config-path"},
		{[]string{"--kube-annotation-prefix", "a/b/c"}, nil, "--kube-annotation-prefix"},
		{nil, map[string]string{"FLANNELD_KUBE_ANNOTATION_PREFIX": "Not Valid"}, "--kube-annotation-prefix"},
		{[]string{"--public-ipv6", "192.0.2.1"}, nil, "--public-ipv6"},
		{[]string{"--public-ipv6", "fe80::1"}, nil, "--public-ipv6"},
		{nil, map[string]string{"FLANNELD_PUBLIC_IPV6": "::1"}, "--public-ipv6"},
		{[]string{"--subnet-lease-renew-margin", "0"}, nil, "--subnet-lease-renew-margin"},
		{[]string{"--subnet-lease-renew-margin", "1440"}, nil, "--subnet-lease-renew-margin"},
		{[]string{"--batch-size", "0"}, nil, "--batch-size"},
		{[]string{"--batch-size", "5000"}, nil, "--batch-size"},
		{[]string{"--queues", "-1"}, nil, "--queues"},
		{[]string{"--queues", "17"}, nil, "--queues"},
		{nil, map[string]string{"WEFT_QUEUES": "100"}, "--queues"},
		{[]string{"--log-format", "xml"}, nil, "--log-format"},
		{[]string{"--public-ip", "not-an-ip"}, nil, "--public-ip"},
		{[]string{"--public-ip", "2001:db8::1"}, nil, "--public-ip"},
		{[]string{"--public-ip", "127.0.0.1"}, nil, "--public-ip"},
		{[]string{"--public-ip", "224.0.0.9"}, nil, "--public-ip"},
		{[]string{"--static-subnet", "10.6.1.0/24"}, nil, "--static-network"},
		{nil, map[string]string{"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "9999"}, "--subnet-lease-renew-margin"},
		{nil, map[string]string{"FLANNELD_IP_MASQ": "perhaps"}, "FLANNELD_IP_MASQ"},
		{[]string{"stray"}, nil, "stray"},
		{[]string{"--iptables-nft-rules"}, nil, "EnableNFTables"},
		{nil, map[string]string{"FLANNELD_USE_MULTICLUSTER_CIDR": "true"}, "--use-multicluster-cidr"},
	}
	for _, c := range cases {
		t.Run(c.want, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			err := runRun(c.args)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("weft run %v (env %v): error %v, want one naming %s", c.args, c.env, err, c.want)
			}
		})
	}
}

func TestEnvFillsFlagsNotGiven(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var f runFlags
	f.register(fs)
	t.Setenv("FLANNELD_IFACE", "eth1,eth2")
	t.Setenv("FLANNELD_ETCD_PREFIX", "/from/env")
	t.Setenv("WEFT_BATCH_SIZE", "7")
	if err := fs.Parse([]string{"--etcd-prefix", "/from/flag"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs, envName); err != nil {
		t.Fatal(err)
	}
	if f.etcd.prefix != "/from/flag" {
		t.Errorf("the environment overrode a flag given on the command line: %q", f.etcd.prefix)
	}
	if strings.Join(f.ifaces, " ") != "eth1 eth2" || f.batchSize != 7 {
		t.Errorf("iface %v, batch %d: the environment was not applied", f.ifaces, f.batchSize)
	}
}

// TestEnvNames: flanneld's flags read FLANNELD_*, weft's own WEFT_*, and
// the list of flanneld's flags names only flags `weft run` has.
func TestEnvNames(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var f runFlags
	f.register(fs)
	registered := map[string]bool{}
	fs.VisitAll(func(fl *flag.Flag) { registered[fl.Name] = true })
	for name := range flanneldFlags {
		if !registered[name] {
			t.Errorf("flanneld's --%s is neither implemented nor refused by weft run", name)
		}
	}
	for name, want := range map[string]string{
		"etcd-endpoints": "FLANNELD_ETCD_ENDPOINTS", "iface": "FLANNELD_IFACE", "v": "FLANNELD_V",
		"batch-size": "WEFT_BATCH_SIZE", "no-udp-gso": "WEFT_NO_UDP_GSO", "debug-socket": "WEFT_DEBUG_SOCKET",
		"static-peer": "WEFT_STATIC_PEER", "tun-name": "WEFT_TUN_NAME",
	} {
		if got := envName(name); got != want {
			t.Errorf("--%s reads %s, want %s", name, got, want)
		}
	}
}
