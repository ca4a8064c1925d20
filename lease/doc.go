// Package lease owns the cluster's shared state: the network configuration,
// the subnet lease each host holds, and the watch that tells a host which
// other hosts exist. It speaks flanneld's etcd layout and JSON byte for byte,
// so weft and flanneld hosts share one cluster, and it also offers a static
// store (peers from flags or a file) and an embedded etcd server for setups
// with no etcd of their own.
//
// Data flows one way: a Manager produces leases, and the caller turns each
// snapshot into the engine's lookup table.
package lease
