package main

import (
	"errors"
	"fmt"
	"strings"

	"ballena.dev/internal/daemon"
)

// Exit codes. Scripts can tell a refusal to trust from a missing artifact from a
// network problem without parsing messages.
const (
	exitFailure     = 1 // anything else
	exitUsage       = 2 // bad flags, arguments or input files
	exitVerify      = 3 // a signature, digest, trust policy or rollback check refused
	exitNotFound    = 4 // no such artifact, task, job or node
	exitUnavailable = 5 // daemon, server or peers unreachable, or a bounded wait ran out
)

// codedError carries an exit code through the CLI's error chain.
type codedError struct {
	code int
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

func usageErrorf(format string, a ...any) error {
	return &codedError{exitUsage, fmt.Errorf(format, a...)}
}

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code, err}
}

// exitCode maps an error to the process exit code.
func exitCode(err error) int {
	var ce *codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	if c := classify(err); c != 0 {
		return c
	}
	return exitFailure
}

// oneLine keeps an error message to one line, as the CLI promises.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", " ")), " ")
}

// classify maps the rooms' errors to exit codes (0: none matched), through the
// daemon's classification, so that the CLI and the local API agree.
func classify(err error) int {
	return map[string]int{
		daemon.CodeVerify: exitVerify, daemon.CodeNotFound: exitNotFound,
		daemon.CodeUsage: exitUsage, daemon.CodeUnavailable: exitUnavailable,
	}[daemon.Code(err)]
}
