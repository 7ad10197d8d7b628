package ratelimit

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// paceSeconds is how many of the maintenance loop's looks the core's pace
// is remembered for: its best second among them sets the cap, so a core
// that stalls for a moment does not lower the cap just when it is needed.
const paceSeconds = 10

// inflight is the requests forwarded to the core and not yet answered,
// and the pace at which the core answers them.
//
// A fixed cap on them is a different wait at each rate: 1,000 at the core
// is a quarter of a second of its work at 4,000 answers a second, and
// four seconds at 250. So the cap follows the core's own recent pace: as
// many as it answered in inflight_time, never fewer than max_inflight nor
// more than ten times it. A flood cannot raise it past what the core
// answers, and a core that falls silent lowers it within paceSeconds.
type inflight struct {
	n        atomic.Int64 // slots taken now
	answered atomic.Int64 // slots given back, ever
	paced    atomic.Int64 // the cap the pace allows

	last atomic.Pointer[look] // the last look; nil before the first

	mu     sync.Mutex         // pace's ring
	perSec [paceSeconds]int64 // answers a second between looks
	i      int
}

// look is what the maintenance loop saw: slots given back, and when.
type look struct{ answered, ns int64 }

// perSec is the answers a second from l to a answers at now.
func (l *look) perSec(a, now int64) int64 {
	return (a - l.answered) * int64(time.Second) / (now - l.ns)
}

// Inflight takes one of the slots for a request forwarded to the core
// (max_inflight, or more at the core's pace: inflight). When ok, release
// must be called once the core has answered (or the request is
// abandoned); it is idempotent. When not ok, answer 503 with RetryAfter;
// release is then a no-op, never nil.
func (l *Limiter) Inflight() (release func(), ok bool) { return l.inflightUnder(1, 1) }

// InflightNew is Inflight for a request that starts something new, a
// first registration: it leaves the last quarter of the slots to
// refreshes, so a core near its limit keeps the phones it has and turns
// new ones away first.
func (l *Limiter) InflightNew() (release func(), ok bool) { return l.inflightUnder(3, 4) }

// InflightCrowded reports whether three quarters of the slots are taken
// (by the pace as of the last look): from there InflightNew may refuse.
// A cheap look, for callers that must work out first whether a request
// is new.
func (l *Limiter) InflightCrowded() bool {
	return l.inflight.n.Load() >= max(1, l.inflightLimit(false)*3/4)
}

// inflightLimit is how many requests may be at the core at once: by the
// pace as of the last look, or (fresh) by the pace since then too.
func (l *Limiter) inflightLimit(fresh bool) int64 {
	cfg := &l.lim.Load().cfg
	floor := int64(cfg.MaxInflight)
	limit := max(floor, l.inflight.paced.Load())
	if fresh {
		limit = max(limit, l.inflight.since(l.nowNS(), cfg.InflightTime))
	}
	return min(limit, 10*floor)
}

// inflightUnder takes a slot if fewer than num/den of the limit are taken.
func (l *Limiter) inflightUnder(num, den int64) (release func(), ok bool) {
	f := &l.inflight
	n := f.n.Add(1)
	// Past the limit as of the last look, the pace since then counts too
	// (worked out only there): a run that starts at a high rate need not
	// wait for the next look.
	if n > max(1, l.inflightLimit(false)*num/den) && n > max(1, l.inflightLimit(true)*num/den) {
		f.n.Add(-1)
		l.count(&l.shards[0], Reject, ReasonInflight, netip.Addr{})
		return noop, false
	}
	var done atomic.Bool
	return func() {
		if done.CompareAndSwap(false, true) {
			f.n.Add(-1)
			f.answered.Add(1)
		}
	}, true
}

// since is the cap the core's pace since the last look allows for over,
// once that is long enough to tell (a tenth of a second). It takes no
// lock: it runs for every request near the cap, refused ones included.
func (f *inflight) since(now int64, over time.Duration) int64 {
	last := f.last.Load()
	if last == nil || now-last.ns < int64(100*time.Millisecond) {
		return 0
	}
	return int64(float64(last.perSec(f.answered.Load(), now)) * over.Seconds())
}

// pace is the maintenance loop's look (Sweep, about once a second): the
// answers a second since the last look, and the cap they allow for over
// (inflight_time; 0: none beyond max_inflight).
func (f *inflight) pace(now int64, over time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.answered.Load()
	if last := f.last.Load(); last != nil && now > last.ns {
		f.perSec[f.i] = last.perSec(a, now)
		f.i = (f.i + 1) % paceSeconds
	}
	f.last.Store(&look{a, now})
	var best int64
	for _, r := range f.perSec {
		best = max(best, r)
	}
	f.paced.Store(int64(float64(best) * over.Seconds()))
}
