package scale

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weft-net/weft/bench/harness"
	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/encap/vxlan"
	"github.com/weft-net/weft/lease"
)

// Network and SubnetLen are the cluster: 65,536 subnets.
var Network = netip.MustParsePrefix("10.0.0.0/8")

const SubnetLen = 24

// PeerNet holds the simulated peers' public IPs. It is RFC 2544's
// benchmarking range, used only inside the lab: the real host gets
// PeerNet's first address on its underlay as well, so every simulated
// peer is on its segment (host-gw routes only to such peers).
var PeerNet = netip.MustParsePrefix("198.18.0.0/15")

// subnet is the i-th /24 of Network (i >= 1).
func subnet(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), SubnetLen)
}

// publicIP is the i-th simulated peer's address (i >= 1): .0 is PeerNet's
// network address and .1 the real host's.
func publicIP(i int) netip.Addr {
	a := PeerNet.Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n += uint32(i) + 1
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// leaseValue is the lease JSON flanneld writes for simulated peer i of
// backend typ (lease.Attrs.MarshalJSON, byte for byte).
func leaseValue(typ string, i int) (string, error) {
	a := lease.Attrs{PublicIP: publicIP(i)}
	switch typ {
	case "vxlan":
		mac := net.HardwareAddr{0x0e, 0x57, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
		data, err := vxlan.MarshalLeaseData(1, mac)
		if err != nil {
			return "", err
		}
		a.BackendType, a.BackendData = "vxlan", data
	case "host-gw":
		a.BackendType = "host-gw"
	}
	b, err := a.MarshalJSON()
	return string(b), err
}

func leaseKey(i int) string { return harness.EtcdPrefix + "/subnets/" + lease.SubnetKey(subnet(i)) }

// sim writes simulated peers into the lab's etcd.
type sim struct {
	cli *clientv3.Client
	typ string
}

func newSim(l *lab.Lab, typ string) (*sim, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{harness.EtcdEndpoint()},
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return lab.DialContext(l.Switch)(ctx, "tcp4", addr)
		})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, err
	}
	return &sim{cli: cli, typ: typ}, nil
}

func (s *sim) close() { s.cli.Close() }

// putAll writes peers ids in transactions of 100 (etcd's default limit is
// 128 operations per transaction): the setup, not a measured burst.
func (s *sim) putAll(ctx context.Context, ids []int) error {
	for len(ids) > 0 {
		n := min(100, len(ids))
		ops := make([]clientv3.Op, 0, n)
		for _, i := range ids[:n] {
			v, err := leaseValue(s.typ, i)
			if err != nil {
				return err
			}
			ops = append(ops, clientv3.OpPut(leaseKey(i), v))
		}
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		ids = ids[n:]
	}
	return nil
}

// event is one put (add) or delete of simulated peer id.
type event struct {
	id  int
	del bool
}

// paced sends events one etcd request each, at rate per second, with up to
// 64 in flight (one etcd write takes longer than 2 ms on a loaded machine).
// It returns when every request has completed.
func (s *sim) paced(ctx context.Context, evs []event, rate int) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	sem := make(chan struct{}, 64)
	start := time.Now()
	for k, e := range evs {
		if d := time.Until(start.Add(time.Duration(k) * time.Second / time.Duration(rate))); d > 0 {
			time.Sleep(d)
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			var err error
			if e.del {
				_, err = s.cli.Delete(ctx, leaseKey(e.id))
			} else {
				var v string
				if v, err = leaseValue(s.typ, e.id); err == nil {
					_, err = s.cli.Put(ctx, leaseKey(e.id), v)
				}
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("etcd: %d of %d events failed, first: %w", len(errs), len(evs), errs[0])
	}
	return nil
}
