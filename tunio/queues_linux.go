package tunio

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// MaxQueues is the most queues CreateQueues opens; the kernel allows 256
// (MAX_TAP_QUEUES), and weft's engine 64.
const MaxQueues = 64

// CreateQueues opens the TUN device with n queues, one Device per queue.
// With n 1 it is Create: the single-queue device of earlier releases, no
// IFF_MULTI_QUEUE. With more, each queue is a descriptor of its own,
// opened with IFF_MULTI_QUEUE, with its own offloads (TUNSETOFFLOAD on
// each, through the tun package), reads, drain and write coalescing; the
// kernel puts each flow's packets on one queue (by its hash, or the queue
// its reverse packets were written to). The first queue watches the
// device's events and sets its MTU; closing every queue removes the
// device.
func CreateQueues(o Options, n int) ([]*Device, error) {
	if n < 1 || n > MaxQueues {
		return nil, fmt.Errorf("tunio: %d queues is outside 1..%d", n, MaxQueues)
	}
	if n == 1 {
		d, err := Create(o)
		if err != nil {
			return nil, err
		}
		return []*Device{d}, nil
	}
	if o.Name == "" {
		o.Name = "flannel0"
	}
	if o.MTU <= 0 {
		return nil, fmt.Errorf("tunio: MTU %d is not positive", o.MTU)
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_MULTI_QUEUE)
	if !o.NoOffload {
		flags |= unix.IFF_VNET_HDR
	}
	var devs []*Device
	fail := func(err error) ([]*Device, error) {
		for _, d := range devs {
			d.Close()
		}
		return nil, err
	}
	for q := range n {
		fd, err := openQueue(o.Name, flags)
		if err != nil {
			if q == 0 && errors.Is(err, unix.EINVAL) {
				err = fmt.Errorf("%w (a kernel without multi-queue TUN devices, IFF_MULTI_QUEUE, or a single-queue %s left by another process: run with --queues 1)", err, o.Name)
			}
			return fail(err)
		}
		var dev tun.Device
		if q == 0 {
			f := os.NewFile(uintptr(fd), "/dev/net/tun")
			if dev, err = tun.CreateTUNFromFile(f, o.MTU); err != nil {
				f.Close()
			}
		} else {
			// One watcher of the device's events is enough: the others
			// start no goroutines (and leave the MTU to the first). On
			// failure the descriptor belongs to the os.File the tun
			// package made of it, closed when collected.
			dev, _, err = tun.CreateUnmonitoredTUNFromFD(fd)
		}
		if err != nil {
			return fail(fmt.Errorf("tunio: %s queue %d: %w", o.Name, q, err))
		}
		if o.NoOffload {
			devs = append(devs, newDevice(dev, o.Name))
		} else {
			devs = append(devs, offloadDevice(dev, o))
		}
	}
	for _, d := range devs[1:] {
		if d.TSO != devs[0].TSO || d.USO != devs[0].USO {
			return fail(fmt.Errorf("tunio: %s: the queues came up with different offloads", o.Name))
		}
	}
	if o.TxQueueLen != 0 {
		if err := setTxQueueLen(o.Name, o.TxQueueLen); err != nil {
			return fail(err)
		}
	}
	return devs, nil
}
