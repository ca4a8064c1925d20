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
	"path/filepath"
	"time"

	"github.com/weft-net/weft/encap"
)

func init() {
	register("stats", "print a running engine's counters (JSON)", runStats)
}

// debugStats is what /stats on the debug socket returns.
type debugStats struct {
	Backend  string       `json:"backend"`
	Why      string       `json:"why"`
	Subnet   netip.Prefix `json:"subnet"`
	PublicIP netip.Addr   `json:"public_ip"`
	MTU      int          `json:"mtu"`
	// Data is the backend's own status; for udp, udpStatus.
	Data json.RawMessage `json:"data,omitempty"`
}

func (d *daemon) stats() debugStats {
	out := debugStats{Backend: d.backend.Type(), Why: d.why, Subnet: d.own.Subnet, PublicIP: d.own.Attrs.PublicIP, MTU: d.mtu}
	if s, ok := d.backend.(encap.Status); ok {
		out.Data, _ = json.Marshal(s.Status())
	}
	return out
}

// serveDebug listens on a Unix socket only root can use: captures and
// stats show tenant traffic and topology.
func serveDebug(path string, d *daemon) (stop func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("--debug-socket: %v", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("--debug-socket: %s is in use by another running weft", path)
	}
	os.Remove(path) // a stale socket from a process that died
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("--debug-socket: %v", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("--debug-socket: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(d.stats())
	})
	registerDebugHandlers(mux, d) // status, capture, metrics (status.go)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		os.Remove(path)
	}, nil
}

// debugGet fetches path from the debug socket of a running engine.
func debugGet(socket, path string) ([]byte, error) {
	c := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}},
	}
	resp, err := c.Get("http://weft" + path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("cannot reach a running weft at %s (is it running, with this --debug-socket, and are you root?): %v", socket, err)
		}
		return nil, fmt.Errorf("cannot reach a running weft at %s: %v", socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, body)
	}
	return body, err
}

func runStats(args []string) error {
	fs := flag.NewFlagSet("weft stats", flag.ContinueOnError)
	socket := fs.String("debug-socket", "/run/weft/debug.sock", "the debug socket of the running weft")
	if err := fs.Parse(args); err != nil {
		return err
	}
	body, err := debugGet(*socket, "/stats")
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(body)
	return err
}
