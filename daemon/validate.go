package daemon

import (
	"github.com/weft-net/weft/encap/userspace"
	"github.com/weft-net/weft/encap/vxlan"
	"github.com/weft-net/weft/lease"
)

// ValidateBackend checks the network config's Backend fields with the
// parsers of the backends that would read them, so `weft netconf set`
// refuses what `weft run` would (VNI 99999999, Port 99999, naming the
// key), and `weft run` refuses it at startup whichever backend auto picks.
func ValidateBackend(cfg *lease.Config) error {
	switch cfg.BackendType {
	case "vxlan":
		_, err := vxlan.ParseConfig(cfg.Backend)
		return err
	case "udp":
		_, err := userspace.ParseUDPPort(cfg.Backend)
		return err
	case "auto":
		// auto runs vxlan (or host-gw) on any host, so vxlan's fields must
		// parse; a udp Port is still checked, so that a value weft would
		// refuse with Type udp is not silently carried in the config.
		if _, err := vxlan.ParseConfig(cfg.Backend); err != nil {
			return err
		}
		_, err := userspace.ParseUDPPort(cfg.Backend)
		return err
	}
	return nil // host-gw reads no Backend field
}
