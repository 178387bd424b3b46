package swarm

import (
	"context"
	"log/slog"
)

// anacrolixNoise lists anacrolix/torrent warnings that are timing diagnostics
// of its own locking rather than anything an operator can act on. On a busy
// machine they fire several times a second, so they are logged at debug.
var anacrolixNoise = map[string]bool{
	"client unlock handlers took a long time": true,
}

// quietHandler logs the messages in anacrolixNoise at debug level.
type quietHandler struct{ slog.Handler }

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level > slog.LevelDebug && anacrolixNoise[r.Message] {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(as)}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{h.Handler.WithGroup(name)}
}
