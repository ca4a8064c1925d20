package tunio

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/engine"
)

// Options describe the device to create.
type Options struct {
	Name string // default "flannel0"
	MTU  int
	// NoOffload opens the device without IFF_VNET_HDR: one packet per
	// read and write, no TSO/USO/GRO. (flanneld's own TUN is like this.)
	NoOffload bool
	// TunPackageWrite leaves writes to the tun package's own coalescing
	// (which verifies every checksum) instead of weft's, for comparison.
	TunPackageWrite bool
	// TxQueueLen is the device's transmit queue in packets: what the
	// kernel holds for the engine while it is not reading (0: the
	// kernel's 500). tun_net_xmit drops what does not fit, and on a busy
	// host a reader can be off its CPU for milliseconds.
	TxQueueLen int
}

var (
	_ engine.Device           = (*Device)(nil)
	_ engine.ReadableDevice   = (*Device)(nil)
	_ engine.LargeTCPWriter   = (*Device)(nil)
	_ engine.LargeTCP6Writer  = (*Device)(nil)
	_ engine.Waitable         = (*Device)(nil)
	_ engine.DrainingDevice   = (*Device)(nil)
	_ engine.SegmentingDevice = (*Device)(nil)
	_ engine.InPlaceWriter    = (*Device)(nil)
)

// Device is an open TUN device and what is known of its offloads.
type Device struct {
	tun.Device
	Name string
	// TSO is true when the kernel hands over TCP super-packets (TSO4/6
	// with checksum offload), USO when it also hands over UDP ones
	// (Linux 6.2+). GRO (coalesced writes) comes with TSO.
	TSO, USO bool

	fd   int // for Readable, WaitFD, ReadMore and ReadSegments; -1 when unknown
	pfd  [1]unix.PollFd
	rbuf []byte // ReadMore's read buffer, with the virtio-net header
	rc   syscall.RawConn
	wr   waitRead // ReadSegments' blocking read

	ownWrite bool       // Write coalesces itself (see coalesce.go)
	wmu      sync.Mutex // serialises writers: the receive loop and ICMP errors
	co       coalescer
	ww       gatherWrite // Write's writev(2), under wmu
}

func newDevice(dev tun.Device, name string) *Device {
	d := &Device{Device: dev, Name: name, fd: -1}
	// Fd() would switch the file to blocking mode; the raw fd number from
	// SyscallConn does not, and stays valid while the device is open.
	if sc, err := dev.File().SyscallConn(); err == nil {
		sc.Control(func(fd uintptr) { d.fd = int(fd) })
		d.rc = sc
	}
	d.initWaitRead()
	d.initGatherWrite()
	return d
}

const (
	tunTCPOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6
	tunUDPOffloads = unix.TUN_F_USO4 | unix.TUN_F_USO6
)

// Create opens (creating if needed) the TUN device.
func Create(o Options) (*Device, error) {
	d, err := create(o)
	if err != nil || o.TxQueueLen == 0 {
		return d, err
	}
	if err := setTxQueueLen(o.Name, o.TxQueueLen); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func setTxQueueLen(name string, n int) error {
	link, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetTxQLen(link, n)
	}
	if err != nil {
		return fmt.Errorf("tunio: set the transmit queue of %s to %d packets: %w", name, n, err)
	}
	return nil
}

func create(o Options) (*Device, error) {
	if o.Name == "" {
		o.Name = "flannel0"
	}
	if o.MTU <= 0 {
		return nil, fmt.Errorf("tunio: MTU %d is not positive", o.MTU)
	}
	if !o.NoOffload {
		dev, err := tun.CreateTUN(o.Name, o.MTU)
		if err != nil {
			return nil, fmt.Errorf("tunio: create %s: %w", o.Name, err)
		}
		return offloadDevice(dev, o), nil
	}
	fd, err := openQueue(o.Name, unix.IFF_TUN|unix.IFF_NO_PI)
	if err != nil {
		return nil, err
	}
	dev, err := tun.CreateTUNFromFile(os.NewFile(uintptr(fd), "/dev/net/tun"), o.MTU)
	if err != nil {
		return nil, fmt.Errorf("tunio: %s: %w", o.Name, err)
	}
	return newDevice(dev, o.Name), nil
}

// offloadDevice is newDevice for a descriptor opened with IFF_VNET_HDR,
// whose offloads the tun package has set (TUNSETOFFLOAD) on it.
func offloadDevice(dev tun.Device, o Options) *Device {
	d := newDevice(dev, o.Name)
	d.TSO = dev.BatchSize() > 1
	if d.TSO {
		d.USO = probeUSO(dev.File())
		d.ownWrite = !o.TunPackageWrite && d.rc != nil
		d.co.uso = d.USO
		d.co.mtu = o.MTU
	}
	return d
}

// openQueue opens /dev/net/tun and attaches it to the device name
// (creating it) with flags, non-blocking for the netpoller.
func openQueue(name string, flags uint16) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("tunio: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tunio: %q: %w", name, err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tunio: create %s: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// probeUSO asks for UDP segmentation offload again, as the tun package did
// when it opened the device, to learn the answer it does not export.
// Setting the same offloads twice changes nothing.
func probeUSO(f *os.File) bool {
	sc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	sc.Control(func(fd uintptr) {
		ok = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, tunTCPOffloads|tunUDPOffloads) == nil
	})
	return ok
}

// Addrs is what Configure gives a device: its own address in each family
// the cluster uses and the cluster network routed through it.
type Addrs struct {
	Addr    netip.Addr   // the IPv4 address, as a /32
	Network netip.Prefix // the IPv4 cluster network
	// Addr6 and Network6 are the IPv6 half of a dual-stack network (Addr6
	// as a /128). Zero: the device has IPv6 switched off.
	Addr6    netip.Addr
	Network6 netip.Prefix
}

// Configure gives the device its addresses, brings it up and routes the
// cluster networks through it, replacing what an earlier run left.
func Configure(name string, a Addrs) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("tunio: %s: %w", name, err)
	}
	if err := setOnlyAddr(link, netlink.FAMILY_V4, a.Addr, 0); err != nil {
		return err
	}
	v6 := a.Addr6.IsValid()
	if !v6 {
		// The cluster network is IPv4. Without this the kernel gives the
		// device an IPv6 link-local address when it comes up and sends
		// router solicitations into it, which the engine can only drop
		// (no-route).
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0)
	} else {
		// Dual-stack: IPv6 on (a device of an earlier IPv4-only run has it
		// off), but no link-local address (addr_gen_mode none) and no
		// router advertisements, so the kernel sends nothing of its own
		// into the overlay; a TUN is IFF_NOARP, so there is no DAD either.
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("0"), 0); err != nil {
			return fmt.Errorf("tunio: enable IPv6 on %s: %w", name, err)
		}
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/accept_ra", []byte("0"), 0)
		if err := netlink.LinkSetIP6AddrGenMode(link, 1); err != nil { // IN6_ADDR_GEN_MODE_NONE
			return fmt.Errorf("tunio: switch off link-local addresses on %s: %w", name, err)
		}
		if err := setOnlyAddr(link, netlink.FAMILY_V6, a.Addr6, unix.IFA_F_NODAD); err != nil {
			return err
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("tunio: bring %s up: %w", name, err)
	}
	if err := routeThrough(link, a.Network); err != nil {
		return err
	}
	if v6 {
		return routeThrough(link, a.Network6)
	}
	return nil
}

// setOnlyAddr makes addr (as a host prefix) the device's only address of
// its family.
func setOnlyAddr(link netlink.Link, family int, addr netip.Addr, flags int) error {
	name := link.Attrs().Name
	bits := addr.BitLen()
	want := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Flags: flags}
	addrs, err := netlink.AddrList(link, family)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("tunio: list addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		if !a.IP.Equal(want.IP) {
			if err := netlink.AddrDel(link, &a); err != nil {
				return fmt.Errorf("tunio: remove stale address %s from %s: %w", a.IPNet, name, err)
			}
		}
	}
	if err := netlink.AddrReplace(link, want); err != nil {
		return fmt.Errorf("tunio: add %s to %s: %w", want.IPNet, name, err)
	}
	return nil
}

func routeThrough(link netlink.Link, network netip.Prefix) error {
	network = network.Masked()
	bits := network.Addr().BitLen()
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: network.Addr().AsSlice(), Mask: net.CIDRMask(network.Bits(), bits)},
		Scope:     netlink.SCOPE_LINK,
	}
	if bits == 128 {
		route.Scope = netlink.SCOPE_UNIVERSE // IPv6 routes have no scope
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("tunio: route %s via %s: %w", network, link.Attrs().Name, err)
	}
	return nil
}

// InterfaceMTU returns the MTU of the named link.
func InterfaceMTU(name string) (int, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("tunio: %s: %w", name, err)
	}
	return link.Attrs().MTU, nil
}

// KernelDrops is how many packets the kernel dropped on their way into
// the TUN, before the engine could read them: the link's transmit drops,
// nearly always its ring full (--tun-txqueuelen) while the engine was
// behind. It is the whole device's count, every queue's; a read failure
// (the device gone) gives 0.
func (d *Device) KernelDrops() uint64 {
	link, err := netlink.LinkByName(d.Name)
	if err != nil || link.Attrs().Statistics == nil {
		return 0
	}
	return link.Attrs().Statistics.TxDropped
}

// Readable reports whether a read would return at once, without blocking
// and without waking the Go scheduler: a poll(2) with zero timeout. The
// engine uses it to read many small packets per wakeup, since the tun
// package's Read returns after one read(2) and a TUN read carries one
// packet unless the kernel built a super-packet.
func (d *Device) Readable() bool {
	if d.fd < 0 {
		return false
	}
	d.pfd[0] = unix.PollFd{Fd: int32(d.fd), Events: unix.POLLIN}
	n, err := unix.Poll(d.pfd[:], 0)
	return err == nil && n > 0 && d.pfd[0].Revents&unix.POLLIN != 0
}

// WaitFD implements engine.Waitable: a TUN read returns at once when its
// descriptor is readable (the tun package keeps nothing between reads).
// Where the descriptor is unknown (-1), the loop reads without waiting and
// its Read parks in the netpoller as without realtime priority.
func (d *Device) WaitFD() int { return d.fd }

// SegmentsLargeTCP implements engine.LargeTCPWriter: weft's write path
// hands a TCP packet longer than the MTU to the kernel as a TSO
// super-packet cut at the MTU.
func (d *Device) SegmentsLargeTCP() bool { return d.ownWrite }

// WritesInPlace implements engine.InPlaceWriter: weft's write path
// writes each run's virtio-net header from memory of its own and changes
// nothing but the packets' own headers.
func (d *Device) WritesInPlace() bool { return d.ownWrite }

// SegmentsLargeTCP6 implements engine.LargeTCP6Writer, as
// SegmentsLargeTCP for TCP over IPv6.
func (d *Device) SegmentsLargeTCP6() bool { return d.ownWrite }

// Write writes packets into the TUN. With offloads on, it coalesces each
// flow's packets into super-packets (coalesce.go) and writes each with one
// writev(2) from where its packets lie, the virtio-net header from the
// device's own memory: it writes nothing of bufs[i][:offset].
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	if !d.ownWrite {
		return d.Device.Write(bufs, offset)
	}
	if offset < virtioNetHdrLen {
		return 0, fmt.Errorf("tunio: write offset %d leaves no room for the virtio-net header", offset)
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	d.co.plan(bufs, offset)
	var errs error
	n := 0
	for i := range d.co.runs {
		r := &d.co.runs[i]
		if err := d.writev(d.co.finish(bufs, offset, r)); err != nil {
			if errors.Is(err, syscall.EBADFD) || errors.Is(err, syscall.EBADF) || errors.Is(err, os.ErrClosed) {
				return n, os.ErrClosed
			}
			errs = errors.Join(errs, err)
			continue
		}
		n += r.n
	}
	return n, errs
}

// gatherWrite is writev's state: the iovecs, reused, and the function
// the raw connection calls, bound once (a method value per call would
// allocate).
type gatherWrite struct {
	iovs  []unix.Iovec
	errno unix.Errno
	fn    func(fd uintptr) bool
}

func (d *Device) initGatherWrite() {
	d.ww.fn = func(fd uintptr) bool {
		for {
			_, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&d.ww.iovs[0])), uintptr(len(d.ww.iovs)))
			if e == unix.EINTR {
				continue
			}
			if e == unix.EAGAIN {
				return false // a TUN write does not block; wait as os.File would
			}
			d.ww.errno = e
			return true
		}
	}
}

// writev writes pieces as one packet (or super-packet), through the raw
// connection, so a descriptor closed meanwhile is never written to.
func (d *Device) writev(pieces [][]byte) error {
	d.ww.iovs = d.ww.iovs[:0]
	for _, p := range pieces {
		if len(p) > 0 {
			v := unix.Iovec{Base: &p[0]}
			v.SetLen(len(p))
			d.ww.iovs = append(d.ww.iovs, v)
		}
	}
	d.ww.errno = 0
	err := d.rc.Write(d.ww.fn)
	clear(d.ww.iovs) // the buffers are the caller's
	if err != nil {
		return fmt.Errorf("tunio: write %s: %w (%v)", d.Name, os.ErrClosed, err)
	}
	if d.ww.errno != 0 {
		return fmt.Errorf("tunio: write %s: %w", d.Name, d.ww.errno)
	}
	return nil
}
