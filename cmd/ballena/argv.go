package main

import (
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// completionFlag is urfave/cli's shell-completion trigger; it must stay last.
const completionFlag = "--generate-bash-completion"

// normalizeArgs lets people put flags where they type them. urfave/cli reads a
// command's flags only before its first argument, and global flags only before the
// command name; so `ballena node --data DIR`, `ballena inspect api@1.4.0 --json`
// and `ballena job status api --json` would fail. normalizeArgs walks argv once
// against the app's command tree and moves every flag it recognises to the level
// that defines it (the innermost command first, then its parents, then the app),
// with its value. Positional arguments keep their order and follow the flags;
// everything after "--" stays an argument as written. Flags nobody defines stay
// where they are, so urfave/cli still reports them.
func normalizeArgs(app *cli.App, args []string) []string {
	if len(args) == 0 {
		return args
	}
	completion := false
	if n := len(args); n > 1 && args[n-1] == completionFlag {
		completion, args = true, args[:n-1]
	}

	type level struct {
		name  string // command name as typed; "" for the app
		flags []cli.Flag
		subs  []*cli.Command
		args  []string // flags given to this level, with their values
	}
	levels := []*level{{flags: app.Flags, subs: app.Commands}}
	var positional, trailing []string
	sawDashDash := false

	for i := 1; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			sawDashDash, trailing = true, args[i+1:]
			break
		}
		cur := levels[len(levels)-1]
		if strings.HasPrefix(a, "-") && a != "-" {
			name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
			at, f := cur, lookupFlag(cur.flags, name)
			for j := len(levels) - 2; f == nil && j >= 0; j-- {
				at, f = levels[j], lookupFlag(levels[j].flags, name)
			}
			if f == nil {
				at = cur // unknown (or --help): leave it for urfave/cli to handle here
			}
			at.args = append(at.args, a)
			if f != nil && !hasValue && takesValue(f) && i+1 < len(args) {
				i++
				at.args = append(at.args, args[i])
			}
			continue
		}
		if len(positional) == 0 {
			if sub := lookupCommand(cur.subs, a); sub != nil {
				levels = append(levels, &level{name: a, flags: sub.Flags, subs: sub.Subcommands})
				continue
			}
			if a == "help" || a == "h" {
				// urfave/cli's implicit help command; what follows names a command.
				levels = append(levels, &level{name: a})
				continue
			}
		}
		positional = append(positional, a)
	}

	out := []string{args[0]}
	for _, l := range levels {
		if l.name != "" {
			out = append(out, l.name)
		}
		out = append(out, l.args...)
	}
	needDashDash := sawDashDash || slices.ContainsFunc(positional, func(s string) bool {
		return strings.HasPrefix(s, "-") && s != "-"
	})
	if needDashDash && !completion {
		out = append(out, "--")
	}
	out = append(append(out, positional...), trailing...)
	if completion {
		out = append(out, completionFlag)
	}
	return out
}

func lookupFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			return f
		}
	}
	return nil
}

func lookupCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// takesValue reports whether a flag consumes the next argument when given
// without "=": every flag but a boolean one.
func takesValue(f cli.Flag) bool {
	if v, ok := f.(cli.DocGenerationFlag); ok {
		return v.TakesValue()
	}
	return true
}
