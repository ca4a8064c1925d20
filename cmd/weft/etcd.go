package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/etcdserver"
	"github.com/weft-net/weft/lease/etcdstore"
)

func init() {
	register("etcd", "serve an embedded etcd (the lease store) until SIGINT/SIGTERM", runEtcd)
}

func runEtcd(args []string) error {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "etcd data directory, created if missing and kept across restarts (required)")
	listen := fs.String("listen-client-urls", "http://127.0.0.1:2379", "comma-separated client URLs to serve (https with --cert-file; port 0 picks a free port)")
	advertise := fs.String("advertise-client-urls", "", "comma-separated client URLs told to clients (default: the listen URLs)")
	netconf := fs.String("network-config", "", "network config JSON, @FILE or @-, stored at <prefix>/config once etcd is ready if none is there")
	force := fs.Bool("force-config", false, "store --network-config even over an existing config")
	prefix := fs.String("etcd-prefix", etcdstore.DefaultPrefix, "etcd prefix, for --network-config")
	logLevel := fs.String("log-level", "warn", "etcd's own log level: debug, info, warn or error")
	certFile := fs.String("cert-file", "", "TLS certificate for clients (then the client URLs are https)")
	keyFile := fs.String("key-file", "", "TLS key of --cert-file")
	caFile := fs.String("trusted-ca-file", "", "CA that signs client certificates, with --client-cert-auth")
	clientCertAuth := fs.Bool("client-cert-auth", false, "require clients to present a certificate signed by --trusted-ca-file")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: weft etcd --data-dir DIR [flags]\n\nServes a single-member etcd in this process, for hosts to lease subnets from.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *dataDir == "" {
		return errors.New("--data-dir is required")
	}
	var cfgData []byte
	if *netconf != "" {
		var err error
		if cfgData, err = readConfigArg(*netconf); err != nil {
			return err
		}
		if _, err := lease.ParseConfig(cfgData); err != nil {
			return fmt.Errorf("--network-config: %w", err)
		}
	} else if *force {
		return errors.New("--force-config needs --network-config")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	// Signals first, so a SIGTERM during startup is not lost.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)

	opts := etcdserver.Options{Dir: *dataDir, ListenClientURLs: []string{*listen}, LogLevel: *logLevel,
		CertFile: *certFile, KeyFile: *keyFile, TrustedCAFile: *caFile, ClientCertAuth: *clientCertAuth}
	if *advertise != "" {
		opts.AdvertiseClientURLs = []string{*advertise} // split at commas by StartEmbedded
	}
	srv, err := etcdserver.Start(opts)
	if err != nil {
		return err
	}
	defer srv.Close()
	eps := srv.Endpoints()
	log.Info("etcd ready", "clientURLs", strings.Join(eps, ","), "dataDir", *dataDir)
	// On stdout, for scripts (and port 0): the URLs to pass as --etcd-endpoints.
	fmt.Println(strings.Join(eps, ","))

	if cfgData != nil {
		// Seeding connects as a client of this very server: over TLS it
		// trusts --trusted-ca-file and, when client certificates are
		// required, presents the server's own (it must allow client auth).
		so := etcdstore.Options{Endpoints: eps, Prefix: *prefix, Logger: log, CAFile: *caFile}
		if *clientCertAuth {
			so.CertFile, so.KeyFile = *certFile, *keyFile
		}
		store, err := etcdstore.New(so)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		stored, err := store.PutConfig(ctx, cfgData, !*force)
		cancel()
		store.Close()
		switch {
		case err != nil:
			return fmt.Errorf("storing --network-config: %w", err)
		case stored:
			log.Info("stored network config", "key", store.ConfigKey())
		default:
			log.Warn("a network config is already stored; leaving it (--force-config replaces it)", "key", store.ConfigKey())
		}
	}

	select {
	case s := <-sig:
		log.Info("shutting down", "signal", s.String())
		return nil
	case err := <-srv.Err():
		return fmt.Errorf("etcd server: %w", err)
	}
}
