package swarm

import (
	"context"
	"log/slog"
)

// anacrolixNoise is an anacrolix/torrent warning that times its own locking
// rather than telling an operator anything to act on. On a busy machine it
// fires several times a second, so it is logged at debug.
const anacrolixNoise = "client unlock handlers took a long time"

// quietHandler logs anacrolixNoise at debug level.
type quietHandler struct{ slog.Handler }

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level > slog.LevelDebug && r.Message == anacrolixNoise {
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
