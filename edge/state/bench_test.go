package state

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
)

// BenchmarkObserve is the hot path's share of keeping state: noting one
// refresh for the next batch.
func BenchmarkObserve(b *testing.B) {
	w := NewWriter(&memStore{state: map[string]registry.Binding{}}, time.Second, clock.Real{}, slog.New(slog.DiscardHandler), nil)
	bs := make([]registry.Binding, 10_000)
	for i := range bs {
		bs[i] = binding(i, nat.UDP)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		w.Observe(registry.Event{Kind: registry.Refreshed, Binding: bs[i%len(bs)]})
	}
}

// BenchmarkBoltRefresh is the whole write cost of one refresh, in
// batches of 1000 (one second at 1000 REGISTERs/s) against a file of
// 100,000 bindings; it reports the file's size per binding.
func BenchmarkBoltRefresh(b *testing.B) {
	s := openBolt(b, b.TempDir())
	defer s.Close()
	benchRefresh(b, s)
	b.ReportMetric(float64(s.Size())/100_000, "file-B/binding")
}

// BenchmarkRedisRefresh is BenchmarkBoltRefresh against a local
// redis-server: one MULTI/EXEC (and its PUBLISH) per 1000 refreshes.
func BenchmarkRedisRefresh(b *testing.B) {
	srv := newTestRedis(b)
	benchRefresh(b, openRedis(b, srv.addr, "bench"))
}

// benchRefresh fills store with 100,000 bindings, then times refreshes
// through a Writer flushed every 1000.
func benchRefresh(b *testing.B, store Store) {
	const n, batch = 100_000, 1000
	bs := make([]registry.Binding, n)
	for i := range bs {
		bs[i] = binding(i, nat.UDP)
		bs[i].AOR = "sip:user" + itoa(i) + "@example.com"
	}
	for i := 0; i < n; i += batch {
		if err := store.Write(Batch{Saved: t0, Put: bs[i : i+batch]}); err != nil {
			b.Fatal(err)
		}
	}
	w := NewWriter(store, time.Second, clock.Real{}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bs[i%n].CSeq++
		w.Observe(registry.Event{Kind: registry.Refreshed, Binding: bs[i%n]})
		if i%batch == batch-1 {
			if err := w.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
}

func itoa(i int) string {
	var buf [20]byte
	p := len(buf)
	for {
		p--
		buf[p] = byte('0' + i%10)
		if i /= 10; i == 0 {
			return string(buf[p:])
		}
	}
}
