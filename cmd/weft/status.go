package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/weft-net/weft/daemon"
)

func init() {
	register("status", "show a running engine's backend, lease, peers, counters and offloads", runStatus)
	register("stats", "print a running engine's status as JSON (weft status --json)", runStats)
}

// debugFlags are the flags of the commands that talk to a running weft.
func debugFlags(fs *flag.FlagSet) *daemon.Client {
	c := &daemon.Client{}
	fs.StringVar(&c.Socket, "debug-socket", daemon.DefaultDebugSocket, "the debug socket of the running weft")
	fs.StringVar(&c.Addr, "debug-addr", "", "reach the running weft at this TCP address (its --debug-addr) instead of the socket")
	return c
}

func runStatus(args []string) error {
	fs := flag.NewFlagSet("weft status", flag.ContinueOnError)
	c := debugFlags(fs)
	asJSON := fs.Bool("json", false, "print the raw status as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	body, err := c.Get("/status")
	if err != nil {
		return err
	}
	if *asJSON {
		_, err := os.Stdout.Write(body)
		return err
	}
	var r daemon.StatusReport
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("unreadable status: %v", err)
	}
	r.WriteText(os.Stdout, time.Now())
	return nil
}

func runStats(args []string) error {
	fs := flag.NewFlagSet("weft stats", flag.ContinueOnError)
	c := debugFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	body, err := c.Get("/status")
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(body)
	return err
}
