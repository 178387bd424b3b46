package artifact

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
)

// WhaleInfo is what InspectWhale learns from a binary.
type WhaleInfo struct {
	Arch string // GOARCH spelling: amd64, arm64, ...
}

var elfArch = map[elf.Machine]string{
	elf.EM_X86_64:  "amd64",
	elf.EM_386:     "386",
	elf.EM_AARCH64: "arm64",
	elf.EM_ARM:     "arm",
	elf.EM_RISCV:   "riscv64",
	elf.EM_PPC64:   "ppc64le",
	elf.EM_S390:    "s390x",
}

// InspectWhale checks that path is a statically linked ELF executable for this
// platform: no program interpreter and no needed shared libraries.
func InspectWhale(path string) (WhaleInfo, error) {
	r, err := os.Open(path)
	if err != nil {
		return WhaleInfo{}, err
	}
	defer r.Close()
	return inspectWhale(path, r)
}

// inspectWhale is InspectWhale over any reader, so that it can be fuzzed.
func inspectWhale(path string, r io.ReaderAt) (info WhaleInfo, err error) {
	defer func() {
		// debug/elf panics on some malformed inputs; a bad input is an error, not a crash.
		if p := recover(); p != nil {
			info, err = WhaleInfo{}, Tagged(ErrInvalid, "%s is a malformed ELF file", path)
		}
	}()
	f, err := elf.NewFile(r)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) || strings.Contains(err.Error(), "bad magic") || errors.Is(err, errors.ErrUnsupported) {
			return WhaleInfo{}, Tagged(ErrInvalid, "%s is not an ELF executable", path)
		}
		return WhaleInfo{}, Tagged(ErrInvalid, "%s is not an ELF executable (%v)", path, err)
	}
	defer f.Close()
	return inspectELF(path, f)
}

func inspectELF(path string, f *elf.File) (WhaleInfo, error) {
	arch, ok := elfArch[f.Machine]
	if !ok {
		arch = strings.ToLower(strings.TrimPrefix(f.Machine.String(), "EM_"))
	}
	info := WhaleInfo{Arch: arch}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return info, Tagged(ErrInvalid, "%s is an ELF %s, not an executable", path, f.Type)
	}
	var interp string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err == nil {
				interp = strings.TrimRight(string(b), "\x00")
			} else {
				interp = "(unreadable)"
			}
		}
	}
	needed, _ := f.DynString(elf.DT_NEEDED)
	if interp != "" || len(needed) > 0 {
		msg := fmt.Sprintf("%s is dynamically linked", path)
		if interp != "" {
			msg += fmt.Sprintf(" (interpreter %s", interp)
		} else {
			msg += " ("
		}
		if len(needed) > 0 {
			if interp != "" {
				msg += "; "
			}
			msg += "needs " + strings.Join(needed, ", ")
		}
		msg += "): a whale must be static; rebuild with CGO_ENABLED=0 or -static"
		return info, Tagged(ErrInvalid, "%s", msg)
	}
	if f.Type == elf.ET_DYN && !hasEntry(f) {
		return info, Tagged(ErrInvalid, "%s is a shared library, not an executable", path)
	}
	if arch != runtime.GOARCH {
		return info, Tagged(ErrInvalid, "%s is built for %s, this platform is %s", path, arch, runtime.GOARCH)
	}
	return info, nil
}

// hasEntry tells a static-pie executable from a shared object.
func hasEntry(f *elf.File) bool { return f.Entry != 0 }
