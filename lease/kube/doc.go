// Package kube is the lease.Manager of flanneld's Kubernetes subnet
// manager (--kube-subnet-mgr, flannel v0.28's pkg/subnet/kube): no etcd of
// its own; the network config comes from a file (kube-flannel.yml's
// ConfigMap), this host's subnet is its Node's spec.podCIDR, and the
// lease's attributes are annotations on the Node
// (<prefix>/backend-type, backend-data, public-ip, kube-subnet-manager),
// written with a strategic-merge patch of nodes/<name>/status in
// flanneld's exact bytes. Peers are the Nodes annotated
// kube-subnet-manager=true, read through one Node watch (a list, then a
// watch, as client-go's Reflector does) that keeps only what a lease
// needs: each peer's lease, read from the event, every Node's name, and
// this host's own Node's podCIDRs and the store's annotations. The list
// and the watch are read in protobuf (JSON when that is what answers)
// straight into those fields; images, conditions and managedFields are
// stepped over, never decoded, and the binary links none of
// client-go's typed API (client.go says why), so memory stays small in
// large clusters. A Node event reaches the daemon as a change of one
// lease (WatchChanges), not a snapshot of all.
//
// Unlike flanneld, a Node with no annotations, a Node re-created without
// them, or this host's own Node losing them never stops the store: peers
// are taken from the watch as they change, and Keep writes this host's
// annotations back.
//
// Dual-stack (net-conf "EnableIPv6": true): a Node's lease is the IPv4
// and the IPv6 entry of spec.podCIDRs, with flanneld's IPv6 annotations
// (<prefix>/public-ipv6, backend-v6-data; node-public-ipv6 and
// public-ipv6-overwrite read as overrides). A peer Node without an IPv6
// podCIDR or public-ipv6 is an IPv4 peer. On an IPv6-only network
// ("EnableIPv4": false) a lease is the IPv6 entry alone, with public-ip
// "0.0.0.0" where flanneld writes it (host-gw; vxlan writes none).
package kube
