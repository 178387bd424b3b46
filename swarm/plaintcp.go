package swarm

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/time/rate"
)

// plainDialer dials plain TCP BitTorrent peers and refuses the synthetic
// addresses of libp2p peers, which only the libp2p dialer can reach.
type plainDialer struct{ up *rate.Limiter }

func (pd plainDialer) Dial(ctx context.Context, addr string) (net.Conn, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is6() && ap.Addr().As16()[0] == 0xfd && ap.Port() == p2pPort {
		return nil, fmt.Errorf("dial %s: a libp2p peer, not a TCP one", addr)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil || pd.up == nil {
		return c, err
	}
	return uploadLimitedConn{c, pd.up}, nil
}

func (plainDialer) DialerNetwork() string { return "tcp" }

// limitedListener caps the upload of accepted plain TCP connections.
type limitedListener struct {
	net.Listener
	l *rate.Limiter
}

func (ln limitedListener) Accept() (net.Conn, error) {
	c, err := ln.Listener.Accept()
	if err != nil || ln.l == nil {
		return c, err
	}
	return uploadLimitedConn{c, ln.l}, nil
}
