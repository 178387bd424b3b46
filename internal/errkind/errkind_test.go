package errkind

import (
	"errors"
	"io/fs"
	"testing"
)

func TestErrorfMatchesKindAndCause(t *testing.T) {
	errKind := errors.New("invalid input")
	err := Errorf(errKind, "read %s: %w", "api.yaml", fs.ErrNotExist)
	if err.Error() != "read api.yaml: file does not exist" {
		t.Errorf("message %q", err)
	}
	if !errors.Is(err, errKind) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%v matches neither its kind nor its cause", err)
	}
	p := WithPrefix("job", err)
	if p.Error() != "job: read api.yaml: file does not exist" || !errors.Is(p, errKind) || !errors.Is(p, fs.ErrNotExist) {
		t.Errorf("WithPrefix: %q loses what it matches", p)
	}
	if errors.Is(Errorf(errKind, "x"), fs.ErrNotExist) {
		t.Error("an error without %w matches an unrelated sentinel")
	}
}
