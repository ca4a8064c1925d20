package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/weft-net/weft/bench/traffic"
)

func init() {
	register("traffic", "built-in traffic generator (used by the lab)", runTraffic)
}

const trafficUsage = `usage: weft traffic <server|tcp|udp|rr> [flags]

  server  answer all workloads on one TCP+UDP port until SIGINT/SIGTERM
  tcp     bulk transfer over --streams, verified byte for byte by the server
  udp     datagrams of --size bytes at --rate packets/s (0: flat out)
  rr      request/response round trips of --size bytes (median, p99)

Clients print one JSON result on stdout. Run inside a lab namespace with
'ip netns exec NS weft traffic ...'.`

func runTraffic(args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, trafficUsage)
		return errors.New("missing mode")
	}
	if args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(os.Stderr, trafficUsage)
		return flag.ErrHelp
	}
	mode, args := args[0], args[1:]
	fs := flag.NewFlagSet("traffic "+mode, flag.ContinueOnError)
	def := ":" + strconv.Itoa(traffic.DefaultPort)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	switch mode {
	case "server":
		listen := fs.String("listen", "0.0.0.0"+def, "TCP and UDP address to listen on")
		if err := fs.Parse(args); err != nil {
			return err
		}
		s, err := traffic.Listen(*listen)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "weft traffic: serving on %s (tcp and udp)\n", s.Addr())
		return s.Serve(ctx)
	case "tcp":
		to := fs.String("to", "", "server address host[:port]")
		streams := fs.Int("streams", 1, "parallel TCP streams")
		n := fs.Int64("bytes", 0, "total bytes to send over all streams (0: send for --duration)")
		d := fs.Duration("duration", 5*time.Second, "how long to send when --bytes is 0")
		verify := fs.String("verify", traffic.VerifyStream, "check on the server: stream (byte compare), sha256 or none")
		if err := fs.Parse(args); err != nil {
			return err
		}
		addr, err := serverAddr(*to)
		if err != nil {
			return err
		}
		res, err := traffic.RunTCP(ctx, traffic.TCPOptions{Addr: addr, Streams: *streams, Bytes: *n, Duration: *d, Verify: *verify})
		return printResult(res, err)
	case "udp":
		to := fs.String("to", "", "server address host[:port]")
		size := fs.Int("size", 64, "UDP payload bytes (16..65507)")
		rate := fs.Int("rate", 0, "target packets/s (0: flat out)")
		d := fs.Duration("duration", 5*time.Second, "how long to send")
		if err := fs.Parse(args); err != nil {
			return err
		}
		addr, err := serverAddr(*to)
		if err != nil {
			return err
		}
		res, err := traffic.RunUDP(ctx, traffic.UDPOptions{Addr: addr, Size: *size, Rate: *rate, Duration: *d})
		return printResult(res, err)
	case "rr":
		to := fs.String("to", "", "server address host[:port]")
		size := fs.Int("size", 64, "request and response bytes")
		d := fs.Duration("duration", 5*time.Second, "how long to run")
		count := fs.Int("count", 0, "stop after this many round trips instead")
		if err := fs.Parse(args); err != nil {
			return err
		}
		addr, err := serverAddr(*to)
		if err != nil {
			return err
		}
		res, err := traffic.RunRR(ctx, traffic.RROptions{Addr: addr, Size: *size, Duration: *d, Count: *count})
		return printResult(res, err)
	default:
		fmt.Fprintln(os.Stderr, trafficUsage)
		return fmt.Errorf("unknown mode %q", mode)
	}
}

// serverAddr adds the default port to a bare host.
func serverAddr(to string) (string, error) {
	if to == "" {
		return "", errors.New("--to: give the server's address")
	}
	if _, _, err := net.SplitHostPort(to); err != nil {
		return net.JoinHostPort(to, strconv.Itoa(traffic.DefaultPort)), nil
	}
	return to, nil
}

func printResult(res *traffic.Result, err error) error {
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}
