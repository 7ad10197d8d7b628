package ratelimit

import (
	"math"
	"time"

	"golang.org/x/time/rate"
)

// The limits applied after parsing (a source's request rate and method
// budgets, an AOR's REGISTER rate) are golang.org/x/time/rate Limiters,
// always driven with AllowN/TokensAt at the injected clock's time and
// guarded by the lock of what owns them (a shard, overMu, an AOR shard),
// so their own mutex is never contended. They are made lazily: a source
// gets its reqLimits on its first parsed request, and each Limiter in it
// on first use, so sources that only send datagrams or open connections
// (a spoofed flood) cost none of them. A Limiter not made yet, or dropped
// by Sweep once full, is a full one.

// postSlots is the request-rate limiter (slot 0), then the method budgets
// (slot 1 + methodSlot).
const postSlots = 1 + methodSlots

// reqLimits is a source's post-parse limiters, each nil until first used.
// f is the binding factor they are scaled by.
type reqLimits struct {
	f    float64
	lims [postSlots]*rate.Limiter
}

// maxBurst bounds a scaled burst.
const maxBurst = math.MaxInt / 2

// scaledBurst is burst * f as a rate.Limiter burst: the whole tokens of
// it (as many as a full GCRA bucket lets through), at least burst (f >= 1),
// without overflowing int.
func scaledBurst(burst int, f float64) int {
	b := math.Floor(float64(burst)*f + 1e-9)
	if b >= maxBurst {
		return maxBurst
	}
	return max(int(b), burst)
}

// newRateLimiter is a full limiter for b scaled by f (f multiplies both
// rate and burst, so a full bucket refills in the same time).
func newRateLimiter(b Budget, f float64) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(b.Rate*f), scaledBurst(b.Burst, f))
}

// limiter returns slot i, making it if needed (the one allocation).
func (rq *reqLimits) limiter(l *Limiter, i int) *rate.Limiter {
	lim := rq.lims[i]
	if lim == nil {
		lim = newRateLimiter(l.post[i], rq.f)
		rq.lims[i] = lim
	}
	return lim
}

// rescale moves rq to factor f at t, keeping each limiter's fill level as
// a fraction of its burst (what scaling a GCRA bucket's cost per unit
// does): a full bucket stays full, an empty one empty.
func (rq *reqLimits) rescale(l *Limiter, f float64, t time.Time) {
	for i, lim := range rq.lims {
		if lim == nil {
			continue
		}
		tokens := max(lim.TokensAt(t), 0) * f / rq.f
		rq.lims[i] = limiterAt(l.post[i], f, tokens, t)
	}
	rq.f = f
}

// limiterAt is a limiter for b scaled by f holding tokens at t. A Limiter's
// tokens cannot be set, but a fresh one emptied at the instant from which
// it refills to tokens by t holds them at t.
func limiterAt(b Budget, f, tokens float64, t time.Time) *rate.Limiter {
	lim := newRateLimiter(b, f)
	if burst := lim.Burst(); tokens < float64(burst) {
		ago := min(tokens/float64(lim.Limit())*float64(time.Second), float64(maxBan))
		lim.AllowN(t.Add(-time.Duration(ago)), burst)
	}
	return lim
}

// full reports whether lim holds its whole burst at t: it is then the same
// as a fresh one and can be dropped.
func full(lim *rate.Limiter, t time.Time) bool {
	return lim == nil || lim.TokensAt(t) >= float64(lim.Burst())
}

// idle reports whether every limiter of rq is full at t.
func (rq *reqLimits) idle(t time.Time) bool {
	for _, lim := range rq.lims {
		if !full(lim, t) {
			return false
		}
	}
	return true
}

// reqsOf returns e's post-parse limiters, making them at e's factor on its
// first parsed request. sh.mu must be held.
func (l *Limiter) reqsOf(sh *shard, e *entry) *reqLimits {
	if e.req != 0 {
		return sh.reqs[e.req-1]
	}
	rq := &reqLimits{f: l.factor(e)}
	if n := len(sh.reqFree); n > 0 {
		i := sh.reqFree[n-1]
		sh.reqFree = sh.reqFree[:n-1]
		sh.reqs[i] = rq
		e.req = i + 1
	} else {
		sh.reqs = append(sh.reqs, rq)
		e.req = int32(len(sh.reqs))
	}
	return rq
}

// dropReqs frees e's post-parse limiters. sh.mu must be held.
func (sh *shard) dropReqs(e *entry) {
	if e.req == 0 {
		return
	}
	sh.reqs[e.req-1] = nil
	sh.reqFree = append(sh.reqFree, e.req-1)
	e.req = 0
}
