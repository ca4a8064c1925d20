// Package userspace is weft's own data path as a backend: the engine
// between a TUN device and a batched UDP socket, with flannel's UDP wire
// format (NewUDP, the udp backend) or VXLAN (NewVXLAN, for hosts whose
// kernel cannot create a vxlan device). Both flavours share the TUN, the
// engine and the table built from admitted peers; they differ only in the
// socket, the encapsulation and the lease's backend data.
package userspace
