// Package lease owns the cluster's shared state: the network configuration,
// the subnet lease each host holds, and the watch that tells a host which
// other hosts exist. It speaks flanneld's etcd layout and JSON byte for byte,
// so weft and flanneld hosts share one cluster, and it also offers a static
// store (peers from flags or a file) and an embedded etcd server for setups
// with no etcd of their own.
//
// Data flows one way: a Manager produces leases, and the caller turns each
// snapshot into the engine's lookup table. A host's life with etcd:
//
//	prev, _ := lease.ReadSubnetFile(subnetFile)
//	mgr, _ := lease.NewEtcd(lease.EtcdOptions{Endpoints: eps, PreviousSubnet: prev})
//	cfg, _ := mgr.Config(ctx)                        // waits for <prefix>/config
//	own, _ := mgr.Acquire(ctx, lease.Attrs{PublicIP: ip})
//	lease.WriteSubnetFile(subnetFile, lease.SubnetEnv{Network: cfg.Network, Subnet: own.Subnet, MTU: mtu})
//	go func() { fatal(mgr.Keep(ctx, own)) }()       // an error means the subnet is lost: exit
//	go mgr.Watch(ctx, snapshots)                     // full snapshots, newest last
//
// Every method retries while etcd is unreachable, logging with backoff,
// until its context ends; only bad config, a full network and a lost
// lease are returned as errors. Nothing here revokes the host's lease on
// shutdown, as flanneld does not: a restart gets the same subnet.
package lease
