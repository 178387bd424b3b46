package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
)

// The node process and the orchestrator speak JSON lines over stdin and stdout.

type cmd struct {
	Op    string           `json:"op"`
	Rel   artifact.Release `json:"rel"`
	Peers []peer.AddrInfo  `json:"peers,omitempty"`
}

type msg struct {
	Ready *peer.AddrInfo `json:"ready,omitempty"`
	OK    string         `json:"ok,omitempty"`
	Err   string         `json:"err,omitempty"`
	Done  *struct {
		Err      string    `json:"err"`
		Read     int64     `json:"read"`
		IdleDown float64   `json:"idleDown"`
		IdleUp   float64   `json:"idleUp"`
		At       time.Time `json:"-"`
	} `json:"done,omitempty"`
	Stats *nodeStats `json:"stats,omitempty"`
}

type nodeStats struct {
	Uploaded   int64 `json:"uploaded"`
	Downloaded int64 `json:"downloaded"`
}

type node struct {
	dir  string
	cmd  *exec.Cmd
	in   io.WriteCloser
	msgs chan msg
	ai   peer.AddrInfo
}

func startNode(ctx context.Context, self, dir string, capB int64) (*node, error) {
	c := exec.Command(self, "node", "-dir", dir, "-up", fmt.Sprint(capB), "-down", fmt.Sprint(capB))
	c.Stderr = os.Stderr
	in, err := c.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	nd := &node{dir: dir, cmd: c, in: in, msgs: make(chan msg, 64)}
	go func() {
		defer close(nd.msgs)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var m msg
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				if m.Done != nil {
					m.Done.At = time.Now()
				}
				nd.msgs <- m
			}
		}
	}()
	m, err := nd.wait(ctx, func(m msg) bool { return m.Ready != nil })
	if err != nil {
		nd.stop()
		return nil, fmt.Errorf("node %s: %w", dir, err)
	}
	nd.ai = *m.Ready
	return nd, nil
}

func (nd *node) send(c cmd) {
	b, _ := json.Marshal(c)
	nd.in.Write(append(b, '\n'))
}

func (nd *node) wait(ctx context.Context, ok func(msg) bool) (msg, error) {
	for {
		select {
		case m, open := <-nd.msgs:
			if !open {
				return msg{}, errors.New("node exited")
			}
			if m.Err != "" {
				return m, errors.New(m.Err)
			}
			if ok(m) {
				return m, nil
			}
		case <-ctx.Done():
			return msg{}, ctx.Err()
		}
	}
}

func (nd *node) call(c cmd) error {
	nd.send(c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := nd.wait(ctx, func(m msg) bool { return m.OK == c.Op })
	return err
}

func (nd *node) stats() (nodeStats, error) {
	nd.send(cmd{Op: "stats"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := nd.wait(ctx, func(m msg) bool { return m.Stats != nil })
	if err != nil {
		return nodeStats{}, err
	}
	return *m.Stats, nil
}

// exit ends the node and returns the CPU seconds it used.
func (nd *node) exit() (float64, error) {
	nd.in.Close()
	if err := nd.cmd.Wait(); err != nil {
		return 0, fmt.Errorf("node %s: %w", nd.dir, err)
	}
	ps := nd.cmd.ProcessState
	return (ps.UserTime() + ps.SystemTime()).Seconds(), nil
}

func (nd *node) stop() {
	if nd.cmd.ProcessState == nil {
		nd.cmd.Process.Signal(syscall.SIGKILL)
		nd.cmd.Wait()
	}
}
