package metrics_test

import (
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/metrics"
)

// What counting costs one request through the edge: received, answered,
// and a REGISTER's round trip.
func BenchmarkMeterPerRequest(b *testing.B) {
	m := metrics.New(metrics.Sources{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Received("access", "REGISTER")
			m.Answered("access", "REGISTER", 200)
			m.CoreRTT("", time.Millisecond)
		}
	})
}
