// Package auto is Backend.Type "auto"'s rule: which backend reaches every
// current peer fastest. It is a pure function of what the host knows (the
// peers' leases, the underlay's connected prefixes, whether the kernel
// creates vxlan devices), so it is tested without a kernel; the daemon
// gathers those facts.
package auto

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/lease"
)

// Facts are what the choice rests on.
type Facts struct {
	// Peers are the other hosts' leases.
	Peers []lease.Lease
	// Connected are the underlay interface's connected prefixes.
	Connected []netip.Prefix
	// Unknown, when not empty, says why Peers or Connected could not be
	// read; it rules host-gw out.
	Unknown string
	// Probe creates and deletes a kernel vxlan device: nil when the kernel
	// can, else why not. It is called only when vxlan is a candidate.
	Probe func() error
}

// Choose returns the backend type and why. Peers that all run one backend
// this host can run too are joined on it: backends do not talk to each
// other, so a cluster that is already vxlan (or udp) stays so. Otherwise:
// host-gw when every peer is on a connected prefix, vxlan when Probe
// succeeds, else udp. A host with no peers yet has nothing in the way of
// host-gw.
func Choose(f Facts) (typ, why string) {
	peers, connected := f.Peers, f.Connected
	var off []string
	types := map[string]int{}
	for _, p := range peers {
		if !kernel.OnSegment(connected, p.Attrs.PublicIP) {
			off = append(off, fmt.Sprintf("%s (%s)", p.Subnet, p.Attrs.PublicIP))
		}
		types[admission.BackendName(p.Attrs)]++
	}
	reason := f.Unknown
	switch {
	case f.Unknown != "":
	case len(off) > 0:
		reason = fmt.Sprintf("peer %s is not on this host's segment %v", strings.Join(off, ", "), connected)
	case len(peers) == 0:
		return "host-gw", fmt.Sprintf("auto: no peers yet, so none is behind a router (this host is on %v)", connected)
	}
	if len(types) == 1 {
		switch {
		case types["host-gw"] > 0 && reason == "":
			return "host-gw", fmt.Sprintf("auto: all %d peers run host-gw on this host's segment %v", len(peers), connected)
		case types["vxlan"] > 0:
			if err := f.Probe(); err != nil {
				// Userspace VXLAN joins them where the kernel cannot.
				return "vxlan", fmt.Sprintf("auto: all %d peers run vxlan, and there is no kernel vxlan here: %v", len(peers), err)
			}
			return "vxlan", fmt.Sprintf("auto: all %d peers run vxlan, and the kernel creates vxlan devices", len(peers))
		case types["udp"] > 0:
			return "udp", fmt.Sprintf("auto: all %d peers run udp", len(peers))
		}
	}
	if reason == "" {
		return "host-gw", fmt.Sprintf("auto: all %d peers are on this host's segment %v", len(peers), connected)
	}
	if err := f.Probe(); err != nil {
		return "udp", "auto: " + reason + ", and there is no kernel vxlan here: " + err.Error()
	}
	return "vxlan", "auto: " + reason + ", and the kernel creates vxlan devices"
}
