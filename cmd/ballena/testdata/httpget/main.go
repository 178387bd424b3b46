// Command httpget prints the body of one HTTP GET, for tests that call a
// task from inside a network namespace. It exits 1 on any error or non-200.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: httpget URL")
		os.Exit(2)
	}
	cl := &http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "%s: %v\n", resp.Status, err)
		os.Exit(1)
	}
	os.Stdout.Write(body)
}
