// Command task is the launcher tests' workload: one static binary whose first
// argument picks a behaviour.
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	mode := "hello"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "hello":
		fmt.Println("hello", strings.Join(os.Args[2:], " "), os.Getenv("GREETING"))
	case "exit":
		n, _ := strconv.Atoi(os.Args[2])
		fmt.Println("exiting with", n)
		os.Exit(n)
	case "serve": // ticks until SIGTERM, then exits 7
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM)
		fmt.Println("ready")
		for i := 0; ; i++ {
			select {
			case <-c:
				fmt.Println("term")
				os.Exit(7)
			case <-time.After(50 * time.Millisecond):
				fmt.Println("tick", i)
			}
		}
	case "hog":
		fmt.Println("hogging")
		var keep [][]byte
		for {
			b := make([]byte, 1<<20)
			for i := range b {
				b[i] = 1
			}
			keep = append(keep, b)
		}
	case "bomb":
		fmt.Println("bombing")
		for {
			syscall.RawSyscall(syscall.SYS_FORK, 0, 0, 0)
		}
	case "spin":
		fmt.Println("spinning")
		for range runtime.NumCPU() - 1 {
			go func() {
				for {
				}
			}()
		}
		for {
		}
	case "ps":
		ps()
	case "http": // a health-checked service
		httpServe(os.Args[2:])
	case "dial-env": // exit 0 if 127.0.0.1:$<arg> accepts a connection
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+os.Getenv(os.Args[2]), 2*time.Second)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		c.Close()
	case "incheck": // an exec check that checks where it runs
		inCheck(os.Args[2:])
	case "probe": // what a hostile program could try; optional address to dial
		probe(os.Args[2:])
	case "streams": // interleaved stdout and stderr
		for i := range 3 {
			fmt.Fprintf(os.Stdout, "out %d\n", i)
			os.Stdout.Sync()
			fmt.Fprintf(os.Stderr, "err %d\n", i)
			os.Stderr.Sync()
		}
	case "forker": // a child that ignores SIGTERM, and so do we
		signal.Ignore(syscall.SIGTERM)
		cmd := exec.Command("/proc/self/exe", "child")
		cmd.Stdout = os.Stdout
		if err := cmd.Start(); err != nil {
			fmt.Println("fork:", err)
			os.Exit(1)
		}
		fmt.Println("forked", cmd.Process.Pid)
		for {
			time.Sleep(time.Hour)
		}
	case "child":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("child ready")
		for {
			time.Sleep(time.Hour)
		}
	case "spew": // N lines of 100 bytes
		n, _ := strconv.Atoi(os.Args[2])
		for i := range n {
			fmt.Printf("%-99s\n", fmt.Sprintf("line %d", i))
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", mode)
		os.Exit(2)
	}
}

// ps reports what the task can see of its world, as JSON.
func ps() {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, n)
		}
	}
	field := procStatus()
	host, _ := os.Hostname()
	root, _ := os.ReadDir("/")
	var names []string
	for _, e := range root {
		names = append(names, e.Name())
	}
	tmpErr := ""
	if err := os.WriteFile("/tmp/x", []byte("x"), 0o600); err != nil {
		tmpErr = err.Error()
	}
	sysctlErr := "writable"
	if f, err := os.OpenFile("/proc/sys/kernel/domainname", os.O_WRONLY, 0); err != nil {
		sysctlErr = err.Error()
	} else {
		f.Close()
	}
	rootErr := ""
	if err := os.WriteFile("/x", []byte("x"), 0o600); err == nil {
		rootErr = "root is writable"
	}
	var ifaces []string
	nis, _ := net.Interfaces()
	for _, ni := range nis {
		ifaces = append(ifaces, fmt.Sprintf("%s:%v", ni.Name, ni.Flags&net.FlagUp != 0))
	}
	var fds []string
	fdEnts, _ := os.ReadDir("/proc/self/fd")
	for _, e := range fdEnts {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fds = append(fds, e.Name()+"="+target)
	}
	slack, _ := os.ReadFile("/proc/self/timerslack_ns")
	out, _ := json.Marshal(map[string]any{"ifaces": ifaces, "fds": fds, "sysctl": sysctlErr,
		"timerSlack": strings.TrimSpace(string(slack)), "pids": pids, "uid": os.Getuid(), "gid": os.Getgid(), "hostname": host, "root": names,
		"capEff": field("CapEff"), "capBnd": field("CapBnd"), "noNewPrivs": field("NoNewPrivs"),
		"tmpErr": tmpErr, "rootWritable": rootErr, "args": os.Args[2:], "env": os.Getenv("GREETING"),
	})
	fmt.Println(string(out))
}

// procStatus reads /proc/self/status once and returns a lookup of its fields
// (e.g. "CapEff"); "" for a field it lacks.
func procStatus() func(string) string {
	status, _ := os.ReadFile("/proc/self/status")
	return func(k string) string {
		for _, l := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(l, k+":"); ok {
				return strings.TrimSpace(v)
			}
		}
		return ""
	}
}
