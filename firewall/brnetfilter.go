package firewall

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrNoBridgeNetfilter is what CheckBridgeNetfilter's errors are (with
// errors.Is): the br_netfilter kernel module is not loaded, so traffic
// between pods on one bridge would bypass iptables (kube-proxy's Service
// rules among them). The fix is `modprobe br_netfilter`.
var ErrNoBridgeNetfilter = errors.New("br_netfilter is not loaded")

// BridgeNetfilterError is flanneld's refusal to start without
// br_netfilter. Its text is flanneld's log line, e.g.
//
//	Failed to check br_netfilter: stat /proc/sys/net/bridge/bridge-nf-call-iptables: no such file or directory
type BridgeNetfilterError struct{ Err error }

func (e *BridgeNetfilterError) Error() string {
	return "Failed to check br_netfilter: " + e.Err.Error()
}
func (e *BridgeNetfilterError) Unwrap() []error {
	return []error{ErrNoBridgeNetfilter, e.Err}
}

// CheckBridgeNetfilter is flanneld v0.28.9's start-up check (main.go,
// added by flannel PR 2082, after kubeadm 1.30 dropped its own): for
// each family in use, procRoot/sys/net/bridge/bridge-nf-call-iptables
// (IPv4) or bridge-nf-call-ip6tables (IPv6) must exist. As in flanneld
// only "does not exist" fails; another stat error (say, permission)
// passes. procRoot is "/proc" on a host.
//
// flanneld runs it right after reading the network config, only in
// iptables mode (EnableNFTables false; never on Windows), whether or not
// --ip-masq or --iptables-forward-rules are set, and exits 1 on failure.
// Sysctls under /proc/sys/net are per network namespace: the files show
// in a namespace only while the module is loaded.
func CheckBridgeNetfilter(procRoot string, ipv4, ipv6 bool) error {
	for _, c := range []struct {
		on   bool
		file string
	}{{ipv4, "bridge-nf-call-iptables"}, {ipv6, "bridge-nf-call-ip6tables"}} {
		if !c.on {
			continue
		}
		_, err := os.Stat(filepath.Join(procRoot, "sys/net/bridge", c.file))
		if errors.Is(err, fs.ErrNotExist) {
			return &BridgeNetfilterError{Err: err}
		}
	}
	return nil
}
