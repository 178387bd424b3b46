// Command hello is Ballena's sample whale: a tiny static HTTP service that says
// who it is. The demo publishes it, places it and calls it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// healthz is what /healthz answers: "ok" (200), or "fail" (500) for a build
// that must fail its health check: go build -ldflags=-X=main.healthz=fail.
var healthz = "ok"

// version is set at build time: go build -ldflags "-X main.version=1.4.0".
var version = "dev"

func main() {
	addr := flag.String("listen", ":8080", "address to serve on (default :$PORT when PORT is set)")
	base := flag.Int("port-base", 0, "if set, serve on port-base + $BALLENA_TASK_INDEX (copies on one machine get distinct ports)")
	msg := flag.String("message", "hello from ballena", "what to answer")
	flag.Parse()
	if p := os.Getenv("PORT"); p != "" && !isSet("listen") {
		*addr = ":" + p
	}
	if *base > 0 {
		idx, _ := strconv.Atoi(os.Getenv("BALLENA_TASK_INDEX"))
		*addr = fmt.Sprintf(":%d", *base+idx)
	}
	host, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s: task %s of job %s on %s, pid %d\n", *msg, os.Getenv("BALLENA_TASK_INDEX"), os.Getenv("BALLENA_JOB"), host, os.Getpid())
		if version != "dev" {
			fmt.Fprintf(w, "version %s\n", version)
		}
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if healthz != "ok" {
			http.Error(w, "unhealthy build", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// As PID 1 of its namespace, a Go program must handle SIGTERM itself to stop cleanly.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Printf("hello %s: serving on %s", version, *addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	log.Printf("hello: stopped")
}

func isSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
