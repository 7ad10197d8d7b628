package ratelimit

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestNewRateInvalid(t *testing.T) {
	for _, tc := range []struct {
		rate  float64
		burst int
	}{
		{0, 1}, {-1, 1}, {2e9, 1}, {math.NaN(), 1}, {math.Inf(1), 1}, {1, 0}, {1, -3},
	} {
		if r, err := NewRate(tc.rate, tc.burst); err == nil {
			t.Errorf("NewRate(%v, %d) = %v, want an error", tc.rate, tc.burst, r)
		}
	}
}

// TestRateBurstThenRefill: burst events pass at once, then one per 1/rate.
func TestRateBurstThenRefill(t *testing.T) {
	r, err := NewRate(10, 5) // one every 100ms
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	for i := range 5 {
		if !r.Allow(now) {
			t.Fatalf("event %d of the burst denied", i)
		}
	}
	if r.Allow(now) {
		t.Fatal("burst+1 allowed")
	}
	if r.Allow(now.Add(99 * time.Millisecond)) {
		t.Fatal("allowed before one interval")
	}
	if !r.Allow(now.Add(100*time.Millisecond)) || r.Allow(now.Add(100*time.Millisecond)) {
		t.Fatal("not exactly one after one interval")
	}
	// Idle long enough, it is full again, and no fuller.
	now = now.Add(time.Hour)
	n := 0
	for r.Allow(now) {
		n++
	}
	if n != 5 {
		t.Fatalf("after an hour idle: %d passed, want 5", n)
	}
}

// TestRateConcurrent: goroutines sharing a Rate at one instant get exactly
// its burst between them.
func TestRateConcurrent(t *testing.T) {
	const burst = 1000
	r, err := NewRate(1, burst)
	if err != nil {
		t.Fatal(err)
	}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				if r.Allow(t0) {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := allowed.Load(); n != burst {
		t.Fatalf("%d allowed, want %d", n, burst)
	}
}

func TestRateAllocs(t *testing.T) {
	r, err := NewRate(1e6, 10)
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	if a := testing.AllocsPerRun(1000, func() { now = now.Add(time.Microsecond); r.Allow(now) }); a != 0 {
		t.Fatalf("Allow: %.1f allocs", a)
	}
}

// gap is the ns to the next event for a budget of rate and burst: mostly
// faster than the rate (mean 0.6 of its interval, so the bucket drains and
// then hovers near empty), with a pause of up to twice the burst's refill
// time every 5*burst events on average.
func gap(rnd *rand.Rand, rate, burst float64) int64 {
	unit := float64(time.Second) / rate
	if rnd.Float64() < 1/(5*burst) {
		return rnd.Int64N(int64(2 * burst * unit))
	}
	return rnd.Int64N(int64(1.2 * unit))
}

// TestGCRAMatchesXTimeRate drives a GCRA bucket and an x/time/rate
// Limiter of the same rate and burst with the same random, monotonic
// event times and requires the same decision for every event. Rates are
// chosen so that one unit is a whole number of nanoseconds at the factor
// used: the bucket's arithmetic is then exact, and the Limiter's float
// token count errs far below a nanosecond, so only an event falling
// exactly on a refill instant could tell them apart.
func TestGCRAMatchesXTimeRate(t *testing.T) {
	for i, tc := range []struct {
		rate  float64
		burst int
		f     float64 // the Limiter gets rate*f and burst*f
	}{
		{20, 100, 1}, // request_rate
		{5, 20, 1},   // method_rate, OPTIONS
		{2, 10, 1},   // INVITE
		{1, 20, 1},   // register_rate
		{1, 1, 1},
		{50, 200, 1}, // packet_rate
		{8, 3, 1},
		{20, 100, 2}, // one binding
		{20, 100, 4},
		{5, 20, 8},
	} {
		b := newBucket(tc.rate, tc.burst)
		lim := rate.NewLimiter(rate.Limit(tc.rate*tc.f), int(float64(tc.burst)*tc.f))
		rnd := rand.New(rand.NewPCG(42, uint64(i)))
		var tat, now int64
		var allowed, denied int
		for n := range 200_000 {
			now += gap(rnd, tc.rate*tc.f, float64(tc.burst)*tc.f)
			got := b.take(&tat, now, 1, tc.f)
			want := lim.AllowN(t0.Add(time.Duration(now)), 1)
			if got != want {
				t.Fatalf("rate %g burst %d factor %g, event %d at %dns: GCRA %v, x/time/rate %v",
					tc.rate, tc.burst, tc.f, n, now, got, want)
			}
			if got {
				allowed++
			} else {
				denied++
			}
		}
		// Both outcomes must be common, or the comparison proves little.
		if allowed < 10_000 || denied < 10_000 {
			t.Errorf("rate %g burst %d factor %g: %d allowed, %d denied", tc.rate, tc.burst, tc.f, allowed, denied)
		}
	}
}

// TestLimiterMatchesXTimeRate: the same, end to end: a source's parsed
// requests against request_rate/request_burst, at factor 1 and with
// bindings.
func TestLimiterMatchesXTimeRate(t *testing.T) {
	for _, bindings := range []int{0, 2, 6} {
		l, c := newLimiter(t, func(c *Config) {
			c.MethodRate, c.MethodBurst = 1e6, 1e6
			c.ReplyRate, c.ReplyBurst = 1e6, 1e6
			c.FloodWindow = 1000 * time.Hour
		}, Events{})
		src := addr("192.0.2.1")
		l.SetBindings(src, bindings)
		f := 1 + 0.5*float64(bindings)
		cfg := DefaultConfig()
		lim := rate.NewLimiter(rate.Limit(cfg.RequestRate*f), int(float64(cfg.RequestBurst)*f))
		rnd := rand.New(rand.NewPCG(7, uint64(bindings)))
		var allowed, denied int
		for n := range 50_000 {
			c.Advance(time.Duration(gap(rnd, cfg.RequestRate*f, float64(cfg.RequestBurst)*f)))
			d, r := l.Request(src, "MESSAGE", "", "", true)
			want := lim.AllowN(c.Now(), 1)
			if got := d == Allow; got != want {
				t.Fatalf("bindings %d, request %d: %v %v, x/time/rate %v", bindings, n, d, r, want)
			}
			if d == Allow {
				allowed++
			} else {
				denied++
			}
		}
		if allowed < 2_500 || denied < 2_500 {
			t.Errorf("bindings %d: %d allowed, %d denied", bindings, allowed, denied)
		}
	}
}
