// Package lease holds the cluster's shared state as values: the network
// configuration (flanneld's net-conf JSON), the subnet lease each host
// holds (flanneld's lease JSON and key spelling), the subnet file, and the
// Manager interface a store implements, with the static store (peers from
// flags or a file). It speaks flanneld's formats byte for byte, so weft and
// flanneld hosts share one cluster.
//
// It imports no etcd: the data path (engine, encap, tunio) depends on this
// package only. The etcd store is lease/etcdstore; the embedded etcd server
// is lease/etcdserver.
//
// Data flows one way: a Manager produces leases, and the caller turns each
// snapshot into the engine's lookup table. A host's life with etcd:
//
//	prev, _ := lease.ReadSubnetFile(subnetFile)
//	mgr, _ := etcdstore.New(etcdstore.Options{Endpoints: eps, PreviousSubnet: prev})
//	cfg, _ := mgr.Config(ctx)                        // waits for <prefix>/config
//	own, _ := mgr.Acquire(ctx, lease.Attrs{PublicIP: ip})
//	lease.WriteSubnetFile(subnetFile, lease.SubnetEnv{Network: cfg.Network, Subnet: own.Subnet, MTU: mtu})
//	go func() { fatal(mgr.Keep(ctx, own)) }()       // an error means the subnet is lost: exit
//	go mgr.Watch(ctx, snapshots)                     // full snapshots, newest last
//	go lease.WatchChanges(ctx, mgr, changes)         // or changes: what the daemon follows
package lease
