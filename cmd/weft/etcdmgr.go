package main

import (
	"strings"
	"time"

	"github.com/weft-net/weft/lease"
)

// etcdManager builds the etcd store from flanneld's flags. The previous
// subnet comes from the subnet file, as flanneld reads it.
func (f *runFlags) etcdManager() (lease.Manager, error) {
	prev, err := lease.ReadSubnetFile(f.subnetFile)
	if err != nil {
		return nil, err
	}
	return lease.NewEtcd(lease.EtcdOptions{
		Endpoints:      strings.Split(f.etcdEndpoints, ","),
		Prefix:         f.etcdPrefix,
		CAFile:         f.etcdCAFile,
		CertFile:       f.etcdCertfile,
		KeyFile:        f.etcdKeyfile,
		Username:       f.etcdUsername,
		Password:       f.etcdPassword,
		RenewMargin:    time.Duration(f.renewMargin) * time.Minute,
		PreviousSubnet: prev,
	})
}
