package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/weft-net/weft/capture"
	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/encap/udp"
	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/lease"
)

// observability is the daemon's part that serves status, captures and
// metrics: it remembers when each peer's lease was first seen and owns the
// capture hub.
type observability struct {
	mu        sync.Mutex
	firstSeen map[netip.Prefix]time.Time // by lease ID, of the admitted peers
	snapshots uint64
	lastSnap  time.Time
	started   time.Time
}

// sawPeers records a change of the admitted peers (called before the
// backend applies it): when each peer was first seen. A full change
// (peers: every admitted peer) forgets the peers it lacks; otherwise the
// work is the size of the change.
func (o *observability) sawPeers(full bool, peers []lease.Lease, removed []netip.Prefix) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	if o.firstSeen == nil {
		o.firstSeen = map[netip.Prefix]time.Time{}
	}
	if full {
		seen := make(map[netip.Prefix]time.Time, len(peers))
		for _, l := range peers {
			t, ok := o.firstSeen[l.ID()]
			if !ok {
				t = now
			}
			seen[l.ID()] = t
		}
		o.firstSeen = seen
	} else {
		for _, id := range removed {
			delete(o.firstSeen, id)
		}
		for _, l := range peers {
			if _, ok := o.firstSeen[l.ID()]; !ok {
				o.firstSeen[l.ID()] = now
			}
		}
	}
	o.snapshots++
	o.lastSnap = now
}

// datapathOf returns the engine, TUN and socket of a backend whose packets
// pass through weft, or nil for a kernel data path.
func datapathOf(st *stage) *encap.DatapathInfo {
	if dp, ok := st.backend.(encap.Datapath); ok {
		return dp.Datapath()
	}
	return nil
}

// start brings up what the daemon serves: the debug socket, the TCP
// debug address and the metrics endpoint, all from one mux. Each stage
// has its capture hub; its captures end (with their trailers) when the
// stage does.
func (o *observability) start(_ context.Context, d *daemon) (stop func(), err error) {
	o.started = time.Now()
	var stops []func()
	stop = func() {
		for _, s := range stops {
			s()
		}
	}
	mux := d.mux()
	if d.o.DebugSocket != "" {
		s, err := serveUnix(d.o.DebugSocket, withProfiles(mux), d.log)
		if err != nil {
			return nil, err
		}
		stops = append(stops, s)
	}
	if d.o.DebugAddr != "" {
		s, err := serveTCP("debug-addr", d.o.DebugAddr, mux, d.log)
		if err != nil {
			stop()
			return nil, err
		}
		stops = append(stops, s)
	}
	if d.o.MetricsAddr != "" {
		m := http.NewServeMux()
		m.Handle("GET /metrics", metricsHandler(d))
		s, err := serveTCP("metrics-addr", d.o.MetricsAddr, m, d.log)
		if err != nil {
			stop()
			return nil, err
		}
		stops = append(stops, s)
	}
	return stop, nil
}

// mux is the one debug API, served on the debug socket and --debug-addr:
// /status (/stats, its old name, for scripts), /capture, /capture/stop and
// /metrics.
func (d *daemon) mux() *http.ServeMux {
	mux := http.NewServeMux()
	status := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		writeJSON(w, d.status())
	}
	mux.HandleFunc("GET /status", status)
	mux.HandleFunc("GET /stats", status)
	// The stage running when a request comes serves it: an auto host's
	// backend, and with it its engine and hub, can change.
	capture.RegisterFunc(mux, func() (*capture.Hub, string) {
		st := d.cur.Load()
		if st.hub == nil {
			return nil, kernelPathNote(st.backend.Type())
		}
		return st.hub, ""
	})
	mux.Handle("GET /metrics", metricsHandler(d))
	return mux
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

// StatusReport is what /status returns and `weft status --json` prints.
type StatusReport struct {
	Store           string             `json:"store"`
	StoreDetails    map[string]string  `json:"store_details,omitempty"` // the store's own (kube: node, annotation prefix)
	Backend         string             `json:"backend"`
	Why             string             `json:"why"`
	Moves           uint64             `json:"backend_moves"`               // auto's moves since start
	LastMove        *Move              `json:"last_backend_move,omitempty"` // auto's last move
	Subnet          netip.Prefix       `json:"subnet,omitzero"`             // absent on an IPv6-only network
	PublicIP        netip.Addr         `json:"public_ip,omitzero"`          // absent on an IPv6-only network
	IPv6Subnet      *netip.Prefix      `json:"ipv6_subnet,omitempty"`       // with IPv6 only
	PublicIPv6      *netip.Addr        `json:"public_ipv6,omitempty"`
	MTU             int                `json:"mtu"`
	Ready           bool               `json:"ready"`
	Uptime          string             `json:"uptime"`
	LeaseExpiration *time.Time         `json:"lease_expiration_at_acquire,omitempty"`
	DataPath        string             `json:"data_path"`
	Peers           []PeerStatus       `json:"peers"`
	Refused         map[string]string  `json:"refused,omitempty"`  // leases of the last snapshot admission refused
	Refusals        map[string]uint64  `json:"refusals_by_reason"` // since start
	Snapshots       uint64             `json:"lease_snapshots"`
	LastSnapshot    *time.Time         `json:"last_lease_snapshot,omitempty"`
	Engine          *EngineStats       `json:"engine,omitempty"`
	Offloads        *Offloads          `json:"offloads,omitempty"`
	Transport       *udp.Stats         `json:"transport,omitempty"`
	KernelDrops     *KernelDrops       `json:"kernel_drops,omitempty"`
	PerCall         map[string]float64 `json:"packets_per_call,omitempty"`
	Captures        int                `json:"captures_running"`
	// BackendStatus is the backend's own details (encap.Status).
	BackendStatus json.RawMessage `json:"backend_status,omitempty"`
}

// PeerStatus is one admitted peer.
type PeerStatus struct {
	Subnet     netip.Prefix  `json:"subnet,omitzero"`       // absent on an IPv6-only network
	PublicIP   netip.Addr    `json:"public_ip,omitzero"`    // absent on an IPv6-only network
	IPv6Subnet *netip.Prefix `json:"ipv6_subnet,omitempty"` // a peer's with IPv6
	PublicIPv6 *netip.Addr   `json:"public_ipv6,omitempty"`
	Backend    string        `json:"backend"`
	Origin     string        `json:"origin,omitempty"` // where the store has it from (kube: "node/<name>")
	FirstSeen  time.Time     `json:"first_seen"`
	TxPackets  uint64        `json:"tx_packets"`
	TxBytes    uint64        `json:"tx_bytes"`
	RxPackets  uint64        `json:"rx_packets"`
	RxBytes    uint64        `json:"rx_bytes"`
}

// EngineStats are the engine's counters, with drops by reason name.
type EngineStats struct {
	engine.Stats
	DropsByReason map[string]uint64 `json:"drops_by_reason"`
	// Queues breaks the packet and byte counts down by queue (--queues).
	Queues []engine.QueueStats `json:"queues"`
}

// KernelDrops are packets the kernel dropped around a userspace data path
// before weft saw them, so no drop reason of the engine counts them and no
// capture shows them: into the TUN while the engine was behind reading it
// (the TUN's transmit drops, its ring full), and at the underlay sockets'
// full receive buffers while the engine was behind receiving.
type KernelDrops struct {
	TUN    uint64 `json:"tun"`
	Socket uint64 `json:"socket"`
}

// Offloads says which offloads are in use.
type Offloads struct {
	TSO, USO, GSO, GRO bool
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// storeStatus is a lease.Manager with details for status.
type storeStatus interface {
	StatusDetails() map[string]string
	Origin(id netip.Prefix) string // by lease ID
}

func (d *daemon) status() StatusReport {
	o := &d.obs
	st := d.cur.Load()
	r := StatusReport{
		Store: d.o.StoreName, Backend: st.backend.Type(), Why: st.why, Subnet: st.own.Subnet, PublicIP: st.own.Attrs.PublicIP, MTU: st.mtu,
		IPv6Subnet: prefixPtr(st.own.IPv6Subnet), PublicIPv6: addrPtr(st.own.Attrs.PublicIPv6),
		Ready: d.ready.Load(), Uptime: time.Since(o.started).Round(time.Second).String(),
		DataPath: kernelPathNote(st.backend.Type()), Refused: st.gate.Refused(), Refusals: d.refusals(),
	}
	r.Moves, r.LastMove = d.auto.counts()
	if !st.own.Expiration.IsZero() {
		e := st.own.Expiration
		r.LeaseExpiration = &e
	}
	if s, ok := st.backend.(encap.Status); ok {
		r.BackendStatus, _ = json.Marshal(s.Status())
	}
	counters := map[netip.Prefix]engine.PeerStats{}
	if dp := datapathOf(st); dp != nil {
		r.DataPath = "userspace: every packet passes through weft (capture with weft capture)"
		s := dp.Engine.Stats()
		ts := dp.Socket()
		r.Engine = &EngineStats{Stats: s, DropsByReason: s.DropsByName(), Queues: dp.Engine.QueueStats()}
		r.Offloads = &Offloads{TSO: dp.TUN.TSO, USO: dp.TUN.USO, GSO: ts.GSO, GRO: ts.GRO}
		r.Transport = &ts
		r.KernelDrops = &KernelDrops{TUN: dp.TUN.KernelDrops(), Socket: ts.ReceiveDrops}
		r.PerCall = map[string]float64{
			"tun_read":  ratio(s.TxPackets, s.TxBatches),
			"recvmmsg":  ratio(ts.RecvSegments, ts.RecvCalls),
			"sendmmsg":  ratio(ts.SendSegments, ts.SendCalls),
			"gro_train": ratio(ts.RecvSegments, ts.RecvDatagrams),
		}
		if t := dp.Engine.Table(); t != nil {
			for _, p := range t.Peers() {
				counters[p.Subnet] = p.Stats()
			}
		}
	}
	if st.hub != nil {
		r.Captures = st.hub.Active()
	}
	origin := func(netip.Prefix) string { return "" }
	if s, ok := d.o.Store.(storeStatus); ok {
		r.StoreDetails, origin = s.StatusDetails(), s.Origin
	}
	peers := st.gate.Peers()
	o.mu.Lock()
	for _, l := range peers {
		id := l.ID()
		c := counters[id]
		r.Peers = append(r.Peers, PeerStatus{Subnet: l.Subnet, PublicIP: l.Attrs.PublicIP, IPv6Subnet: prefixPtr(l.IPv6Subnet), PublicIPv6: addrPtr(l.Attrs.PublicIPv6),
			Backend: l.Attrs.BackendName(), Origin: origin(id),
			FirstSeen: o.firstSeen[id], TxPackets: c.TxPackets, TxBytes: c.TxBytes, RxPackets: c.RxPackets, RxBytes: c.RxBytes})
	}
	r.Snapshots = o.snapshots
	if !o.lastSnap.IsZero() {
		t := o.lastSnap
		r.LastSnapshot = &t
	}
	o.mu.Unlock()
	return r
}

// refusals counts refused leases by reason: admission's, and the store's
// when it counts them: unreadable keys (or Nodes), and second keys (or
// Nodes) for a subnet an older one holds (counted as admission's overlap,
// which they are).
func (d *daemon) refusals() map[string]uint64 {
	c := d.cur.Load().gate.Counts()
	if s, ok := d.o.Store.(interface{ Unreadable() uint64 }); ok {
		if n := s.Unreadable(); n > 0 {
			c[admission.Unreadable] = n
		}
	}
	if s, ok := d.o.Store.(interface{ Duplicates() uint64 }); ok {
		if n := s.Duplicates(); n > 0 {
			c[admission.Overlap] += n
		}
	}
	return c
}

// prefixPtr and addrPtr leave a missing IPv6 part out of the JSON.
func prefixPtr(p netip.Prefix) *netip.Prefix {
	if !p.IsValid() {
		return nil
	}
	return &p
}

func addrPtr(a netip.Addr) *netip.Addr {
	if !a.IsValid() {
		return nil
	}
	return &a
}
