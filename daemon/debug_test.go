package daemon

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The debug socket is 0600 from the moment it has its name, and nothing
// of its private directory is left beside it.
func TestDebugSocketMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "debug.sock")
	stop, err := serveUnix(path, http.NewServeMux(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("%s: %v %v; want a socket of mode 0600", path, st.Mode(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("left beside the socket: %v", entries)
	}
	if _, err := serveUnix(path, http.NewServeMux(), slog.New(slog.DiscardHandler)); err == nil {
		t.Error("a second daemon took over a socket in use")
	}
}

// A client that connects and says nothing, or idles on a keep-alive
// connection, is disconnected; more than maxConns connections wait rather
// than each taking a descriptor and a goroutine.
func TestDebugServerBounds(t *testing.T) {
	defer func(r, w, i time.Duration) { readTimeout, writeTimeout, idleTimeout = r, w, i }(readTimeout, writeTimeout, idleTimeout)
	readTimeout, writeTimeout, idleTimeout = 300*time.Millisecond, time.Second, 300*time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
	stop := serve(ln, mux, "test", slog.New(slog.DiscardHandler))
	defer stop()

	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("a silent client was not disconnected: %v", err)
	}

	idle, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idle.Write([]byte("GET /status HTTP/1.1\r\nHost: x\r\n\r\n"))
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(idle) // the answer, then EOF once idle
	if err != nil || len(b) == 0 {
		t.Errorf("an idle keep-alive connection was not closed: %v (%d bytes)", err, len(b))
	}

	var held []net.Conn
	for range maxConns {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	c := http.Client{Timeout: 100 * time.Millisecond}
	if _, err := c.Get("http://" + ln.Addr().String() + "/status"); err == nil {
		t.Errorf("served a connection past the limit of %d", maxConns)
	}
}

// The runtime's profiles are served on the debug socket, beside the API,
// and a CPU profile longer than the write timeout is refused rather than
// holding the connection.
func TestDebugSocketProfiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "debug.sock")
	api := http.NewServeMux()
	api.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
	stop, err := serveUnix(path, withProfiles(api), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c := Client{Socket: path}
	if b, err := c.Get("/status"); err != nil || string(b) != "ok" {
		t.Errorf("/status: %q %v", b, err)
	}
	if b, err := c.Get("/debug/pprof/heap?debug=1"); err != nil || len(b) == 0 {
		t.Errorf("/debug/pprof/heap: %d bytes, %v", len(b), err)
	}
	if _, err := c.Get("/debug/pprof/profile?seconds=3600"); err == nil {
		t.Error("a CPU profile past the write timeout was served")
	}
}
