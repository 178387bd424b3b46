// Package metricstest reads a Prometheus registry in tests as a flat map, so a
// test can assert the value of one series by its name and labels.
package metricstest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
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
