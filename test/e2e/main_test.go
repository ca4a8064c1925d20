package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Package e2e's tests run weft as a user would: hosts in network
// namespaces, the weft binary (built once by TestMain from ./cmd/weft, so
// they exercise exactly this tree with nothing installed), real etcd,
// real traffic. WEFT_TEST_HELPER makes the test binary a small tool the
// tests need inside a namespace (helperBin).
func TestMain(m *testing.M) {
	switch os.Getenv("WEFT_TEST_HELPER") {
	case "":
	case "send-udp": // send-udp DST:PORT SRC-PORT HEX-PAYLOAD
		os.Exit(helperSendUDP(os.Args[1:]))
	case "udp-echo": // udp-echo LISTEN
		os.Exit(helperUDPEcho(os.Args[1:]))
	case "udp-check": // udp-check DST SIZE...
		os.Exit(helperUDPCheck(os.Args[1:]))
	}
	dir, err := os.MkdirTemp("", "weft-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	weftBin = filepath.Join(dir, "weft")
	build := exec.Command("go", "build", "-o", weftBin, "github.com/weft-net/weft/cmd/weft")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building weft:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	if helperBin, err = os.Executable(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	weftBin   string // the weft binary under test
	helperBin string // this test binary, a tool under WEFT_TEST_HELPER
)

func helperSendUDP(args []string) int {
	// SRC-PORT 0: an ordinary socket on a port of the kernel's choice;
	// another port: a raw socket, sending as the host's flannel daemon
	// does from the port it has bound.
	var srcPort int
	fmt.Sscan(args[1], &srcPort)
	var c udpSender
	var err error
	if srcPort == 0 {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{})
	} else {
		var ipc *net.IPConn
		ipc, err = net.ListenIP("ip4:udp", nil)
		c = &rawUDP{c: ipc, src: uint16(srcPort)}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dst, err := net.ResolveUDPAddr("udp4", args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var payload []byte
	fmt.Sscanf(args[2], "%x", &payload)
	if _, err := c.WriteToUDP(payload, dst); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func helperUDPEcho(args []string) int {
	c, err := net.ListenPacket("udp4", args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return 1
		}
		c.WriteTo(buf[:n], from)
	}
}

// helperUDPCheck sends one datagram of each size with random content and
// checks that the echo comes back byte for byte.
func helperUDPCheck(args []string) int {
	c, err := net.Dial("udp4", args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, s := range args[1:] {
		var size int
		fmt.Sscan(s, &size)
		want := make([]byte, size)
		for i := range want {
			want[i] = byte(rand.Uint32())
		}
		if size >= 4 {
			binary.BigEndian.PutUint32(want, uint32(size))
		}
		got := make([]byte, 65536)
		// Retry for a while: the echo server may still be starting (its
		// port unreachable errors fail our reads at once).
		ok := false
		for deadline := time.Now().Add(10 * time.Second); !ok && time.Now().Before(deadline); {
			c.Write(want)
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, err := c.Read(got)
			ok = err == nil && bytes.Equal(got[:n], want)
			if !ok {
				time.Sleep(100 * time.Millisecond)
			}
		}
		if !ok {
			fmt.Fprintf(os.Stderr, "datagram of %d bytes did not come back intact\n", size)
			return 1
		}
	}
	return 0
}
