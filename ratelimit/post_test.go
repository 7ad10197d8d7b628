package ratelimit

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// passes sends REGISTERs without an AOR (so only the source's request
// rate applies) until one is not allowed, and returns how many were.
func passes(t *testing.T, l *Limiter, src netip.Addr) int {
	t.Helper()
	for n := 0; ; n++ {
		if d, r := l.Request(src, "REGISTER", "", "", true); d != Allow {
			if r != ReasonSourceRate {
				t.Fatalf("after %d: %v %v", n, d, r)
			}
			return n
		}
	}
}

// TestBindingsRescale: when SetBindings changes a source's factor, its
// post-parse budgets keep their fill level as a fraction of the burst, as
// the GCRA buckets do: a full one stays full, a half-spent one half-spent.
func TestBindingsRescale(t *testing.T) {
	l, c := newLimiter(t, nil, Events{}) // request_rate 20, request_burst 100
	src := addr("192.0.2.1")
	for range 50 {
		l.Request(src, "REGISTER", "", "", true)
	}
	l.SetBindings(src, 2) // factor 2: burst 200, 40/s, half spent
	if n := passes(t, l, src); n != 100 {
		t.Fatalf("factor 2, half spent: %d passed, want 100", n)
	}
	c.Advance(time.Second) // 40 back
	l.SetBindings(src, 0)  // factor 1: 20
	if n := passes(t, l, src); n != 20 {
		t.Fatalf("back to factor 1: %d passed, want 20", n)
	}

	// A full bucket is full at any factor: an office seen before it had
	// bindings gets its whole scaled budget at once.
	office := addr("203.0.113.9")
	l.Request(office, "OPTIONS", "", "", true)
	c.Advance(time.Minute)
	l.SetBindings(office, 300) // factor 151
	if n := passes(t, l, office); n != 100*151 {
		t.Fatalf("office: %d passed, want %d", n, 100*151)
	}
	// Unchanged factor (max_bindings caps n): nothing is rebuilt.
	l.SetBindings(office, 300)
	if n := passes(t, l, office); n != 0 {
		t.Fatalf("office, same factor: %d passed", n)
	}
}

// TestScaledBurst: the burst at factor f is the whole units of burst*f:
// a full bucket lets that many through at once, and no more.
func TestScaledBurst(t *testing.T) {
	for _, tc := range []struct {
		burst int
		f     float64
		want  int
	}{
		{100, 1, 100}, {100, 151, 15100}, {1, 1.5, 1}, {3, 1.5, 4}, {10, 1.3, 13},
	} {
		for _, rate := range []float64{20, 3, 0.7} {
			b := newBucket(rate, tc.burst)
			var tat int64
			got := 0
			for b.take(&tat, 0, 1, tc.f) {
				got++
			}
			if got != tc.want {
				t.Errorf("burst %d at factor %g, rate %g: %d passed, want %d", tc.burst, tc.f, rate, got, tc.want)
			}
		}
	}
	// A huge burst times a huge factor neither overflows nor goes negative.
	b := newBucket(1, 1e9)
	var tat int64
	for i := range 1_000_000 {
		if !b.take(&tat, 0, 1, 1e12) {
			t.Fatalf("burst 1e9 at factor 1e12: denied after %d", i)
		}
	}
}

// liveReqs counts the sources holding post-parse buckets.
func liveReqs(l *Limiter) int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += len(sh.reqs) - len(sh.reqFree)
		sh.mu.Unlock()
	}
	return n
}

// TestPostParseLazy: post-parse buckets exist only for sources that sent
// a parsed request and AORs that were REGISTERed, and Sweep drops them
// once full, even for a source it keeps.
func TestPostParseLazy(t *testing.T) {
	l, c := newLimiter(t, nil, Events{})
	for i := range 1000 {
		l.Packet(nthAddr(i), 100, true)
		l.AuthFailure(nthAddr(i), fmt.Sprintf("sip:%d@x", i))
	}
	if n := liveReqs(l); n != 0 {
		t.Fatalf("%d sources hold post-parse buckets after datagrams only", n)
	}
	for i := range l.aors {
		for k, ae := range l.aors[i].m {
			if ae.register != 0 {
				t.Fatalf("AOR %s has a charged REGISTER bucket after an auth failure only", k)
			}
		}
	}
	bound := addr("203.0.113.1")
	l.SetBindings(bound, 10)
	for i := range 300 {
		l.Request(nthAddr(i), "INVITE", "", "", true)
	}
	l.Request(bound, "REGISTER", "sip:office@x", "", true)
	if n := liveReqs(l); n != 301 {
		t.Fatalf("%d sources hold post-parse buckets, want 301", n)
	}
	l.Sweep() // nothing full yet
	if n := liveReqs(l); n != 301 {
		t.Fatalf("after an early Sweep: %d", n)
	}
	c.Advance(time.Hour)
	l.Sweep()
	if s := l.Stats(); s.Sources != 1 || s.AORs != 0 || liveReqs(l) != 0 {
		t.Fatalf("after Sweep: %+v, %d with post-parse buckets", s, liveReqs(l))
	}
	// The bound source, kept, starts afresh.
	if n := passes(t, l, bound); n != 100*6 {
		t.Fatalf("bound source after Sweep: %d passed", n)
	}
}

// TestMemoryRequests: max_sources sources each sending REGISTER (its own
// AOR), OPTIONS and INVITE stay within bounds; as many again are untracked
// and allocate nothing; Sweep gives the buckets back.
func TestMemoryRequests(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	max := DefaultConfig().MaxSources
	n := 2 * max
	l, c := newLimiter(t, nil, Events{})
	before := readHeap()
	for i := range n {
		src := nthAddr(i)
		proven := i%2 == 0 // half of them spoofed UDP
		l.Request(src, "REGISTER", fmt.Sprintf("sip:%d@example.com", i), "", proven)
		l.Request(src, "OPTIONS", "", "", proven)
		l.Request(src, "INVITE", "", "", proven)
		if i%1000 == 999 {
			c.Advance(time.Millisecond)
		}
	}
	during := readHeap()
	// The untracked sources share the overflow budget, buckets and all.
	if s := l.Stats(); s.OverflowHits < uint64(n-max) {
		t.Fatalf("overflow hits %d", s.OverflowHits)
	}
	s := l.Stats()
	if s.Sources > max || s.AORs > DefaultConfig().MaxAORs || liveReqs(l) > max {
		t.Fatalf("over the caps: %+v, %d with post-parse buckets", s, liveReqs(l))
	}
	growth := heapMiB(&during) - heapMiB(&before)
	t.Logf("%d sources sending REGISTER+OPTIONS+INVITE: %d tracked, %d AORs, %d with post-parse buckets; heap +%.1f MiB (%.0f B per tracked source and its AOR)",
		n, s.Sources, s.AORs, liveReqs(l), growth, growth*(1<<20)/float64(s.Sources))
	if growth > 128 {
		t.Fatalf("heap grew by %.1f MiB", growth)
	}
	c.Advance(time.Hour)
	l.Sweep()
	after := readHeap()
	if s := l.Stats(); s.Sources != 0 || s.AORs != 0 {
		t.Fatalf("after Sweep: %+v", s)
	}
	t.Logf("after Sweep: heap %.1f MiB", heapMiB(&after))
	// What stays is the AOR maps' buckets (Go maps do not shrink, and
	// Sweep rebuilds only the source index): about 7 MiB at max_aors.
	if heapMiB(&after)-heapMiB(&before) > 10 {
		t.Errorf("Sweep kept %.1f MiB", heapMiB(&after)-heapMiB(&before))
	}
	runtime.KeepAlive(l)
}
