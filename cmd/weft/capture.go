package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/capture"
	"github.com/weft-net/weft/capture/decode"
	"github.com/weft-net/weft/daemon"
)

func init() {
	register("capture", "capture what a running engine forwards and drops, as pcapng (tcpdump and Wireshark read it)", runCapture)
}

const captureUsage = `usage: weft capture [--debug-socket PATH | --debug-addr HOST:PORT] [-w FILE|-] [-c N]
                    [--duration D] [--points LIST] [-s SNAPLEN] [--buffer-size BYTES]
                    [filter ...]

Streams the packets a running 'weft run' sees, live, as pcapng: one interface
per capture point (from-tun: read from the TUN; to-tun: from peers, written
to the TUN; drop: not forwarded), with the peer and the drop reason in each
packet's comment. Without -w, prints one line per packet.

  weft capture -w - | tcpdump -nr -        live, in tcpdump
  weft capture -w out.pcapng -c 1000 drop  the next 1000 drops, for Wireshark

Captures contain tenant traffic: the debug socket is root-only.
If the capture queue fills (a slow reader), packets are counted as lost, the
data path never waits; the count is printed at the end.

`

func runCapture(args []string) error {
	fs := flag.NewFlagSet("weft capture", flag.ContinueOnError)
	df := debugFlags(fs)
	out := fs.String("w", "", "write pcapng to this file (- for stdout) instead of printing packets")
	count := fs.Int("c", 0, "stop after this many packets (0: no limit)")
	dur := fs.Duration("duration", 0, "stop after this long (0: until interrupted)")
	points := fs.String("points", "all", "capture points: all, or a comma-separated list of from-tun, to-tun, drop")
	snap := fs.Int("s", 0, "keep at most this many bytes of each packet (0: all)")
	queue := fs.Int("buffer-size", 0, "bytes of capture queue per engine loop, in the daemon (0: 4 MiB; at most 64 MiB)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), captureUsage)
		fs.PrintDefaults()
		fmt.Fprintf(fs.Output(), "\n%s\n", capture.FilterSyntax)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	p := capture.Params{Filter: strings.Join(fs.Args(), " "), Points: *points, Snap: *snap, Count: *count, Duration: *dur, Queue: *queue}
	if *queue > capture.MaxQueue {
		return fmt.Errorf("--buffer-size: %d is more than the %d bytes a capture may queue per loop", *queue, capture.MaxQueue)
	}
	if *count < 0 || *dur < 0 || *snap < 0 || *queue < 0 {
		return errors.New("-c, --duration, -s and --buffer-size must not be negative")
	}
	// Refuse a bad filter here, with the token named, before connecting.
	if _, err := p.Options(); err != nil {
		return err
	}

	// Open the file first: a path that cannot be written fails before any
	// capture starts.
	var file *os.File
	if *out != "" && *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			return fmt.Errorf("-w: %v", err)
		}
		file = f
		defer f.Close()
	}
	failed := func(err error) error {
		if file != nil {
			file.Close()
			os.Remove(*out)
		}
		return err
	}

	client, base, where := df.HTTP(0)
	resp, err := client.Get(base + "/capture?" + p.Query())
	if err != nil {
		return failed(daemon.ReachError(where, err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return failed(fmt.Errorf("%s: %s", where, strings.TrimSpace(string(body))))
	}

	// Ctrl-C asks the daemon to end the capture, so the stream ends cleanly
	// with its counts; a second one gives up at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		<-sigs
		stopper, _, _ := df.HTTP(5 * time.Second)
		r, err := stopper.Post(base+"/capture/stop?id="+resp.Header.Get(capture.HeaderID), "", nil)
		if err == nil {
			r.Body.Close()
		}
		<-sigs
		resp.Body.Close()
	}()

	var res capture.Result
	switch *out {
	case "":
		res, err = printCapture(resp)
	case "-":
		res, err = capture.Stream(resp, os.Stdout)
	default:
		res, err = capture.Stream(resp, file)
		if cerr := file.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("-w: %v", cerr)
		}
	}
	if err != nil {
		return err
	}
	if !res.Complete {
		return errors.New("the capture ended without its final counts: the daemon stopped or the connection broke (what was written is valid up to there)")
	}
	fmt.Fprintf(os.Stderr, "weft capture: %s\n", res.Summary)
	return nil
}

// printCapture prints one line per packet, as tcpdump does without -w.
func printCapture(resp *http.Response) (capture.Result, error) {
	if err := decode.Lines(resp.Body, os.Stdout); err != nil {
		return capture.Result{}, err
	}
	return capture.Stream(resp, io.Discard) // the body is at EOF: only the trailers
}
