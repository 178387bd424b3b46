// Package utp stands in for github.com/anacrolix/go-utp, which
// anacrolix/torrent v1.62 imports but the module proxy does not serve.
//
// Ballena never speaks uTP: the engine sets ClientConfig.DisableUTP, so the
// torrent client never calls these constructors. They fail, so a client that
// did ask for uTP would say so instead of silently listening on nothing. The
// go.mod of the main module points the import here with a replace directive.
package utp

import (
	"context"
	"errors"
	"log/slog"
	"net"
)

// Default names the implementation in the torrent client's error messages.
const Default = "uTP (not built into Ballena)"

// ErrNotBuilt is what every constructor returns.
var ErrNotBuilt = errors.New("uTP is not built into Ballena")

// FirewallCallback decides whether a peer at the address may connect.
type FirewallCallback = func(net.Addr) bool

// Socket is a uTP socket: a packet conn that also accepts and dials streams.
type Socket interface {
	net.PacketConn
	Accept() (net.Conn, error)
	Addr() net.Addr
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	SetFirewallCallback(FirewallCallback)
}

// Option configures a socket.
type Option func(*options)

type options struct{ logger *slog.Logger }

// WithLogger sets the socket's logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// NewSocket always fails: see the package comment.
func NewSocket(network, addr string, opts ...Option) (Socket, error) {
	return nil, ErrNotBuilt
}

// NewSocketFromPacketConn always fails: see the package comment.
func NewSocketFromPacketConn(pc net.PacketConn, opts ...Option) (Socket, error) {
	return nil, ErrNotBuilt
}
