// Command weft is the single binary of the weft overlay network. This
// package only turns flags (and flanneld's FLANNELD_* variables) into
// options and dispatches subcommands: the daemon is package daemon, the
// backends live under encap/, the lab tools under bench/.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	_ "github.com/weft-net/weft/internal/exepages" // before the large packages: see its doc
)

// version is set at build time (-ldflags "-X main.version=v1.2.3").
var version = "dev"

// A command is one subcommand. Each lives in its own file and registers
// itself in init, so adding one touches no other file.
type command struct {
	summary string
	run     func(args []string) error
}

var commands = map[string]command{}

func register(name, summary string, run func(args []string) error) {
	if _, dup := commands[name]; dup {
		panic("weft: command registered twice: " + name)
	}
	commands[name] = command{summary: summary, run: run}
}

func init() {
	register("version", "print weft's version", func([]string) error {
		fmt.Println(version)
		return nil
	})
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: weft <command> [flags]\n\ncommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'weft <command> -h' for a command's flags.\n")
}

func main() { os.Exit(dispatch(os.Args)) }

// asCommand is the command weft is when invoked under another program's
// name: flannel's image has /opt/bin/flanneld and /opt/bin/install-conf,
// and kube-flannel.yml runs both, so weft's image links both to weft (the
// image swap).
var asCommand = map[string]string{"flanneld": "run", "install-conf": "install-conf"}

// dispatch runs argv and returns the exit code. Invoked as flanneld, weft
// is `weft run`; as install-conf, `weft install-conf`.
func dispatch(argv []string) int {
	args := argv[1:]
	name, ok := asCommand[filepath.Base(argv[0])]
	if !ok {
		if len(args) == 0 {
			usage()
			return 2
		}
		name, args = args[0], args[1:]
	}
	switch name {
	case "-h", "--help", "help":
		usage()
		return 0
	case "--version", "-version":
		fmt.Println(version)
		return 0
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "weft: unknown command %q\n\n", name)
		usage()
		return 2
	}
	if err := cmd.run(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0 // -h: the usage was the answer
		}
		fmt.Fprintf(os.Stderr, "weft %s: %v\n", name, err)
		return 1
	}
	return 0
}
