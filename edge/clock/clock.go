// Package clock is the edge's source of time: now, tickers and timers.
// Production code gets Real; tests get a Fake they move forward by hand,
// so nothing waits for wall-clock seconds (after tailscale's tstime).
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock tells the time and schedules work.
type Clock interface {
	Now() time.Time
	// NewTicker delivers the time on C every d; like time.Ticker it
	// drops ticks a slow receiver misses.
	NewTicker(d time.Duration) Ticker
	// AfterFunc calls f in its own goroutine once d has passed.
	AfterFunc(d time.Duration, f func()) Timer
}

// Ticker is a running ticker.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Timer is a pending AfterFunc.
type Timer interface {
	// Stop cancels the call and reports whether it was still pending.
	Stop() bool
}

// Real is the system clock.
type Real struct{}

func (Real) Now() time.Time { return time.Now() }

func (Real) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

func (Real) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }

// Fake is a clock that moves only when Advance is called. Safe for
// concurrent use.
type Fake struct {
	mu    sync.Mutex
	now   time.Time
	waits []*fakeWait
}

// NewFake returns a fake clock reading start.
func NewFake(start time.Time) *Fake { return &Fake{now: start} }

// fakeWait is a ticker (every > 0) or a timer waiting for at.
type fakeWait struct {
	at    time.Time
	every time.Duration
	c     chan time.Time
	f     func()
	done  bool
}

func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive ticker interval")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &fakeWait{at: c.now.Add(d), every: d, c: make(chan time.Time, 1)}
	c.waits = append(c.waits, w)
	return fakeTicker{c, w}
}

func (c *Fake) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &fakeWait{at: c.now.Add(d), f: f}
	c.waits = append(c.waits, w)
	return fakeTimer{c, w}
}

// Advance moves the clock forward by d, delivering each tick and firing
// each timer that comes due on the way, in time order. A ticker whose
// receiver has not taken the previous tick loses this one, as with
// time.Ticker.
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	for {
		w := c.nextDueLocked(end)
		if w == nil {
			break
		}
		c.now = w.at
		if w.every > 0 {
			select {
			case w.c <- w.at:
			default:
			}
			w.at = w.at.Add(w.every)
			continue
		}
		w.done = true
		c.removeLocked(w)
		go w.f()
	}
	c.now = end
	c.mu.Unlock()
}

func (c *Fake) nextDueLocked(end time.Time) *fakeWait {
	sort.SliceStable(c.waits, func(i, j int) bool { return c.waits[i].at.Before(c.waits[j].at) })
	if len(c.waits) == 0 || c.waits[0].at.After(end) {
		return nil
	}
	return c.waits[0]
}

func (c *Fake) removeLocked(w *fakeWait) bool {
	for i, x := range c.waits {
		if x == w {
			c.waits = append(c.waits[:i], c.waits[i+1:]...)
			return true
		}
	}
	return false
}

type fakeTicker struct {
	c *Fake
	w *fakeWait
}

func (t fakeTicker) C() <-chan time.Time { return t.w.c }

func (t fakeTicker) Stop() {
	t.c.mu.Lock()
	t.c.removeLocked(t.w)
	t.c.mu.Unlock()
}

type fakeTimer struct {
	c *Fake
	w *fakeWait
}

func (t fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	return !t.w.done && t.c.removeLocked(t.w)
}
