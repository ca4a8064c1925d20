package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/weft-net/weft/lease"
	"github.com/weft-net/weft/lease/etcdstore"
)

// etcdManager builds the etcd store from flanneld's flags. The previous
// subnet comes from the subnet file, as flanneld reads it.
func (f *runFlags) etcdManager(log *slog.Logger) (lease.Manager, error) {
	prev, prev6, err := lease.ReadSubnetFile(f.subnetFile)
	if err != nil {
		return nil, err
	}
	// flanneld's lease TTL is fixed at 24 h. WEFT_TEST_LEASE_TTL shortens
	// it so the fault tests (and a curious operator) can see leases
	// expire and be reclaimed in seconds; it is not a flag on purpose.
	var ttl time.Duration
	if v := os.Getenv("WEFT_TEST_LEASE_TTL"); v != "" {
		if ttl, err = time.ParseDuration(v); err != nil {
			return nil, fmt.Errorf("WEFT_TEST_LEASE_TTL: %v", err)
		}
	}
	return etcdstore.New(etcdstore.Options{
		TTL:            ttl,
		Endpoints:      strings.Split(f.etcd.endpoints, ","),
		Prefix:         f.etcd.prefix,
		CAFile:         f.etcd.cafile,
		CertFile:       f.etcd.certfile,
		KeyFile:        f.etcd.keyfile,
		Username:       f.etcd.username,
		Password:       f.etcd.password,
		RenewMargin:    time.Duration(f.renewMargin) * time.Minute,
		PreviousSubnet: prev, PreviousIPv6Subnet: prev6,
		Logger: log,
	})
}
