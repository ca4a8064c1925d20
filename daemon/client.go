package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// DefaultDebugSocket is where `weft run` serves the debug API unless told
// otherwise, and where `weft status`, `stats`, `capture` and `cleanup`
// look for it.
const DefaultDebugSocket = "/run/weft/debug.sock"

// Client reaches a running daemon's debug API: on its Unix socket, or on
// its --debug-addr when Addr is set.
type Client struct {
	Socket string
	Addr   string
}

// HTTP returns an HTTP client for the debug API, the base URL of its
// requests, and where it connects (for messages). timeout 0 is for
// streams.
func (c Client) HTTP(timeout time.Duration) (client *http.Client, base, where string) {
	if c.Addr != "" {
		addr := LoopbackIfPortOnly(c.Addr)
		return &http.Client{Timeout: timeout}, "http://" + addr, addr
	}
	socket := c.Socket
	return &http.Client{
		Timeout: timeout,
		// A transport per call: with keep-alive its idle connection would
		// hold a goroutine and a descriptor in the daemon for the server's
		// idle timeout (60 s) after every `weft status`, and a poller
		// (the benches, the tests) would pile them up.
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}},
	}, "http://weft", socket
}

// ReachError explains a failed connection to the debug API.
func ReachError(where string, err error) error {
	return fmt.Errorf("cannot reach a running weft at %s (is it running, with this --debug-socket or --debug-addr, and are you root?): %v", where, err)
}

// Get fetches path and returns the body of a 200 answer.
func (c Client) Get(path string) ([]byte, error) {
	hc, base, where := c.HTTP(10 * time.Second)
	resp, err := hc.Get(base + path)
	if err != nil {
		return nil, ReachError(where, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %s", where, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}
