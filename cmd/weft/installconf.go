package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

func init() {
	register("install-conf", "copy SRC to DEST atomically (flannel's install-conf, the install-cni init container's command)", runInstallConf)
}

// runInstallConf is flannel v0.28.9's /opt/bin/install-conf
// (cmd/install_conf, utils.CopyFileAtomic), which kube-flannel.yml's
// install-cni init container runs from the flannel image to put the CNI
// config in place: `install-conf /etc/kube-flannel/cni-conf.json
// /etc/cni/net.d/10-flannel.conflist`. The image swap keeps that
// manifest, so weft's image has it too (a link to weft, dispatched by
// name). As in flannel: exactly two arguments; the copy is written to a
// temporary file beside DEST, synced and renamed over it, so the kubelet
// never reads half a config; DEST gets SRC's permissions.
func runInstallConf(args []string) error {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(os.Stderr, "usage: install-conf <src> <dest>")
		return nil
	}
	if len(args) != 2 {
		return fmt.Errorf("usage: install-conf <src> <dest>")
	}
	src, dest := args[0], args[1]
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("installing %q: %v", src, err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("installing %q: %v", src, err)
	}
	out, err := renameio.NewPendingFile(dest, renameio.WithTempDir(filepath.Dir(dest)), renameio.WithStaticPermissions(st.Mode().Perm()))
	if err != nil {
		return fmt.Errorf("installing %q: %v", src, err)
	}
	defer out.Cleanup()
	if _, err := io.Copy(out, in); err != nil {
		return fmt.Errorf("installing %q: %v", src, err)
	}
	if err := out.CloseAtomicallyReplace(); err != nil {
		return fmt.Errorf("installing %q: %v", src, err)
	}
	return nil
}
