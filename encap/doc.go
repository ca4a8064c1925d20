// Package encap is how packets cross from one host to another: the
// Backend interface every backend implements, and one subpackage per
// backend. userspace is weft's own data path (flannel's UDP format or
// VXLAN over the engine); vxlan and hostgw program the kernel's data path
// over netlink, through the one reconciler in kernel. Every peer lease
// passes admission before a backend sees it; auto chooses a backend for
// Backend.Type "auto". udp is the batched GSO/GRO socket the udp flavour
// sends on.
package encap
