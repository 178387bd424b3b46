package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"ballena.dev/internal/testbin"
)

// run runs the CLI in-process and returns its exit code, stdout and the one-line error.
func run(t *testing.T, data string, args ...string) (int, string, string) {
	t.Helper()
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	// --data goes after the command name, where people type it.
	argv := []string{"ballena"}
	if len(args) > 0 {
		argv = append(argv, args[0])
		args = args[1:]
	}
	argv = append(append(argv, "--data", data), args...)
	err := runApp(context.Background(), app, argv)
	if err != nil {
		return exitCode(err), out.String(), oneLine(err)
	}
	return 0, out.String(), ""
}

// runArgv runs the CLI in-process on exactly argv, as a user would type it.
func runArgv(t *testing.T, argv ...string) (int, string, string) {
	t.Helper()
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	if err := runApp(context.Background(), app, argv); err != nil {
		return exitCode(err), out.String(), oneLine(err)
	}
	return 0, out.String(), ""
}

// sampleWhale is testdata/hello built static, once per test binary.
func sampleWhale(t *testing.T) string { return testbin.Build(t, "../../testdata/hello") }

func copyFile(t *testing.T, src, dst string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func mustContain(t *testing.T, s string, frags ...string) {
	t.Helper()
	for _, f := range frags {
		if !strings.Contains(s, f) {
			t.Errorf("%q does not contain %q", s, f)
		}
	}
}
