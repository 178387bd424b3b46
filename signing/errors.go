package signing

import (
	"errors"

	"ballena.dev/internal/errkind"
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

// refusef returns an error of the given kind (see internal/errkind).
func refusef(kind error, format string, args ...any) error {
	return errkind.Errorf(kind, format, args...)
}

// withPrefix prefixes a message while keeping what the error matches.
func withPrefix(prefix string, err error) error { return errkind.WithPrefix(prefix, err) }

// shortID abbreviates a key ID for messages; 16 hex digits are plenty to find
// the key in a policy file.
func shortID(id string) string {
	if len(id) <= 16 {
		return id
	}
	return id[:16] + "…"
}
