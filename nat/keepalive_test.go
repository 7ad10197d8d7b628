package nat

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type pingCall struct {
	k    FlowKey
	mode KeepaliveMode
	at   time.Time
}

// fakePinger records pings; fail, if set, decides each one's result.
type fakePinger struct {
	clk     *fakeClock
	fail    func(FlowKey) error
	failCtx func(context.Context, FlowKey) error // like fail, seeing the ping's context

	mu    sync.Mutex
	calls []pingCall
}

func (p *fakePinger) Ping(ctx context.Context, k FlowKey, mode KeepaliveMode) error {
	p.mu.Lock()
	p.calls = append(p.calls, pingCall{k, mode, p.clk.Now()})
	p.mu.Unlock()
	if p.fail != nil {
		return p.fail(k)
	}
	if p.failCtx != nil {
		return p.failCtx(ctx, k)
	}
	return nil
}

// take returns and forgets the pings so far.
func (p *fakePinger) take() []pingCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.calls
	p.calls = nil
	return c
}

type kaHarness struct {
	clk    *fakeClock
	rec    *deadRecorder
	flows  *FlowTable
	p      *fakePinger
	pinger Pinger // what the current ka pings with
	ka     *Keepaliver
	t0     time.Time
}

func newKA(t *testing.T, mutate func(*KeepaliveConfig)) *kaHarness {
	t.Helper()
	cfg := DefaultKeepaliveConfig()
	cfg.Mode = KeepaliveCRLF // the harness's tests are CRLF unless they say
	if mutate != nil {
		mutate(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h := &kaHarness{clk: newFakeClock(), rec: &deadRecorder{}}
	h.t0 = h.clk.Now()
	h.flows = newFlowTable(t, 1_000_000, h.clk.Now, FlowEvents{OnDead: h.rec.OnDead})
	h.p = &fakePinger{clk: h.clk}
	h.ka = h.keepaliver(t, cfg, h.p, rand.New(rand.NewPCG(1, 2)))
	return h
}

// keepaliver returns a Keepaliver on the harness's flows and clock that
// pings with p, capped at cfg.MaxPerSecond as the edge caps it.
func (h *kaHarness) keepaliver(t testing.TB, cfg KeepaliveConfig, p Pinger, rnd *rand.Rand) *Keepaliver {
	t.Helper()
	h.pinger = p
	return newKeepaliver(t, cfg, KeepaliverDeps{Flows: h.flows, Now: h.clk.Now, Rand: rnd, Cap: newTestCap(cfg.MaxPerSecond)})
}

// newKeepaliver is NewKeepaliver for arguments that must be valid.
func newKeepaliver(t testing.TB, cfg KeepaliveConfig, d KeepaliverDeps) *Keepaliver {
	t.Helper()
	ka, err := NewKeepaliver(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	return ka
}

// testCap is a GCRA like ratelimit.Rate's: n pings a second with a burst
// of n, as a token bucket of n tokens refilled at n a second allows.
type testCap struct {
	every time.Duration // between pings at the steady rate
	burst time.Duration // how far ahead of now tat may run: n × every
	tat   time.Time     // theoretical arrival time of the next ping
}

func newTestCap(n int) *testCap {
	every := time.Second / time.Duration(n)
	return &testCap{every: every, burst: every * time.Duration(n)}
}

func (c *testCap) Allow(now time.Time) bool {
	tat := c.tat
	if tat.Before(now) {
		tat = now
	}
	if tat.Add(c.every).Sub(now) > c.burst {
		return false
	}
	c.tat = tat.Add(c.every)
	return true
}

// tick moves the clock by d and runs one Tick, which must return in time.
func (h *kaHarness) tick(t *testing.T, d time.Duration) {
	t.Helper()
	h.clk.Advance(d)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	h.ka.Tick(ctx, h.pinger)
	if ctx.Err() != nil {
		t.Fatal("Tick did not return in time")
	}
}

// watch makes n registered flows: tracked and watched.
func (h *kaHarness) watch(n int) []FlowKey {
	keys := make([]FlowKey, n)
	for i := range keys {
		keys[i] = udpFlow(i)
		h.flows.Seen(keys[i])
		h.ka.Watch(keys[i])
	}
	return keys
}

func TestKeepaliveConfigDefaults(t *testing.T) {
	c := DefaultKeepaliveConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	want := KeepaliveConfig{Mode: KeepaliveAuto, Interval: 25 * time.Second, Failures: 3, MaxPerSecond: 2000, FlowTimerUDP: 25 * time.Second, FlowTimerStream: 120 * time.Second}
	if c != want {
		t.Errorf("defaults = %+v, want %+v", c, want)
	}
}

func TestKeepaliveConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		mutate func(*KeepaliveConfig)
		want   string
	}{
		{func(c *KeepaliveConfig) { c.Mode = "stun" }, `nat.keepalive: "stun" is not auto, crlf, options or off`},
		{func(c *KeepaliveConfig) { c.Mode = "" }, `nat.keepalive: "" is not`},
		{func(c *KeepaliveConfig) { c.Interval = 0 }, "nat.keepalive_interval: 0s is outside 1s..10m"},
		{func(c *KeepaliveConfig) { c.Interval = time.Hour }, "nat.keepalive_interval: 1h0m0s is outside"},
		{func(c *KeepaliveConfig) { c.Failures = 0 }, "nat.keepalive_failures: 0 is outside 1..100"},
		{func(c *KeepaliveConfig) { c.MaxPerSecond = -1 }, "nat.keepalive_rate: -1 is outside"},
		{func(c *KeepaliveConfig) { c.FlowTimerUDP = 0 }, "nat.flow_timer: 0s is outside 1s..10m"},
		{func(c *KeepaliveConfig) { c.FlowTimerUDP = 2500 * time.Millisecond }, "nat.flow_timer: 2.5s is not a whole number of seconds"},
		{func(c *KeepaliveConfig) { c.FlowTimerStream = 2 * time.Hour }, "nat.flow_timer_stream: 2h0m0s is outside"},
	} {
		c := DefaultKeepaliveConfig()
		tc.mutate(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
		}
	}
	// Every problem is reported, one per line.
	c := KeepaliveConfig{}
	err := c.Validate()
	if err == nil || strings.Count(err.Error(), "\n") != 5 {
		t.Errorf("zero config: %v, want 6 errors", err)
	}
}

func TestNewKeepaliverRejectsInvalidConfig(t *testing.T) {
	cfg := DefaultKeepaliveConfig()
	cfg.Interval = 0
	ka, err := NewKeepaliver(cfg, KeepaliverDeps{Flows: newFlowTable(t, 1, nil, FlowEvents{})})
	if ka != nil || err == nil || !strings.Contains(err.Error(), "nat.keepalive_interval") {
		t.Errorf("NewKeepaliver = %v, %v; want an error naming nat.keepalive_interval", ka, err)
	}
}

func TestNewKeepaliverRequiresDeps(t *testing.T) {
	flows := newFlowTable(t, 1, nil, FlowEvents{})
	for _, tc := range []struct {
		d    KeepaliverDeps
		want []string
	}{
		{KeepaliverDeps{}, []string{"KeepaliverDeps.Flows"}},
	} {
		ka, err := NewKeepaliver(DefaultKeepaliveConfig(), tc.d)
		if ka != nil || err == nil {
			t.Errorf("NewKeepaliver(%+v) = %v, %v; want an error", tc.d, ka, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("NewKeepaliver(%+v): %q does not name %s", tc.d, err, w)
			}
		}
	}
	// Now, Rand and Cap are optional.
	if _, err := NewKeepaliver(DefaultKeepaliveConfig(), KeepaliverDeps{Flows: flows}); err != nil {
		t.Errorf("with only the required deps: %v", err)
	}
}

func TestKeepaliveFirstPingAfterInterval(t *testing.T) {
	h := newKA(t, nil)
	k := h.watch(1)[0]
	if h.ka.Len() != 1 || !h.ka.Watching(k) {
		t.Fatal("flow not watched")
	}
	// Nothing before 0.8 intervals (20 s).
	for range 19 {
		h.tick(t, time.Second)
	}
	if c := h.p.take(); len(c) != 0 {
		t.Fatalf("pinged at %v, before 0.8 × the interval", c[0].at.Sub(h.t0))
	}
	// One ping by 25 s, in crlf mode.
	var first time.Time
	for range 6 {
		h.tick(t, time.Second)
		for _, c := range h.p.take() {
			if !first.IsZero() || c.k != k || c.mode != KeepaliveCRLF {
				t.Fatalf("unexpected ping %+v", c)
			}
			first = c.at
		}
	}
	if first.IsZero() {
		t.Fatal("no ping within 25 s")
	}
	f := mustGet(t, h.flows, k)
	if !f.LastPing.Equal(first) || f.State != FlowAlive || f.Misses != 0 {
		t.Errorf("after a crlf ping: %+v", f)
	}
	if !f.LastPong.IsZero() {
		t.Error("a crlf ping on UDP counted as answered")
	}
	// The next comes 20..25 s after the first.
	for range 26 {
		h.tick(t, time.Second)
		for _, c := range h.p.take() {
			if d := c.at.Sub(first); d < 20*time.Second || d > 25*time.Second {
				t.Errorf("second ping %v after the first", d)
			}
			first = time.Time{}
		}
	}
	if !first.IsZero() {
		t.Error("no second ping")
	}
}

func TestKeepaliveJitterSpreads(t *testing.T) {
	h := newKA(t, nil)
	h.watch(200)
	at := map[time.Duration]int{}
	for range 25 {
		h.tick(t, time.Second)
		for _, c := range h.p.take() {
			at[c.at.Sub(h.t0)]++
		}
	}
	total := 0
	for d, n := range at {
		if d < 20*time.Second || d > 25*time.Second {
			t.Errorf("%d first pings at %v", n, d)
		}
		total += n
	}
	if total != 200 {
		t.Errorf("%d first pings, want 200", total)
	}
	// Spread over 20..25 s; uniform would be 40 a second.
	if len(at) < 5 {
		t.Errorf("first pings fell on %d distinct seconds (%v), want 5", len(at), at)
	}
	for d, n := range at {
		if n > 80 {
			t.Errorf("%d of 200 pings at %v", n, d)
		}
	}
}

func TestKeepaliveOptionsDead(t *testing.T) {
	h := newKA(t, func(c *KeepaliveConfig) { c.Mode = KeepaliveOptions; c.Failures = 3 })
	keys := h.watch(2)
	bad, good := keys[0], keys[1]
	h.p.fail = func(k FlowKey) error {
		if k == bad {
			return errors.New("408 timeout")
		}
		return nil
	}
	pings := map[FlowKey]int{}
	for range 3 * 25 {
		h.tick(t, time.Second)
		for _, c := range h.p.take() {
			if c.mode != KeepaliveOptions {
				t.Errorf("ping mode %q", c.mode)
			}
			pings[c.k]++
			if c.k == bad && pings[bad] < 3 {
				if f := mustGet(t, h.flows, bad); f.State != FlowSuspect || f.Misses != pings[bad] {
					t.Errorf("after %d failed pings: %v, %d misses", pings[bad], f.State, f.Misses)
				}
			}
		}
	}
	if pings[bad] != 3 {
		t.Errorf("%d pings to the failing flow, want 3", pings[bad])
	}
	if ev := h.rec.take(); len(ev) != 1 || ev[0] != (deadEvent{bad, "keepalive"}) {
		t.Fatalf("OnDead events %v", ev)
	}
	if h.flows.Alive(bad) || h.ka.Watching(bad) {
		t.Error("the dead flow is alive or still watched")
	}
	if f := mustGet(t, h.flows, good); f.State != FlowAlive || f.LastPong.IsZero() || pings[good] < 3 {
		t.Errorf("answering flow after %d pings: %+v", pings[good], f)
	}
	// No more pings to the dead flow.
	for range 50 {
		h.tick(t, time.Second)
		for _, c := range h.p.take() {
			if c.k == bad {
				t.Fatal("pinged a dead flow")
			}
		}
	}
}

// rttPinger answers after the clock moved on by rtt.
type rttPinger struct {
	clk *fakeClock
	rtt time.Duration
	n   atomic.Int32
}

func (p *rttPinger) Ping(context.Context, FlowKey, KeepaliveMode) error {
	p.n.Add(1)
	p.clk.Advance(p.rtt)
	return nil
}

func TestKeepaliveOptionsRTT(t *testing.T) {
	h := newKA(t, func(c *KeepaliveConfig) { c.Mode = KeepaliveOptions })
	p := &rttPinger{clk: h.clk, rtt: 35 * time.Millisecond}
	h.ka = h.keepaliver(t, h.ka.cfg, p, rand.New(rand.NewPCG(1, 2)))
	k := h.watch(1)[0]
	h.flows.Missed(k, 3)
	for range 25 {
		h.tick(t, time.Second)
	}
	if p.n.Load() != 1 {
		t.Fatalf("%d pings, want 1", p.n.Load())
	}
	if f := mustGet(t, h.flows, k); f.RTT != 35*time.Millisecond || f.State != FlowAlive || f.Misses != 0 {
		t.Errorf("after an answered OPTIONS: %+v", f)
	}
}

func TestKeepaliveTrafficPostpones(t *testing.T) {
	h := newKA(t, nil)
	k := h.watch(1)[0]
	for range 10 {
		h.tick(t, time.Second)
	}
	h.flows.Seen(k) // inbound traffic at 10 s
	for range 19 {  // up to 29 s: the ping would have been due by 25 s
		h.tick(t, time.Second)
	}
	if c := h.p.take(); len(c) != 0 {
		t.Fatalf("pinged at %v despite traffic at 10s", c[0].at.Sub(h.t0))
	}
	for range 6 { // 30..35 s: 20..25 s after the traffic
		h.tick(t, time.Second)
	}
	if c := h.p.take(); len(c) != 1 {
		t.Fatalf("%d pings 20..25 s after the traffic, want 1", len(c))
	}
}

func TestKeepaliveAnswerDoesNotPostpone(t *testing.T) {
	// The response to an OPTIONS ping is inbound traffic too; it must not
	// push the next ping out.
	h := newKA(t, func(c *KeepaliveConfig) { c.Mode = KeepaliveOptions })
	h.p.fail = func(k FlowKey) error {
		h.clk.Advance(10 * time.Millisecond)
		h.flows.Seen(k) // the 200 arrives
		return nil
	}
	h.watch(1)
	var last time.Time
	n := 0
	for range 300 {
		h.tick(t, time.Second)
		for _, c := range h.p.take() {
			if !last.IsZero() {
				if gap := c.at.Sub(last); gap > 26*time.Second {
					t.Errorf("ping %v after the previous one, whose answer pushed it out", gap)
				}
			}
			last = c.at
			n++
		}
	}
	if n < 12 {
		t.Errorf("%d pings in 300 s, want 12 or more", n)
	}
}

func TestKeepaliveRateCap(t *testing.T) {
	h := newKA(t, func(c *KeepaliveConfig) { c.MaxPerSecond = 10 })
	h.watch(35)
	h.clk.Advance(25 * time.Second) // all due
	count := map[FlowKey]int{}
	for i, want := range []int{10, 10, 10, 5, 0} {
		h.tick(t, time.Second)
		got := h.p.take()
		if len(got) != want {
			t.Errorf("tick %d: %d pings, want %d", i, len(got), want)
		}
		for _, c := range got {
			count[c.k]++
		}
	}
	if len(count) != 35 {
		t.Errorf("%d flows pinged, want 35", len(count))
	}
	for k, n := range count {
		if n != 1 {
			t.Errorf("%v pinged %d times", k, n)
		}
	}
	// The budget refills with time, not per tick: after a full
	// bucket's burst, ticks 100 ms apart get one ping each.
	h.clk.Advance(30 * time.Second)
	for i, want := range []int{10, 1, 1, 1, 1, 1, 1, 1, 1, 1} {
		h.tick(t, 100*time.Millisecond)
		if got := len(h.p.take()); got != want {
			t.Errorf("tick %d at 100 ms: %d pings, want %d", i, got, want)
		}
	}
}

func TestKeepaliveUnwatch(t *testing.T) {
	h := newKA(t, nil)
	keys := h.watch(3)
	h.ka.Unwatch(keys[1])
	h.ka.Unwatch(keys[1]) // twice is harmless
	h.ka.Unwatch(udpFlow(99))
	if h.ka.Len() != 2 || h.ka.Watching(keys[1]) {
		t.Fatalf("Len() = %d after Unwatch", h.ka.Len())
	}
	for range 60 {
		h.tick(t, time.Second)
		for _, c := range h.p.take() {
			if c.k == keys[1] {
				t.Fatal("pinged an unwatched flow")
			}
		}
	}
}

func TestKeepaliveWatchIdempotent(t *testing.T) {
	h := newKA(t, nil)
	k := h.watch(1)[0]
	n := 0
	for range 50 {
		h.ka.Watch(k) // every second: must not reschedule
		h.tick(t, time.Second)
		n += len(h.p.take())
	}
	if h.ka.Len() != 1 || n != 2 {
		t.Errorf("Len() = %d, %d pings in 50 s; want 1 and 2", h.ka.Len(), n)
	}
}

func TestKeepaliveOff(t *testing.T) {
	h := newKA(t, func(c *KeepaliveConfig) { c.Mode = KeepaliveOff })
	h.watch(10)
	if h.ka.Len() != 0 {
		t.Errorf("mode off watches %d flows", h.ka.Len())
	}
	for range 60 {
		h.tick(t, time.Second)
	}
	if c := h.p.take(); len(c) != 0 {
		t.Errorf("mode off sent %d pings", len(c))
	}
}

func TestKeepaliveUntrackedFlow(t *testing.T) {
	// A watched flow the table does not track (it was full) is still
	// pinged: the NAT binding needs it all the same.
	h := newKA(t, func(c *KeepaliveConfig) { c.Mode = KeepaliveOptions })
	h.p.fail = func(FlowKey) error { return errors.New("timeout") }
	h.ka.Watch(udpFlow(1))
	for range 100 {
		h.tick(t, time.Second)
	}
	if n := len(h.p.take()); n < 4 {
		t.Errorf("%d pings in 100 s", n)
	}
	if h.flows.Len() != 0 {
		t.Error("pinging created a flow")
	}
}

// blockingPinger counts concurrent pings: each waits until release is
// closed or ctx ends, and the one that brings the count to want closes
// release.
type blockingPinger struct {
	want     int32
	inflight atomic.Int32
	peak     atomic.Int32
	total    atomic.Int32
	once     sync.Once
	release  chan struct{}
	first    sync.Once
	started  chan struct{} // closed by the first ping
}

func newBlockingPinger(want int32) *blockingPinger {
	return &blockingPinger{want: want, release: make(chan struct{}), started: make(chan struct{})}
}

func (p *blockingPinger) Ping(ctx context.Context, _ FlowKey, _ KeepaliveMode) error {
	p.total.Add(1)
	p.first.Do(func() { close(p.started) })
	n := p.inflight.Add(1)
	defer p.inflight.Add(-1)
	for {
		old := p.peak.Load()
		if n <= old || p.peak.CompareAndSwap(old, n) {
			break
		}
	}
	if n >= p.want {
		p.once.Do(func() { close(p.release) })
	}
	select {
	case <-p.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestKeepaliveWorkersBounded(t *testing.T) {
	// Only OPTIONS pings, which wait for an answer, run on workers.
	h := newKA(t, func(c *KeepaliveConfig) { c.Mode = KeepaliveOptions })
	p := newBlockingPinger(pingWorkers)
	h.ka = h.keepaliver(t, h.ka.cfg, p, nil)
	h.watch(3 * pingWorkers)
	h.tick(t, 25*time.Second) // fails if fewer than pingWorkers pings ever run at once
	if got := p.peak.Load(); got != pingWorkers {
		t.Errorf("%d pings ran at once, want %d", got, pingWorkers)
	}
	if got := p.total.Load(); got != 3*pingWorkers {
		t.Errorf("%d pings, want %d", got, 3*pingWorkers)
	}
}

func TestKeepaliveTickCancelled(t *testing.T) {
	h := newKA(t, func(c *KeepaliveConfig) { c.Mode = KeepaliveOptions })
	p := newBlockingPinger(1 << 30) // never released
	h.ka = h.keepaliver(t, h.ka.cfg, p, nil)
	keys := h.watch(200)
	h.clk.Advance(25 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ka.Tick(ctx, h.pinger)
	}()
	// Cancel once the first worker is blocked in Ping.
	select {
	case <-p.started:
	case <-time.After(waitTimeout):
		t.Fatal("no ping started")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("Tick did not return after its context ended")
	}
	if n := p.total.Load(); n > pingWorkers {
		t.Errorf("%d pings started after cancellation", n)
	}
	for _, k := range keys {
		if f := mustGet(t, h.flows, k); f.Misses != 0 {
			t.Fatalf("a ping cut short by shutdown counted as a miss: %+v", f)
		}
	}
}

// The edge's maintenance loop calls Tick on every tick of a ticker until
// its context ends.
func TestKeepaliveTickLoop(t *testing.T) {
	h := newKA(t, nil)
	h.watch(5)
	h.clk.Advance(25 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	tick := make(chan time.Time)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick:
				h.ka.Tick(ctx, h.pinger)
			}
		}
	}()
	send := func() {
		select {
		case tick <- time.Now():
		case <-time.After(waitTimeout):
			t.Fatal("the loop did not take a tick")
		}
	}
	send()
	send() // taken only after the first Tick returned
	if n := len(h.p.take()); n != 5 {
		t.Errorf("%d pings after a tick, want 5", n)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("the loop did not return after its context ended")
	}
}

func TestKeepaliveConcurrentUse(t *testing.T) {
	h := newKA(t, func(c *KeepaliveConfig) { c.Mode = KeepaliveOptions; c.Failures = 2 })
	h.p.fail = func(k FlowKey) error {
		if k.Remote.Port()%3 == 0 {
			return errors.New("timeout")
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				k := udpFlow(g*1000 + i%50)
				h.flows.Seen(k)
				h.ka.Watch(k)
				if i%7 == 0 {
					h.ka.Unwatch(k)
				}
			}
		})
	}
	wg.Go(func() {
		for range 100 {
			h.clk.Advance(time.Second)
			h.ka.Tick(ctx, h.pinger)
		}
	})
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("timed out")
	}
}

// BenchmarkKeepalive watches 100,000 flows and runs 25 s of 1 s ticks
// per iteration with a no-op Pinger and no rate cap. It reports the heap bytes each
// watched flow costs in the FlowTable and the Keepaliver together, and
// the CPU time (on Linux; all threads, GC included) and wall time per
// ping sent.
func BenchmarkKeepalive(b *testing.B) {
	const n = 100_000
	clk := newFakeClock()
	cfg := DefaultKeepaliveConfig()
	p := &countPinger{}
	keys := make([]FlowKey, n)
	for i := range keys {
		keys[i] = udpFlow(i)
	}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	flows := newFlowTable(b, n, clk.Now, FlowEvents{})
	ka := newKeepaliver(b, cfg, KeepaliverDeps{Flows: flows, Now: clk.Now, Rand: rand.New(rand.NewPCG(1, 2))})
	for _, k := range keys {
		flows.Seen(k)
		ka.Watch(k)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perFlow := float64(after.HeapAlloc-before.HeapAlloc) / n

	ctx := context.Background()
	cpu0, _ := cpuTime()
	b.ResetTimer()
	for b.Loop() {
		for range 25 {
			clk.Advance(time.Second)
			ka.Tick(ctx, p)
		}
	}
	pings := float64(p.n.Load())
	if cpu1, ok := cpuTime(); ok {
		b.ReportMetric(float64(cpu1-cpu0)/pings, "ns/ping") // CPU time, all threads
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/pings, "wall-ns/ping")
	b.ReportMetric(perFlow, "B/flow")
	b.ReportMetric(float64(p.n.Load())/float64(b.N), "pings/op")
	runtime.KeepAlive(flows)
	runtime.KeepAlive(ka)
}

type countPinger struct{ n atomic.Int64 }

func (p *countPinger) Ping(context.Context, FlowKey, KeepaliveMode) error {
	p.n.Add(1)
	return nil
}

// Endpoints that never answer hold up one worker each for the ping
// timeout, not the whole tick: every live flow due in the same tick is
// still pinged, and every silent one counts a miss.
func TestSilentEndpointsDoNotStarveTheTick(t *testing.T) {
	h := newKA(t, func(c *KeepaliveConfig) { c.Mode = KeepaliveOptions; c.Interval = 2 * time.Second })
	keys := h.watch(1000)
	silent := map[FlowKey]bool{}
	for _, k := range keys[:100] {
		silent[k] = true
	}
	h.p.failCtx = func(ctx context.Context, k FlowKey) error {
		if silent[k] {
			<-ctx.Done() // no answer until the ping's own deadline
			return ctx.Err()
		}
		return nil
	}
	h.tick(t, 2*time.Second)
	pinged := map[FlowKey]bool{}
	for _, c := range h.p.take() {
		pinged[c.k] = true
	}
	if len(pinged) != 1000 {
		t.Fatalf("%d of 1000 due flows pinged in one tick", len(pinged))
	}
	for _, k := range keys[:100] {
		if f := mustGet(t, h.flows, k); f.Misses != 1 {
			t.Fatalf("silent flow: %d misses, want 1", f.Misses)
		}
	}
}

// A CRLF tick sends its pings inline: no goroutine, no per-ping context,
// nothing allocated once the batch has grown to its largest.
func TestKeepaliveCRLFTickAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	h := newKA(t, nil)
	p := &countPinger{}
	h.ka = h.keepaliver(t, h.ka.cfg, p, rand.New(rand.NewPCG(1, 2)))
	h.watch(1000)
	h.tick(t, 25*time.Second) // every flow due at once: the largest batch
	if n := p.n.Load(); n != 1000 {
		t.Fatalf("%d pings in the first tick, want 1000", n)
	}
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		h.clk.Advance(time.Second)
		h.ka.Tick(ctx, h.pinger)
	})
	// 101 s of ticks ping every flow at least 4 more times.
	if n := p.n.Load(); n < 5000 {
		t.Fatalf("%d pings in all, want at least 5000", n)
	}
	if allocs != 0 {
		t.Errorf("a CRLF tick allocates %v times", allocs)
	}
}

// gateCap allows pings while open and counts how often it is asked.
type gateCap struct {
	open  bool
	asked int
}

func (c *gateCap) Allow(time.Time) bool {
	c.asked++
	return c.open
}

// A ping the cap holds back stays due and is not recorded as sent; the
// cap is asked only for pings about to leave, not for flows that traffic
// postponed.
func TestKeepaliveCapHoldsPingsDue(t *testing.T) {
	h := newKA(t, nil)
	gate := &gateCap{}
	h.ka = newKeepaliver(t, h.ka.cfg, KeepaliverDeps{Flows: h.flows, Now: h.clk.Now, Rand: rand.New(rand.NewPCG(1, 2)), Cap: gate})
	keys := h.watch(5)
	h.clk.Advance(10 * time.Second)
	h.flows.Touch(keys[0]) // traffic at 10 s postpones these two to 30..35 s
	h.flows.Touch(keys[1])
	h.tick(t, 15*time.Second) // 25 s: the other three are due
	if c := h.p.take(); len(c) != 0 {
		t.Fatalf("%d pings past a closed cap", len(c))
	}
	if gate.asked != 1 {
		t.Errorf("cap asked %d times, want 1", gate.asked)
	}
	for _, k := range keys {
		if f := mustGet(t, h.flows, k); !f.LastPing.IsZero() {
			t.Errorf("%v: a ping the cap held back was recorded as sent", k)
		}
	}
	gate.open = true
	h.tick(t, time.Second)
	got := h.p.take()
	if len(got) != 3 || gate.asked != 4 {
		t.Fatalf("%d pings once the cap opened, cap asked %d times; want 3 and 4", len(got), gate.asked)
	}
	for _, c := range got {
		if c.k == keys[0] || c.k == keys[1] {
			t.Errorf("pinged %v despite its traffic", c.k)
		}
		if f := mustGet(t, h.flows, c.k); !f.LastPing.Equal(c.at) {
			t.Errorf("%v: LastPing %v, want %v", c.k, f.LastPing, c.at)
		}
	}
}

// Without a Cap nothing bounds the pings: MaxPerSecond is what the caller
// builds a Cap from, not a limit of the Keepaliver's own.
func TestKeepaliveNoCap(t *testing.T) {
	h := newKA(t, func(c *KeepaliveConfig) { c.MaxPerSecond = 10 })
	h.ka = newKeepaliver(t, h.ka.cfg, KeepaliverDeps{Flows: h.flows, Now: h.clk.Now})
	h.watch(35)
	h.tick(t, 25*time.Second)
	if n := len(h.p.take()); n != 35 {
		t.Errorf("%d pings without a cap, want 35", n)
	}
}

// CRLF pings go out one after another with the tick's context: once it
// ends no more leave, and the one it cut short is no miss.
func TestKeepaliveCRLFStopsWithTick(t *testing.T) {
	h := newKA(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.p.failCtx = func(pctx context.Context, _ FlowKey) error {
		if pctx != ctx {
			t.Error("a CRLF ping got a context other than the tick's")
		}
		cancel() // shutdown while the first ping is on its way
		return errors.New("use of closed network connection")
	}
	keys := h.watch(10)
	h.clk.Advance(25 * time.Second)
	h.ka.Tick(ctx, h.pinger)
	if n := len(h.p.take()); n != 1 {
		t.Errorf("%d pings, want 1: none after the tick's context ended", n)
	}
	for _, k := range keys {
		if f := mustGet(t, h.flows, k); f.Misses != 0 {
			t.Fatalf("a ping cut short by shutdown counted as a miss: %+v", f)
		}
	}
}

// Restored flows are pinged soon, spread over the window, not all at
// once and not an interval later.
func TestKeepaliveWatchSoonSpreads(t *testing.T) {
	h := newKA(t, nil)
	for i := range 200 {
		k := udpFlow(i)
		h.flows.Adopt(k, h.t0.Add(-time.Hour))
		h.ka.WatchSoon(k, 5*time.Second)
	}
	at := map[time.Duration]int{}
	for range 5 {
		h.tick(t, time.Second)
		for _, c := range h.p.take() {
			at[c.at.Sub(h.t0)]++
		}
	}
	total := 0
	for d, n := range at {
		if n > 80 {
			t.Errorf("%d of 200 first pings at %v", n, d)
		}
		total += n
	}
	if total != 200 || len(at) < 4 {
		t.Errorf("first pings within 5 s: %d on %d distinct seconds (%v), want 200 on 4 or more", total, len(at), at)
	}
}

// A reload's new interval applies from the next ping; off forgets the
// watched flows, and an invalid config changes nothing.
func TestKeepaliveSetConfig(t *testing.T) {
	h := newKA(t, nil)
	keys := h.watch(50)
	for range 25 {
		h.tick(t, time.Second)
	}
	if n := len(h.p.take()); n != 50 {
		t.Fatalf("%d first pings, want 50", n)
	}
	cfg := DefaultKeepaliveConfig()
	cfg.Interval = 5 * time.Second
	if err := h.ka.SetConfig(cfg, nil); err != nil {
		t.Fatal(err)
	}
	// Pings already due at 25 s go then; after those, every 4-5 s.
	for range 25 {
		h.tick(t, time.Second)
	}
	if n := len(h.p.take()); n < 200 {
		t.Errorf("%d pings in 25 s after the interval went to 5 s, want over 200", n)
	}
	bad := cfg
	bad.Interval = 0
	if err := h.ka.SetConfig(bad, nil); err == nil {
		t.Error("invalid config accepted")
	}
	cfg.Mode = KeepaliveOff
	h.ka.SetConfig(cfg, nil)
	if h.ka.Watching(keys[0]) {
		t.Error("still watching with keepalives off")
	}
	for range 10 {
		h.tick(t, time.Second)
	}
	if n := len(h.p.take()); n != 0 {
		t.Errorf("%d pings with keepalives off", n)
	}
}

// Auto mode: a flow whose endpoint answers OPTIONS keeps getting them and
// dies after Failures misses in a row; one that never answers falls back
// to CRLF after autoProbes tries, never counted as misses, and is not
// killed for its silence.
func TestKeepaliveAuto(t *testing.T) {
	h := newKA(t, func(c *KeepaliveConfig) { c.Mode = KeepaliveAuto; c.Failures = 3 })
	keys := h.watch(2)
	answers, silent := keys[0], keys[1]
	dead := false
	modes := map[FlowKey][]KeepaliveMode{}
	h.pinger = pingFunc(func(k FlowKey, mode KeepaliveMode) error {
		modes[k] = append(modes[k], mode) // pings of one flow never overlap
		if mode == KeepaliveOptions && (k == silent || dead && k == answers) {
			return errors.New("408 timeout") // a CRLF is sent fine; nothing answers it
		}
		return nil
	})
	for range 6 * 25 {
		h.tick(t, time.Second)
	}
	if m := modes[silent]; len(m) < 5 || m[0] != KeepaliveOptions || m[1] != KeepaliveOptions || m[2] != KeepaliveCRLF || m[len(m)-1] != KeepaliveCRLF {
		t.Errorf("silent flow's pings: %v, want two OPTIONS then CRLF", m)
	}
	for _, m := range modes[answers] {
		if m != KeepaliveOptions {
			t.Fatalf("answering flow got %q", m)
		}
	}
	if f := mustGet(t, h.flows, silent); f.Keepalive != KeepaliveCRLF || f.State == FlowDead {
		t.Errorf("silent flow: %+v, want alive on CRLF", f)
	}
	if f := mustGet(t, h.flows, answers); f.Keepalive != KeepaliveOptions || f.LastPong.IsZero() {
		t.Errorf("answering flow: %+v, want OPTIONS answered", f)
	}
	if ev := h.rec.take(); len(ev) != 0 {
		t.Fatalf("flows died: %v", ev)
	}
	// The endpoint that answered goes away: three misses and it is dead.
	dead = true
	for range 4 * 25 {
		h.tick(t, time.Second)
	}
	if ev := h.rec.take(); len(ev) != 1 || ev[0] != (deadEvent{answers, "keepalive"}) {
		t.Fatalf("OnDead events %v, want the flow that stopped answering", ev)
	}
	if !h.ka.Watching(silent) {
		t.Error("the CRLF flow is no longer watched")
	}
}

// funcPinger is a Pinger made of a function, called one ping at a time
// (OPTIONS pings come from several goroutines).
type funcPinger struct {
	mu sync.Mutex
	f  func(FlowKey, KeepaliveMode) error
}

func pingFunc(f func(FlowKey, KeepaliveMode) error) *funcPinger { return &funcPinger{f: f} }

func (p *funcPinger) Ping(_ context.Context, k FlowKey, mode KeepaliveMode) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.f(k, mode)
}
