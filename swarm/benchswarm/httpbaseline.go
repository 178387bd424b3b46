package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"golang.org/x/time/rate"
)

// httpBaseline times n clients, each capped at down, fetching size bytes of
// path from one HTTP server whose total upload is capped at up.
func httpBaseline(ctx context.Context, path string, size int64, n int, up, down int64) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	limit := rate.NewLimiter(rate.Limit(up), 256<<10)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Length", fmt.Sprint(size))
		io.Copy(limitedWriter{r.Context(), w, limit}, io.LimitReader(f, size))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	start := time.Now()
	errs := make(chan error, n)
	for range n {
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ln.Addr().String()+"/", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			dl := rate.NewLimiter(rate.Limit(down), 256<<10)
			got, err := io.Copy(io.Discard, limitedReader{ctx, resp.Body, dl})
			if err == nil && got != size {
				err = fmt.Errorf("got %d of %d bytes", got, size)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			return 0, err
		}
	}
	return time.Since(start).Seconds(), nil
}

type limitedWriter struct {
	ctx context.Context
	w   io.Writer
	l   *rate.Limiter
}

func (w limitedWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := min(len(p), 64<<10)
		if err := w.l.WaitN(w.ctx, c); err != nil {
			return n, err
		}
		m, err := w.w.Write(p[:c])
		n += m
		if err != nil {
			return n, err
		}
		p = p[c:]
	}
	return n, nil
}

type limitedReader struct {
	ctx context.Context
	r   io.Reader
	l   *rate.Limiter
}

func (r limitedReader) Read(p []byte) (int, error) {
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	n, err := r.r.Read(p)
	if n > 0 {
		if werr := r.l.WaitN(r.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}
