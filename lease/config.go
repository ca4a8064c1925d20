package lease

import (
	"encoding/json"
	"net/netip"
)

// Config is the cluster network configuration stored at <prefix>/config, in
// flanneld's JSON (pkg/subnet/config.go), with flannel's defaults applied.
type Config struct {
	Network    netip.Prefix
	SubnetLen  int
	SubnetMin  netip.Addr
	SubnetMax  netip.Addr
	EnableIPv4 bool
	// BackendType is Backend.Type, lower-cased; "udp" when Backend is absent.
	BackendType string
	// Backend is the raw Backend object, for the backend's own fields.
	Backend json.RawMessage
}
