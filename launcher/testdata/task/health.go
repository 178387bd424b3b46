package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// httpServe serves GET /healthz on 127.0.0.1:$PORT (or the port in
// $HEALTH_PORT_VAR's variable) until SIGTERM, then exits 0. args[0] says how
// /healthz answers: "ok" (200), "sick" (500), "sick-after N" (200 N times,
// then 500), "redirect" (307).
func httpServe(args []string) {
	mode := "ok"
	if len(args) > 0 {
		mode = args[0]
	}
	after := 0
	if mode == "sick-after" && len(args) > 1 {
		after, _ = strconv.Atoi(args[1])
	}
	portVar := "PORT"
	if v := os.Getenv("HEALTH_PORT_VAR"); v != "" {
		portVar = v
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv(portVar))
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	fmt.Println("listening", ln.Addr().(*net.TCPAddr).Port)
	var n atomic.Int64
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		switch {
		case mode == "sick", mode == "sick-after" && int(i) > after:
			http.Error(w, "sick", http.StatusInternalServerError)
		case mode == "redirect":
			http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM)
	go func() {
		<-c
		fmt.Println("term")
		os.Exit(0)
	}()
	_ = http.Serve(ln, nil)
}

// inCheck is an exec check's command: it exits 0 when it runs as uid
// args[0], with hostname args[1], in a cgroup whose path contains args[2],
// under a seccomp filter, with no_new_privs and no capabilities; otherwise it
// says what differs and exits 1.
func inCheck(args []string) {
	field := procStatus()
	host, _ := os.Hostname()
	cg, _ := os.ReadFile("/proc/self/cgroup")
	var bad []string
	if strconv.Itoa(os.Getuid()) != args[0] {
		bad = append(bad, fmt.Sprintf("uid %d", os.Getuid()))
	}
	if host != args[1] {
		bad = append(bad, "hostname "+host)
	}
	if !strings.Contains(string(cg), args[2]) {
		bad = append(bad, "cgroup "+strings.Join(strings.Fields(string(cg)), " "))
	}
	if field("Seccomp") != "2" || field("NoNewPrivs") != "1" || field("CapEff") != "0000000000000000" {
		bad = append(bad, fmt.Sprintf("seccomp %s no_new_privs %s capEff %s", field("Seccomp"), field("NoNewPrivs"), field("CapEff")))
	}
	if len(bad) > 0 {
		fmt.Println("in check:", strings.Join(bad, "; "))
		os.Exit(1)
	}
}
