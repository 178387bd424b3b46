package main

import (
	"slices"
	"strings"
	"testing"
)

func TestNormalizeArgs(t *testing.T) {
	app := newApp()
	for _, tc := range []struct{ in, want string }{
		// global flags after the command, at any depth
		{"node --data /d --listen /ip4/0.0.0.0/tcp/7400", "--data /d node --listen /ip4/0.0.0.0/tcp/7400"},
		{"ls --data ./store", "--data ./store ls"},
		{"job status api --log-json --json", "--log-json job status --json api"},
		{"node psk generate fleet.psk --log-level debug", "--log-level debug node psk generate fleet.psk"},
		// command flags after positional arguments, with and without values
		{"inspect api@1.4.0 --json", "inspect --json api@1.4.0"},
		{"torrent api@1.4.0 --out api.torrent", "torrent --out api.torrent api@1.4.0"},
		{"job run api.yaml --if-index=3", "job run --if-index=3 api.yaml"},
		// a command's own flag wins over a global one of the same name
		{"server --data /srv --listen 127.0.0.1:0", "server --data /srv --listen 127.0.0.1:0"},
		// "--" ends flags: what follows is the task's, as written
		{"run api@1.4.0 --memory 256MiB -- --port 8080", "run --memory 256MiB -- api@1.4.0 --port 8080"},
		{"run -d api@1.4.0 -e A=1 -e B=2", "run -d -e A=1 -e B=2 api@1.4.0"},
		// unknown flags stay put, for urfave/cli to report
		{"ls --nope", "ls --nope"},
		{"logs -f 3f2a9c", "logs -f 3f2a9c"},
		{"job status --help", "job status --help"},
		{"help job run", "help job run"},
	} {
		got := normalizeArgs(app, append([]string{"ballena"}, strings.Fields(tc.in)...))
		want := append([]string{"ballena"}, strings.Fields(tc.want)...)
		if !slices.Equal(got, want) {
			t.Errorf("%s:\n got %q\nwant %q", tc.in, got[1:], want[1:])
		}
	}
}

// TestFlagsAnywhere runs the commands the issue found broken, through the real app.
func TestFlagsAnywhere(t *testing.T) {
	dir := t.TempDir()
	whale := copyFile(t, sampleWhale(t), dir+"/hello")
	data := dir + "/data"
	if code, _, msg := run(t, data, "key", "generate", "release", "--dir", dir); code != 0 {
		t.Fatalf("key generate: %s", msg)
	}
	if code, _, msg := run(t, data, "publish", whale, "--key", dir+"/release.key", "--name", "hello", "--version", "1.0.0"); code != 0 {
		t.Fatalf("publish with flags after the file: %s", msg)
	}
	code, out, msg := runArgv(t, "ballena", "inspect", "hello@1.0.0", "--json", "--data", data)
	if code != 0 || !strings.Contains(out, `"name": "hello"`) {
		t.Errorf("inspect REF --json --data DIR: exit %d %s %s", code, out, msg)
	}
	code, out, msg = runArgv(t, "ballena", "ls", "--data", data)
	if code != 0 || !strings.Contains(out, "hello") {
		t.Errorf("ls --data DIR: exit %d %s %s", code, out, msg)
	}
	code, _, msg = runArgv(t, "ballena", "ls", "--data", data, "--nope")
	if code != exitUsage || !strings.Contains(msg, "-nope") {
		t.Errorf("unknown flag: exit %d %q, want %d naming it", code, msg, exitUsage)
	}
}
