package firewall

import "net/netip"

const (
	// Chain names and comments are flanneld's.
	MasqChain    = "FLANNEL-POSTRTG"
	ForwardChain = "FLANNEL-FWD"
	masqComment  = "flanneld masq"
	fwdComment   = "flanneld forward"
	// kubeProxyMark is kube-proxy's masquerade mark: such traffic is NATed
	// by kube-proxy already and must not be twice.
	kubeProxyMark = "0x4000/0x4000"
)

// Rule is one iptables rule.
type Rule struct {
	Table, Chain string
	Spec         []string
}

// spec is match, then flanneld's comment, then target.
func spec(comment string, match []string, target ...string) []string {
	out := append([]string{}, match...)
	out = append(out, "-m", "comment", "--comment", comment)
	return append(out, target...)
}

// multicast is the destination range flanneld never masquerades.
func multicast(network netip.Prefix) string {
	if network.Addr().Is6() {
		return "ff00::/8"
	}
	return "224.0.0.0/4"
}

// MasqRules are flanneld's masquerade rules for a cluster network and this
// host's lease, in flanneld's order (flannel v0.28.9
// pkg/trafficmngr/iptables/iptables.go masqRules and masqIP6Rules; the
// IPv6 set differs only in the multicast range). The first rule is the
// jump from POSTROUTING.
func MasqRules(network, subnet netip.Prefix, randomFully bool) []Rule {
	cluster, pod := network.String(), subnet.String()
	masq := []string{"-j", "MASQUERADE"}
	if randomFully {
		masq = append(masq, "--random-fully")
	}
	ret := []string{"-j", "RETURN"}
	r := func(match []string, target ...string) Rule {
		return Rule{"nat", MasqChain, spec(masqComment, match, target...)}
	}
	return []Rule{
		{"nat", "POSTROUTING", spec(masqComment, nil, "-j", MasqChain)},
		r([]string{"-m", "mark", "--mark", kubeProxyMark}, ret...),
		// No NAT inside the overlay.
		r([]string{"-s", pod, "-d", cluster}, ret...),
		r([]string{"-s", cluster, "-d", pod}, ret...),
		// Traffic from outside to a local pod keeps its source.
		r([]string{"!", "-s", cluster, "-d", pod}, ret...),
		// Pods to the world (not multicast): masquerade.
		r([]string{"-s", cluster, "!", "-d", multicast(network)}, masq...),
		// The host to the overlay: masquerade, so replies come back.
		r([]string{"!", "-s", cluster, "-d", cluster}, masq...),
	}
}

// ForwardRules are flanneld's forward rules for a cluster network (flannel
// v0.28.9 iptables.go forwardRules). The first rule is the jump from
// FORWARD.
func ForwardRules(network netip.Prefix) []Rule {
	n := network.String()
	return []Rule{
		{"filter", "FORWARD", spec(fwdComment, nil, "-j", ForwardChain)},
		{"filter", ForwardChain, spec(fwdComment, []string{"-s", n}, "-j", "ACCEPT")},
		{"filter", ForwardChain, spec(fwdComment, []string{"-d", n}, "-j", "ACCEPT")},
	}
}

// ownChain reports whether chain is one of flanneld's (so weft may flush
// and delete it), and the comment its rules and jumps carry.
func ownChain(chain string) (comment string, ok bool) {
	switch chain {
	case MasqChain:
		return masqComment, true
	case ForwardChain:
		return fwdComment, true
	}
	return "", false
}

// ownChains are flanneld's chains with their table and the built-in chain
// that jumps to them.
var ownChains = []struct{ table, chain, from, comment string }{
	{"nat", MasqChain, "POSTROUTING", masqComment},
	{"filter", ForwardChain, "FORWARD", fwdComment},
}
