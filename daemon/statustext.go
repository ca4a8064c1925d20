package daemon

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// WriteText writes the report as `weft status` shows it, ages taken
// against now.
func (r *StatusReport) WriteText(out io.Writer, now time.Time) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "store:\t%s%s\n", r.Store, storeDetails(r.StoreDetails))
	fmt.Fprintf(w, "backend:\t%s (%s)\n", r.Backend, r.Why)
	if m := r.LastMove; m != nil {
		fmt.Fprintf(w, "backend moves:\t%d; last %s ago: %s -> %s (%s)\n", r.Moves, now.Sub(m.At).Round(time.Second), m.From, m.To, m.Why)
	}
	fmt.Fprintf(w, "data path:\t%s\n", r.DataPath)
	ready := "yes"
	if !r.Ready {
		ready = "no (lease, data path or subnet file not up yet)"
	}
	fmt.Fprintf(w, "ready:\t%s, up %s\n", ready, r.Uptime)
	switch {
	case !r.Subnet.IsValid() && r.IPv6Subnet != nil && r.PublicIPv6 != nil: // IPv6-only
		fmt.Fprintf(w, "lease:\t%s, public IPv6 %s, MTU %d\n", *r.IPv6Subnet, *r.PublicIPv6, r.MTU)
	default:
		fmt.Fprintf(w, "lease:\t%s, public IP %s, MTU %d\n", r.Subnet, r.PublicIP, r.MTU)
		if r.IPv6Subnet != nil && r.PublicIPv6 != nil {
			fmt.Fprintf(w, "lease (IPv6):\t%s, public IPv6 %s\n", *r.IPv6Subnet, *r.PublicIPv6)
		}
	}
	if r.LeaseExpiration != nil {
		fmt.Fprintf(w, "lease expiry:\t%s when acquired (renewed before it by the lease keeper)\n", r.LeaseExpiration.Format(time.RFC3339))
	}
	if r.LastSnapshot != nil {
		fmt.Fprintf(w, "lease snapshots:\t%d, last %s ago\n", r.Snapshots, now.Sub(*r.LastSnapshot).Round(time.Second))
	}
	if r.Offloads != nil {
		o := r.Offloads
		fmt.Fprintf(w, "offloads:\tTUN TSO %s, USO %s; UDP GSO %s, GRO %s", onOff(o.TSO), onOff(o.USO), onOff(o.GSO), onOff(o.GRO))
		if r.Transport != nil && r.Transport.GSOFallbacks > 0 {
			fmt.Fprintf(w, " (GSO fell back %d times)", r.Transport.GSOFallbacks)
		}
		fmt.Fprintln(w)
	}
	if k := r.KernelDrops; k != nil {
		fmt.Fprintf(w, "kernel drops:\t%d into the TUN (its ring full while weft was behind), %d at the underlay sockets (their buffers full)\n", k.TUN, k.Socket)
	}
	if r.PerCall != nil {
		fmt.Fprintf(w, "packets per call:\tTUN read %.1f (forwarded), recvmmsg %.1f, sendmmsg %.1f; %.1f packets per GRO datagram\n",
			r.PerCall["tun_read"], r.PerCall["recvmmsg"], r.PerCall["sendmmsg"], r.PerCall["gro_train"])
	}
	if e := r.Engine; e != nil {
		fmt.Fprintf(w, "to peers (tx):\t%d packets, %s in %d TUN reads\n", e.TxPackets, humanBytes(e.TxBytes), e.TxBatches)
		fmt.Fprintf(w, "from peers (rx):\t%d packets, %s in %d socket reads\n", e.RxPackets, humanBytes(e.RxBytes), e.RxBatches)
		fmt.Fprintf(w, "ICMP errors sent:\t%d; read errors %d\n", e.ICMPErrors, e.ReadErrors)
		if len(e.Queues) > 1 {
			for i, q := range e.Queues {
				fmt.Fprintf(w, "queue %d:\ttx %d packets, rx %d packets\n", i, q.TxPackets, q.RxPackets)
			}
		}
		if e.RealtimeLoops > 0 {
			fmt.Fprintf(w, "realtime loops:\t%d at SCHED_FIFO; gave up their priority %d times\n", e.RealtimeLoops, e.RealtimeYields)
		}
		if e.RealtimeError != "" {
			fmt.Fprintf(w, "realtime loops:\tnot all: %s\n", e.RealtimeError)
		}
		names := make([]string, 0, len(e.DropsByReason))
		for n := range e.DropsByReason {
			names = append(names, n)
		}
		sort.Strings(names)
		if len(names) == 0 {
			fmt.Fprintf(w, "drops:\tnone\n")
		}
		for i, n := range names {
			label := ""
			if i == 0 {
				label = "drops:"
			}
			fmt.Fprintf(w, "%s\t%s %d\n", label, n, e.DropsByReason[n])
		}
	}
	if r.Engine != nil {
		fmt.Fprintf(w, "captures running:\t%d\n", r.Captures)
	}
	if len(r.Refusals) > 0 {
		names := make([]string, 0, len(r.Refusals))
		for n := range r.Refusals {
			names = append(names, n)
		}
		sort.Strings(names)
		for i, n := range names {
			label := ""
			if i == 0 {
				label = "leases refused:"
			}
			fmt.Fprintf(w, "%s\t%s %d\n", label, n, r.Refusals[n])
		}
	}
	w.Flush()
	if len(r.Refused) > 0 {
		fmt.Fprintf(out, "\nrefused now (%d):\n", len(r.Refused))
		subnets := make([]string, 0, len(r.Refused))
		for s := range r.Refused {
			subnets = append(subnets, s)
		}
		sort.Strings(subnets)
		for _, s := range subnets {
			fmt.Fprintf(out, "  %s  %s\n", s, r.Refused[s])
		}
	}
	fmt.Fprintf(out, "\npeers (%d):\n", len(r.Peers))
	if len(r.Peers) == 0 {
		return
	}
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  SUBNET\tPUBLIC IP\tBACKEND\tSEEN FOR\tTX PKTS\tTX BYTES\tRX PKTS\tRX BYTES")
	for _, p := range r.Peers {
		backend := p.Backend
		if p.Origin != "" {
			backend += " (" + p.Origin + ")"
		}
		var subnets, ips []string
		if p.Subnet.IsValid() {
			subnets, ips = append(subnets, p.Subnet.String()), append(ips, p.PublicIP.String())
		}
		if p.IPv6Subnet != nil && p.PublicIPv6 != nil {
			subnets, ips = append(subnets, p.IPv6Subnet.String()), append(ips, p.PublicIPv6.String())
		}
		subnet, ip := strings.Join(subnets, ","), strings.Join(ips, ",")
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", subnet, ip, backend,
			now.Sub(p.FirstSeen).Round(time.Second), p.TxPackets, humanBytes(p.TxBytes), p.RxPackets, humanBytes(p.RxBytes))
	}
	w.Flush()
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// storeDetails renders the store's details as " (k v, k v)", sorted.
func storeDetails(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+" "+m[k])
	}
	return " (" + strings.Join(parts, ", ") + ")"
}
