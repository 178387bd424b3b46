package signing

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error this package returns for bad input wraps one of
// them, so callers can map a refusal to an exit code with errors.Is or
// IsVerification without parsing messages.
var (
	ErrMalformed       = errors.New("malformed input")
	ErrBadSignature    = errors.New("bad signature")
	ErrUntrustedKey    = errors.New("untrusted key")
	ErrRevokedKey      = errors.New("revoked key")
	ErrKeyExpired      = errors.New("key outside its validity window")
	ErrOutOfScope      = errors.New("name outside the key's scope")
	ErrThreshold       = errors.New("signature threshold not met")
	ErrPayloadType     = errors.New("unexpected payload type")
	ErrSubjectMismatch = errors.New("subject mismatch")
	ErrRollback        = errors.New("version rollback")
)

var verificationErrors = []error{
	ErrMalformed, ErrBadSignature, ErrUntrustedKey, ErrRevokedKey, ErrKeyExpired,
	ErrOutOfScope, ErrThreshold, ErrPayloadType, ErrSubjectMismatch, ErrRollback,
}

// IsVerification reports whether err is a refusal by this package (any of the
// sentinel errors), as opposed to an I/O or internal failure.
func IsVerification(err error) bool {
	for _, s := range verificationErrors {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// kindError carries a precise message while matching a sentinel with errors.Is.
// The sentinel's own text stays out of the message: "key 3fa1… is revoked" says
// more than "revoked key: key 3fa1… is revoked".
type kindError struct {
	kind  error
	msg   string
	cause error // optional underlying error, also matched by errors.Is/As
}

func (e *kindError) Error() string { return e.msg }

func (e *kindError) Unwrap() []error {
	if e.cause != nil {
		return []error{e.kind, e.cause}
	}
	return []error{e.kind}
}

// refusef returns an error of the given kind; a %w verb in format keeps its
// operand reachable through errors.Is and errors.As.
func refusef(kind error, format string, args ...any) error {
	wrapped := fmt.Errorf(format, args...)
	return &kindError{kind: kind, msg: wrapped.Error(), cause: errors.Unwrap(wrapped)}
}

// withPrefix prefixes a message while keeping what the error matches.
func withPrefix(prefix string, err error) error {
	if ke, ok := err.(*kindError); ok {
		return &kindError{kind: ke.kind, msg: prefix + ": " + ke.msg, cause: ke.cause}
	}
	return fmt.Errorf("%s: %w", prefix, err)
}

// shortID abbreviates a key ID for messages; 16 hex digits are plenty to find
// the key in a policy file.
func shortID(id string) string {
	if len(id) <= 16 {
		return id
	}
	return id[:16] + "…"
}
