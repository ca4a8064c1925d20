package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/gopacket/gopacket/layers"

	"github.com/weft-net/weft/capture/decode"
)

func init() {
	register("decode", "print a pcap or pcapng file layer by layer (inner packets, flannel-UDP and VXLAN underlay)", runDecode)
}

func runDecode(args []string) error {
	fs := flag.NewFlagSet("weft decode", flag.ContinueOnError)
	udpPort := fs.Int("udp-port", decode.DefaultUDPPort, "UDP port of flannel's udp backend (Backend.Port)")
	vxlanPort := fs.Int("vxlan-port", decode.DefaultVXLANPort, "UDP port of VXLAN (flannel's default 8472; 4789 is IANA's)")
	count := fs.Int("c", 0, "stop after this many packets (0: all)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: weft decode [--udp-port N] [--vxlan-port N] [-c N] FILE.pcap|FILE.pcapng|-\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil // -h: the usage was the answer
		}
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("one capture file is needed (- for stdin)")
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"udp-port", *udpPort}, {"vxlan-port", *vxlanPort}} {
		if p.v < 1 || p.v > 65535 {
			return fmt.Errorf("--%s: %d is not a UDP port", p.name, p.v)
		}
	}
	name := fs.Arg(0)
	var in io.Reader = os.Stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	d := &decode.Decoder{Out: out, UDPPort: layers.UDPPort(*udpPort), VXLANPort: layers.UDPPort(*vxlanPort)}
	return d.File(name, in, *count)
}
