// Package metricstest reads a Prometheus registry in tests as a flat map, so a
// test can assert the value of one series by its name and labels, and checks a
// scrape with promtool.
package metricstest

import (
	"bytes"
	"os/exec"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// Gather reads g into name{label=value}... -> value: a counter's or gauge's
// value, a histogram's sample count. Labels come in the order Prometheus
// sorts them (by name).
func Gather(t testing.TB, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.Metric {
			k := f.GetName()
			for _, l := range m.Label {
				k += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.Counter != nil:
				out[k] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[k] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[k] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

// Promtool runs `promtool check metrics` (Debian's prometheus package) on a
// scrape in the text format; what names the endpoint in a failure.
func Promtool(t testing.TB, what string, text []byte) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is needed: apt-get install prometheus (.ci/run installs it)")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics on the %s's scrape: %v\n%s", what, err, out)
	}
}

// Text is g's scrape in the Prometheus text format.
func Text(t testing.TB, g prometheus.Gatherer) []byte {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, f := range fams {
		if _, err := expfmt.MetricFamilyToText(&buf, f); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}
