package ratelimit

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
)

// limits is a Config as the decisions read it: parsed, with each budget's
// constants worked out. It is immutable once built: Reload swaps in a new
// one whole, so a call reads one consistent config from one pointer.
//
// Which copy a call reads: what is not state (the allowlist, scanners,
// retry_after, max_inflight, ...) comes from Limiter.lim, loaded once per
// call. The tats kept under a lock are judged by that lock's own copy
// (shard.lim, aorShard.lim, Limiter.overLim), read under the lock: Reload
// rescales those tats and moves the copy to the new config in one critical
// section, so no tat is ever charged by one config's constants and then
// rescaled as if it were the other's.
type limits struct {
	cfg     Config // its slices and map are read only by newLimits
	allow   []netip.Prefix
	scan    scanner
	methods [maxNamedMethods]string // post slot 2+i; "" unused

	// Before parsing, and the reply budget: GCRA buckets in each entry.
	pkt, bytes, conn, reply, unproven bucket
	auth, aorAuth, malformed          score
	// After parsing: the buckets of reqLimits (post[0] the request rate,
	// post[1+i] method slot i) and of each AOR's REGISTER rate.
	post     [postSlots]bucket
	register bucket
}

// newLimits derives the limits of a validated cfg.
func newLimits(cfg Config) *limits {
	lm := &limits{cfg: cfg, scan: newScanner(cfg.ScannerUserAgents)}
	for _, s := range cfg.Allow {
		p, _ := ParsePrefix(s) // validated
		lm.allow = append(lm.allow, p)
	}
	names := make([]string, 0, len(cfg.Methods))
	for m := range cfg.Methods {
		names = append(names, m)
	}
	slices.Sort(names)
	lm.post[0] = newBucket(cfg.RequestRate, cfg.RequestBurst)
	lm.post[1] = newBucket(cfg.MethodRate, cfg.MethodBurst)
	for i, m := range names {
		lm.methods[i] = m
		lm.post[2+i] = newBucket(cfg.Methods[m].Rate, cfg.Methods[m].Burst)
	}
	lm.register = newBucket(cfg.RegisterRate, cfg.RegisterBurst)
	lm.pkt = newBucket(cfg.PacketRate, cfg.PacketBurst)
	lm.unproven = newBucket(cfg.UnprovenRate, cfg.UnprovenBurst)
	lm.bytes = newBucket(cfg.ByteRate, cfg.ByteBurst)
	lm.conn = newBucket(cfg.ConnRate, cfg.ConnBurst)
	lm.reply = newBucket(cfg.ReplyRate, cfg.ReplyBurst)
	lm.auth = newScore(cfg.AuthFailures, cfg.AuthWindow)
	lm.aorAuth = newScore(cfg.AORAuthFailures, cfg.AuthWindow)
	lm.malformed = newScore(cfg.MalformedLimit, cfg.MalformedWindow)
	return lm
}

// Reload applies cfg (the [ratelimit] section re-read on SIGHUP) to the
// running Limiter. An invalid cfg is refused with Validate's error and
// changes nothing. Every key applies from the next call on; all state is
// kept: tracked sources and AORs, their buckets and scores, connection
// and binding counts, flood streaks, bans and ban history.
//
//   - Buckets and scores keep the fraction of their burst (or limit) that
//     is spent, as a change of bindings does: a source that had used half
//     its packet_burst has used half of the new one, and refills at the
//     new rate. Method budgets follow their method when methods changes (a
//     newly named method starts from the shared method_rate budget it was
//     charged to).
//   - Bans in force keep their end; ban_time, ban_max and ban_bound apply
//     to the next ban (escalating from the remembered count), ban_forget
//     to the next Sweep.
//   - Smaller max_sources, max_aors, max_bans, max_conns or max_inflight
//     evict nothing: they refuse new entries, connections or requests
//     until the count is below them (Sweep drops idle entries as usual).
//     inflight_time applies from the next Sweep.
//   - A newly allowlisted source is let through at once; a ban it holds is
//     kept as a record but not enforced while it is allowlisted.
//
// Reload walks what is tracked, one lock at a time, as Sweep does. It is
// safe to call concurrently with every other method.
func (l *Limiter) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	to := newLimits(cfg)
	l.reloadMu.Lock()
	defer l.reloadMu.Unlock()
	// Under reloadMu every lock's copy is the config l.lim held until now.
	from := l.lim.Swap(to)
	rs := newRescaler(from, to)
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		now := l.nowNS()
		for _, j := range sh.idx {
			e := &sh.ents[j]
			rs.entry(e, now)
			if e.req != 0 {
				rs.reqs(&sh.reqs[e.req-1], now)
			}
		}
		sh.lim = to
		sh.mu.Unlock()
	}
	for i := range l.aors {
		as := &l.aors[i]
		as.mu.Lock()
		now := l.nowNS()
		for k, ae := range as.m {
			rescale(&ae.register, now, from.register.tol, to.register.tol)
			rescale(&ae.auth, now, from.aorAuth.tol, to.aorAuth.tol)
			as.m[k] = ae
		}
		as.lim = to
		as.mu.Unlock()
	}
	l.overMu.Lock()
	now := l.nowNS()
	rs.entry(&l.overEnt, now)
	rs.reqs(&l.overReq, now)
	l.overLim = to
	l.overMu.Unlock()
	// The lock-free shared budgets have no lock to switch them with: a
	// datagram racing with this may be charged at the other scale, an
	// error of one datagram.
	rescaleAtomic(&l.overPkt, now, from.pkt.tol, to.pkt.tol)
	rescaleAtomic(&l.overBytes, now, from.bytes.tol, to.bytes.tol)
	rescaleAtomic(&l.unprovenTat, now, from.unproven.tol, to.unproven.tol)
	return nil
}

// rescaler carries a source's tats from one config's budgets to another's.
type rescaler struct {
	from, to *limits
	// slot[i] is the post slot, under from, of what slot i holds under
	// to; -1: unused.
	slot [postSlots]int
}

func newRescaler(from, to *limits) *rescaler {
	rs := &rescaler{from: from, to: to}
	rs.slot[0], rs.slot[1] = 0, 1
	for i, m := range to.methods {
		rs.slot[2+i] = -1
		if m != "" {
			rs.slot[2+i] = 1 + from.methodSlot(m) // the shared slot 1 if it was not named
		}
	}
	return rs
}

func (rs *rescaler) entry(e *entry, now int64) {
	f, t := rs.from, rs.to
	rescale(&e.pkt, now, f.pkt.tol, t.pkt.tol)
	rescale(&e.bytes, now, f.bytes.tol, t.bytes.tol)
	rescale(&e.conn, now, f.conn.tol, t.conn.tol)
	rescale(&e.reply, now, f.reply.tol, t.reply.tol)
	rescale(&e.auth, now, f.auth.tol, t.auth.tol)
	rescale(&e.malformed, now, f.malformed.tol, t.malformed.tol)
}

func (rs *rescaler) reqs(rq *reqLimits, now int64) {
	old := *rq
	for i, j := range rs.slot {
		rq[i] = 0 // full
		if j >= 0 {
			rq[i] = old[j]
			rescale(&rq[i], now, rs.from.post[j].tol, rs.to.post[i].tol)
		}
	}
}

// rescale keeps the fraction of a budget spent at now (its debt, tat-now,
// over its tolerance) when the tolerance goes from one value to another.
// Keeping the tat as it is would keep the time to refill instead: raising
// a rate would then hold back a drained source longer than before, and
// lowering one would hand it a new burst.
func rescale(tat *int64, now, from, to int64) {
	if d := *tat - now; d > 0 && from != to {
		// A debt is at most its tolerance (0 admits no charge at all).
		*tat = now + min(int64(float64(min(d, from))/float64(max(from, 1))*float64(to)), to)
	}
}

func rescaleAtomic(tat *atomic.Int64, now, from, to int64) {
	for {
		old := tat.Load()
		t := old
		rescale(&t, now, from, to)
		if t == old || tat.CompareAndSwap(old, t) {
			return
		}
	}
}

// allowed reports whether a is allowlisted. It inlines to a length check
// on the per-datagram path, where the list is usually empty.
func (lm *limits) allowed(a netip.Addr) bool { return len(lm.allow) > 0 && lm.allowedWithin(a, 128) }

// allowedPrefix reports whether all of p is allowlisted.
func (lm *limits) allowedPrefix(p netip.Prefix) bool { return lm.allowedWithin(p.Addr(), p.Bits()) }

// allowedWithin reports whether an allowlisted prefix of at most bits
// holds a.
func (lm *limits) allowedWithin(a netip.Addr, bits int) bool {
	for _, p := range lm.allow {
		if p.Bits() <= bits && p.Contains(a) {
			return true
		}
	}
	return false
}

// factor is how much a source's budgets are multiplied by for its bindings.
func (lm *limits) factor(e *entry) float64 {
	n := min(int(e.bindings), lm.cfg.MaxBindings)
	return 1 + lm.cfg.BindingWeight*float64(n)
}

func (lm *limits) methodSlot(m string) int {
	for i, name := range lm.methods {
		if name == "" {
			break
		}
		if name == m {
			return i + 1
		}
	}
	return 0
}

// banDuration is how long the count-th ban lasts: ban_time doubled for
// each earlier ban still remembered, at most ban_max.
func (lm *limits) banDuration(count int32) time.Duration {
	d := lm.cfg.BanTime
	for i := int32(1); i < count; i++ {
		if d >= lm.cfg.BanMax/2 {
			return lm.cfg.BanMax
		}
		d *= 2
	}
	return min(d, lm.cfg.BanMax)
}
