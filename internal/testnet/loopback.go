package testnet

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// Loopback returns a listener on a free 127.0.0.1 port, closed when the test ends.
func Loopback(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// FreeAddr returns a 127.0.0.1:PORT that was free a moment ago, for a server the
// test starts elsewhere (another process, or code that listens by itself).
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Serve serves h on a loopback port (net/http/httptest) until the test ends and
// returns its base URL, http://127.0.0.1:PORT.
func Serve(t testing.TB, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
