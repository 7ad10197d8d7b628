package upstream

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// events records OnChange calls.
type events struct {
	mu  sync.Mutex
	got []string
}

func (e *events) record(t Target, s State) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, fmt.Sprintf("%s %s", t.Addr.Addr(), s))
}

// take returns the events so far and forgets them.
func (e *events) take() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	got := e.got
	e.got = nil
	return got
}

func stateOf(t *testing.T, p *Pool, tg Target) State {
	t.Helper()
	s, ok := p.State(tg)
	if !ok {
		t.Fatalf("%s not configured", tg)
	}
	return s
}

func TestHealthThresholds(t *testing.T) {
	var ev events
	cfg := DefaultConfig()
	cfg.Upstreams = []string{"sip:10.0.0.1", "sip:10.0.0.2"}
	cfg.UpAfter, cfg.DownAfter = 3, 2
	p, err := NewPool(cfg, WithOnChange(ev.record))
	if err != nil {
		t.Fatal(err)
	}
	a := p.Targets()[0]
	step := func(ok bool, want State, wantEvents ...string) {
		t.Helper()
		p.Report(a, ok, false)
		if got := stateOf(t, p, a); got != want {
			t.Fatalf("after report ok=%v: %s, want %s", ok, got, want)
		}
		if got := ev.take(); !slices.Equal(got, wantEvents) {
			t.Fatalf("events %q, want %q", got, wantEvents)
		}
	}
	if got := stateOf(t, p, a); got != StateUp {
		t.Fatalf("starts %s, want up", got)
	}
	step(false, StateUp) // one loss is not a dead core
	step(true, StateUp)  // and a success resets the count
	step(false, StateUp)
	step(false, StateDown, "10.0.0.1 down")
	step(false, StateDown)
	step(true, StateDown)
	step(true, StateDown)
	step(false, StateDown) // a failure restarts the way up
	step(true, StateDown)
	step(true, StateDown)
	step(true, StateUp, "10.0.0.1 up")
	if got := stateOf(t, p, p.Targets()[1]); got != StateUp {
		t.Errorf("the other core is %s", got)
	}
}

// A 5xx is alive but busy: weight down, never down.
func TestHealthOverload(t *testing.T) {
	var ev events
	cfg := DefaultConfig()
	cfg.Upstreams = []string{"sip:10.0.0.1"}
	p, err := NewPool(cfg, WithOnChange(ev.record))
	if err != nil {
		t.Fatal(err)
	}
	a := p.Targets()[0]
	check := func(want State, wantEvents ...string) {
		t.Helper()
		if got := stateOf(t, p, a); got != want {
			t.Fatalf("state %s, want %s", got, want)
		}
		if got := ev.take(); !slices.Equal(got, wantEvents) {
			t.Fatalf("events %q, want %q", got, wantEvents)
		}
	}
	for range 5 {
		p.Report(a, true, true)
	}
	check(StateOverloaded, "10.0.0.1 overloaded")
	p.Report(a, false, false) // one failure, under down_after: still marked, still up
	check(StateOverloaded)
	p.Report(a, false, true) // overloaded means nothing without an answer
	check(StateDown, "10.0.0.1 down")
	p.Report(a, true, true)
	p.Report(a, true, true)
	check(StateOverloaded, "10.0.0.1 overloaded") // back, and still busy
	p.Report(a, true, false)
	check(StateUp, "10.0.0.1 up")

	// ReportAnswer sorts statuses the same way.
	for _, tc := range []struct {
		status int
		err    error
		ok     bool
		busy   bool
	}{
		{200, nil, true, false}, {404, nil, true, false}, {408, nil, true, false}, {483, nil, true, false},
		{603, nil, true, false}, {500, nil, true, true}, {503, nil, true, true}, {599, nil, true, true},
		{100, nil, true, false}, {180, nil, true, false}, {99, nil, false, false}, {0, nil, false, false}, {700, nil, false, false},
		{200, errors.New("timeout"), false, false},
	} {
		if ok, busy := classify(tc.status, tc.err); ok != tc.ok || busy != tc.busy {
			t.Errorf("classify(%d, %v) = %v, %v", tc.status, tc.err, ok, busy)
		}
	}
	p.ReportAnswer(a, 503, nil)
	check(StateOverloaded, "10.0.0.1 overloaded")
	p.ReportAnswer(a, 486, nil)
	check(StateUp, "10.0.0.1 up")
}

// OnChange runs with no lock held: it may ask the pool anything.
func TestOnChangeMayCallBack(t *testing.T) {
	var p *Pool
	var seen []State
	p = newTestPool(t, []string{"sip:10.0.0.1", "sip:10.0.0.2"}, WithOnChange(func(tg Target, s State) {
		now, _ := p.State(tg)
		seen = append(seen, now)
		p.Order("alice")
		p.Report(p.Targets()[1], true, false)
	}))
	a := p.Targets()[0]
	p.Report(a, false, false)
	p.Report(a, false, false)
	if !slices.Equal(seen, []State{StateDown}) {
		t.Fatalf("OnChange saw %v", seen)
	}
	if _, ok := p.State(Target{}); ok {
		t.Error("State of an unknown target")
	}
	p.Report(Target{}, false, false) // not configured: ignored
}

// Tries sent before a core's last change of state do not count: after
// it dies, the late answers and timeouts of what was sent before would
// flip it up and down.
func TestStaleTriesIgnored(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Upstreams = []string{"sip:10.0.0.1", "sip:10.0.0.2"}
	cfg.UpAfter, cfg.DownAfter = 2, 2
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := p.Targets()[0]
	before := time.Now()
	p.ReportTry(a, before, 0, errors.New("timeout"))
	p.ReportTry(a, before, 0, errors.New("timeout"))
	if got := stateOf(t, p, a); got != StateDown {
		t.Fatalf("after two failures: %s", got)
	}
	// Answers to requests sent before it went down: ignored.
	p.ReportTry(a, before, 200, nil)
	p.ReportTry(a, before, 200, nil)
	if got := stateOf(t, p, a); got != StateDown {
		t.Fatalf("stale answers brought it %s", got)
	}
	after := time.Now()
	p.ReportTry(a, after, 200, nil)
	p.ReportTry(a, after, 200, nil)
	if got := stateOf(t, p, a); got != StateUp {
		t.Fatalf("fresh answers left it %s", got)
	}
	// Timeouts of tries sent while it was down: ignored.
	p.ReportTry(a, before, 0, errors.New("timeout"))
	p.ReportTry(a, before, 0, errors.New("timeout"))
	if got := stateOf(t, p, a); got != StateUp {
		t.Fatalf("stale timeouts took it %s", got)
	}
}
