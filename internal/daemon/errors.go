package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"

	"ballena.dev/artifact"
	"ballena.dev/internal/localapi"
	"ballena.dev/launcher"
	"ballena.dev/signing"
	"ballena.dev/swarm"
)

// The kinds of failure the local API reports and the CLI turns into exit codes.
const (
	CodeVerify      = "verify"      // a signature, digest, trust policy or rollback check refused
	CodeNotFound    = "notfound"    // no such artifact, task, job or node
	CodeUsage       = "usage"       // bad request, flags or input
	CodeUnavailable = "unavailable" // peers or store unreachable, or a bounded wait ran out
)

// Code classifies err by the rooms' sentinel errors; "" when none matches. It is
// the one place that knows which error means what, for the API and the CLI alike.
func Code(err error) string {
	var le *localapi.Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &le):
		return le.Code
	case signing.IsVerification(err), errors.Is(err, launcher.ErrRefused):
		return CodeVerify
	case errors.Is(err, artifact.ErrNotFound), errors.Is(err, launcher.ErrNotFound):
		return CodeNotFound
	case errors.Is(err, artifact.ErrInvalid), errors.Is(err, launcher.ErrInvalid), errors.As(err, new(*UsageError)):
		return CodeUsage
	case errors.Is(err, artifact.ErrStoreBusy), errors.Is(err, swarm.ErrUnavailable),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, localapi.ErrNoDaemon):
		return CodeUnavailable
	}
	return ""
}

// UsageError is a config or request the daemon refuses as malformed.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

func usageErrorf(format string, a ...any) error {
	return &UsageError{fmt.Errorf(format, a...)}
}

var statusOf = map[string]int{
	CodeVerify: http.StatusForbidden, CodeNotFound: http.StatusNotFound,
	CodeUsage: http.StatusBadRequest, CodeUnavailable: http.StatusServiceUnavailable,
}

// apiError is err as the local API's error body.
func apiError(err error) *localapi.Error {
	return &localapi.Error{Message: err.Error(), Code: Code(err)}
}

// writeError answers a request with err, its status matching its code.
func writeError(w http.ResponseWriter, err error) {
	e := apiError(err)
	localapi.WriteJSON(w, cmp.Or(statusOf[e.Code], http.StatusInternalServerError), e)
}

// usage answers a malformed request.
func usage(w http.ResponseWriter, err error) {
	localapi.WriteError(w, http.StatusBadRequest, CodeUsage, err)
}
