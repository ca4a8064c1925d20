package tunio

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/encap/udp"
	"github.com/weft-net/weft/engine"
)

// TestRealtimeLoops runs an engine between a real TUN and a real UDP
// socket with Config.RealtimePriority: both loops must run on SCHED_FIFO
// threads of their own, forward both ways while waiting in poll(2), and
// end promptly when the engine stops, taking their threads with them.
func TestRealtimeLoops(t *testing.T) {
	inFreshNetns(t, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		const name = "wtrt0"
		dev, err := Create(Options{Name: name, MTU: 1400})
		if err != nil {
			return err
		}
		own := netip.MustParseAddr("10.98.1.0")
		if err := Configure(name, Addrs{Addr: own, Network: netip.MustParsePrefix("10.98.0.0/16")}); err != nil {
			dev.Close()
			return err
		}
		conn, err := udp.Listen(udp.Options{Local: netip.MustParseAddrPort("127.0.0.1:0")})
		if err != nil {
			dev.Close()
			return err
		}
		peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		defer peer.Close()
		eng, err := engine.New(dev, conn, engine.Config{MTU: 1400, RealtimePriority: 1})
		if err != nil {
			return err
		}
		tab, err := engine.NewTableFor(engine.Networks{Network: netip.MustParsePrefix("10.98.0.0/16"), SubnetLen: 24, Own: netip.MustParsePrefix("10.98.1.0/24")},
			[]engine.PeerSpec{{Subnet: netip.MustParsePrefix("10.98.2.0/24"), Endpoint: peer.LocalAddr().(*net.UDPAddr).AddrPort()}}, nil)
		if err != nil {
			return err
		}
		eng.SetTable(tab)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- eng.Run(ctx) }()
		defer func() {
			cancel()
			<-done
		}()

		// Out: a local socket → the TUN → the engine → the peer's socket.
		local, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IP(own.AsSlice()), Port: 7000})
		if err != nil {
			return err
		}
		defer local.Close()
		buf := make([]byte, 2048)
		var got []byte
		for i := 0; got == nil && i < 50; i++ {
			if _, err := local.WriteToUDPAddrPort([]byte("out"), netip.MustParseAddrPort("10.98.2.5:9")); err != nil {
				return err
			}
			peer.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if n, _, err := peer.ReadFromUDPAddrPort(buf); err == nil {
				got = buf[:n]
			}
		}
		if len(got) < 31 || !bytes.Equal(got[28:], []byte("out")) {
			return fmt.Errorf("the peer got %x, want an IPv4/UDP packet carrying %q", got, "out")
		}

		// In: the peer → the engine's socket → the TUN → the local socket.
		pkt := udpTo(netip.MustParseAddrPort("10.98.2.5:9"), netip.AddrPortFrom(own, 7000), []byte("in"))[off:]
		if _, err := peer.WriteToUDPAddrPort(pkt, conn.LocalAddr()); err != nil {
			return err
		}
		local.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := local.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:n]) != "in" {
			return fmt.Errorf("the local socket got %q, %v; want %q", buf[:n], err, "in")
		}

		if s := eng.Stats(); s.RealtimeLoops != 2 || s.RealtimeError != "" {
			return fmt.Errorf("stats: %d realtime loops (error %q), want 2", s.RealtimeLoops, s.RealtimeError)
		}
		if n := fifoThreads(true); n != 2 {
			return fmt.Errorf("%d SCHED_FIFO threads, want 2 (one per loop)", n)
		}
		cancel()
		select {
		case err := <-done:
			done <- err // for the deferred receive
			if err != nil {
				return fmt.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			return fmt.Errorf("Run did not return after its context ended: a loop is stuck in poll(2)")
		}
		// The loops' threads exit with them: no realtime thread is left for
		// the runtime to run other goroutines on.
		for i := 0; fifoThreads(false) != 0; i++ {
			if i == 50 {
				return fmt.Errorf("%d SCHED_FIFO threads left after Run returned", fifoThreads(false))
			}
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	})
}

// fifoThreads counts this process's threads whose policy is SCHED_FIFO
// (field 41 of /proc/<pid>/task/<tid>/stat), with or without the main thread: a
// loop that ran on it cannot end it, and the runtime parks it for good
// instead (runtime.mexit), where it never runs again.
func fifoThreads(includeMain bool) int {
	tasks, _ := os.ReadDir("/proc/self/task")
	n := 0
	for _, task := range tasks {
		if !includeMain && task.Name() == strconv.Itoa(os.Getpid()) {
			continue
		}
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command, which is in parentheses and may hold spaces.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 38 {
			if p, _ := strconv.Atoi(f[38]); p == 1 {
				n++
			}
		}
	}
	return n
}
