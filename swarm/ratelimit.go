package swarm

import (
	"context"
	"net"

	"golang.org/x/time/rate"
)

// uploadLimitedConn caps what a node sends, for all its connections together.
// The cap sits on the connection instead of in anacrolix's UploadRateLimiter:
// that one re-arms a timer to wake the peer's writer, and a wake-up that lands
// before the writer waits is lost, stalling an upload for a keep-alive period.
// Here the writer simply blocks in Write until the bytes may go.
type uploadLimitedConn struct {
	net.Conn
	l *rate.Limiter
}

func (c uploadLimitedConn) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), c.l.Burst())
		if err := c.l.WaitN(context.Background(), k); err != nil {
			return n, err
		}
		m, err := c.Conn.Write(b[:k])
		n += m
		if err != nil {
			return n, err
		}
		b = b[k:]
	}
	return n, nil
}

// limiterBurst is the rate limiters' burst. Reads and writes are cut to fit it,
// so it only trades wake-ups against how far the cap may overshoot over a
// short window.
func limiterBurst(limit int64) int {
	return int(max(256<<10, min(limit/8, 1<<20)))
}
