// Package errkind is the one way Ballena's rooms classify errors: an error reads
// as its own precise message and still matches a sentinel kind (ErrInvalid,
// ErrRevokedKey, ...) under errors.Is, so the CLI prints one plain line and picks
// the right exit code without parsing messages.
package errkind

import (
	"errors"
	"fmt"
)

type kindError struct {
	kind  error
	msg   string
	cause error // the %w operand, if any: also matched by errors.Is and errors.As
}

func (e *kindError) Error() string { return e.msg }

func (e *kindError) Unwrap() []error {
	if e.cause != nil {
		return []error{e.kind, e.cause}
	}
	return []error{e.kind}
}

// Errorf returns an error reading as the formatted message that matches kind
// under errors.Is. The kind's own text stays out of the message: "key 3fa1… is
// revoked" says more than "revoked key: key 3fa1… is revoked". A %w verb keeps
// its operand reachable through errors.Is and errors.As.
func Errorf(kind error, format string, a ...any) error {
	wrapped := fmt.Errorf(format, a...)
	return &kindError{kind: kind, msg: wrapped.Error(), cause: errors.Unwrap(wrapped)}
}

// WithPrefix prefixes err's message and keeps what it matches.
func WithPrefix(prefix string, err error) error {
	if ke, ok := err.(*kindError); ok {
		return &kindError{kind: ke.kind, msg: prefix + ": " + ke.msg, cause: ke.cause}
	}
	return fmt.Errorf("%s: %w", prefix, err)
}
