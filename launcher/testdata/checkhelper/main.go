// Command checkhelper is the launcher's own re-executed modes built static:
// the launcher tests run as a dynamically linked binary (the race detector
// needs cgo), which cannot run inside a whale's root, so their exec checks
// use this (Config.CheckHelper), as a node uses its static ballena binary.
package main

import (
	"fmt"
	"os"

	"ballena.dev/launcher"
)

func main() {
	launcher.MaybeRunInit()
	fmt.Fprintln(os.Stderr, "checkhelper: run by the launcher only")
	os.Exit(2)
}
