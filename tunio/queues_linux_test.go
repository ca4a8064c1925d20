package tunio

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/engine"
)

// TestCreateQueues opens a TUN with two queues, as the engine does with
// --queues 2: both queues come up with the same offloads, a write through
// either reaches a socket, and the kernel keeps each flow on one queue
// while it spreads flows over both.
func TestCreateQueues(t *testing.T) {
	if _, err := CreateQueues(Options{Name: "wtmqx0", MTU: 1500}, 0); err == nil {
		t.Error("0 queues accepted")
	}
	if _, err := CreateQueues(Options{Name: "wtmqx0", MTU: 1500}, MaxQueues+1); err == nil {
		t.Errorf("%d queues accepted", MaxQueues+1)
	}
	inFreshNetns(t, func() error {
		const name = "wtmq0"
		devs, err := CreateQueues(Options{Name: name, MTU: 1500, TxQueueLen: 1000}, 2)
		if err != nil {
			return err
		}
		defer func() {
			for _, d := range devs {
				d.Close()
			}
		}()
		if len(devs) != 2 || !devs[0].TSO || devs[1].TSO != devs[0].TSO || devs[1].USO != devs[0].USO {
			return fmt.Errorf("queues: %d, offloads %v/%v and %v/%v", len(devs), devs[0].TSO, devs[0].USO, devs[1].TSO, devs[1].USO)
		}
		local := netip.MustParseAddrPort("10.99.0.1:9999")
		remote := netip.MustParseAddrPort("10.99.0.2:1234")
		if err := Configure(name, Addrs{Addr: local.Addr(), Network: netip.MustParsePrefix("10.99.0.0/24")}); err != nil {
			return err
		}
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
		if err != nil {
			return err
		}
		defer conn.Close()
		for q, d := range devs {
			msg := fmt.Appendf(nil, "queue %d", q)
			if n, err := d.Write([][]byte{udpTo(remote, local, msg)}, off); n != 1 || err != nil {
				return fmt.Errorf("write through queue %d: %d, %v", q, n, err)
			}
			buf := make([]byte, 64)
			conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			m, _, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil || string(buf[:m]) != string(msg) {
				return fmt.Errorf("queue %d: read %q, %v", q, buf[:m], err)
			}
		}

		// 16 flows out of the TUN, 3 datagrams each.
		const flows, per = 16, 3
		for f := range flows {
			c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(remote.Addr(), uint16(7000+f))))
			if err != nil {
				return err
			}
			for range per {
				c.Write([]byte("x"))
			}
			c.Close()
		}
		queueOf := map[uint16]int{}
		count := [2]int{}
		bufs := engine.NewBuffers(64)
		sizes := make([]int, 64)
		deadline := time.Now().Add(5 * time.Second)
		for count[0]+count[1] < flows*per && time.Now().Before(deadline) {
			for q, d := range devs {
				n, err := d.ReadMore(bufs, sizes, off)
				if err != nil {
					return err
				}
				for i := range n {
					p := bufs[i][off : off+sizes[i]]
					if len(p) < 28 || p[9] != protoUDP {
						continue
					}
					dport := binary.BigEndian.Uint16(p[22:])
					if was, ok := queueOf[dport]; ok && was != q {
						return fmt.Errorf("flow to port %d read from queues %d and %d", dport, was, q)
					}
					queueOf[dport] = q
					count[q]++
				}
			}
		}
		if count[0]+count[1] != flows*per || count[0] == 0 || count[1] == 0 {
			return fmt.Errorf("datagrams read per queue: %v of %d; want all, over both queues", count, flows*per)
		}
		return nil
	})
}
