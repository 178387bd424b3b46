package launcher

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// warmShim is a shim waiting for a run config on ctrl.
type warmShim struct {
	cmd    *exec.Cmd
	status *os.File // read end of its status pipe
	ctrl   *os.File // our end of its control socket
	idmap  *IDMap   // the user namespace its init waits in; nil: none
	ids    *idAllocator
}

// takeWarm takes a warm shim from the pool, if one waits, and starts another.
func (l *Launcher) takeWarm() *warmShim {
	select {
	case ws := <-l.pool:
		l.refill()
		return ws
	default:
		return nil
	}
}

// refill starts a warm shim in the background for the pool.
func (l *Launcher) refill() {
	if cap(l.pool) == 0 || l.ctx.Err() != nil {
		return
	}
	l.wg.Go(func() {
		ws, err := l.spawnWarm()
		if err != nil {
			l.log.Warn("warm shim", "err", err)
			return
		}
		select {
		case l.pool <- ws:
		default:
			ws.discard()
		}
	})
}

func (l *Launcher) spawnWarm() (ws *warmShim, err error) {
	var idmap *IDMap
	if l.iso.UserNS {
		if idmap, err = l.ids.get(); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				l.ids.put(idmap)
			}
		}()
	}
	sr, sw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		sr.Close()
		sw.Close()
		return nil, err
	}
	// control: the run config's path and the whale's descriptor (SCM_RIGHTS)
	cw, cr := os.NewFile(uintptr(fds[0]), "control"), os.NewFile(uintptr(fds[1]), "control-shim")
	shimLog, err := os.OpenFile(filepath.Join(l.dir, "shim.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	defer shimLog.Close()
	cmd := &exec.Cmd{
		Path:        "/proc/self/exe",
		Args:        []string{"ballena-shim-warm"},
		Env:         []string{modeEnv + "=shim", idmapEnv + "=" + idmapEnvValue(idmap)},
		Stdout:      shimLog,
		Stderr:      shimLog,
		ExtraFiles:  []*os.File{sw, cr, l.ids.lockFile(idmap)}, // fd 5: the claim on its id block
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	err = l.startChild(cmd)
	sw.Close()
	cr.Close()
	if err != nil {
		sr.Close()
		cw.Close()
		return nil, fmt.Errorf("start shim: %w", err)
	}
	return &warmShim{cmd: cmd, status: sr, ctrl: cw, idmap: idmap, ids: l.ids}, nil
}

// discard ends an unused warm shim: EOF on its control pipe. Its id block is free again.
func (ws *warmShim) discard() {
	ws.ctrl.Close()
	ws.status.Close()
	_ = ws.cmd.Wait()
	ws.ids.put(ws.idmap)
}
