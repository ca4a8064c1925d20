package vxlan

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/encap/kernel"
)

// vtep is one of the backend's vxlan devices: flannel.<VNI>, whose local
// address and remotes are IPv4, or, on a dual-stack network,
// flannel-v6.<VNI>, whose are IPv6. Each has its own MAC, published in the
// lease (BackendData, BackendV6Data).
type vtep struct {
	spec    deviceSpec
	prevMAC net.HardwareAddr // the previous lease's MAC, for a device created anew
	mac     net.HardwareAddr // the MAC the lease publishes, set by Attrs; guarded by Backend.mu
}

// deviceSpec is a vxlan device weft wants.
type deviceSpec struct {
	name      string
	vni       int
	port      int
	gbp       bool
	learning  bool
	vtepIndex int        // the underlay device (--iface)
	vtepAddr  netip.Addr // its address: the source of encapsulated packets (IPv4 or IPv6)
	mtu       int
}

func (d deviceSpec) link(mac net.HardwareAddr) *netlink.Vxlan {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.HardwareAddr = d.name, d.mtu, mac
	return &netlink.Vxlan{
		LinkAttrs:    attrs,
		VxlanId:      d.vni,
		VtepDevIndex: d.vtepIndex,
		SrcAddr:      d.vtepAddr.AsSlice(),
		Port:         d.port,
		Learning:     d.learning,
		GBP:          d.gbp,
		UDPCSum:      true, // as flanneld's device shows: "udpcsum"
	}
}

// incompatible says why an existing device cannot be reused as d, or "".
// These are the attributes the kernel fixes at creation (vxlan_changelink
// refuses to change most of them).
func (d deviceSpec) incompatible(l netlink.Link) string {
	v, ok := l.(*netlink.Vxlan)
	switch {
	case !ok:
		return "it is a " + l.Type() + " device, not vxlan"
	case v.VxlanId != d.vni:
		return fmt.Sprintf("its VNI is %d, not %d", v.VxlanId, d.vni)
	case v.VtepDevIndex != d.vtepIndex:
		return fmt.Sprintf("its underlay device is #%d, not #%d", v.VtepDevIndex, d.vtepIndex)
	case !net.IP(d.vtepAddr.AsSlice()).Equal(v.SrcAddr):
		return fmt.Sprintf("its local address is %s, not %s", v.SrcAddr, d.vtepAddr)
	case v.Port != d.port:
		return fmt.Sprintf("its port is %d, not %d", v.Port, d.port)
	case v.GBP != d.gbp:
		return fmt.Sprintf("its GBP is %v, not %v", v.GBP, d.gbp)
	case v.Learning != d.learning:
		return fmt.Sprintf("its learning is %v, not %v", v.Learning, d.learning)
	case v.FlowBased || v.Group != nil && !v.Group.IsUnspecified():
		return "it is a collect-metadata or multicast device"
	}
	return ""
}

// randomMAC returns a random locally administered unicast address. weft
// picks it rather than leaving it to the kernel: the kernel marks its own
// random address NET_ADDR_RANDOM, and udev's MACAddressPolicy=persistent
// then rewrites it after creation, changing the VtepMAC under the lease.
func randomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, err
	}
	mac[0] = mac[0]&^0x01 | 0x02
	return mac, nil
}

// ensureDevice returns v's device, reusing an existing compatible one and
// its MAC (flanneld: "VXLAN device already exists ... Returning existing
// device") so the VtepMAC peers know stays valid across restarts. An
// incompatible one is replaced, keeping its MAC when it had one.
func (b *Backend) ensureDevice(v *vtep) (*netlink.Vxlan, bool, error) {
	d := v.spec
	old, err := b.nl.H.LinkByName(d.name)
	var notFound netlink.LinkNotFoundError
	if err != nil && !errors.As(err, &notFound) {
		return nil, false, fmt.Errorf("looking up %s: %w", d.name, err)
	}
	var mac net.HardwareAddr
	if err == nil {
		why := d.incompatible(old)
		if why == "" {
			dev := old.(*netlink.Vxlan)
			if dev.MTU != d.mtu {
				if err := b.nl.H.LinkSetMTU(dev, d.mtu); err != nil {
					return nil, false, fmt.Errorf("setting %s MTU %d: %w", d.name, d.mtu, err)
				}
				dev.MTU = d.mtu
			}
			return dev, false, nil
		}
		b.log.Warn("replacing the existing device: it does not match the config", "device", d.name, "why", why)
		if old.Type() == "vxlan" && len(old.Attrs().HardwareAddr) == 6 {
			mac = old.Attrs().HardwareAddr
		}
		if err := b.nl.H.LinkDel(old); err != nil && !errors.Is(err, unix.ENODEV) {
			return nil, false, fmt.Errorf("deleting %s: %w", d.name, err)
		}
	}
	// Recreated under a running backend (someone deleted it): the MAC the
	// lease publishes, so peers' neighbour and FDB entries for this host
	// stay right (flanneld v0.28.9 makes a new one, and traffic to this
	// host stays broken until it restarts).
	b.mu.Lock()
	leaseMAC := v.mac
	b.mu.Unlock()
	if mac == nil && len(leaseMAC) == 6 {
		mac = leaseMAC
		b.log.Info("recreating the vxlan device with the lease's MAC", "device", d.name, "mac", mac.String())
	}
	if mac == nil && len(v.prevMAC) == 6 {
		mac = v.prevMAC
		b.log.Info("creating the vxlan device with the previous lease's MAC", "device", d.name, "mac", mac.String())
	}
	if mac == nil {
		if mac, err = randomMAC(); err != nil {
			return nil, false, err
		}
	}
	if err := b.nl.H.LinkAdd(d.link(mac)); err != nil {
		if errors.Is(err, unix.EEXIST) {
			// Another device already uses this VNI and port (the kernel
			// refuses two with the same VNI, local address and port).
			return nil, false, fmt.Errorf("creating %s: another vxlan device already has VNI %d on port %d: %w", d.name, d.vni, d.port, err)
		}
		return nil, false, fmt.Errorf("creating %s: %w", d.name, err)
	}
	l, err := b.nl.H.LinkByName(d.name)
	if err != nil {
		return nil, false, fmt.Errorf("%s vanished after creation: %w", d.name, err)
	}
	dev, ok := l.(*netlink.Vxlan)
	if !ok {
		return nil, false, fmt.Errorf("%s is not a vxlan device after creation", d.name)
	}
	return dev, true, nil
}

// configure gives the device the lease's network address as a host
// address, /32 or /128 (as flanneld: 10.5.92.0/32 on flannel.1,
// fd00:10:5:21::/128 on flannel-v6.1; a host address makes the kernel add
// no prefix route), removes other addresses of that family (the kernel's
// IPv6 link-local one stays) and brings it up.
func (b *Backend) configure(dev *netlink.Vxlan, addr netip.Addr) error {
	bits := addr.BitLen()
	want := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(bits, bits)}}
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	have, err := kernel.Dump(func() ([]netlink.Addr, error) { return b.nl.H.AddrList(dev, family) })
	if err != nil {
		return fmt.Errorf("listing %s addresses: %w", dev.Name, err)
	}
	found := false
	for _, a := range have {
		if a.IPNet.String() == want.IPNet.String() {
			found = true
			continue
		}
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		// An address from an earlier lease (the subnet changed).
		if err := b.nl.H.AddrDel(dev, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("removing %s from %s: %w", a.IPNet, dev.Name, err)
		}
	}
	if !found {
		if err := b.nl.H.AddrAdd(dev, want); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding %s to %s: %w", want.IPNet, dev.Name, err)
		}
	}
	if dev.Flags&net.FlagUp == 0 {
		if err := b.nl.H.LinkSetUp(dev); err != nil {
			return fmt.Errorf("setting %s up: %w", dev.Name, err)
		}
	}
	return nil
}
