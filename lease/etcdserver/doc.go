// Package etcdserver runs a single-member etcd server inside the process
// (go.etcd.io/etcd/server/v3/embed), for `weft etcd`, the demo, and tests
// that need a real etcd. It is kept apart from lease and lease/etcdstore
// so that only what serves etcd links etcd's server and bbolt.
package etcdserver
