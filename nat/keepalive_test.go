package nat

import (
	"context"
	"errors"
	"fmt"
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
	clk   *fakeClock
	rec   *deadRecorder
	flows *FlowTable
	p     *fakePinger
	ka    *Keepaliver
	t0    time.Time
}

func newKA(t *testing.T, mutate func(*KeepaliveConfig)) *kaHarness {
	t.Helper()
	cfg := DefaultKeepaliveConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h := &kaHarness{clk: newFakeClock(), rec: &deadRecorder{}}
	h.t0 = h.clk.Now()
	h.flows = NewFlowTable(1_000_000, h.clk.Now, FlowEvents{OnDead: h.rec.OnDead})
	h.p = &fakePinger{clk: h.clk}
	h.ka = NewKeepaliver(cfg, h.flows, h.p, h.clk.Now, rand.New(rand.NewPCG(1, 2)))
	return h
}

// tick moves the clock by d and runs one Tick, which must return in time.
func (h *kaHarness) tick(t *testing.T, d time.Duration) {
	t.Helper()
	h.clk.Advance(d)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	h.ka.Tick(ctx)
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
	want := KeepaliveConfig{Mode: KeepaliveCRLF, Interval: 25 * time.Second, Failures: 3, MaxPerSecond: 2000, FlowTimerUDP: 25 * time.Second, FlowTimerStream: 120 * time.Second}
	if c != want {
		t.Errorf("defaults = %+v, want %+v", c, want)
	}
}

func TestKeepaliveConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		mutate func(*KeepaliveConfig)
		want   string
	}{
		{func(c *KeepaliveConfig) { c.Mode = "stun" }, `nat.keepalive: "stun" is not crlf, options or off`},
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

func TestNewKeepaliverPanicsOnInvalidConfig(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "nat.keepalive_interval") {
			t.Errorf("recovered %v, want a panic naming nat.keepalive_interval", r)
		}
	}()
	cfg := DefaultKeepaliveConfig()
	cfg.Interval = 0
	NewKeepaliver(cfg, NewFlowTable(1, nil, FlowEvents{}), &countPinger{}, nil, nil)
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
	h.ka = NewKeepaliver(h.ka.cfg, h.flows, p, h.clk.Now, rand.New(rand.NewPCG(1, 2)))
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
	h := newKA(t, nil)
	p := newBlockingPinger(pingWorkers)
	h.ka = NewKeepaliver(h.ka.cfg, h.flows, p, h.clk.Now, nil)
	h.watch(3 * pingWorkers)
	h.tick(t, 25*time.Second) // fails if fewer than 64 pings ever run at once
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
	h.ka = NewKeepaliver(h.ka.cfg, h.flows, p, h.clk.Now, nil)
	keys := h.watch(200)
	h.clk.Advance(25 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ka.Tick(ctx)
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

func TestKeepaliveRun(t *testing.T) {
	h := newKA(t, nil)
	h.watch(5)
	h.clk.Advance(25 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	tick := make(chan time.Time)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ka.Run(ctx, tick)
	}()
	send := func() {
		select {
		case tick <- time.Now():
		case <-time.After(waitTimeout):
			t.Fatal("Run did not take a tick")
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
		t.Fatal("Run did not return after its context ended")
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
			h.ka.Tick(ctx)
		}
	})
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("timed out")
	}
}

// BenchmarkKeepalive watches 100,000 flows and runs 25 s of 1 s ticks
// per iteration with a no-op Pinger. It reports the heap bytes each
// watched flow costs in the FlowTable and the Keepaliver together, and
// the CPU time (on Linux; all threads, GC included) and wall time per
// ping sent.
func BenchmarkKeepalive(b *testing.B) {
	const n = 100_000
	clk := newFakeClock()
	cfg := DefaultKeepaliveConfig()
	cfg.MaxPerSecond = 1_000_000 // measure the pings, not the cap
	p := &countPinger{}
	keys := make([]FlowKey, n)
	for i := range keys {
		keys[i] = udpFlow(i)
	}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	flows := NewFlowTable(n, clk.Now, FlowEvents{})
	ka := NewKeepaliver(cfg, flows, p, clk.Now, rand.New(rand.NewPCG(1, 2)))
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
			ka.Tick(ctx)
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
