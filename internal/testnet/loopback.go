package testnet

import (
	"errors"
	"net"
	"net/http"
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

// Serve serves h on a loopback port until the test ends and returns its base
// URL, http://127.0.0.1:PORT.
func Serve(t testing.TB, h http.Handler) string {
	t.Helper()
	ln := Loopback(t)
	hs := &http.Server{Handler: h}
	done := make(chan error, 1)
	go func() { done <- hs.Serve(ln) }()
	t.Cleanup(func() {
		hs.Close()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("loopback server: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}
