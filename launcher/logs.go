package launcher

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// rotatingFile is the shim's log writer: it appends to path and, when the file
// would pass maxBytes, renames it to path.1 (path.1 to path.2, ...) keeping
// keep old files, then starts a new one. The shim is the only writer, so
// nothing is lost between a copy and a truncate.
type rotatingFile struct {
	path     string
	maxBytes int64
	keep     int
	f        *os.File
	size     int64
}

func openRotating(path string, maxBytes int64, keep int) (*rotatingFile, error) {
	r := &rotatingFile{path: path, maxBytes: maxBytes, keep: keep}
	return r, r.open()
}

func (r *rotatingFile) open() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	r.f, r.size = f, st.Size()
	return nil
}

func (r *rotatingFile) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		chunk := p
		if r.maxBytes > 0 {
			room := r.maxBytes - r.size
			if room <= 0 || (int64(len(p)) > room && r.size > 0 && bytes.LastIndexByte(p[:room], '\n') < 0) {
				// Full, or the next line would not fit: start a new file.
				if err := r.rotate(); err != nil {
					return written, err
				}
				room = r.maxBytes
			}
			if int64(len(chunk)) > room {
				chunk = chunk[:room]
				if i := bytes.LastIndexByte(chunk, '\n'); i >= 0 {
					chunk = chunk[:i+1] // rotate on a line boundary when a line fits
				}
			}
		}
		n, err := r.f.Write(chunk)
		r.size += int64(n)
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

func (r *rotatingFile) rotate() error {
	r.f.Close()
	if r.keep < 1 {
		_ = os.Remove(r.path)
	}
	for i := r.keep; i >= 1; i-- {
		from := r.path
		if i > 1 {
			from = r.path + "." + strconv.Itoa(i-1)
		}
		_ = os.Rename(from, r.path+"."+strconv.Itoa(i))
	}
	return r.open()
}

func (r *rotatingFile) Close() error { return r.f.Close() }

// logReader streams a task's log: the rotated files oldest first, then the
// current file, then (when following) what is appended, across rotations,
// until the task is done and its log drained, or ctx ends.
type logReader struct {
	ctx    context.Context
	cancel context.CancelFunc
	path   string
	follow bool
	done   func() bool // true once the task will write no more
	olds   []string
	f      *os.File
	live   bool // f is the current file, not a rotated one
}

func newLogReader(ctx context.Context, path string, keep int, follow bool, done func() bool) *logReader {
	ctx, cancel := context.WithCancel(ctx)
	lr := &logReader{ctx: ctx, cancel: cancel, path: path, follow: follow, done: done}
	for i := keep; i >= 1; i-- {
		lr.olds = append(lr.olds, path+"."+strconv.Itoa(i))
	}
	return lr
}

func (lr *logReader) Read(p []byte) (int, error) {
	for {
		if lr.f == nil {
			if err := lr.next(); err != nil {
				return 0, err
			}
		}
		n, err := lr.f.Read(p)
		if n > 0 {
			return n, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if !lr.live { // finished a rotated file
			lr.f.Close()
			lr.f = nil
			continue
		}
		if !lr.follow {
			return 0, io.EOF
		}
		// At the end of the current file: has it been rotated away?
		if rotated(lr.f, lr.path) {
			lr.live = false // drain what landed before the rename, then move on
			continue
		}
		if lr.done() {
			// One more read: the last bytes may have landed after the first.
			if n, _ := lr.f.Read(p); n > 0 {
				return n, nil
			}
			return 0, io.EOF
		}
		select {
		case <-lr.ctx.Done():
			return 0, io.EOF
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// next opens the next file to read: a rotated one, or the current one.
func (lr *logReader) next() error {
	for len(lr.olds) > 0 {
		p := lr.olds[0]
		lr.olds = lr.olds[1:]
		if f, err := os.Open(p); err == nil {
			lr.f = f
			return nil
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		f, err := os.Open(lr.path)
		if err == nil {
			lr.f, lr.live = f, true
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) || !lr.follow || time.Now().After(deadline) {
			if errors.Is(err, os.ErrNotExist) {
				return io.EOF
			}
			return fmt.Errorf("open log: %w", err)
		}
		select {
		case <-lr.ctx.Done():
			return io.EOF
		case <-time.After(20 * time.Millisecond): // between a rotation's rename and create
		}
	}
}

func rotated(f *os.File, path string) bool {
	a, err1 := f.Stat()
	b, err2 := os.Stat(path)
	if err1 != nil || err2 != nil {
		return err2 != nil && errors.Is(err2, os.ErrNotExist)
	}
	as, bs := a.Sys().(*syscall.Stat_t), b.Sys().(*syscall.Stat_t)
	return as.Ino != bs.Ino || as.Dev != bs.Dev
}

func (lr *logReader) Close() error {
	lr.cancel()
	if lr.f != nil {
		return lr.f.Close()
	}
	return nil
}

// Logs returns the task's stdout and stderr, interleaved as written. With
// follow it keeps streaming until the task ends or ctx is done.
func (l *Launcher) Logs(ctx context.Context, id string, follow bool) (io.ReadCloser, error) {
	return l.LogStream(ctx, id, follow, Streams{})
}

// rawLogs streams the log file as the shim writes it (tagged lines).
func (l *Launcher) rawLogs(ctx context.Context, id string, follow bool) (io.ReadCloser, error) {
	e, err := l.lookup(id)
	if err != nil {
		return nil, err
	}
	done := func() bool {
		select {
		case <-e.final:
			return true
		default:
			return false
		}
	}
	return newLogReader(ctx, l.logPath(e.t.ID), l.cfg.LogKeep, follow, done), nil
}

// A task's log is one file for both streams, so that their order is kept:
// each line is written as "o <line>" (stdout) or "e <line>" (stderr). A line
// longer than maxLogLine is cut into several; a last line without a newline
// gets one.
const (
	streamStdout byte = 'o'
	streamStderr byte = 'e'
	maxLogLine        = 16 << 10
)

// streamWriter frames one stream's bytes into tagged lines of the shared log.
type streamWriter struct {
	mu  *sync.Mutex
	f   io.Writer
	tag byte
	buf []byte // a partial line
	out []byte
}

func (w *streamWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	w.out = w.out[:0]
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 && len(w.buf) < maxLogLine {
			break
		}
		n := i + 1
		if i < 0 || i >= maxLogLine {
			n = maxLogLine
		}
		w.out = append(append(w.out, w.tag, ' '), w.buf[:n]...)
		if w.out[len(w.out)-1] != '\n' {
			w.out = append(w.out, '\n')
		}
		w.buf = w.buf[n:]
	}
	w.buf = append(w.buf[:0:0], w.buf...) // do not pin p's array
	if len(w.out) > 0 {
		w.mu.Lock()
		_, err := w.f.Write(w.out)
		w.mu.Unlock()
		if err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// flush writes a last line that has no newline.
func (w *streamWriter) flush() {
	if len(w.buf) == 0 {
		return
	}
	w.mu.Lock()
	_, _ = w.f.Write(append(append([]byte{w.tag, ' '}, w.buf...), '\n'))
	w.mu.Unlock()
	w.buf = nil
}

// Streams selects what LogStream returns.
type Streams struct {
	Stdout, Stderr bool
	// JSON writes one object per line: {"stream":"stdout","line":"..."}.
	JSON bool
}

// LogStream returns the task's output as written: both streams interleaved,
// or one of them, as plain text or JSON lines that name the stream. With
// follow it keeps streaming until the task ends or ctx is done.
func (l *Launcher) LogStream(ctx context.Context, id string, follow bool, s Streams) (io.ReadCloser, error) {
	raw, err := l.rawLogs(ctx, id, follow)
	if err != nil {
		return nil, err
	}
	if !s.Stdout && !s.Stderr {
		s.Stdout, s.Stderr = true, true
	}
	pr, pw := io.Pipe()
	go func() {
		defer raw.Close()
		br := bufio.NewReaderSize(raw, 64<<10)
		bw := bufio.NewWriter(pw)
		for {
			line, err := br.ReadSlice('\n')
			if errors.Is(err, bufio.ErrBufferFull) {
				// not one of ours (a log from before streams were tagged): pass it on
				rest, _ := br.ReadBytes('\n')
				line = append(append([]byte{}, line...), rest...)
				err = nil
			}
			if len(line) > 0 {
				tag, text := byte(0), line
				if len(line) >= 2 && line[1] == ' ' && (line[0] == streamStdout || line[0] == streamStderr) {
					tag, text = line[0], line[2:]
				}
				if (tag == streamStderr && s.Stderr) || (tag != streamStderr && s.Stdout) {
					if s.JSON {
						name := "stdout"
						if tag == streamStderr {
							name = "stderr"
						}
						b, _ := json.Marshal(struct {
							Stream string `json:"stream"`
							Line   string `json:"line"`
						}{name, strings.TrimSuffix(string(text), "\n")})
						bw.Write(append(b, '\n'))
					} else {
						bw.Write(text)
					}
				}
				if br.Buffered() == 0 {
					if werr := bw.Flush(); werr != nil {
						pw.CloseWithError(werr)
						return
					}
				}
			}
			if err != nil {
				bw.Flush()
				pw.CloseWithError(err)
				return
			}
		}
	}()
	return pr, nil
}
