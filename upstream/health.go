package upstream

import (
	"sync"
	"sync/atomic"
	"time"
)

// State is how a core seems from the edge.
type State uint8

const (
	// StateUp takes requests. The zero value: targets start up, so the
	// first requests are not refused before the first probe answers.
	StateUp State = iota
	// StateOverloaded is up but answering 5xx: alive and busy. It keeps
	// taking requests with a tenth of its weight until a success that is
	// not a 5xx.
	StateOverloaded
	// StateDown takes none until it answers up_after times in a row.
	StateDown
)

func (s State) String() string {
	switch s {
	case StateUp:
		return "up"
	case StateOverloaded:
		return "overloaded"
	case StateDown:
		return "down"
	}
	return "invalid"
}

// overloadShare divides an overloaded target's weight: it sheds most of
// its keys to its peers but is not dropped, since it still answers.
const overloadShare = 10

// health is one target's record. Order reads state without a lock; the
// counters behind it change under mu.
type health struct {
	state atomic.Uint32 // a State

	mu         sync.Mutex
	oks, fails int       // consecutive results of each kind
	down       bool      // marked down by down_after failures
	busy       bool      // the last success was a 5xx
	changed    time.Time // when the state last changed
}

func (h *health) load() State { return State(h.state.Load()) }

// report records one result under the thresholds and says what the
// state was before and is after.
func (h *health) report(ok, busy bool, upAfter, downAfter int, started time.Time) (from, to State) {
	h.mu.Lock()
	defer h.mu.Unlock()
	from = h.load()
	if !started.IsZero() && started.Before(h.changed) {
		// A try sent before the last change says nothing new: after a
		// core dies, the answers and timeouts of requests sent before
		// would otherwise flip it up and down for a while.
		return from, from
	}
	if ok {
		h.fails = 0
		h.oks = min(h.oks+1, upAfter) // saturate: only reaching the threshold matters
		h.busy = busy
		if h.down && h.oks >= upAfter {
			h.down = false
		}
	} else {
		h.oks = 0
		h.fails = min(h.fails+1, downAfter)
		if !h.down && h.fails >= downAfter {
			h.down = true
		}
	}
	switch {
	case h.down:
		to = StateDown
	case h.busy:
		to = StateOverloaded
	default:
		to = StateUp
	}
	h.state.Store(uint32(to))
	if to != from {
		h.changed = time.Now()
	}
	return from, to
}

// Report records one result for t, from a probe or from forwarding: ok
// when the core answered, overloaded when that answer was a 5xx (alive
// but busy; it lowers t's weight and does not count against it). t goes
// down after core.down_after failures in a row and up again after
// core.up_after successes in a row. A target no longer configured is
// ignored (a request that left before a reload).
func (p *Pool) Report(t Target, ok bool, overloaded bool) { p.report(t, ok, overloaded, time.Time{}) }

// ReportTry is ReportAnswer for a try that started at started: a try
// older than t's last change of state is ignored.
func (p *Pool) ReportTry(t Target, started time.Time, status int, err error) {
	ok, busy := classify(status, err)
	p.report(t, ok, busy, started)
}

func (p *Pool) report(t Target, ok bool, overloaded bool, started time.Time) {
	s := p.set.Load()
	i := s.index(t.id())
	if i < 0 {
		return
	}
	from, to := s.health[i].report(ok, ok && overloaded, s.upAfter, s.downAfter, started)
	if from != to {
		for _, f := range *p.onChange.Load() {
			f(s.targets[i], to)
		}
	}
}

// ReportAnswer records how t answered: err for no answer (a timeout, a
// transport error), else the status: the final one, or the first
// provisional one of an INVITE. Any answer is a sign of life: 100-499 and
// 600-699 are successes, 500-599 a success that marks t overloaded. A
// status outside 100..699 is no answer and counts as a failure.
func (p *Pool) ReportAnswer(t Target, status int, err error) {
	ok, busy := classify(status, err)
	p.Report(t, ok, busy)
}

func classify(status int, err error) (ok, overloaded bool) {
	switch {
	case err != nil:
		return false, false
	case status >= 500 && status <= 599:
		return true, true
	case status >= 100 && status <= 699:
		return true, false
	}
	return false, false
}

// State says how t seems now; false when t is not configured.
func (p *Pool) State(t Target) (State, bool) {
	s := p.set.Load()
	i := s.index(t.id())
	if i < 0 {
		return StateDown, false
	}
	return s.health[i].load(), true
}
