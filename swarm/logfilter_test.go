package swarm

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestQuietHandler(t *testing.T) {
	for _, tc := range []struct {
		level slog.Level
		msg   string
		want  string // "" when nothing may be logged
	}{
		{slog.LevelWarn, "client unlock handlers took a long time", ""},
		{slog.LevelDebug, "client unlock handlers took a long time", "level=DEBUG"},
		{slog.LevelWarn, "piece failed hash check", "level=WARN"},
	} {
		var buf bytes.Buffer
		log := slog.New(quietHandler{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: tc.level})}).With("component", "torrent")
		log.Warn(tc.msg)
		got := buf.String()
		if tc.want == "" {
			if got != "" {
				t.Errorf("at %v, %q logged %q, want nothing", tc.level, tc.msg, got)
			}
			continue
		}
		if !strings.Contains(got, tc.want) || !strings.Contains(got, "component=torrent") {
			t.Errorf("at %v, %q logged %q, want %s with its attributes", tc.level, tc.msg, got, tc.want)
		}
	}
}
