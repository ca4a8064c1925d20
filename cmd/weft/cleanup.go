package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/weft-net/weft/daemon"
	"github.com/weft-net/weft/encap/kernel"
	"github.com/weft-net/weft/firewall"
)

func init() {
	register("cleanup", "remove all kernel state weft created (vxlan device, tagged routes, neighbours, fdb, flannel0, iptables chains)", runCleanup)
}

// runCleanup undoes what the kernel backends leave in place on SIGTERM
// for a restart: the vxlan devices flannel.<VNI> (the kernel drops their
// address, routes, neighbours and fdb entries with them), every route
// tagged with weft's protocol number (host-gw's, DirectRouting's), and
// the udp backend's TUN if it outlived its process. It leaves the lease
// in etcd and the subnet file alone, as flanneld does.
func runCleanup(args []string) error {
	fs := flag.NewFlagSet("weft cleanup", flag.ContinueOnError)
	tunName := fs.String("tun-name", "flannel0", "name of the udp backend's TUN device")
	socket := fs.String("debug-socket", daemon.DefaultDebugSocket, "the debug socket of a weft that may be running on this host")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	// A running weft would put everything back within seconds.
	if *socket != "" {
		if _, err := (daemon.Client{Socket: *socket}).Get("/status"); err == nil {
			return fmt.Errorf("a weft is running here (it answers on %s): stop it first", *socket)
		}
	}
	nl, err := kernel.Current()
	if err != nil {
		return err
	}
	var r kernel.Removed
	errV := nl.RemoveVXLANDevices("", &r)
	errR := nl.RemoveTaggedRoutes(&r)
	errT := nl.RemoveTUN(*tunName, &r)
	// flanneld's iptables chains and nftables tables (--ip-masq,
	// --iptables-forward-rules), both modes.
	errF := firewall.CleanupAll(context.Background())
	for _, l := range r.Links {
		fmt.Fprintf(os.Stdout, "removed device %s\n", l)
	}
	for _, rt := range r.Routes {
		fmt.Fprintf(os.Stdout, "removed route %s\n", rt)
	}
	for _, id := range r.Nexthops {
		fmt.Fprintf(os.Stdout, "removed nexthop %d\n", id)
	}
	if len(r.Links)+len(r.Routes)+len(r.Nexthops) == 0 {
		fmt.Fprintln(os.Stdout, "nothing to remove")
	}
	for _, err := range []error{errV, errR, errT, errF} {
		if err != nil {
			return err
		}
	}
	return nil
}
