package ratelimit

import (
	"fmt"
	"sync/atomic"
	"time"
)

// maxRate is the fastest rate a Rate enforces: one event a nanosecond,
// the resolution of its clock.
const maxRate = 1e9

// Rate is a standalone GCRA budget, safe for concurrent use and
// allocation-free: at most burst events at once, refilling at perSecond.
// It is lock-free: one int64 (the theoretical arrival time, in Unix ns)
// updated by compare-and-swap. Times given to Allow may come from several
// goroutines slightly out of order. Make one with NewRate (the zero Rate
// allows everything).
type Rate struct {
	b   bucket
	tat atomic.Int64 // Unix ns; 0: full
}

// NewRate returns a full budget of burst events refilled at perSecond.
// It fails unless 0 < perSecond <= 1e9 (faster rates are below the
// clock's resolution) and burst >= 1.
func NewRate(perSecond float64, burst int) (*Rate, error) {
	if !(perSecond > 0 && perSecond <= maxRate) {
		return nil, fmt.Errorf("ratelimit: rate %v per second: must be > 0 and <= %g", perSecond, float64(maxRate))
	}
	if burst < 1 {
		return nil, fmt.Errorf("ratelimit: burst %d: must be >= 1", burst)
	}
	return &Rate{b: newBucket(perSecond, burst)}, nil
}

// Allow takes one event at now and reports whether the budget had it.
// A denied event costs nothing.
func (r *Rate) Allow(now time.Time) bool {
	return r.b.takeAtomic(&r.tat, now.UnixNano(), 1, 1)
}
