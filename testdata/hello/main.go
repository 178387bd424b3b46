// Command hello is Ballena's sample whale: a tiny static HTTP service that says
// who it is. The demo publishes it, places it and calls it.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
)

func main() {
	addr := flag.String("listen", ":8080", "address to serve on")
	base := flag.Int("port-base", 0, "if set, serve on port-base + $BALLENA_TASK_INDEX (copies on one machine get distinct ports)")
	msg := flag.String("message", "hello from ballena", "what to answer")
	flag.Parse()
	if *base > 0 {
		idx, _ := strconv.Atoi(os.Getenv("BALLENA_TASK_INDEX"))
		*addr = fmt.Sprintf(":%d", *base+idx)
	}
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s: task %s of job %s on %s, pid %d\n", *msg, os.Getenv("BALLENA_TASK_INDEX"), os.Getenv("BALLENA_JOB"), host, os.Getpid())
	})
	log.Printf("hello: serving on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, nil))
}
