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
	// Overhead6 is the same over IPv6 (outer IPv6 header 40 bytes): the
	// kernel caps a vxlan device with an IPv6 local address at the
	// underlay's MTU less 70 (flanneld's flannel-v6.1 has 1430 on a 1500
	// underlay, fixture dualstack/vxlan).
	Overhead6 = 70
	maxVNI    = 1<<24 - 1
	minMTU    = 68 + Overhead
	// minMTU6 is IPv6's minimum link MTU (RFC 8200): below it the kernel
	// disables IPv6 on a device.
	minMTU6 = 1280
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

// DeviceName6 is flanneld's name for the IPv6 device of vni, on a
// dual-stack network.
func DeviceName6(vni int) string { return fmt.Sprintf("flannel-v6.%d", vni) }

// LeaseData is the lease's BackendData (and, on a dual-stack network,
// BackendV6Data: the same fields for the IPv6 device), flanneld's
// vxlanLeaseAttrs.
type LeaseData struct {
	VNI     int
	VtepMAC string
}

// MarshalLeaseData renders BackendData (or BackendV6Data) byte for byte as
// flanneld does: {"VNI":1,"VtepMAC":"8e:d7:4b:96:29:eb"}, the MAC
// lower-case with colons.
func MarshalLeaseData(vni int, mac net.HardwareAddr) (json.RawMessage, error) {
	return json.Marshal(LeaseData{VNI: vni, VtepMAC: mac.String()})
}

// ParseLeaseData reads a peer's BackendData.
func ParseLeaseData(raw json.RawMessage) (LeaseData, net.HardwareAddr, error) {
	return parseLeaseData("BackendData", raw)
}

// ParseLeaseV6Data reads a peer's BackendV6Data.
func ParseLeaseV6Data(raw json.RawMessage) (LeaseData, net.HardwareAddr, error) {
	return parseLeaseData("BackendV6Data", raw)
}

func parseLeaseData(field string, raw json.RawMessage) (LeaseData, net.HardwareAddr, error) {
	var d LeaseData
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, nil, fmt.Errorf("%s: %v", field, err)
	}
	mac, err := net.ParseMAC(d.VtepMAC)
	if err != nil || len(mac) != 6 {
		return d, nil, fmt.Errorf("%s: VtepMAC %q is not an Ethernet address", field, d.VtepMAC)
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

// AcceptLeaseV6Cached is the admission check of a vxlan peer's IPv6 part
// (encap.IPv6Acceptor), for leases with an IPv6 subnet: BackendV6Data
// checked as AcceptLease checks BackendData, parsed through c (a cache
// with V6 set).
func AcceptLeaseV6Cached(vni int, c *LeaseCache) func(lease.Attrs) error {
	check := checkLeaseData(vni, "BackendV6Data: ", c.Parse)
	return func(a lease.Attrs) error { return check(a.BackendV6Data) }
}

// LeaseClaims is admission's Rule.Claims for vxlan leases parsed through
// c4 (BackendData) and c6 (a cache with V6: BackendV6Data): each VtepMAC.
// The kernel keys flannel.<VNI>'s FDB by MAC, so a second lease with a
// peer's (or this host's) VtepMAC would send the peer's traffic to the
// second lease's PublicIP. Data that does not parse claims nothing
// (Accept refuses it).
func LeaseClaims(c4, c6 *LeaseCache) func(lease.Attrs) []string {
	return func(a lease.Attrs) []string {
		var out []string
		if len(a.BackendData) > 0 {
			if _, mac, err := c4.Parse(a.BackendData); err == nil {
				out = append(out, "VtepMAC "+mac.String())
			}
		}
		if len(a.BackendV6Data) > 0 {
			if _, mac, err := c6.Parse(a.BackendV6Data); err == nil {
				out = append(out, "IPv6 VtepMAC "+mac.String())
			}
		}
		return out
	}
}

func acceptLease(vni int, parse func(json.RawMessage) (LeaseData, net.HardwareAddr, error)) func(lease.Attrs) error {
	check := checkLeaseData(vni, "", parse)
	return func(a lease.Attrs) error {
		if a.BackendType != "vxlan" {
			return admission.Refuse(admission.BackendType, "its backend is %s, not vxlan", a.BackendName())
		}
		return check(a.BackendData)
	}
}

// checkLeaseData refuses data without a unicast VtepMAC or of another VNI;
// prefix names the field in refusals parse does not name it in.
func checkLeaseData(vni int, prefix string, parse func(json.RawMessage) (LeaseData, net.HardwareAddr, error)) func(json.RawMessage) error {
	return func(raw json.RawMessage) error {
		d, mac, err := parse(raw)
		if err != nil {
			return admission.Refuse(admission.BackendData, "%v", err)
		}
		if mac[0]&1 != 0 {
			return admission.Refuse(admission.BackendData, "%sVtepMAC %s is not a unicast address", prefix, mac)
		}
		if d.VNI != vni {
			return admission.Refuse(admission.BackendData, "%sits VNI is %d, not %d", prefix, d.VNI, vni)
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
	underlay, clamped := underlayMTU(host, c)
	if clamped {
		log.Warn("network config: Backend.MTU (the underlay's MTU) is larger than the interface's; using the interface's",
			"mtu", c.MTU, "iface-mtu", host.IfaceMTU, "device-mtu", host.IfaceMTU-Overhead)
	}
	return underlay - Overhead
}

// DeviceMTU6 is the MTU of flannel-v6.<VNI>: the underlay's (as
// DeviceMTU reads it) less Overhead6. flanneld asks the kernel for the
// underlay's less 50 and the kernel caps it at this; weft asks for it, so
// the device has the MTU weft set.
func DeviceMTU6(host encap.Host, c Config) int {
	underlay, _ := underlayMTU(host, c)
	return underlay - Overhead6
}

// underlayMTU is Backend.MTU, or the interface's when it is unset or
// larger (clamped).
func underlayMTU(host encap.Host, c Config) (mtu int, clamped bool) {
	if c.MTU != 0 && c.MTU <= host.IfaceMTU {
		return c.MTU, false
	}
	return host.IfaceMTU, c.MTU > host.IfaceMTU
}
