package etcdserver

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Options configures an in-process etcd server.
type Options struct {
	// Dir is the data directory; it is created if missing and reused
	// across restarts (the leases survive).
	Dir string
	// ListenClientURLs are the client URLs to serve, e.g.
	// "http://127.0.0.1:2379". Port 0 picks a free port; Endpoints tells
	// which. Default: http://127.0.0.1:0.
	ListenClientURLs []string
	// AdvertiseClientURLs are the URLs told to clients; default the
	// listen URLs.
	AdvertiseClientURLs []string
	// Name is the member name; default "weft".
	Name string
	// LogLevel is etcd's own (zap) log level: "warn" unless set. etcd
	// logs a lot at info.
	LogLevel string
	// StartTimeout bounds how long the server may take to become ready;
	// default 60 s.
	StartTimeout time.Duration

	// TLS for clients (etcd's --cert-file, --key-file,
	// --trusted-ca-file, --client-cert-auth). With CertFile set the
	// client URLs must be https, without it http.
	CertFile, KeyFile, TrustedCAFile string
	ClientCertAuth                   bool
}

// Server is a single-member etcd server running in this process: a real
// etcd (go.etcd.io/etcd/server/v3/embed), for one-machine setups, the demo
// and tests. Its peer port listens on loopback only.
type Server struct {
	etcd      *embed.Etcd
	endpoints []string
	closing   *atomic.Bool
	closeOnce sync.Once
}

// Start starts the server and returns once it serves clients.
func Start(opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("embedded etcd: no data directory")
	}
	if len(opts.ListenClientURLs) == 0 {
		opts.ListenClientURLs = []string{"http://127.0.0.1:0"}
	}
	if opts.Name == "" {
		opts.Name = "weft"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "warn"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	scheme := "http"
	if opts.CertFile != "" || opts.KeyFile != "" {
		if opts.CertFile == "" || opts.KeyFile == "" {
			return nil, errors.New("embedded etcd: --cert-file and --key-file go together")
		}
		scheme = "https"
	} else if opts.ClientCertAuth || opts.TrustedCAFile != "" {
		return nil, errors.New("embedded etcd: --client-cert-auth and --trusted-ca-file need --cert-file and --key-file")
	}
	listen, err := parseURLs("--listen-client-urls", scheme, opts.ListenClientURLs)
	if err != nil {
		return nil, err
	}
	// Port 0 is resolved here rather than by etcd's listener, so the
	// member's advertised client URLs name the real port too.
	for i := range listen {
		if listen[i].Port() == "0" {
			l, err := net.Listen("tcp", listen[i].Host)
			if err != nil {
				return nil, fmt.Errorf("embedded etcd: --listen-client-urls %s: %w", listen[i].String(), err)
			}
			listen[i].Host = l.Addr().String()
			l.Close()
		}
	}
	advertise := listen
	if len(opts.AdvertiseClientURLs) > 0 {
		if advertise, err = parseURLs("--advertise-client-urls", scheme, opts.AdvertiseClientURLs); err != nil {
			return nil, err
		}
	}
	// One member needs no reachable peer port, but etcd wants one to
	// listen on and advertise: a free loopback port. A restart may get
	// another; etcd takes the membership from the data dir then.
	peerListen, err := freeLoopbackURL()
	if err != nil {
		return nil, err
	}

	cfg := embed.NewConfig()
	cfg.Name = opts.Name
	cfg.Dir = opts.Dir
	cfg.ListenClientUrls = listen
	cfg.AdvertiseClientUrls = advertise
	if scheme == "https" {
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: opts.CertFile, KeyFile: opts.KeyFile,
			TrustedCAFile: opts.TrustedCAFile, ClientCertAuth: opts.ClientCertAuth}
	}
	cfg.ListenPeerUrls = []url.URL{peerListen}
	cfg.AdvertisePeerUrls = []url.URL{peerListen}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	level, err := zapcore.ParseLevel(opts.LogLevel)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: log level %q: %w", opts.LogLevel, err)
	}
	cfg.LogLevel = opts.LogLevel
	closing := new(atomic.Bool)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcdLogger(level, closing))
	// Keep history bounded without an operator: compact revisions older
	// than an hour, as etcd's own packaged defaults recommend.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(opts.StartTimeout):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("embedded etcd: not ready after %s", opts.StartTimeout)
	}
	m := &Server{etcd: e, closing: closing}
	for i, l := range e.Clients {
		u := listen[min(i, len(listen)-1)]
		m.endpoints = append(m.endpoints, u.Scheme+"://"+l.Addr().String())
	}
	return m, nil
}

// Endpoints are the client URLs the server listens on, with real ports.
func (m *Server) Endpoints() []string { return append([]string(nil), m.endpoints...) }

// Err reports a fatal server error after start.
func (m *Server) Err() <-chan error { return m.etcd.Err() }

// Close stops the server; the data directory stays. Calling it again does
// nothing. etcd stops gracefully: while clients still hold watches (every
// running host does) it waits up to its request timeout, about 7 s, before
// cutting them off; close clients first where that matters.
func (m *Server) Close() {
	m.closeOnce.Do(func() {
		m.closing.Store(true)
		m.etcd.Close()
	})
}

// etcdLogger is etcd's zap logger at level, to stderr. Once closing is set
// it drops everything: etcd reports each listener it shuts down as an
// error ("use of closed network connection").
func etcdLogger(level zapcore.Level, closing *atomic.Bool) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(os.Stderr), level)
	return zap.New(&quietOnClose{Core: core, closing: closing}).Named("etcd")
}

// noise are etcd warnings about choices made here on purpose: one port for
// gRPC and HTTP, simple auth tokens (auth is off).
var noise = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
	"simple token is not cryptographically signed":                                         true,
}

type quietOnClose struct {
	zapcore.Core
	closing *atomic.Bool
}

func (c *quietOnClose) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.closing.Load() || noise[e.Message] {
		return ce
	}
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *quietOnClose) With(f []zapcore.Field) zapcore.Core {
	return &quietOnClose{Core: c.Core.With(f), closing: c.closing}
}

func parseURLs(flag, scheme string, ss []string) ([]url.URL, error) {
	var out []url.URL
	for _, s := range ss {
		for _, s := range strings.Split(s, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			u, err := url.Parse(s)
			if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
				return nil, fmt.Errorf("embedded etcd: %s: %q is not a URL such as %s://127.0.0.1:2379", flag, s, scheme)
			}
			if u.Scheme != scheme {
				if scheme == "http" {
					return nil, fmt.Errorf("embedded etcd: %s: %q is https, but no --cert-file and --key-file are given", flag, s)
				}
				return nil, fmt.Errorf("embedded etcd: %s: %q is plain http, but a certificate is given: use https", flag, s)
			}
			if _, _, err := net.SplitHostPort(u.Host); err != nil {
				return nil, fmt.Errorf("embedded etcd: %s: %q has no port", flag, s)
			}
			out = append(out, *u)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("embedded etcd: %s: no URL given", flag)
	}
	return out, nil
}

func freeLoopbackURL() (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, fmt.Errorf("embedded etcd: peer port: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	return url.URL{Scheme: "http", Host: addr}, nil
}
