package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ballena.dev/internal/ocitest"
	"ballena.dev/placement"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/urfave/cli/v2"
)

// docLine is one `ballena ...` command line found in the docs.
type docLine struct {
	where   string // README.md:LINE or "ballena CMD --help"
	argv    []string
	heading string // README: the section heading above the line
	block   int    // README: which code block of the file, counting from 1
}

// readmeCommands returns every `ballena` command line in README.md's code blocks,
// with continuation lines joined, comments dropped, and each command of a
// `a && b` or `a; b` line on its own.
func readmeCommands(t *testing.T) []docLine {
	t.Helper()
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []docLine
	sc := bufio.NewScanner(f)
	inCode, lang, n, start, block := false, "", 0, 0, 0
	var pending, heading string
	for sc.Scan() {
		n++
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			inCode, lang = !inCode, strings.TrimPrefix(line, "```")
			if inCode {
				block++
			}
			continue
		}
		if !inCode && strings.HasPrefix(line, "#") {
			heading = line
		}
		if !inCode || lang != "" { // shell blocks only: yaml and the like are not commands
			continue
		}
		if pending == "" {
			start = n
		}
		line = stripComment(line)
		if s, ok := strings.CutSuffix(strings.TrimRight(line, " "), "\\"); ok {
			pending += s + " "
			continue
		}
		full := pending + line
		pending = ""
		for _, cmd := range commandsIn(full) {
			out = append(out, docLine{fmt.Sprintf("README.md:%d", start), cmd, heading, block})
		}
	}
	if len(out) < 20 {
		t.Fatalf("found only %d ballena command lines in README.md: is the parser broken?", len(out))
	}
	return out
}

// usageCommands returns every example line of every command's UsageText.
func usageCommands(app *cli.App) []docLine {
	var out []docLine
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			name := strings.TrimSpace(path + " " + c.Name)
			pending := ""
			for _, line := range strings.Split(c.UsageText, "\n") {
				line = stripComment(line)
				if s, ok := strings.CutSuffix(strings.TrimRight(line, " "), "\\"); ok {
					pending += s + " "
					continue
				}
				for _, cmd := range commandsIn(pending + line) {
					out = append(out, docLine{where: "ballena " + name + " --help", argv: cmd})
				}
				pending = ""
			}
			walk(name, c.Subcommands)
		}
	}
	walk("", app.Commands)
	return out
}

// stripComment drops a shell comment: a # at the start or after a space, outside quotes.
func stripComment(line string) string {
	quote := rune(0)
	for i, r := range line {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (i == 0 || line[i-1] == ' '):
			return line[:i]
		}
	}
	return line
}

// commandsIn splits a shell line into words, then into commands at &&, ; and |,
// and keeps those that run ballena. Square brackets mark optional parts in the
// docs; their contents are kept, as someone trying the full form would type them.
func commandsIn(line string) [][]string {
	var cmds [][]string
	var cur []string
	flush := func() {
		if len(cur) > 0 && cur[0] == "ballena" {
			cmds = append(cmds, cur)
		}
		cur = nil
	}
	for _, w := range shellWords(line) {
		switch w {
		case "&&", ";", "|", "||":
			flush()
			continue
		}
		w = strings.Trim(w, "[]")
		if w == "" || w == "..." {
			continue
		}
		cur = append(cur, w)
	}
	flush()
	return cmds
}

// shellWords splits like a POSIX shell for the simple lines docs hold: quotes
// group and are removed; ; and && end a word.
func shellWords(s string) []string {
	var words []string
	var b strings.Builder
	inWord, quote := false, rune(0)
	end := func() {
		if inWord {
			words = append(words, b.String())
		}
		b.Reset()
		inWord = false
	}
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				b.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			end()
		case r == ';':
			end()
			words = append(words, ";")
		default:
			b.WriteRune(r)
			inWord = true
		}
	}
	end()
	return words
}

// parseWithApp checks argv against the real command tree and flag sets, the way
// the app will read it: every command exists, every flag is defined where it
// ends up, every value parses as its flag's type, and the command runs something.
func parseWithApp(app *cli.App, argv []string) error {
	args := normalizeArgs(app, argv)[1:]
	flags, subs, name := app.Flags, app.Commands, "ballena"
	var leaf *cli.Command
	for {
		set := flag.NewFlagSet(name, flag.ContinueOnError)
		set.SetOutput(io.Discard)
		for _, f := range append(flags, cli.HelpFlag) {
			if err := f.Apply(set); err != nil {
				return fmt.Errorf("%s: %v", name, err)
			}
		}
		if err := set.Parse(args); err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
		args = set.Args()
		if len(subs) == 0 || len(args) == 0 {
			break
		}
		next := lookupCommand(subs, args[0])
		if next == nil {
			if leaf == nil || leaf.Action == nil {
				return fmt.Errorf("%s: no command %q", name, args[0])
			}
			break
		}
		leaf, name = next, name+" "+next.Name
		flags, subs, args = next.Flags, next.Subcommands, args[1:]
	}
	if leaf == nil || leaf.Action == nil {
		return fmt.Errorf("%s: not a command that runs (a group of subcommands)", name)
	}
	return nil
}

// TestDocumentedCommandsParse reads every command line in README.md and in every
// --help example through the real app's flag sets. A docs change that names a
// flag or command that does not exist, or puts one where it is not read, fails.
func TestDocumentedCommandsParse(t *testing.T) {
	app := newApp()
	lines := append(readmeCommands(t), usageCommands(app)...)
	for _, l := range lines {
		if err := parseWithApp(app, l.argv); err != nil {
			t.Errorf("%s: %s: %v", l.where, strings.Join(l.argv, " "), err)
		}
	}
	t.Logf("%d documented command lines parsed", len(lines))
}

// TestParseWithAppRefuses makes sure the docs check can fail.
func TestParseWithAppRefuses(t *testing.T) {
	app := newApp()
	for _, bad := range []string{
		"ballena nope",
		"ballena ls --nope",
		"ballena node --upload-limit",
		"ballena job",
		"ballena stop --timeout soon 3f2a9c",
		"ballena inspect --json api@1.4.0 --data",
	} {
		if err := parseWithApp(app, strings.Fields(bad)); err == nil {
			t.Errorf("%s: parsed, want an error", bad)
		}
	}
	got := commandsIn(stripComment(`go build -o hello ./x && ballena publish --key k ./hello # c`))
	if len(got) != 1 || strings.Join(got[0], " ") != "ballena publish --key k ./hello" {
		t.Errorf("commandsIn: %q", got)
	}
	if s := stripComment(`printf 'a # b' # c`); s != `printf 'a # b' ` {
		t.Errorf("stripComment: %q", s)
	}
}

// readmeBlock returns the ballena lines of the first shell block under heading.
func readmeBlock(t *testing.T, heading string) []docLine {
	t.Helper()
	var out []docLine
	for _, l := range readmeCommands(t) {
		if l.heading == heading && (len(out) == 0 || l.block == out[0].block) {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		t.Fatalf("README.md: no ballena lines under %q", heading)
	}
	return out
}

// TestREADMEReleaseWalkthrough runs the release engineer's and the admin's
// blocks of README.md as written, in order, in a directory holding what they
// name (a static whale ./api, an image ./web.tar, a trust.yaml).
func TestREADMEReleaseWalkthrough(t *testing.T) {
	lines := append(readmeBlock(t, "## For release engineers: publish"), readmeBlock(t, "## For admins: verify provenance")...)
	dir := t.TempDir()
	copyFile(t, sampleWhale(t), filepath.Join(dir, "api"))
	writeImageTar(t, filepath.Join(dir, "web.tar"))
	t.Chdir(dir)
	t.Setenv("BALLENA_DATA", filepath.Join(dir, "data"))
	if err := os.WriteFile("trust.yaml", []byte("keys:\n  - path: release.pub\n    names: [\"api\", \"web-*\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		code, out, msg := runArgv(t, l.argv...)
		if code != 0 {
			t.Errorf("%s: %s: exit %d: %s\n%s", l.where, strings.Join(l.argv, " "), code, msg, out)
		}
	}
	if _, err := os.Stat("api.dsse.json"); err != nil {
		t.Errorf("README's sign line should write ./api.dsse.json: %v", err)
	}
}

// writeImageTar writes a small linux/amd64 docker-save tarball, the kind of
// ./web.tar the README publishes.
func writeImageTar(t *testing.T, path string) {
	t.Helper()
	ocitest.WriteDockerSave(t, path, "example.com/web:2.0.0", ocitest.Image(t, "amd64",
		v1.Config{Entrypoint: []string{"/web"}},
		ocitest.Layer(t, ocitest.Entry{Name: "index.html", Body: "static site\n", Mode: 0o644})))
}

// readmeFences returns the contents of README.md's fenced blocks in lang
// under heading (a prefix of the heading line), in order.
func readmeFences(t *testing.T, heading, lang string) []string {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var cur *strings.Builder
	inCode, under := false, false
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case inCode && line == "```":
			if cur != nil {
				out = append(out, cur.String())
			}
			inCode, cur = false, nil
		case inCode:
			if cur != nil {
				cur.WriteString(line + "\n")
			}
		case strings.HasPrefix(line, "```"):
			inCode = true
			if under && strings.TrimPrefix(line, "```") == lang {
				cur = &strings.Builder{}
			}
		case strings.HasPrefix(line, "#"):
			under = strings.HasPrefix(line, heading)
		}
	}
	return out
}

// TestREADMEJobFilesParse: every job file the README shows is one the server
// takes (the CI job file with a version filled in).
func TestREADMEJobFilesParse(t *testing.T) {
	n := 0
	for _, y := range readmeFences(t, "#", "yaml") {
		if !strings.Contains(y, "\nartifact: ") {
			continue // a trust policy, say
		}
		n++
		j, err := placement.ParseJob("README job file", []byte(strings.ReplaceAll(y, "@VERSION@", "1.4.0")))
		if err != nil {
			t.Errorf("%v\n%s", err, y)
			continue
		}
		if err := j.Validate(); err != nil {
			t.Errorf("%v\n%s", err, y)
		}
	}
	if n < 2 {
		t.Fatalf("found %d job files in README.md, want the operators' and the CI's", n)
	}
}
