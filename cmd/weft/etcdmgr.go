package main

import (
	"errors"

	"github.com/weft-net/weft/lease"
)

func (f *runFlags) etcdManager() (lease.Manager, error) {
	return nil, errors.New("etcd store: not wired yet")
}
