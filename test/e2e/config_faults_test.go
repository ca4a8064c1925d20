package e2e

import (
	"context"
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
)

// hostState is what a refused start must leave as it was: links with
// their details, every routing table, neighbours, the FDB and the
// iptables rules (counters and timestamps stripped).
func hostState(t *testing.T, l *lab.Lab, ns string) string {
	t.Helper()
	var b strings.Builder
	counters := regexp.MustCompile(`\[\d+:\d+\]`)
	for _, argv := range [][]string{
		{"ip", "-d", "link", "show"},
		{"ip", "addr", "show"},
		{"ip", "route", "show", "table", "all"},
		{"ip", "-6", "route", "show", "table", "all"},
		{"ip", "-br", "neigh", "show"}, // no NUD state: it ages by itself
		{"ip", "-6", "-br", "neigh", "show"},
		{"bridge", "fdb", "show"},
		{"iptables-save"},
		{"ip6tables-save"},
	} {
		out, err := l.Exec(ns, argv...)
		if err != nil {
			t.Fatalf("%s: %v", strings.Join(argv, " "), err)
		}
		b.WriteString("$ " + strings.Join(argv, " ") + "\n")
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			b.WriteString(counters.ReplaceAllString(line, "") + "\n")
		}
	}
	return b.String()
}

// TestConfigFaults: every invalid net-conf field and flag combination
// makes weft run exit non-zero with an error naming the key or flag at
// fault, and the host's network state is exactly as before.
func TestConfigFaults(t *testing.T) {
	const good = `{"Network":"10.8.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}`
	f := newFLab(t, 1, good)
	h := f.Lab.Host(1)
	base := []string{"--etcd-endpoints=" + harness.EtcdEndpoint(),
		"--subnet-file=" + harness.SubnetFile(h), "--debug-socket=" + harness.DebugSocket(h)}
	tests := []struct {
		name    string
		netconf string   // stored in etcd before the run; good if empty
		flags   []string // after base
		env     []string
		want    string // the error names it
	}{
		{name: "netconf not JSON", netconf: `{"Network":`, want: "network config"},
		{name: "Network not CIDR", netconf: `{"Network":"10.8.0.0"}`, want: `"Network"`},
		{name: "Network IPv6", netconf: `{"Network":"fd00::/64"}`, want: `"Network"`},
		{name: "Network too small", netconf: `{"Network":"10.8.0.0/29"}`, want: `"Network"`},
		{name: "SubnetLen range", netconf: `{"Network":"10.8.0.0/16","SubnetLen":31}`, want: `"SubnetLen"`},
		{name: "SubnetLen type", netconf: `{"Network":"10.8.0.0/16","SubnetLen":true}`, want: `"SubnetLen"`},
		{name: "SubnetMin outside", netconf: `{"Network":"10.8.0.0/16","SubnetMin":"10.9.1.0"}`, want: `"SubnetMin"`},
		{name: "SubnetMax boundary", netconf: `{"Network":"10.8.0.0/16","SubnetMax":"10.8.1.7"}`, want: `"SubnetMax"`},
		{name: "SubnetMin above SubnetMax", netconf: `{"Network":"10.8.0.0/16","SubnetMin":"10.8.9.0","SubnetMax":"10.8.8.0"}`, want: `"SubnetMin"`},
		{name: "Backend type", netconf: `{"Network":"10.8.0.0/16","Backend":{"Type":"wireguard"}}`, want: `"Backend"`},
		{name: "Backend not object", netconf: `{"Network":"10.8.0.0/16","Backend":"udp"}`, want: `"Backend"`},
		{name: "Backend.Port", netconf: `{"Network":"10.8.0.0/16","Backend":{"Type":"udp","Port":70000}}`, want: `Backend.Port`},
		{name: "EnableIPv6 without IPv6Network", netconf: `{"Network":"10.8.0.0/16","EnableIPv6":true}`, want: `"IPv6Network"`},
		{name: "Networks", netconf: `{"Networks":["10.8.0.0/16"]}`, want: `"Networks"`},
		{name: "renew margin", flags: []string{"--subnet-lease-renew-margin=0"}, want: "--subnet-lease-renew-margin"},
		{name: "batch size", flags: []string{"--batch-size=0"}, want: "--batch-size"},
		{name: "log format", flags: []string{"--log-format=xml"}, want: "--log-format"},
		{name: "public ip", flags: []string{"--public-ip=nope"}, want: "--public-ip"},
		{name: "static half", flags: []string{"--static-subnet=10.8.1.0/24"}, want: "--static-network"},
		{name: "kube subnet manager with etcd flags", flags: []string{"--kube-subnet-mgr"}, want: "--kube-subnet-mgr"}, // base has --etcd-endpoints
		{name: "etcd endpoint", flags: []string{"--etcd-endpoints=ftp://x"}, want: "--etcd-endpoints"},
		{name: "etcd prefix", flags: []string{"--etcd-prefix=coreos"}, want: "--etcd-prefix"},
		{name: "etcd cert without key", flags: []string{"--etcd-certfile=/nonexistent.pem"}, want: "--etcd-certfile"},
		{name: "iface missing", flags: []string{"--iface=nosuchif0"}, want: "nosuchif0"},
		{name: "healthz port", flags: []string{"--healthz-port=99999"}, want: "--healthz-port"},
		{name: "unknown flag", flags: []string{"--no-such-flag"}, want: "no-such-flag"},
		{name: "stray argument", flags: []string{"stray"}, want: "stray"},
		{name: "env batch size", env: []string{"WEFT_BATCH_SIZE=lots"}, want: "WEFT_BATCH_SIZE"},
		{name: "env renew margin", env: []string{"FLANNELD_SUBNET_LEASE_RENEW_MARGIN=0"}, want: "--subnet-lease-renew-margin"},
	}
	// The neighbour entry for etcd's address comes with the first
	// contact, whoever makes it: make it before the baseline.
	lab.Ping(context.Background(), h.Name, lab.SwitchIP, 1, 0, time.Second)
	before := hostState(t, f.Lab, h.Name)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf := good
			if tt.netconf != "" {
				conf = tt.netconf
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := f.cli.Put(ctx, harness.EtcdPrefix+"/config", conf); err != nil {
				t.Fatal(err)
			}
			argv := append([]string{"env"}, tt.env...)
			argv = append(append(argv, f.Binary, "run"), base...)
			if !strings.Contains(strings.Join(tt.flags, " "), "--iface=") {
				argv = append(argv, "--iface="+h.Underlay)
			}
			argv = append(argv, tt.flags...)
			cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.Name}, argv...)...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ctx.Err() != nil {
				t.Fatalf("weft run did not exit non-zero (%v, context %v):\n%s", err, ctx.Err(), out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("error does not name %s:\n%s", tt.want, out)
			}
			if after := hostState(t, f.Lab, h.Name); after != before {
				t.Errorf("host state changed by a refused start:\n%s", lineDiff(before, after))
				// Put the host back so the next case starts clean.
				f.Lab.Exec(h.Name, f.Binary, "cleanup", "--debug-socket", harness.DebugSocket(h))
			}
		})
	}
}

// lineDiff lists the lines only in a ("-") and only in b ("+").
func lineDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if !mb[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ma[l] {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}
