package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"ballena.dev/artifact"
	"ballena.dev/internal/localapi"
	"ballena.dev/launcher"
	"ballena.dev/signing"
	"ballena.dev/swarm"
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
	var le *localapi.Error
	if errors.As(err, &le) {
		switch le.Code {
		case "verify":
			return exitVerify
		case "notfound":
			return exitNotFound
		case "unavailable":
			return exitUnavailable
		case "usage":
			return exitUsage
		}
	}
	if errors.Is(err, localapi.ErrNoDaemon) {
		return exitUnavailable
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

// classify maps the rooms' sentinel errors to exit codes (0: none matched).
func classify(err error) int {
	switch {
	case signing.IsVerification(err), errors.Is(err, launcher.ErrRefused):
		return exitVerify
	case errors.Is(err, artifact.ErrNotFound), errors.Is(err, launcher.ErrNotFound):
		return exitNotFound
	case errors.Is(err, artifact.ErrInvalid), errors.Is(err, launcher.ErrInvalid):
		return exitUsage
	case errors.Is(err, artifact.ErrStoreBusy), errors.Is(err, swarm.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return exitUnavailable
	}
	return 0
}

// apiErrorValue is the local API's error body for err, coded like the exit codes,
// for errors that arrive after a stream began.
func apiErrorValue(err error) *localapi.Error {
	e := &localapi.Error{Message: err.Error()}
	switch exitCode(err) {
	case exitVerify:
		e.Code = "verify"
	case exitNotFound:
		e.Code = "notfound"
	case exitUnavailable:
		e.Code = "unavailable"
	case exitUsage:
		e.Code = "usage"
	}
	return e
}

// apiError answers a local API request with err, its status and code matching the exit codes.
func apiError(w http.ResponseWriter, err error) {
	e := apiErrorValue(err)
	status := map[string]int{"verify": http.StatusForbidden, "notfound": http.StatusNotFound,
		"usage": http.StatusBadRequest, "unavailable": http.StatusServiceUnavailable}[e.Code]
	if status == 0 {
		status = http.StatusInternalServerError
	}
	localapi.WriteJSON(w, status, e)
}
