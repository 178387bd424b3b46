// Package units reads and prints the two amounts people type into Ballena: sizes
// and CPU shares. The CLI, job files and every output use it, so `8G` means the
// same everywhere.
//
// Sizes are IEC binary: K, Ki, KB and KiB all mean 2^10; M, G, T likewise (so
// `8G` = `8GiB` = 8×2^30 bytes). Case does not matter; a bare number is bytes.
// CPU is in thousandths of a CPU: `500m` is half a CPU, `2` or `2.0` two CPUs.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var sizeShift = map[string]uint{
	"": 0, "b": 0,
	"k": 10, "ki": 10, "kb": 10, "kib": 10,
	"m": 20, "mi": 20, "mb": 20, "mib": 20,
	"g": 30, "gi": 30, "gb": 30, "gib": 30,
	"t": 40, "ti": 40, "tb": 40, "tib": 40,
}

// ParseBytes reads a size such as "256MiB", "8G", "1.5GiB" or "1048576".
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	}
	shift, ok := sizeShift[unit]
	if !ok {
		return 0, fmt.Errorf("%q: unknown unit %q (use KiB, MiB, GiB, TiB)", s, t[i:])
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f <= 0 || math.IsInf(f, 0) {
		return 0, fmt.Errorf("%q is not a size: want e.g. 256MiB or 8G", s)
	}
	v := f * float64(uint64(1)<<shift)
	if v > 1<<62 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	if v < 1 {
		return 0, fmt.Errorf("%q is less than a byte", s)
	}
	return int64(v), nil
}

// FormatBytes prints n with the largest binary unit that keeps it at least 1,
// to one decimal place: "256MiB", "1.5GiB", "512B". ParseBytes reads it back.
func FormatBytes(n int64) string {
	names := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(names)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%dB", n)
	}
	return strings.TrimSuffix(strconv.FormatFloat(f, 'f', 1, 64), ".0") + names[i]
}

// ParseCPU reads a CPU amount in thousandths of a CPU: "500m" is 500, "2" and
// "2.0" are 2000, "0.25" is 250.
func ParseCPU(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if m, ok := strings.CutSuffix(t, "m"); ok {
		v, err := strconv.ParseInt(m, 10, 64)
		if err != nil || v <= 0 {
			return 0, fmt.Errorf("%q is not a cpu amount: want e.g. 500m or 1.5", s)
		}
		return v, nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 || math.IsInf(f, 0) || f > 1e6 {
		return 0, fmt.Errorf("%q is not a cpu amount: want e.g. 500m or 1.5", s)
	}
	v := int64(math.Round(f * 1000))
	if v == 0 {
		return 0, fmt.Errorf("%q is less than 1m", s)
	}
	return v, nil
}

// FormatCPU prints thousandths of a CPU the way ParseCPU reads them: "500m".
func FormatCPU(milli int64) string { return strconv.FormatInt(milli, 10) + "m" }
