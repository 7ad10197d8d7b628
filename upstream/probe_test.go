package upstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// fakeTicker hands Probe a channel the test ticks by hand, and records
// the tickers made and stopped.
type fakeTicker struct {
	c       chan time.Time
	made    chan time.Duration
	stopped chan time.Duration
}

func newFakeTicker() *fakeTicker {
	return &fakeTicker{c: make(chan time.Time), made: make(chan time.Duration, 8), stopped: make(chan time.Duration, 8)}
}

func (f *fakeTicker) new(d time.Duration) (<-chan time.Time, func()) {
	f.made <- d
	return f.c, func() { f.stopped <- d }
}

// fakeCores answers probes as each core is set to behave.
type fakeCores struct {
	mu      sync.Mutex
	how     map[string]string // address → "alive", "dead", "busy", "hang"
	started chan string       // a "hang" probe has begun
}

func (f *fakeCores) set(addr, how string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.how[addr] = how
}

func (f *fakeCores) probe(ctx context.Context, t Target) (int, error) {
	f.mu.Lock()
	how := f.how[t.Addr.Addr().String()]
	f.mu.Unlock()
	switch how {
	case "alive":
		return 200, nil
	case "busy":
		return 503, nil
	case "hang":
		f.started <- t.Addr.Addr().String()
		<-ctx.Done()
		return 0, ctx.Err()
	}
	return 0, errors.New("connection refused")
}

// The loop probes on each tick and its results move the states, with
// an event for every change.
func TestProbeLoop(t *testing.T) {
	defer goleak.VerifyNone(t)
	var ev events
	ticks := newFakeTicker()
	cfg := DefaultConfig()
	cfg.Upstreams = []string{"sip:10.0.0.1", "sip:10.0.0.2", "sip:10.0.0.3"}
	p, err := NewPool(cfg, WithOnChange(ev.record), WithTicker(ticks.new))
	if err != nil {
		t.Fatal(err)
	}
	rounds := make(chan struct{}, 1)
	p.afterRound = func() { rounds <- struct{}{} }
	cores := &fakeCores{how: map[string]string{"10.0.0.1": "alive", "10.0.0.2": "dead", "10.0.0.3": "busy"}, started: make(chan string, 3)}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Probe(ctx, cores.probe)
	}()
	if d := <-ticks.made; d != 5*time.Second {
		t.Fatalf("ticker every %s, want health_interval", d)
	}
	round := func(want ...string) {
		t.Helper()
		ticks.c <- time.Time{}
		<-rounds
		got := ev.take()
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("events %q, want %q", got, want)
		}
	}
	states := func(want ...State) {
		t.Helper()
		for i, tg := range p.Targets() {
			if got := stateOf(t, p, tg); got != want[i] {
				t.Fatalf("%s is %s, want %s", tg, got, want[i])
			}
		}
	}
	states(StateUp, StateUp, StateUp) // optimistic before any probe
	round("10.0.0.3 overloaded")
	states(StateUp, StateUp, StateOverloaded)
	round("10.0.0.2 down")
	states(StateUp, StateDown, StateOverloaded)
	cores.set("10.0.0.2", "alive")
	cores.set("10.0.0.3", "alive")
	round("10.0.0.3 up")
	round("10.0.0.2 up")
	states(StateUp, StateUp, StateUp)

	// A new interval gets a new ticker; the same one keeps its ticker.
	cfg.HealthInterval = 10 * time.Second
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if d := <-ticks.stopped; d != 5*time.Second {
		t.Fatalf("stopped the %s ticker", d)
	}
	if d := <-ticks.made; d != 10*time.Second {
		t.Fatalf("new ticker every %s", d)
	}
	cfg.Trusted = []string{"192.0.2.0/24"}
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	round()
	round() // the loop has looked at the new set before taking this tick
	if len(ticks.made) != 0 || len(ticks.stopped) != 0 {
		t.Fatal("a reload with the same interval restarted the ticker")
	}

	// 0 stops probing until a reload sets an interval again.
	cfg.HealthInterval = 0
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if d := <-ticks.stopped; d != 10*time.Second {
		t.Fatalf("stopped the %s ticker", d)
	}
	cfg.HealthInterval = 5 * time.Second
	cfg.DownAfter = 1
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if d := <-ticks.made; d != 5*time.Second {
		t.Fatalf("new ticker every %s", d)
	}

	// Shutting down mid-round reports nothing, even with down_after 1.
	cores.set("10.0.0.1", "hang")
	ticks.c <- time.Time{}
	<-cores.started
	cancel()
	<-done
	states(StateUp, StateUp, StateUp)
	if got := ev.take(); len(got) != 0 {
		t.Fatalf("events while leaving: %q", got)
	}
}

// A probe gets health_timeout; an answer after it is no answer.
func TestProbeOnceTimeout(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Upstreams = []string{"sip:10.0.0.1", "sip:10.0.0.2"}
	cfg.HealthTimeout = time.Millisecond // NewPool does not validate; keeps the test fast
	cfg.DownAfter = 1
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.ProbeOnce(context.Background(), func(ctx context.Context, tg Target) (int, error) {
		<-ctx.Done()
		if tg.Addr.Addr().String() == "10.0.0.1" {
			return 200, nil // too late
		}
		return 0, ctx.Err()
	})
	for _, tg := range p.Targets() {
		if got := stateOf(t, p, tg); got != StateDown {
			t.Errorf("%s is %s after timing out", tg, got)
		}
	}
}

// Probes run at once, at most maxProbes of them.
func TestProbeOnceBounded(t *testing.T) {
	var ups []string
	for i := range 40 {
		ups = append(ups, fmt.Sprintf("sip:10.0.1.%d", i+1))
	}
	p := newTestPool(t, ups)
	var inflight, most, calls atomic.Int32
	full := make(chan struct{})
	var once sync.Once
	p.ProbeOnce(context.Background(), func(ctx context.Context, tg Target) (int, error) {
		calls.Add(1)
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		if n == maxProbes {
			once.Do(func() { close(full) })
		}
		select {
		case <-full: // every slot was taken at once
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		return 200, nil
	})
	if calls.Load() != 40 || most.Load() != maxProbes {
		t.Fatalf("%d probes, at most %d at once; want 40, %d", calls.Load(), most.Load(), maxProbes)
	}
	for _, tg := range p.Targets() {
		if got := stateOf(t, p, tg); got != StateUp {
			t.Fatalf("%s is %s", tg, got)
		}
	}
}
