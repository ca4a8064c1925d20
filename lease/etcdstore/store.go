package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/internal/backoff"
)

// Defaults of flanneld v0.28.
const (
	DefaultPrefix      = "/coreos.com/network"
	DefaultLeaseTTL    = 24 * time.Hour
	DefaultRenewMargin = 60 * time.Minute
)

// DefaultEndpoints is flanneld's --etcd-endpoints default.
var DefaultEndpoints = []string{"http://127.0.0.1:4001", "http://127.0.0.1:2379"}

// Options configures the etcd store. Zero values take flanneld's
// defaults.
type Options struct {
	Endpoints []string // --etcd-endpoints; entries may hold comma-separated lists
	Prefix    string   // --etcd-prefix, default /coreos.com/network

	// TLS (--etcd-cafile, --etcd-certfile, --etcd-keyfile) and
	// authentication (--etcd-username, --etcd-password).
	CAFile, CertFile, KeyFile string
	Username, Password        string

	// TTL of each subnet lease, default 24 h (flanneld's, fixed there).
	TTL time.Duration
	// RenewMargin: a lease is renewed this long before it expires
	// (--subnet-lease-renew-margin), default 60 min; flanneld allows 1
	// to 1439 min. A margin not below the TTL (only possible with a
	// short TTL) means TTL/2.
	RenewMargin time.Duration

	// PreviousSubnet and PreviousIPv6Subnet are the subnets this host
	// held before (ReadSubnetFile of --subnet-file); Acquire reuses each
	// that fits the config and no other lease holds.
	PreviousSubnet     netip.Prefix
	PreviousIPv6Subnet netip.Prefix

	// Logger receives retries, skipped leases and lease changes; default
	// slog.Default().
	Logger *slog.Logger
	// RetryMax caps the backoff between retries while etcd is
	// unreachable (starting at 1 s or RetryMax if lower, doubling);
	// default 30 s.
	RetryMax time.Duration
	// RequestTimeout bounds each request to etcd; default 10 s.
	RequestTimeout time.Duration
}

// Store is a lease.Manager on etcd's v3 API, in flanneld's layout: the config at
// <prefix>/config, one key per lease at <prefix>/subnets/<a.b.c.d>-<len>
// (dual-stack: <a.b.c.d>-<len>&<v6>-<len>) attached to an etcd lease. It
// is safe for concurrent use.
type Store struct {
	opts Options
	log  *slog.Logger
	// unreadable counts keys under subnets/ whose name or value could not
	// be read, each once (Unreadable).
	unreadable atomic.Uint64
	duplicates atomic.Uint64 // keys left out for a subnet an older key holds
	tls        *tls.Config

	mu     sync.Mutex
	cli    *clientv3.Client
	closed bool
	cfg    *lease.Config
	owned  map[string]clientv3.LeaseID // etcd lease of each lease (by Key) Acquire got
}

var _ lease.Manager = (*Store)(nil)

// New checks opts and returns a store. It does not contact etcd: every
// method retries, with backoff and a log line, until etcd answers or its
// context ends, so a host may start before etcd does.
func New(opts Options) (*Store, error) {
	var eps []string
	for _, e := range opts.Endpoints {
		for _, e := range strings.Split(e, ",") {
			if e = strings.TrimSpace(e); e == "" {
				continue
			}
			u, err := url.Parse(e)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "unix" && u.Scheme != "unixs") || u.Host == "" {
				return nil, fmt.Errorf("--etcd-endpoints: %q is not a URL such as http://127.0.0.1:2379", e)
			}
			// url.Parse lower-cases the scheme; so does etcd's client.
			// Spell it so here too, so "HTTP://" is seen as plain.
			eps = append(eps, u.Scheme+e[len(u.Scheme):])
		}
	}
	if len(opts.Endpoints) == 0 {
		eps = DefaultEndpoints
	}
	if len(eps) == 0 {
		return nil, errors.New("--etcd-endpoints: no endpoint given")
	}
	defaulted := len(opts.Endpoints) == 0
	opts.Endpoints = eps
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !strings.HasPrefix(opts.Prefix, "/") {
		return nil, fmt.Errorf("--etcd-prefix: %q must start with /", opts.Prefix)
	}
	opts.Prefix = strings.TrimRight(opts.Prefix, "/")
	if opts.TTL == 0 {
		opts.TTL = DefaultLeaseTTL
	}
	if opts.TTL < 2*time.Second {
		return nil, fmt.Errorf("lease TTL %s is below etcd's minimum of 2s", opts.TTL)
	}
	if opts.RenewMargin == 0 {
		opts.RenewMargin = DefaultRenewMargin
	}
	if opts.RenewMargin < 0 {
		return nil, fmt.Errorf("--subnet-lease-renew-margin: %s is negative", opts.RenewMargin)
	}
	if opts.RetryMax == 0 {
		opts.RetryMax = 30 * time.Second
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 10 * time.Second
	}
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return nil, errors.New("--etcd-certfile and --etcd-keyfile must be given together")
	}
	if (opts.Username == "") != (opts.Password == "") {
		return nil, errors.New("--etcd-username and --etcd-password must be given together")
	}
	if err := checkTLSEndpoints(opts, defaulted); err != nil {
		return nil, err
	}
	m := &Store{opts: opts, log: opts.Logger, owned: map[string]clientv3.LeaseID{}}
	if m.log == nil {
		m.log = slog.Default()
	}
	if opts.CAFile != "" || opts.CertFile != "" {
		info := transport.TLSInfo{CertFile: opts.CertFile, KeyFile: opts.KeyFile, TrustedCAFile: opts.CAFile}
		c, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("--etcd-cafile/--etcd-certfile/--etcd-keyfile: %w", err)
		}
		m.tls = c
	} else {
		for _, e := range eps {
			if strings.HasPrefix(e, "https://") {
				m.tls = &tls.Config{MinVersion: tls.VersionTLS12}
				break
			}
		}
	}
	if plain := plaintext(eps); !allLoopback(plain) {
		// Also with https endpoints beside: the http ones stay plain.
		m.log.Warn("no certificate provided: connecting to etcd with http. This is insecure", "endpoints", strings.Join(plain, ","))
	}
	return m, nil
}

// ErrClosed is returned by a store's methods after Close.
var ErrClosed = errors.New("lease store closed")

// plaintext returns the endpoints etcd's client talks to without TLS:
// http:// and unix://. It drops TLS for them silently even when given a
// TLS config.
func plaintext(eps []string) []string {
	var out []string
	for _, e := range eps {
		if strings.HasPrefix(e, "http://") || strings.HasPrefix(e, "unix://") {
			out = append(out, e)
		}
	}
	return out
}

// checkTLSEndpoints refuses TLS files with a plain endpoint: etcd's
// client would talk to it in plaintext while the user believes the
// connection is TLS, and say nothing.
func checkTLSEndpoints(opts Options, defaulted bool) error {
	var flags []string
	for _, f := range []struct{ flag, v string }{{"--etcd-cafile", opts.CAFile}, {"--etcd-certfile", opts.CertFile}, {"--etcd-keyfile", opts.KeyFile}} {
		if f.v != "" {
			flags = append(flags, f.flag)
		}
	}
	plain := plaintext(opts.Endpoints)
	if len(flags) == 0 || len(plain) == 0 {
		return nil
	}
	what := "--etcd-endpoints"
	if defaulted {
		what = "the default --etcd-endpoints"
	}
	return fmt.Errorf("%s given, but %s has %s, which etcd's client would use without TLS: use https:// (or unixs://) endpoints",
		strings.Join(flags, ", "), what, strings.Join(plain, ", "))
}

// allLoopback reports whether every endpoint is on this host, where plain
// http is not exposed.
func allLoopback(eps []string) bool {
	for _, e := range eps {
		u, err := url.Parse(e)
		if err != nil {
			return false
		}
		if u.Scheme == "unix" || u.Scheme == "unixs" {
			continue
		}
		h := u.Hostname()
		if a, err := netip.ParseAddr(h); (err != nil || !a.IsLoopback()) && h != "localhost" {
			return false
		}
	}
	return true
}

// Close releases the connection to etcd. Leases stay in etcd (as
// flanneld leaves them), so a restart gets the same subnet.
func (m *Store) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	if m.cli == nil {
		return nil
	}
	err := m.cli.Close()
	m.cli = nil
	return err
}

// client returns the connection, making it on first use. Making it fails
// while etcd is unreachable only with username/password (the token is
// fetched at once); callers retry.
// flowWindow is the etcd connection's and each stream's HTTP/2 flow-control
// window.
const flowWindow = 4 << 20

func (m *Store) client() (*clientv3.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if m.cli != nil {
		return m.cli, nil
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            m.opts.Endpoints,
		TLS:                  m.tls,
		Username:             m.opts.Username,
		Password:             m.opts.Password,
		DialTimeout:          m.opts.RequestTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               quietZap(),
		// gRPC's reconnect backoff grows to 2 min by default: after
		// an etcd outage of a minute a host would stay cut off for
		// minutes more. Cap it so leases are renewed soon after etcd
		// is back.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: min(m.opts.RetryMax, 5*time.Second)},
			MinConnectTimeout: 5 * time.Second,
		}),
			// Fixed flow-control windows. gRPC's dynamic ones estimate the
			// bandwidth-delay product with a PING after any data that
			// arrives while no PING is out: a lease event that comes alone
			// (50 a second at 5,000 hosts) cost a PING written and its ACK
			// read, two wake-ups of the connection's goroutines each. A
			// window this large lets a list of 10,000 leases (~3 MB) come
			// in one round trip, as the estimate would have grown to.
			grpc.WithStaticStreamWindowSize(flowWindow),
			grpc.WithStaticConnWindowSize(flowWindow),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd %s: %w", strings.Join(m.opts.Endpoints, ","), err)
	}
	m.cli = cli
	return cli, nil
}

// quietZap is etcd's own logger, kept to errors: weft logs what matters
// (retries, lost leases) itself with slog.
func quietZap() *zap.Logger {
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(zapcore.ErrorLevel)
	cfg.OutputPaths = []string{"stderr"}
	cfg.ErrorOutputPaths = []string{"stderr"}
	cfg.Sampling = nil
	lg, err := cfg.Build()
	if err != nil {
		return zap.NewNop()
	}
	return lg
}

// permanent reports errors retrying cannot fix.
func permanent(err error) bool {
	var ce *lease.ConfigError
	return errors.As(err, &ce) || errors.Is(err, ErrNetworkFull) || errors.Is(err, ErrLeaseLost) || errors.Is(err, ErrClosed) ||
		errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrAuthFailed) ||
		errors.Is(err, rpctypes.ErrGRPCPermissionDenied) || errors.Is(err, rpctypes.ErrGRPCAuthFailed) ||
		errors.Is(err, rpctypes.ErrUserEmpty) || errors.Is(err, rpctypes.ErrGRPCUserEmpty)
}

// retry runs op until it succeeds, fails permanently or ctx ends, waiting
// 1 s, 2 s, 4 s ... up to RetryMax between tries and logging each failure.
func (m *Store) retry(ctx context.Context, what string, op func(ctx context.Context, cli *clientv3.Client) error) error {
	wait := m.firstRetry()
	for attempt := 1; ; attempt++ {
		cli, err := m.client()
		if err == nil {
			rctx, cancel := context.WithTimeout(ctx, m.opts.RequestTimeout)
			err = op(rctx, cli)
			cancel()
			if err == nil {
				return nil
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if permanent(err) {
			return err
		}
		d := backoff.Jitter(wait)
		m.log.Warn("etcd: "+what+" failed, retrying", "err", err, "attempt", attempt, "in", d.Round(time.Millisecond))
		if !sleep(ctx, d) {
			return ctx.Err()
		}
		wait = min(2*wait, m.opts.RetryMax)
	}
}

// firstRetry is the first wait between retries: 1 s, as flanneld (each
// wait ±20%, backoff.Jitter).
func (m *Store) firstRetry() time.Duration { return min(time.Second, m.opts.RetryMax) }

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// ConfigKey is where the network config lives: <prefix>/config.
func (m *Store) ConfigKey() string { return m.configKey() }

func (m *Store) configKey() string  { return m.opts.Prefix + "/config" }
func (m *Store) subnetsDir() string { return m.opts.Prefix + "/subnets/" }
func (m *Store) leaseKey(sn, sn6 netip.Prefix) string {
	return m.subnetsDir() + lease.LeaseKey(sn, sn6)
}

// Config reads <prefix>/config. While the key is missing or etcd is
// unreachable it logs and retries (as flanneld does) until ctx ends; a
// config that does not parse is returned as a *ConfigError at once.
func (m *Store) Config(ctx context.Context) (*lease.Config, error) {
	var cfg *lease.Config
	err := m.retry(ctx, "fetching network config", func(ctx context.Context, cli *clientv3.Client) error {
		r, err := cli.Get(ctx, m.configKey())
		if err != nil {
			return err
		}
		if len(r.Kvs) == 0 {
			return fmt.Errorf("network config key %s does not exist (set it with 'weft netconf set')", m.configKey())
		}
		cfg, err = lease.ParseConfig(r.Kvs[0].Value)
		return err
	})
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.cfg = cfg
	m.mu.Unlock()
	if cfg.EnableIPv6 {
		m.log.Info("found network config", "network", cfg.Network, "subnetLen", cfg.SubnetLen,
			"ipv6Network", cfg.IPv6Network, "ipv6SubnetLen", cfg.IPv6SubnetLen, "backend", cfg.BackendType)
	} else {
		m.log.Info("found network config", "network", cfg.Network, "subnetLen", cfg.SubnetLen, "backend", cfg.BackendType)
	}
	c := *cfg
	return &c, nil
}

// PutConfig checks data with ParseConfig and stores it at <prefix>/config
// exactly as given (flanneld only reads the config: what the user wrote
// stays). With onlyIfAbsent an existing config is left alone and stored is
// false. Unreachable etcd is retried until ctx ends.
func (m *Store) PutConfig(ctx context.Context, data []byte, onlyIfAbsent bool) (stored bool, err error) {
	if _, err := lease.ParseConfig(data); err != nil {
		return false, err
	}
	err = m.retry(ctx, "storing network config", func(ctx context.Context, cli *clientv3.Client) error {
		put := clientv3.OpPut(m.configKey(), string(data))
		if !onlyIfAbsent {
			_, err := cli.Do(ctx, put)
			stored = err == nil
			return err
		}
		r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(m.configKey()), "=", 0)).Then(put).Commit()
		if err != nil {
			return err
		}
		stored = r.Succeeded
		return nil
	})
	return stored, err
}

// RawConfig returns the bytes stored at <prefix>/config; ok is false when
// the key does not exist. Unlike Config it does not wait for the key.
func (m *Store) RawConfig(ctx context.Context) (data []byte, ok bool, err error) {
	err = m.retry(ctx, "fetching network config", func(ctx context.Context, cli *clientv3.Client) error {
		r, err := cli.Get(ctx, m.configKey())
		if err != nil {
			return err
		}
		if ok = len(r.Kvs) > 0; ok {
			data = r.Kvs[0].Value
		}
		return nil
	})
	return data, ok, err
}

// config returns the config Config last read, reading it if needed.
func (m *Store) config(ctx context.Context) (*lease.Config, error) {
	m.mu.Lock()
	cfg := m.cfg
	m.mu.Unlock()
	if cfg != nil {
		return cfg, nil
	}
	return m.Config(ctx)
}

// Unreadable returns how many keys under <prefix>/subnets/ the watch
// has left out because their name or value could not be read (each key
// counted once, however often it changed).
func (m *Store) Unreadable() uint64 { return m.unreadable.Load() }

// Duplicates returns how many keys the watch has left out because an
// older key holds one of their subnets (each key counted once, however
// often it changed): refusals for overlap that admission never sees.
func (m *Store) Duplicates() uint64 { return m.duplicates.Load() }
