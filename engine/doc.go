// Package engine is weft's userspace data path: two forwarding loops (TUN to
// underlay and underlay to TUN) that move packets in batches, the lock-free
// subnet lookup table they consult, the buffers they own and the counters
// they keep. It knows nothing of etcd or of sockets: a Device (the TUN) and
// a Transport (the encapsulating socket) are given to it, and the caller
// publishes a new Table whenever the set of peers changes.
package engine
