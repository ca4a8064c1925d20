// Package etcdstore is the lease.Manager on etcd's v3 API, in flanneld's
// layout: the network config at <prefix>/config, one key per subnet lease
// at <prefix>/subnets/<a.b.c.d>-<len> (a dual-stack lease:
// <a.b.c.d>-<len>&<ipv6>-<len>, e.g. 10.5.77.0-24&fd00:10:5:21::-64),
// attached to an etcd lease with a TTL. weft and flanneld hosts share one cluster through it.
//
// Every method retries while etcd is unreachable, logging with backoff,
// until its context ends; only bad config, a full network and a lost
// lease are returned as errors. Nothing here revokes the host's lease on
// shutdown, as flanneld does not: a restart gets the same subnet.
//
// It needs etcd's client only; the embedded server is lease/etcdserver.
package etcdstore
