package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/weft-net/weft/daemon"
	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/etcdstore"
)

func init() {
	register("netconf", "set or get the network config in etcd (set|get)", runNetconf)
}

const netconfUsage = `usage: weft netconf set [flags] JSON|@FILE|@-
       weft netconf get [flags]

set checks the network config (flannel's JSON) and stores it, exactly as
given, at <prefix>/config; get prints what is stored there.

flags:
`

// etcdClientFlags are flanneld's etcd flags, declared once for every
// command that talks to etcd (weft run, weft netconf).
type etcdClientFlags struct {
	endpoints, prefix         string
	cafile, certfile, keyfile string
	username, password        string
}

func (f *etcdClientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.endpoints, "etcd-endpoints", strings.Join(etcdstore.DefaultEndpoints, ","), "a comma-delimited list of etcd endpoints")
	fs.StringVar(&f.prefix, "etcd-prefix", etcdstore.DefaultPrefix, "etcd prefix")
	fs.StringVar(&f.cafile, "etcd-cafile", "", "SSL Certificate Authority file used to secure etcd communication")
	fs.StringVar(&f.certfile, "etcd-certfile", "", "SSL certification file used to secure etcd communication")
	fs.StringVar(&f.keyfile, "etcd-keyfile", "", "SSL key file used to secure etcd communication")
	fs.StringVar(&f.username, "etcd-username", "", "username for BasicAuth to etcd")
	fs.StringVar(&f.password, "etcd-password", "", "password for BasicAuth to etcd")
}

func (f *etcdClientFlags) store(log *slog.Logger) (*etcdstore.Store, error) {
	return etcdstore.New(etcdstore.Options{
		Endpoints: strings.Split(f.endpoints, ","),
		Prefix:    f.prefix,
		CAFile:    f.cafile, CertFile: f.certfile, KeyFile: f.keyfile,
		Username: f.username, Password: f.password,
		Logger:   log,
		RetryMax: 2 * time.Second,
	})
}

// cliLogger logs warnings and errors (etcd retries) to stderr.
func cliLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func runNetconf(args []string) error {
	fs := flag.NewFlagSet("netconf", flag.ContinueOnError)
	var ef etcdClientFlags
	ef.register(fs)
	timeout := fs.Duration("timeout", 15*time.Second, "give up when etcd has not answered within this time")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), netconfUsage)
		fs.PrintDefaults()
	}
	if len(args) == 0 || (args[0] != "set" && args[0] != "get") {
		fs.Usage()
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return nil
		}
		return errors.New("want 'set' or 'get'")
	}
	verb := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	var data []byte
	switch {
	case verb == "get" && fs.NArg() != 0:
		return fmt.Errorf("get takes no argument, got %q", fs.Args())
	case verb == "set" && fs.NArg() != 1:
		return errors.New("set takes one argument: the config JSON, @FILE, or @- for standard input (flags go before it)")
	case verb == "set":
		var err error
		if data, err = readConfigArg(fs.Arg(0)); err != nil {
			return err
		}
		// Refuse before contacting etcd, as weft run would refuse it.
		if err := checkNetconf(data); err != nil {
			return err
		}
	}

	store, err := ef.store(cliLogger())
	if err != nil {
		return err
	}
	defer store.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	unreachable := func(err error) error {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("etcd at %s did not answer within %s (--timeout)", ef.endpoints, *timeout)
		}
		return err
	}
	if verb == "get" {
		got, ok, err := store.RawConfig(ctx)
		if err != nil {
			return unreachable(err)
		}
		if !ok {
			return fmt.Errorf("no network config at %s (store one with 'weft netconf set')", store.ConfigKey())
		}
		os.Stdout.Write(got)
		if len(got) == 0 || got[len(got)-1] != '\n' {
			fmt.Println()
		}
		if err := checkNetconf(got); err != nil {
			fmt.Fprintf(os.Stderr, "weft netconf: warning: the stored config is invalid: %v\n", err)
		}
		return nil
	}
	if _, err := store.PutConfig(ctx, data, false); err != nil {
		return unreachable(err)
	}
	cfg, _ := lease.ParseConfig(data)
	fmt.Fprintf(os.Stderr, "stored network config at %s: Network %s, SubnetLen %d (SubnetMin %s, SubnetMax %s), backend %s\n",
		store.ConfigKey(), cfg.Network, cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax, cfg.BackendType)
	return nil
}

// checkNetconf is what weft run checks of a network config: flannel's
// JSON, and the Backend fields with the backends' own parsers.
func checkNetconf(data []byte) error {
	cfg, err := lease.ParseConfig(data)
	if err != nil {
		return err
	}
	return daemon.ValidateBackend(cfg)
}

// readConfigArg reads a config given inline, as @FILE, or as @- (stdin).
func readConfigArg(s string) ([]byte, error) {
	switch {
	case s == "@-":
		b, err := io.ReadAll(os.Stdin)
		if err != nil {
			return nil, fmt.Errorf("network config from standard input: %w", err)
		}
		return b, nil
	case strings.HasPrefix(s, "@"):
		b, err := os.ReadFile(s[1:])
		if err != nil {
			return nil, fmt.Errorf("network config: %w", err)
		}
		return b, nil
	case strings.TrimSpace(s) == "":
		return nil, errors.New("network config: empty")
	}
	return []byte(s), nil
}
