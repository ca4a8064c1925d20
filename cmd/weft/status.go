package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/weft-net/weft/capture"
	"github.com/weft-net/weft/encap/udp"
	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/tunio"
)

func init() {
	register("status", "show a running engine's backend, lease, peers, counters and offloads", runStatus)
}

// observability is the daemon's part that serves status, captures and
// metrics: it remembers when each peer's lease was first seen and owns the
// capture hub.
type observability struct {
	mu        sync.Mutex
	firstSeen map[netip.Prefix]time.Time
	peers     []lease.Lease // the last snapshot
	snapshots uint64
	lastSnap  time.Time
	hub       *capture.Hub // nil for backends with a kernel data path
	started   time.Time
}

// sawPeers records a lease snapshot (called before the backend applies it).
func (o *observability) sawPeers(snap []lease.Lease) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	if o.firstSeen == nil {
		o.firstSeen = map[netip.Prefix]time.Time{}
	}
	seen := make(map[netip.Prefix]time.Time, len(snap))
	for _, l := range snap {
		t, ok := o.firstSeen[l.Subnet]
		if !ok {
			t = now
		}
		seen[l.Subnet] = t
	}
	o.firstSeen, o.peers = seen, snap
	o.snapshots++
	o.lastSnap = now
}

// userspace is what status, metrics and captures need of a backend whose
// packets pass through weft's engine (udp, and vxlan from userspace).
type userspace struct {
	eng  *engine.Engine
	tun  *tunio.Device
	sock udp.Stats // the underlay socket(s): receive and send counters
}

// userspace returns the daemon's engine, or nil for a kernel data path.
func (d *daemon) userspace() *userspace {
	switch b := d.backend.(type) {
	case *udpBackend:
		if b.eng != nil {
			return &userspace{eng: b.eng, tun: b.tun, sock: b.conn.Stats()}
		}
	case *uvxlanBackend:
		if b.eng != nil {
			ts := b.tr.Stats()
			sock := ts.Receive // receive side; the send side from the send sockets
			sock.GSO, sock.GSOFallbacks = ts.Send.GSO, ts.Send.GSOFallbacks
			sock.SendCalls, sock.SendMessages, sock.SendSegments = ts.Send.SendCalls, ts.Send.SendMessages, ts.Send.SendSegments
			sock.SendErrors, sock.LastSendErrno = ts.Send.SendErrors, ts.Send.LastSendErrno
			return &userspace{eng: b.eng, tun: b.tun, sock: sock}
		}
	}
	return nil
}

// start brings up what the daemon serves besides the debug socket: the
// capture hub, the TCP debug address and the metrics endpoint. Captures end
// (with their trailers) when ctx does.
func (o *observability) start(ctx context.Context, d *daemon) (stop func(), err error) {
	o.started = time.Now()
	if u := d.userspace(); u != nil {
		o.hub = capture.NewHub(u.eng)
	}
	var stops []func()
	stop = func() {
		for _, s := range stops {
			s()
		}
	}
	go func() {
		<-ctx.Done()
		if o.hub != nil {
			o.hub.Close()
		}
	}()
	if d.f.debugAddr != "" {
		s, err := serveDebugTCP(d.f.debugAddr, d)
		if err != nil {
			return nil, err
		}
		stops = append(stops, s)
	}
	if d.f.metricsAddr != "" {
		s, err := serveMetrics(d.f.metricsAddr, d)
		if err != nil {
			stop()
			return nil, err
		}
		stops = append(stops, s)
	}
	return stop, nil
}

// registerDebugHandlers adds status and capture to the debug socket's mux.
func registerDebugHandlers(mux *http.ServeMux, d *daemon) {
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		writeJSON(w, d.status())
	})
	mux.HandleFunc("GET /capture", func(w http.ResponseWriter, r *http.Request) {
		if d.obs.hub == nil {
			http.Error(w, kernelPathNote(d.backend.Type()), http.StatusConflict)
			return
		}
		d.obs.hub.ServeCapture(w, r)
	})
	mux.HandleFunc("POST /capture/stop", func(w http.ResponseWriter, r *http.Request) {
		if d.obs.hub == nil {
			http.Error(w, "no capture is running", http.StatusNotFound)
			return
		}
		d.obs.hub.ServeStop(w, r)
	})
	mux.Handle("GET /metrics", metricsHandler(d))
}

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func kernelPathNote(backend string) string {
	dev := "the underlay interface"
	if backend == "vxlan" {
		dev = "flannel.<VNI> or the underlay interface (UDP port 8472)"
	}
	return fmt.Sprintf("the %s backend forwards in the kernel: no packet passes through weft, so weft can neither capture nor count them; "+
		"capture with tcpdump on %s instead (and decode it with weft decode)", backend, dev)
}

// statusReport is what /status returns and `weft status --json` prints.
type statusReport struct {
	Backend         string             `json:"backend"`
	Why             string             `json:"why"`
	Subnet          netip.Prefix       `json:"subnet"`
	PublicIP        netip.Addr         `json:"public_ip"`
	MTU             int                `json:"mtu"`
	Ready           bool               `json:"ready"`
	Uptime          string             `json:"uptime"`
	LeaseExpiration *time.Time         `json:"lease_expiration_at_acquire,omitempty"`
	DataPath        string             `json:"data_path"`
	Peers           []peerStatus       `json:"peers"`
	Snapshots       uint64             `json:"lease_snapshots"`
	LastSnapshot    *time.Time         `json:"last_lease_snapshot,omitempty"`
	Engine          *engineStats       `json:"engine,omitempty"`
	Offloads        *offloadState      `json:"offloads,omitempty"`
	Transport       *udp.Stats         `json:"transport,omitempty"`
	PerCall         map[string]float64 `json:"packets_per_call,omitempty"`
	Captures        int                `json:"captures_running"`
}

type peerStatus struct {
	Subnet    netip.Prefix `json:"subnet"`
	PublicIP  netip.Addr   `json:"public_ip"`
	Backend   string       `json:"backend"`
	FirstSeen time.Time    `json:"first_seen"`
	TxPackets uint64       `json:"tx_packets"`
	TxBytes   uint64       `json:"tx_bytes"`
	RxPackets uint64       `json:"rx_packets"`
	RxBytes   uint64       `json:"rx_bytes"`
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func (d *daemon) status() statusReport {
	o := &d.obs
	r := statusReport{
		Backend: d.backend.Type(), Why: d.why, Subnet: d.own.Subnet, PublicIP: d.own.Attrs.PublicIP, MTU: d.mtu,
		Ready: d.ready.Load(), Uptime: time.Since(o.started).Round(time.Second).String(),
		DataPath: kernelPathNote(d.backend.Type()),
	}
	if !d.own.Expiration.IsZero() {
		e := d.own.Expiration
		r.LeaseExpiration = &e
	}
	counters := map[netip.Prefix]engine.PeerStats{}
	if u := d.userspace(); u != nil {
		r.DataPath = "userspace: every packet passes through weft (capture with weft capture)"
		s := u.eng.Stats()
		ts := u.sock
		r.Engine = &engineStats{Stats: s, DropsByReason: s.DropsByName()}
		r.Offloads = &offloadState{TSO: u.tun.TSO, USO: u.tun.USO, GSO: ts.GSO, GRO: ts.GRO}
		r.Transport = &ts
		r.PerCall = map[string]float64{
			"tun_read":  ratio(s.TxPackets, s.TxBatches),
			"recvmmsg":  ratio(ts.RecvSegments, ts.RecvCalls),
			"sendmmsg":  ratio(ts.SendSegments, ts.SendCalls),
			"gro_train": ratio(ts.RecvSegments, ts.RecvDatagrams),
		}
		if t := u.eng.Table(); t != nil {
			for _, p := range t.Peers() {
				counters[p.Subnet] = p.Stats()
			}
		}
	}
	if o.hub != nil {
		r.Captures = o.hub.Active()
	}
	o.mu.Lock()
	for _, l := range o.peers {
		if l.Subnet == d.own.Subnet {
			continue
		}
		bt := l.Attrs.BackendType
		if bt == "" {
			bt = "udp" // flanneld's udp backend writes no BackendType
		}
		c := counters[l.Subnet]
		r.Peers = append(r.Peers, peerStatus{Subnet: l.Subnet, PublicIP: l.Attrs.PublicIP, Backend: bt, FirstSeen: o.firstSeen[l.Subnet],
			TxPackets: c.TxPackets, TxBytes: c.TxBytes, RxPackets: c.RxPackets, RxBytes: c.RxBytes})
	}
	r.Snapshots = o.snapshots
	if !o.lastSnap.IsZero() {
		t := o.lastSnap
		r.LastSnapshot = &t
	}
	o.mu.Unlock()
	sort.Slice(r.Peers, func(i, j int) bool { return r.Peers[i].Subnet.Addr().Less(r.Peers[j].Subnet.Addr()) })
	return r
}

// debugFlags are the flags of the commands that talk to a running weft.
type debugFlags struct{ socket, addr string }

func (f *debugFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.socket, "debug-socket", "/run/weft/debug.sock", "the debug socket of the running weft")
	fs.StringVar(&f.addr, "debug-addr", "", "reach the running weft at this TCP address (its --debug-addr) instead of the socket")
}

// client returns an HTTP client for the debug endpoint and the base URL.
// timeout 0 is for streams.
func (f *debugFlags) client(timeout time.Duration) (*http.Client, string, string) {
	if f.addr != "" {
		addr := loopbackIfPortOnly(f.addr)
		return &http.Client{Timeout: timeout}, "http://" + addr, addr
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", f.socket)
		}},
	}, "http://weft", f.socket
}

// reachError explains a failed connection to the debug endpoint.
func reachError(where string, err error) error {
	return fmt.Errorf("cannot reach a running weft at %s (is it running, with this --debug-socket or --debug-addr, and are you root?): %v", where, err)
}

func runStatus(args []string) error {
	fs := flag.NewFlagSet("weft status", flag.ContinueOnError)
	var df debugFlags
	df.register(fs)
	asJSON := fs.Bool("json", false, "print the raw status as JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil // -h: the usage was the answer
		}
		return err
	}
	c, base, where := df.client(10 * time.Second)
	resp, err := c.Get(base + "/status")
	if err != nil {
		return reachError(where, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", where, resp.Status, strings.TrimSpace(string(body)))
	}
	if *asJSON {
		_, err := os.Stdout.Write(body)
		return err
	}
	var r statusReport
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("%s: unreadable status: %v", where, err)
	}
	printStatus(os.Stdout, &r, time.Now())
	return nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func printStatus(out io.Writer, r *statusReport, now time.Time) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "backend:\t%s (%s)\n", r.Backend, r.Why)
	fmt.Fprintf(w, "data path:\t%s\n", r.DataPath)
	ready := "yes"
	if !r.Ready {
		ready = "no (lease, data path or subnet file not up yet)"
	}
	fmt.Fprintf(w, "ready:\t%s, up %s\n", ready, r.Uptime)
	fmt.Fprintf(w, "lease:\t%s, public IP %s, MTU %d\n", r.Subnet, r.PublicIP, r.MTU)
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
	if r.PerCall != nil {
		fmt.Fprintf(w, "packets per call:\tTUN read %.1f (forwarded), recvmmsg %.1f, sendmmsg %.1f; %.1f packets per GRO datagram\n",
			r.PerCall["tun_read"], r.PerCall["recvmmsg"], r.PerCall["sendmmsg"], r.PerCall["gro_train"])
	}
	if e := r.Engine; e != nil {
		fmt.Fprintf(w, "to peers (tx):\t%d packets, %s in %d TUN reads\n", e.TxPackets, humanBytes(e.TxBytes), e.TxBatches)
		fmt.Fprintf(w, "from peers (rx):\t%d packets, %s in %d socket reads\n", e.RxPackets, humanBytes(e.RxBytes), e.RxBatches)
		fmt.Fprintf(w, "ICMP errors sent:\t%d; read errors %d\n", e.ICMPErrors, e.ReadErrors)
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
	w.Flush()
	fmt.Fprintf(out, "\npeers (%d):\n", len(r.Peers))
	if len(r.Peers) == 0 {
		return
	}
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  SUBNET\tPUBLIC IP\tBACKEND\tSEEN FOR\tTX PKTS\tTX BYTES\tRX PKTS\tRX BYTES")
	for _, p := range r.Peers {
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", p.Subnet, p.PublicIP, p.Backend,
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
