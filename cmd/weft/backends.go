package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/lease"
)

// selectBackend builds the backend the network config asks for, and says
// why it was chosen (for the log and `weft status`).
func selectBackend(_ context.Context, f *runFlags, host encap.Host, cfg *lease.Config, log *slog.Logger) (encap.Backend, string, error) {
	switch cfg.BackendType {
	case "udp":
		b, err := newUDPBackend(f, host, cfg, log)
		return b, "the network config's Backend.Type is udp", err
	default:
		return nil, "", fmt.Errorf("network config: \"Backend.Type\": %q is not available in this version of weft (only \"udp\" is)", cfg.BackendType)
	}
}
