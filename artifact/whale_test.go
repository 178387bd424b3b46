package artifact

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestInspectWhale(t *testing.T) {
	if info, err := InspectWhale(staticWhale(t)); err != nil || info.Arch != "amd64" {
		t.Fatalf("static whale: %+v, %v", info, err)
	}
	// /bin/ls is dynamically linked on every Debian: the error must name its interpreter and libraries.
	_, err := InspectWhale("/bin/ls")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "ld-linux") || !strings.Contains(err.Error(), "libc.so") {
		t.Fatalf("dynamic binary: %v", err)
	}
	script := writeFile(t, []byte("#!/bin/sh\necho hi\n"))
	if _, err := InspectWhale(script); !errors.Is(err, ErrInvalid) {
		t.Fatalf("shell script: %v", err)
	}
}

func FuzzInspectWhale(f *testing.F) {
	f.Add([]byte("\x7fELF"))
	f.Add([]byte("\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00"))
	if b, err := os.ReadFile("/bin/true"); err == nil && len(b) > 4096 {
		f.Add(b[:4096])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := inspectWhale("fuzz", bytes.NewReader(data))
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("multi-line error: %q", err)
		}
	})
}
