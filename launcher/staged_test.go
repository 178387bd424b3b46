package launcher

import (
	"context"
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSealAll: a memfd whose pages stay referenced is refused with
// errSealBusy once patience runs out, and is sealed, against writes too,
// when the reference goes between two tries.
func TestSealAll(t *testing.T) {
	memfd := func(t *testing.T) (*os.File, []byte) {
		t.Helper()
		fd, err := unix.MemfdCreate("seal-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Skipf("memfd_create: %v", err)
		}
		f := os.NewFile(uintptr(fd), "seal-test")
		t.Cleanup(func() { f.Close() })
		if _, err := f.Write(make([]byte, 4096)); err != nil {
			t.Fatal(err)
		}
		// A writable shared mapping is a reference the kernel will not
		// seal under: EBUSY for as long as it lives.
		m, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		return f, m
	}

	t.Run("busy past patience", func(t *testing.T) {
		f, m := memfd(t)
		defer unix.Munmap(m)
		err := sealAll(context.Background(), int(f.Fd()), 0, nil)
		if !errors.Is(err, errSealBusy) {
			t.Fatalf("sealAll with the mapping held: %v, want errSealBusy", err)
		}
		if _, err := f.WriteAt([]byte("x"), 0); err != nil {
			t.Fatalf("a refused seal left the memfd unwritable: %v", err)
		}
	})

	t.Run("busy then free", func(t *testing.T) {
		f, m := memfd(t)
		busy := 0
		err := sealAll(context.Background(), int(f.Fd()), sealPatience, func() {
			if busy++; busy == 1 {
				unix.Munmap(m)
			}
		})
		if err != nil {
			t.Fatalf("sealAll after the mapping went: %v", err)
		}
		if busy != 1 {
			t.Fatalf("refused %d times, want 1", busy)
		}
		if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, unix.EPERM) {
			t.Fatalf("write to the sealed memfd: %v, want EPERM", err)
		}
	})

	t.Run("context ends the wait", func(t *testing.T) {
		f, m := memfd(t)
		defer unix.Munmap(m)
		ctx, cancel := context.WithCancel(context.Background())
		err := sealAll(ctx, int(f.Fd()), sealPatience, cancel)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("sealAll with its context cancelled: %v, want context.Canceled", err)
		}
	})
}
