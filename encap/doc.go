// Package encap holds weft's backends, one subpackage each: how packets
// cross from one host to another. udp is flannel's UDP wire format carried
// by a batched socket (used by the userspace engine); vxlan and hostgw
// program the kernel's own data path over netlink.
package encap
