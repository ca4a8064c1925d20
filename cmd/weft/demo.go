package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/weft-net/weft/bench/harness"
)

func init() {
	register("demo", "show weft working: 3 hosts in namespaces, etcd, pods, ping, throughput (root)", runDemo)
}

func runDemo(args []string) error {
	fs := flag.NewFlagSet("weft demo", flag.ContinueOnError)
	o := harness.DemoOptions{Out: os.Stdout, Err: os.Stderr}
	fs.IntVar(&o.Hosts, "hosts", 3, "hosts in the lab (2..10)")
	fs.DurationVar(&o.Duration, "duration", 3*time.Second, "length of each throughput test")
	fs.BoolVar(&o.KeepLogs, "keep-logs", false, "keep the lab's state directory (process logs) after the demo")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("the demo builds network namespaces: run it as root (sudo make demo)")
	}
	var err error
	if o.Binary, err = os.Executable(); err != nil {
		return fmt.Errorf("finding the weft binary: %w", err)
	}
	return harness.Demo(context.Background(), o)
}
