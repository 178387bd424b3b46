package units

import "testing"

func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"1048576", 1 << 20}, {"512B", 512}, {"1k", 1 << 10}, {"1KB", 1 << 10}, {"1KiB", 1 << 10},
		{"256MiB", 256 << 20}, {"256M", 256 << 20}, {"256Mi", 256 << 20}, {"256 MB", 256 << 20},
		{"8G", 8 << 30}, {"8GiB", 8 << 30}, {"8gb", 8 << 30}, {"1.5GiB", 3 << 29}, {"2T", 2 << 40},
	} {
		got, err := ParseBytes(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "0", "-1", "1XB", "MiB", "0.1B", "1e30GiB", "Inf"} {
		if v, err := ParseBytes(bad); err == nil {
			t.Errorf("ParseBytes(%q) = %d, want an error", bad, v)
		}
	}
}

func TestFormatBytesRoundTrips(t *testing.T) {
	for _, n := range []int64{1, 512, 1 << 10, 256 << 20, 3 << 29, 8 << 30} {
		s := FormatBytes(n)
		back, err := ParseBytes(s)
		if err != nil || back != n {
			t.Errorf("ParseBytes(FormatBytes(%d) = %q) = %d, %v", n, s, back, err)
		}
	}
	if got := FormatBytes(256 << 20); got != "256MiB" {
		t.Errorf("FormatBytes(256MiB) = %q", got)
	}
}

func TestParseCPU(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{{"500m", 500}, {"2", 2000}, {"2.0", 2000}, {"0.25", 250}, {" 100m ", 100}} {
		got, err := ParseCPU(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseCPU(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
		if back, _ := ParseCPU(FormatCPU(got)); back != got {
			t.Errorf("ParseCPU(FormatCPU(%d)) = %d", got, back)
		}
	}
	for _, bad := range []string{"", "0", "-1", "0m", "m", "1.5m", "0.0001", "two"} {
		if v, err := ParseCPU(bad); err == nil {
			t.Errorf("ParseCPU(%q) = %d, want an error", bad, v)
		}
	}
}
