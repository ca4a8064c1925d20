package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/net/netutil"
)

// The local HTTP servers (debug socket, --debug-addr, --metrics-addr,
// healthz) are bounded so that no client can hold the daemon's resources:
// a request must arrive within readTimeout, an idle keep-alive connection
// is closed after idleTimeout, a response (other than a capture stream,
// which the capture hub bounds itself) must be written within
// writeTimeout, and at most maxConns connections are served at once.
var (
	readTimeout  = 10 * time.Second
	writeTimeout = 30 * time.Second
	idleTimeout  = 60 * time.Second
)

const (
	maxConns  = 32
	maxHeader = 16 << 10
)

// newServer returns an http.Server with those bounds. A capture stream
// lifts its own write deadline (capture.Hub.ServeCapture).
func newServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: min(5*time.Second, readTimeout),
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeader,
	}
}

// serve serves h on ln (limited to maxConns connections) until stop.
func serve(ln net.Listener, h http.Handler, what string, log *slog.Logger) (stop func()) {
	srv := newServer(h)
	go func() {
		if err := srv.Serve(netutil.LimitListener(ln, maxConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("server stopped", "server", what, "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
	}
}

// serveTCP listens on addr (loopback when only a port is given). Anyone
// who reaches --debug-addr can capture tenant traffic: it defaults to
// loopback and has no authentication.
func serveTCP(flagName, addr string, h http.Handler, log *slog.Logger) (func(), error) {
	addr = LoopbackIfPortOnly(addr)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--%s: %v", flagName, err)
	}
	log.Info("listening", "flag", flagName, "addr", ln.Addr().String())
	return serve(ln, h, flagName, log), nil
}

// serveUnix listens on a Unix socket only root can use: captures and
// status show tenant traffic and topology. The socket never exists under
// its name with a looser mode (listenPrivate).
func serveUnix(path string, h http.Handler, log *slog.Logger) (stop func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("--debug-socket: %v", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("--debug-socket: %s is in use by another running weft", path)
	}
	os.Remove(path) // a stale socket from a process that died
	ln, err := listenPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("--debug-socket: %v", err)
	}
	s := serve(ln, h, "debug-socket", log)
	return func() {
		s()
		os.Remove(path)
	}, nil
}

// listenPrivate binds a socket in a fresh 0700 directory beside path,
// makes it 0600 there, and renames it to path: a client that connects by
// path reaches it only once it is 0600. (A umask around bind would change
// the mode of every file the process creates meanwhile.)
func listenPrivate(path string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".weft-sock-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
