package lab

import (
	"context"
	"net"
)

// DialContext connects from namespace ns: the socket is created inside it
// (on a thread switched there for the call) and then used from anywhere.
// Its signature fits http.Transport.DialContext and grpc.WithContextDialer,
// so clients in the caller's namespace can talk to lab services.
func DialContext(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := InNamespace(ns, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
