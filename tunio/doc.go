// Package tunio creates and configures the TUN device the userspace engine
// reads and writes (flannel0 by default), as flanneld's UDP backend does:
// MTU = underlay MTU - 28, the lease's network address as a /32, and one
// route for the whole cluster network through the device.
//
// Batched I/O is golang.zx2c4.com/wireguard/tun's: with IFF_VNET_HDR the
// kernel hands over TSO/USO super-packets that it splits, and takes
// GRO-coalesced writes, so one system call moves up to 64 KiB.
package tunio
