// Command hello is Ballena's sample whale: a tiny static HTTP service that says
// who it is. The demo publishes it, places it and calls it.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	addr := flag.String("listen", ":8080", "address to serve on")
	msg := flag.String("message", "hello from ballena", "what to answer")
	flag.Parse()
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s (host %s, pid %d)\n", *msg, host, os.Getpid())
	})
	log.Printf("hello: serving on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, nil))
}
