package nat

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is an injected clock that only moves when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// udpFlow returns a distinct UDP flow key for each n.
func udpFlow(n int) FlowKey {
	return FlowKey{
		Transport: UDP,
		Local:     netip.MustParseAddrPort("192.0.2.1:5060"),
		Remote:    netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}), uint16(1024+n%60000)),
	}
}

type deadEvent struct {
	k   FlowKey
	why string
}

// deadRecorder collects OnDead events.
type deadRecorder struct {
	mu     sync.Mutex
	events []deadEvent
}

func (r *deadRecorder) OnDead(k FlowKey, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, deadEvent{k, why})
}

func (r *deadRecorder) take() []deadEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.events
	r.events = nil
	return e
}

// newFlowTable is NewFlowTable for arguments that must be valid.
func newFlowTable(tb testing.TB, max int, now func() time.Time, ev FlowEvents) *FlowTable {
	tb.Helper()
	ft, err := NewFlowTable(max, now, ev)
	if err != nil {
		tb.Fatal(err)
	}
	return ft
}

func mustGet(t *testing.T, ft *FlowTable, k FlowKey) Flow {
	t.Helper()
	f, ok := ft.Get(k)
	if !ok {
		t.Fatalf("flow %v not tracked", k)
	}
	return f
}

func TestFlowStateString(t *testing.T) {
	for s, want := range map[FlowState]string{FlowAlive: "alive", FlowSuspect: "suspect", FlowDead: "dead", 0: "FlowState(0)", 9: "FlowState(9)"} {
		if got := s.String(); got != want {
			t.Errorf("FlowState(%d).String() = %q, want %q", uint8(s), got, want)
		}
	}
}

func TestFlowLifecycle(t *testing.T) {
	clk := newFakeClock()
	rec := &deadRecorder{}
	ft := newFlowTable(t, 10, clk.Now, FlowEvents{OnDead: rec.OnDead})
	k := udpFlow(1)

	t0 := clk.Now()
	ft.Seen(k)
	f := mustGet(t, ft, k)
	if f.Key != k || !f.Created.Equal(t0) || !f.LastIn.Equal(t0) || f.State != FlowAlive || !f.LastPing.IsZero() || !f.LastPong.IsZero() {
		t.Fatalf("new flow = %+v", f)
	}
	if !ft.Alive(k) || ft.Len() != 1 {
		t.Fatal("new flow not alive or not counted")
	}

	tPing := clk.Advance(10 * time.Second)
	ft.PingSent(k)
	tPong := clk.Advance(42 * time.Millisecond)
	ft.Pong(k)
	f = mustGet(t, ft, k)
	if !f.LastPing.Equal(tPing) || !f.LastPong.Equal(tPong) || f.RTT != 42*time.Millisecond || f.State != FlowAlive {
		t.Fatalf("after ping and pong: %+v", f)
	}
	if !f.LastIn.Equal(t0) {
		t.Errorf("a pong moved LastIn to %v", f.LastIn)
	}

	// Two misses make it suspect; the third, at the limit, dead.
	for i := 1; i <= 2; i++ {
		if ft.Missed(k, 3) {
			t.Fatalf("dead after %d misses of 3", i)
		}
		if f = mustGet(t, ft, k); f.State != FlowSuspect || f.Misses != i {
			t.Fatalf("after %d misses: %v, %d misses", i, f.State, f.Misses)
		}
		if !ft.Alive(k) {
			t.Fatal("a suspect flow is not alive")
		}
	}
	if !ft.Missed(k, 3) {
		t.Fatal("not dead after 3 misses of 3")
	}
	if ft.Alive(k) || mustGet(t, ft, k).State != FlowDead {
		t.Fatal("flow not dead")
	}
	if ev := rec.take(); len(ev) != 1 || ev[0] != (deadEvent{k, "keepalive"}) {
		t.Fatalf("OnDead events %v, want one for %v", ev, k)
	}
	if !ft.Missed(k, 3) {
		t.Error("a dead flow's further miss did not report dead")
	}
	if ev := rec.take(); len(ev) != 0 {
		t.Errorf("OnDead fired again for a dead flow: %v", ev)
	}

	// A new registration (Seen) revives it.
	tIn := clk.Advance(time.Second)
	ft.Seen(k)
	if f = mustGet(t, ft, k); f.State != FlowAlive || f.Misses != 0 || !f.LastIn.Equal(tIn) || !f.Created.Equal(t0) {
		t.Fatalf("after Seen on a dead flow: %+v", f)
	}

	// A pong clears a suspect flow too.
	ft.Missed(k, 3)
	ft.Pong(k)
	if f = mustGet(t, ft, k); f.State != FlowAlive || f.Misses != 0 {
		t.Fatalf("after a miss and a pong: %v, %d misses", f.State, f.Misses)
	}

	// Closed kills at once, once.
	ft.Closed(k, "eof")
	ft.Closed(k, "closed")
	if ev := rec.take(); len(ev) != 1 || ev[0] != (deadEvent{k, "eof"}) {
		t.Fatalf("OnDead events after Closed twice: %v", ev)
	}
	if ft.Alive(k) {
		t.Fatal("closed flow alive")
	}

	ft.Remove(k)
	if _, ok := ft.Get(k); ok || ft.Len() != 0 || ft.Alive(k) {
		t.Fatal("flow still there after Remove")
	}
}

func TestFlowMissedLimitBelowOne(t *testing.T) {
	ft := newFlowTable(t, 1, newFakeClock().Now, FlowEvents{})
	ft.Seen(udpFlow(1))
	if !ft.Missed(udpFlow(1), 0) {
		t.Error("limit 0 did not count as 1")
	}
}

func TestFlowUnknownIgnored(t *testing.T) {
	rec := &deadRecorder{}
	ft := newFlowTable(t, 10, newFakeClock().Now, FlowEvents{OnDead: rec.OnDead})
	k := udpFlow(7)
	ft.PingSent(k)
	ft.Pong(k)
	if ft.Missed(k, 1) {
		t.Error("Missed on an unknown flow reported dead")
	}
	ft.Closed(k, "eof")
	ft.Remove(k)
	if ft.Len() != 0 || ft.Alive(k) {
		t.Error("an unknown flow got tracked")
	}
	if ev := rec.take(); len(ev) != 0 {
		t.Errorf("OnDead fired for an unknown flow: %v", ev)
	}
}

func TestFlowTableBounded(t *testing.T) {
	clk := newFakeClock()
	ft := newFlowTable(t, 3, clk.Now, FlowEvents{})
	for i := range 10 {
		ft.Seen(udpFlow(i))
	}
	if st := ft.Stats(); st.Flows != 3 || st.Refused != 7 {
		t.Fatalf("Stats = %+v, want 3 flows and 7 refused", st)
	}
	for i := range 10 {
		if got, want := ft.Alive(udpFlow(i)), i < 3; got != want {
			t.Errorf("flow %d alive = %v, want %v", i, got, want)
		}
	}
	// Known flows still refresh at the bound.
	t1 := clk.Advance(time.Second)
	ft.Seen(udpFlow(0))
	if f := mustGet(t, ft, udpFlow(0)); !f.LastIn.Equal(t1) {
		t.Errorf("LastIn = %v, want %v", f.LastIn, t1)
	}
	if ft.Stats().Refused != 7 {
		t.Error("refreshing a known flow counted as refused")
	}
	// Room again after Remove.
	ft.Remove(udpFlow(1))
	ft.Seen(udpFlow(5))
	if !ft.Alive(udpFlow(5)) {
		t.Error("no room after Remove")
	}
}

func TestNewFlowTableRejectsZeroMax(t *testing.T) {
	for _, max := range []int{0, -1} {
		ft, err := NewFlowTable(max, nil, FlowEvents{})
		if err == nil || ft != nil || !strings.Contains(err.Error(), "below 1") {
			t.Errorf("NewFlowTable(%d) = %v, %v; want an error saying the size is below 1", max, ft, err)
		}
	}
}

func TestFlowSnapshot(t *testing.T) {
	ft := newFlowTable(t, 10, newFakeClock().Now, FlowEvents{})
	want := map[FlowKey]bool{}
	for i := range 4 {
		ft.Seen(udpFlow(i))
		want[udpFlow(i)] = true
	}
	ft.Missed(udpFlow(2), 5)
	snap := ft.Snapshot()
	if len(snap) != 4 {
		t.Fatalf("Snapshot has %d flows, want 4", len(snap))
	}
	for _, f := range snap {
		if !want[f.Key] {
			t.Errorf("unexpected flow %v", f.Key)
		}
		delete(want, f.Key)
		if wantState := map[bool]FlowState{true: FlowSuspect, false: FlowAlive}[f.Key == udpFlow(2)]; f.State != wantState {
			t.Errorf("%v: state %v, want %v", f.Key, f.State, wantState)
		}
	}
}

func TestFlowSweep(t *testing.T) {
	clk := newFakeClock()
	ft := newFlowTable(t, 10, clk.Now, FlowEvents{})
	quiet, pinged, busy, kept, revived := udpFlow(1), udpFlow(2), udpFlow(3), udpFlow(4), udpFlow(5)
	for _, k := range []FlowKey{quiet, pinged, busy, kept, revived} {
		ft.Seen(k)
	}
	clk.Advance(50 * time.Second)
	ft.PingSent(pinged)
	ft.Pong(pinged) // an answered keepalive counts as activity
	ft.Seen(busy)
	clk.Advance(20 * time.Second) // quiet, kept and revived: 70 s without a sign of life

	var asked []FlowKey
	n := ft.Sweep(time.Minute, func(k FlowKey) bool {
		asked = append(asked, k)
		if k == revived {
			ft.Seen(k) // traffic while the sweep runs
		}
		return k == kept
	})
	if n != 1 {
		t.Errorf("Sweep removed %d, want 1", n)
	}
	if len(asked) != 3 {
		t.Errorf("keep asked about %v, want the 3 quiet flows", asked)
	}
	for k, want := range map[FlowKey]bool{quiet: false, pinged: true, busy: true, kept: true, revived: true} {
		if _, ok := ft.Get(k); ok != want {
			t.Errorf("%v tracked = %v, want %v", k, ok, want)
		}
	}
	// A nil keep keeps nothing; dead flows go too.
	ft.Closed(busy, "eof")
	clk.Advance(2 * time.Minute)
	if n := ft.Sweep(time.Minute, nil); n != 4 || ft.Len() != 0 {
		t.Errorf("Sweep(nil) removed %d, left %d", n, ft.Len())
	}
}

func TestFlowOnDeadMayCallBack(t *testing.T) {
	var ft *FlowTable
	ft = newFlowTable(t, 10, newFakeClock().Now, FlowEvents{OnDead: func(k FlowKey, why string) {
		ft.Remove(k) // would deadlock if OnDead ran under the lock
	}})
	ft.Seen(udpFlow(1))
	ft.Seen(udpFlow(2))
	ft.Missed(udpFlow(1), 1)
	ft.Closed(udpFlow(2), "eof")
	if ft.Len() != 0 {
		t.Errorf("%d flows left", ft.Len())
	}
}

func TestFlowSeenAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	ft := newFlowTable(t, 1000, nil, FlowEvents{})
	keys := []FlowKey{udpFlow(1), {Transport: TCP, Local: netip.MustParseAddrPort("[2001:db8::1]:5060"), Remote: netip.MustParseAddrPort("[2001:db8::2]:40000")}}
	for _, k := range keys {
		ft.Seen(k)
		if n := testing.AllocsPerRun(100, func() { ft.Seen(k) }); n != 0 {
			t.Errorf("Seen(%v) on a known flow: %v allocs", k, n)
		}
		if n := testing.AllocsPerRun(100, func() { ft.Alive(k) }); n != 0 {
			t.Errorf("Alive(%v): %v allocs", k, n)
		}
	}
	full := newFlowTable(t, 1, nil, FlowEvents{})
	full.Seen(udpFlow(1))
	if n := testing.AllocsPerRun(100, func() { full.Seen(udpFlow(2)) }); n != 0 {
		t.Errorf("Seen refused by a full table: %v allocs", n)
	}
}

func TestFlowConcurrent(t *testing.T) {
	ft := newFlowTable(t, 50, nil, FlowEvents{OnDead: func(FlowKey, string) {}})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				k := udpFlow((g*7 + i) % 100)
				switch i % 6 {
				case 0, 1:
					ft.Seen(k)
				case 2:
					ft.PingSent(k)
				case 3:
					ft.Missed(k, 2)
				case 4:
					ft.Pong(k)
				case 5:
					ft.Alive(k)
					if i%60 == 5 {
						ft.Remove(k)
						ft.Snapshot()
					}
				}
			}
		})
	}
	wg.Wait()
	if n := ft.Len(); n > 50 {
		t.Errorf("table grew to %d flows past its bound of 50", n)
	}
}

// BenchmarkFlowTableSeen refreshes known flows, in a table small enough
// to stay in cache and in one of 100,000, in turn: a map lookup and
// store under the mutex, plus reading the clock.
func BenchmarkFlowTableSeen(b *testing.B) {
	for _, n := range []int{1000, 100_000} {
		keys := make([]FlowKey, n)
		ft := newFlowTable(b, n, nil, FlowEvents{})
		for i := range keys {
			keys[i] = udpFlow(i)
			ft.Seen(keys[i])
		}
		b.Run(fmt.Sprintf("flows=%d/serial", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				ft.Seen(keys[i%n])
				i++
			}
		})
		for _, procs := range []int{1, 8} {
			b.Run(fmt.Sprintf("flows=%d/parallel-%dx", n, procs), func(b *testing.B) {
				b.ReportAllocs()
				b.SetParallelism(procs)
				b.RunParallel(func(pb *testing.PB) {
					i := 0
					for pb.Next() {
						ft.Seen(keys[i%n])
						i += 7
					}
				})
			})
		}
	}
}

// BenchmarkClock is the floor under Seen: reading the clock.
func BenchmarkClock(b *testing.B) {
	for b.Loop() {
		_ = time.Now().UnixNano()
	}
}

func TestTouchNeverCreatesNorRevives(t *testing.T) {
	var dead []FlowKey
	ft := newFlowTable(t, 10, time.Now, FlowEvents{OnDead: func(k FlowKey, why string) { dead = append(dead, k) }})
	k := FlowKey{Transport: TCP, Local: netip.MustParseAddrPort("192.0.2.1:5060"), Remote: netip.MustParseAddrPort("198.51.100.1:4000")}
	if ft.Touch(k) || ft.Len() != 0 {
		t.Fatal("Touch created a flow")
	}
	ft.Seen(k)
	if !ft.Touch(k) || !ft.Alive(k) {
		t.Fatal("Touch on a known flow")
	}
	ft.Closed(k, "eof")
	ft.Touch(k)
	if ft.Alive(k) || len(dead) != 1 {
		t.Fatal("Touch revived a dead flow")
	}
}

// Adopt brings back a flow with its first life's creation time, never
// changes a known one, and respects the bound.
func TestFlowAdopt(t *testing.T) {
	clk := newFakeClock()
	ft := newFlowTable(t, 2, clk.Now, FlowEvents{})
	k := udpFlow(1)
	born := clk.Now().Add(-time.Hour)
	if !ft.Adopt(k, born) {
		t.Fatal("Adopt refused with room")
	}
	f, ok := ft.Get(k)
	if !ok || !f.Created.Equal(born) || f.State != FlowAlive || !f.LastIn.Equal(clk.Now()) {
		t.Fatalf("adopted flow = %+v, %v; want created %v, alive, last in now", f, ok, born)
	}
	if !ft.Adopt(k, clk.Now()) {
		t.Fatal("Adopt of a known flow reported untracked")
	}
	if f, _ := ft.Get(k); !f.Created.Equal(born) {
		t.Errorf("Adopt changed a known flow's creation to %v", f.Created)
	}
	if !ft.Adopt(udpFlow(2), clk.Now().Add(time.Hour)) {
		t.Fatal("second Adopt refused")
	}
	if f, _ := ft.Get(udpFlow(2)); f.Created.After(clk.Now()) {
		t.Errorf("created in the future: %v", f.Created)
	}
	if ft.Adopt(udpFlow(3), born) || ft.Stats().Refused != 1 {
		t.Errorf("Adopt beyond the bound: tracked or not counted (%+v)", ft.Stats())
	}
}
