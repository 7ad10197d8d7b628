package upstream

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"
)

// addrs names Order's targets by address.
func addrs(ts []Target) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Addr.Addr().String()
	}
	return out
}

func setDown(p *Pool, t Target) {
	for range DefaultConfig().DownAfter {
		p.Report(t, false, false)
	}
}

func setUp(p *Pool, t Target) {
	for range DefaultConfig().UpAfter {
		p.Report(t, true, false)
	}
}

func TestOrderPriority(t *testing.T) {
	p := newTestPool(t, []string{"sip:10.0.0.1", "sip:10.0.0.2", "sip:10.0.0.3"})
	a, b := p.Targets()[0], p.Targets()[1]
	want := func(key string, order ...string) {
		t.Helper()
		if got := addrs(p.Order(key)); fmt.Sprint(got) != fmt.Sprint(order) {
			t.Fatalf("Order(%q) = %v, want %v", key, got, order)
		}
		pick, err := p.PickFor(key)
		if err != nil || pick.Addr.Addr().String() != order[0] {
			t.Fatalf("PickFor(%q) = %s, %v; want %s", key, pick, err, order[0])
		}
	}
	for _, key := range []string{"", "alice@example.com", "bob@example.com"} {
		want(key, "10.0.0.1", "10.0.0.2", "10.0.0.3")
	}
	setDown(p, a)
	want("alice@example.com", "10.0.0.2", "10.0.0.3")
	if got := p.Pick().Addr.Addr().String(); got != "10.0.0.2" {
		t.Errorf("Pick with the primary down = %s", got)
	}
	setDown(p, b)
	want("alice@example.com", "10.0.0.3")
	setUp(p, a)
	want("alice@example.com", "10.0.0.1", "10.0.0.3")

	// Explicit priorities beat list order; equal ones share by hashing.
	p = newTestPool(t, []string{"sip:10.0.0.1;priority=5", "sip:10.0.0.2;priority=1", "sip:10.0.0.3;priority=5"})
	for i := range 100 {
		got := addrs(p.Order(fmt.Sprint("user", i)))
		if len(got) != 3 || got[0] != "10.0.0.2" {
			t.Fatalf("Order = %v: priority 1 not first", got)
		}
	}
	if got := p.Pick().Addr.Addr().String(); got != "10.0.0.2" {
		t.Errorf("Pick = %s, want the best priority", got)
	}
}

// share counts where n keys land first.
func share(p *Pool, n int) map[string]int {
	counts := map[string]int{}
	for i := range n {
		t, err := p.PickFor(fmt.Sprintf("sip:user%d@example.com", i))
		if err != nil {
			panic(err)
		}
		counts[t.Addr.Addr().String()]++
	}
	return counts
}

func within(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Errorf("%s: share %.4f, want %.4f ±%.2f", what, got, want, tol)
	}
}

func TestOrderWeights(t *testing.T) {
	const n = 10000
	p := newTestPool(t, []string{"sip:10.0.0.1;priority=0;weight=3", "sip:10.0.0.2;priority=0;weight=1"})
	c := share(p, n)
	within(t, "weight 3 of 3:1", float64(c["10.0.0.1"])/n, 0.75, 0.03)

	p = newTestPool(t, []string{"sip:10.0.0.1;priority=0", "sip:10.0.0.2;priority=0", "sip:10.0.0.3;priority=0"})
	c = share(p, n)
	for _, a := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
		within(t, a+" of 1:1:1", float64(c[a])/n, 1.0/3, 0.03)
	}

	// Overloaded counts a tenth: 1:1 becomes 0.1:1.
	p = newTestPool(t, []string{"sip:10.0.0.1;priority=0", "sip:10.0.0.2;priority=0"})
	p.Report(p.Targets()[0], true, true)
	c = share(p, n)
	within(t, "overloaded of 1:1", float64(c["10.0.0.1"])/n, 0.1/1.1, 0.03)
	if got := addrs(p.Order("any")); len(got) != 2 {
		t.Errorf("an overloaded core left the order: %v", got)
	}
}

// The same key lands on the same core; a core going down moves only
// its own keys, and they come back with it.
func TestOrderSticky(t *testing.T) {
	const n = 10000
	p := newTestPool(t, []string{"sip:10.0.0.1;priority=0", "sip:10.0.0.2;priority=0;weight=2", "sip:10.0.0.3;priority=0"})
	key := func(i int) string { return fmt.Sprintf("sip:%d@example.com", i) }
	where := func() []string {
		out := make([]string, n)
		for i := range n {
			t, err := p.PickFor(key(i))
			if err != nil {
				panic(err)
			}
			out[i] = t.Addr.Addr().String()
		}
		return out
	}
	before := where()
	if again := where(); fmt.Sprint(again) != fmt.Sprint(before) {
		t.Fatal("the same keys moved with nothing changed")
	}
	for i := range 50 {
		if first := addrs(p.Order(key(i)))[0]; first != before[i] {
			t.Fatalf("Order and PickFor disagree on %s: %s, %s", key(i), first, before[i])
		}
	}

	b := p.Targets()[1]
	setDown(p, b)
	during := where()
	moved := 0
	for i := range n {
		switch {
		case before[i] == "10.0.0.2":
			moved++
			if during[i] == "10.0.0.2" {
				t.Fatalf("%s still on the down core", key(i))
			}
		case during[i] != before[i]:
			t.Fatalf("%s moved from %s to %s though its core is up", key(i), before[i], during[i])
		}
	}
	within(t, "keys moved", float64(moved)/n, 0.5, 0.03) // weight 2 of 4
	setUp(p, b)
	if after := where(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatal("keys did not move back when their core returned")
	}

	// A second pool with the same config agrees: another edge, or this
	// one after a restart, sends a key to the same core.
	q := newTestPool(t, []string{"sip:10.0.0.1;priority=0", "sip:10.0.0.2;priority=0;weight=2", "sip:10.0.0.3;priority=0"})
	for i := range 100 {
		if got, _ := q.PickFor(key(i)); got.Addr.Addr().String() != before[i] {
			t.Fatalf("another pool sends %s to %s, not %s", key(i), got, before[i])
		}
	}
}

// No core up: a fast refusal with a jittered Retry-After.
func TestPickForNoCore(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Upstreams = []string{"sip:10.0.0.1", "sip:10.0.0.2"}
	cfg.RetryAfter = 30 * time.Second
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range p.Targets() {
		setDown(p, tg)
	}
	if got := p.Order("alice"); got != nil {
		t.Errorf("Order with every core down = %v", addrs(got))
	}
	if got := p.Pick().Addr.Addr().String(); got != "10.0.0.1" {
		t.Errorf("Pick with every core down = %s, want the primary", got)
	}
	seen := map[time.Duration]bool{}
	for range 200 {
		_, err := p.PickFor("alice")
		var u *Unreachable
		if !errors.As(err, &u) || !errors.Is(err, ErrNoCore) {
			t.Fatalf("PickFor = %v, want *Unreachable wrapping ErrNoCore", err)
		}
		if u.RetryAfter < 23*time.Second || u.RetryAfter > 37*time.Second || u.RetryAfter%time.Second != 0 {
			t.Fatalf("RetryAfter %s outside 30s ±25%% in whole seconds", u.RetryAfter)
		}
		if u.Dest.IsValid() {
			t.Errorf("Dest %s though no core was tried", u.Dest)
		}
		seen[u.RetryAfter] = true
	}
	if len(seen) < 5 {
		t.Errorf("Retry-After hardly varies: %v", seen)
	}
	setUp(p, p.Targets()[1])
	if got, err := p.PickFor("alice"); err != nil || got.Addr.Addr().String() != "10.0.0.2" {
		t.Errorf("after the backup returned: %s, %v", got, err)
	}
}

func TestJitter(t *testing.T) {
	lowest := func(int) int { return 0 }
	highest := func(n int) int { return n - 1 }
	for _, tc := range []struct {
		d, lo, hi time.Duration
	}{
		{30 * time.Second, 23 * time.Second, 37 * time.Second},
		{4 * time.Second, 3 * time.Second, 5 * time.Second},
		{time.Second, time.Second, time.Second},
		{0, time.Second, time.Second}, // a hand-built Config: still a valid header
	} {
		if lo, hi := jitter(tc.d, lowest), jitter(tc.d, highest); lo != tc.lo || hi != tc.hi {
			t.Errorf("jitter(%s) spans %s..%s, want %s..%s", tc.d, lo, hi, tc.lo, tc.hi)
		}
	}
}

// Order allocates only what it returns; PickFor nothing.
func TestOrderAllocations(t *testing.T) {
	p := newTestPool(t, []string{"sip:10.0.0.1;priority=0;weight=3", "sip:10.0.0.2;priority=0", "sip:10.0.0.3"})
	if n := testing.AllocsPerRun(100, func() { p.Order("sip:alice@example.com") }); n != 1 {
		t.Errorf("Order: %v allocations", n)
	}
	buf := make([]Target, 0, 3)
	if n := testing.AllocsPerRun(100, func() { buf = p.AppendOrder(buf[:0], "sip:alice@example.com") }); n != 0 || len(buf) != 3 {
		t.Errorf("AppendOrder into a buffer: %v allocations", n)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = p.PickFor("sip:alice@example.com") }); n != 0 {
		t.Errorf("PickFor: %v allocations", n)
	}
	if n := testing.AllocsPerRun(100, func() { p.Report(p.set.Load().targets[0], true, false) }); n != 0 {
		t.Errorf("Report: %v allocations", n)
	}
}

func BenchmarkOrder(b *testing.B) {
	p := newTestPool(b, []string{"sip:10.0.0.1;priority=0;weight=3", "sip:10.0.0.2;priority=0", "sip:10.0.0.3"})
	b.ReportAllocs()
	for b.Loop() {
		p.Order("sip:alice@example.com")
	}
}

func BenchmarkAppendOrder(b *testing.B) {
	p := newTestPool(b, []string{"sip:10.0.0.1;priority=0;weight=3", "sip:10.0.0.2;priority=0", "sip:10.0.0.3"})
	b.ReportAllocs()
	buf := make([]Target, 0, 3)
	for b.Loop() {
		buf = p.AppendOrder(buf[:0], "sip:alice@example.com")
	}
}

func BenchmarkPickFor(b *testing.B) {
	p := newTestPool(b, []string{"sip:10.0.0.1;priority=0;weight=3", "sip:10.0.0.2;priority=0", "sip:10.0.0.3"})
	b.ReportAllocs()
	for b.Loop() {
		_, _ = p.PickFor("sip:alice@example.com")
	}
}
