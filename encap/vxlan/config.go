package vxlan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"

	"github.com/weft-net/weft/encap"
	"github.com/weft-net/weft/encap/admission"
	"github.com/weft-net/weft/lease"
)

// Flannel's defaults: VNI 1; port 0 lets the kernel pick its default 8472
// (IANA's 4789 came later), which weft sets explicitly instead.
const (
	DefaultVNI  = 1
	DefaultPort = 8472
	// Overhead is what vxlan over IPv4 adds to each frame: outer IPv4 (20),
	// UDP (8), VXLAN (8) and the inner Ethernet header (14), so the device's
	// MTU is the underlay's minus 50 (the kernel's VXLAN_HEADROOM).
	Overhead = 50
	maxVNI   = 1<<24 - 1
	minMTU   = 68 + Overhead
)

// Config is the vxlan part of the network config's Backend object, with
// flannel's field names and defaults.
type Config struct {
	VNI           int
	Port          int
	GBP           bool
	Learning      bool
	DirectRouting bool
	MTU           int // the underlay's MTU, as in flanneld; 0: the interface's
}

// ParseConfig reads Backend.VNI, Port, GBP, Learning, DirectRouting and
// MTU, as flanneld does (keys match case-insensitively, unknown keys are
// ignored), and refuses values the kernel would, naming the key.
func ParseConfig(raw json.RawMessage) (Config, error) {
	c := Config{VNI: DefaultVNI}
	if len(bytes.TrimSpace(raw)) > 0 {
		var v struct {
			VNI, Port, MTU               *int
			GBP, Learning, DirectRouting *bool
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return c, fmt.Errorf("network config: \"Backend\": %v", err)
		}
		if v.VNI != nil {
			c.VNI = *v.VNI
		}
		if v.Port != nil {
			c.Port = *v.Port
		}
		if v.MTU != nil {
			c.MTU = *v.MTU
		}
		c.GBP = v.GBP != nil && *v.GBP
		c.Learning = v.Learning != nil && *v.Learning
		c.DirectRouting = v.DirectRouting != nil && *v.DirectRouting
	}
	if c.VNI < 0 || c.VNI > maxVNI {
		return c, fmt.Errorf("network config: \"Backend.VNI\": %d is outside 0..%d", c.VNI, maxVNI)
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.Port < 1 || c.Port > 65535 {
		return c, fmt.Errorf("network config: \"Backend.Port\": %d is not a UDP port", c.Port)
	}
	// Backend.MTU is the underlay's MTU; the device gets Overhead less, and
	// 68 is the kernel's minimum for an IPv4 device (ETH_MIN_MTU).
	if c.MTU != 0 && (c.MTU < minMTU || c.MTU > 65535) {
		return c, fmt.Errorf("network config: \"Backend.MTU\": %d is outside %d..65535 (it is the underlay's MTU; the device gets %d less)", c.MTU, minMTU, Overhead)
	}
	return c, nil
}

// DeviceName is flanneld's name for the device of vni.
func DeviceName(vni int) string { return fmt.Sprintf("flannel.%d", vni) }

// LeaseData is the lease's BackendData, flanneld's vxlanLeaseAttrs.
type LeaseData struct {
	VNI     int
	VtepMAC string
}

// MarshalLeaseData renders BackendData byte for byte as flanneld does:
// {"VNI":1,"VtepMAC":"8e:d7:4b:96:29:eb"}, the MAC lower-case with colons.
func MarshalLeaseData(vni int, mac net.HardwareAddr) (json.RawMessage, error) {
	return json.Marshal(LeaseData{VNI: vni, VtepMAC: mac.String()})
}

// ParseLeaseData reads a peer's BackendData.
func ParseLeaseData(raw json.RawMessage) (LeaseData, net.HardwareAddr, error) {
	var d LeaseData
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, nil, fmt.Errorf("BackendData: %v", err)
	}
	mac, err := net.ParseMAC(d.VtepMAC)
	if err != nil || len(mac) != 6 {
		return d, nil, fmt.Errorf("BackendData: VtepMAC %q is not an Ethernet address", d.VtepMAC)
	}
	return d, mac, nil
}

// AcceptLease is the admission check (see package admission) of a vxlan
// peer: BackendType vxlan, BackendData with a unicast VtepMAC and this
// cluster's VNI. The kernel and the userspace vxlan backends share it.
func AcceptLease(vni int) func(lease.Attrs) error { return acceptLease(vni, ParseLeaseData) }

// AcceptLeaseCached is AcceptLease parsing through c.
func AcceptLeaseCached(vni int, c *LeaseCache) func(lease.Attrs) error {
	return acceptLease(vni, c.Parse)
}

func acceptLease(vni int, parse func(json.RawMessage) (LeaseData, net.HardwareAddr, error)) func(lease.Attrs) error {
	return func(a lease.Attrs) error {
		if a.BackendType != "vxlan" {
			return admission.Refuse(admission.BackendType, "its backend is %s, not vxlan", admission.BackendName(a))
		}
		d, mac, err := parse(a.BackendData)
		if err != nil {
			return admission.Refuse(admission.BackendData, "%v", err)
		}
		if mac[0]&1 != 0 {
			return admission.Refuse(admission.BackendData, "VtepMAC %s is not a unicast address", mac)
		}
		if d.VNI != vni {
			return admission.Refuse(admission.BackendData, "its VNI is %d, not %d", d.VNI, vni)
		}
		return nil
	}
}

// DeviceMTU is the MTU of flannel.<VNI>, kernel or userspace, and so
// FLANNEL_MTU. As in flanneld, Backend.MTU is the underlay's MTU, not the
// device's: it defaults to the interface's, and the device gets Overhead
// less (flannel v0.28.9 pkg/backend/vxlan/vxlan.go: cfg.MTU defaults to
// extIface.Iface.MTU; device.go: MTU: devAttrs.MTU - 50; vxlan_network.go:
// MTU() is mtu - encapOverhead).
//
// A Backend.MTU larger than the interface's is clamped to it, with a
// warning. flanneld leaves that to the kernel, which clamps the device
// silently (vxlan_config_apply: dev->mtu is at most lowerdev->mtu -
// VXLAN_HEADROOM), yet writes the unclamped value to FLANNEL_MTU, so pods
// get an MTU their packets cannot cross the device with; weft writes the
// device's MTU instead.
func DeviceMTU(host encap.Host, c Config, log *slog.Logger) int {
	underlay := host.IfaceMTU
	if c.MTU != 0 && c.MTU <= underlay {
		underlay = c.MTU
	} else if c.MTU > underlay {
		log.Warn("network config: Backend.MTU (the underlay's MTU) is larger than the interface's; using the interface's",
			"mtu", c.MTU, "iface-mtu", host.IfaceMTU, "device-mtu", host.IfaceMTU-Overhead)
	}
	return underlay - Overhead
}
