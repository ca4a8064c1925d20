package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/lab/labtest"
	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/encap/userspace"
	"github.com/weft-net/weft/lease"
)

// kernelBackend stands in for vxlan or host-gw: a data path in the kernel.
type kernelBackend struct{ typ string }

func (k kernelBackend) Type() string                                  { return k.typ }
func (kernelBackend) Attrs() (lease.Attrs, error)                     { return lease.Attrs{}, nil }
func (kernelBackend) Accept(lease.Attrs) error                        { return nil }
func (kernelBackend) Start(context.Context, lease.Lease) (int, error) { return 1450, nil }
func (kernelBackend) SetPeers([]lease.Lease)                          {}
func (kernelBackend) Run(context.Context) error                       { return nil }

var _ encap.Backend = kernelBackend{}

// With a kernel data path no packet passes weft: capture says so and
// where to capture instead, status says so, metrics carry no packet
// counters (rather than zeros that would look like an idle engine).
// /stats is /status under its old name.
func TestCaptureOnKernelBackendExplains(t *testing.T) {
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.1")}}
	d := &daemon{o: Options{StoreName: "etcd"}}
	st := &stage{backend: kernelBackend{"vxlan"}, why: "test", own: own,
		gate: admission.NewGate(admission.Rule{Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24, Own: own}, slog.New(slog.DiscardHandler))}
	d.cur.Store(st)
	peers := st.gate.Admit([]lease.Lease{own,
		{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.2"), BackendType: "vxlan"}},
		{Subnet: netip.MustParsePrefix("0.0.0.0/0"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.3"), BackendType: "vxlan"}},
	})
	d.obs.sawPeers(true, peers, nil)
	mux := d.mux()
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get("/capture?filter=icmp"); code != http.StatusConflict || !strings.Contains(body, "forwards in the kernel") || !strings.Contains(body, "tcpdump on flannel.<VNI>") {
		t.Errorf("capture on vxlan: %d %s", code, body)
	}
	for _, path := range []string{"/status", "/stats"} {
		_, body := get(path)
		var r StatusReport
		if err := json.Unmarshal([]byte(body), &r); err != nil || !strings.Contains(r.DataPath, "kernel") || len(r.Peers) != 1 || r.Peers[0].Backend != "vxlan" ||
			r.Engine != nil || r.Store != "etcd" || r.Refusals[admission.SubnetLength] != 1 || r.Refused["0.0.0.0/0"] == "" {
			t.Errorf("%s: %v %+v", path, err, r)
		}
	}
	_, body := get("/metrics")
	if !strings.Contains(body, `weft_backend_info{backend="vxlan",why="test"} 1`) || !strings.Contains(body, "weft_peers 1") || strings.Contains(body, "weft_packets_total") ||
		!strings.Contains(body, `weft_peer_refusals_total{reason="subnet-length"} 1`) || !strings.Contains(body, "weft_backend_moves_total 0") {
		t.Errorf("metrics:\n%s", body)
	}
}

func TestListenAddrDefaultsToLoopback(t *testing.T) {
	for in, want := range map[string]string{"9100": "127.0.0.1:9100", ":9100": "127.0.0.1:9100", "0.0.0.0:9100": "0.0.0.0:9100", "[::1]:9": "[::1]:9"} {
		if got := LoopbackIfPortOnly(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
	if err := CheckListenAddr("metrics-addr", "localhost"); err == nil || !strings.Contains(err.Error(), "--metrics-addr") {
		t.Errorf("bad --metrics-addr: %v", err)
	}
}

// Backend.Type vxlan under --no-kernel-vxlan is the userspace backend,
// and the reason says why; nothing is touched before Start.
func TestVXLANUserspaceUnderNoKernelVXLAN(t *testing.T) {
	// In a namespace of its own: selection removes other backends' leftovers.
	l := labtest.New(t, lab.Options{Hosts: 1})
	h := l.Host(1)
	host := encap.Host{Iface: h.Underlay, PublicIP: h.IP, IfaceAddr: h.IP, IfaceMTU: 1500}
	var b encap.Backend
	var why string
	err := lab.InNamespace(h.Name, func() error {
		var err error
		o := &Options{NoKernelVXLAN: true, Datapath: userspace.Options{StateDir: filepath.Dir(filepath.Join(h.Dir, "subnet.env"))}}
		b, why, err = selectBackend(context.Background(), o, host,
			&lease.Config{EnableIPv4: true, BackendType: "vxlan", Backend: []byte(`{"Type":"vxlan","VNI":7}`)}, slog.New(slog.DiscardHandler))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.(*userspace.VXLAN); !ok || !strings.Contains(why, "--no-kernel-vxlan") || !strings.Contains(why, "userspace") {
		t.Fatalf("got %T (%s); want the userspace backend, naming --no-kernel-vxlan", b, why)
	}
}
