package ratelimit

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"
)

// Request decides on a parsed request from src. method is the SIP method
// (case-sensitive), aor the address-of-record of a REGISTER (its To URI,
// normalised by the caller; "" skips the per-AOR limit) and userAgent the
// User-Agent header ("" if absent). proven says that src has shown it
// receives what is sent to it: a connection past its handshake, a UDP
// flow that is registered, or a request echoing a nonce sent to src. Only
// a proven source is ever banned: over UDP anyone can spoof any source.
//
// Drop with ReasonScanner: userAgent names a scanner; src is banned if
// proven. Over a limit (ReasonSourceRate, ReasonMethodRate, ReasonAORRate,
// ReasonOverflow), proven or not: Reject (503 with Retry-After) while the
// source's reply budget lasts, Drop after it, so that a flood gets no
// answers to reflect. A proven source over its own limits without pause
// for flood_window is banned (Drop, ReasonFlood). Banned: Drop,
// ReasonBanned.
func (l *Limiter) Request(src netip.Addr, method, aor, userAgent string, proven bool) (Decision, Reason) {
	k, a, ok := keyOf(src)
	if !ok {
		l.count(&l.shards[0], Drop, ReasonMalformed, src)
		return Drop, ReasonMalformed
	}
	sh := l.shardOf(k)
	lm := l.lim.Load()
	if lm.allowed(a) {
		l.count(sh, Allow, ReasonNone, src)
		return Allow, ReasonNone
	}
	now := l.nowNS()
	if l.wideBanned(a, now) {
		l.count(sh, Drop, ReasonBanned, src)
		return Drop, ReasonBanned
	}
	scanner := lm.scan.match(userAgent)
	sh.mu.Lock()
	if sh.banned(k, now) {
		sh.mu.Unlock()
		l.count(sh, Drop, ReasonBanned, src)
		return Drop, ReasonBanned
	}
	var (
		d      Decision
		r      Reason
		b      Ban
		banned bool
	)
	if scanner {
		// A proven source is banned even if untracked (max_bans bounds
		// it); one with bindings only if ban_bound. An unproven one is
		// only dropped, and nothing is kept.
		if proven {
			b, banned = l.banLocked(sh, k, l.lookup(sh, k, find), ReasonScanner, evidence{events: 1}, now)
		}
		sh.mu.Unlock()
		d, r = Drop, ReasonScanner
	} else if e := l.lookup(sh, k, insert); e != nil {
		d, r = l.requestLocked(sh.lim, sh.reqsOf(e), &e.reply, sh.lim.factor(e), method, aor, now)
		if r != ReasonAORRate { // the AOR's traffic is not this source's fault
			if b, banned = l.floodLocked(sh, k, e, r, now, proven); banned {
				d, r = Drop, ReasonFlood
			}
		}
		sh.mu.Unlock()
	} else {
		sh.mu.Unlock()
		l.overMu.Lock()
		d, r = l.requestLocked(l.overLim, &l.overReq, &l.overEnt.reply, l.overLim.cfg.OverflowShare, method, aor, now)
		l.overMu.Unlock()
		if r == ReasonSourceRate || r == ReasonMethodRate {
			r = ReasonOverflow
		}
	}
	if banned {
		l.emitBan(b)
	}
	l.count(sh, d, r, src)
	return d, r
}

// requestLocked applies the request limits of a source (its post-parse
// buckets rq and reply bucket, scaled to lm, at factor f) at now. The
// source's budgets are charged only if every limit passes. The caller
// holds the lock guarding rq and reply; this takes the AOR shard's lock
// inside it.
func (l *Limiter) requestLocked(lm *limits, rq *reqLimits, reply *int64, f float64, method, aor string, now int64) (Decision, Reason) {
	// The source's request budget is checked first and committed last,
	// once the one other limit of the request (its method's, or for a
	// REGISTER its AOR's) has passed and been charged: so each is charged
	// only if both pass.
	r := ReasonNone
	src, ok := lm.post[0].next(rq[0], now, 1, f)
	switch {
	case !ok:
		r = ReasonSourceRate
	case method != "REGISTER":
		if i := 1 + lm.methodSlot(method); !lm.post[i].take(&rq[i], now, 1, f) {
			r = ReasonMethodRate
		}
	case aor != "":
		if !l.aorTake(aor, now) {
			r = ReasonAORRate
		}
	}
	if r == ReasonNone {
		rq[0] = src
		return Allow, ReasonNone
	}
	if lm.reply.take(reply, now, 1, f) {
		return Reject, r
	}
	return Drop, r
}

// aorTake charges one REGISTER to aor at now. Untracked AORs (max_aors
// reached) pass: the per-source limits still hold them.
func (l *Limiter) aorTake(aor string, now int64) bool {
	as := l.aorShardOf(aor)
	as.mu.Lock()
	defer as.mu.Unlock()
	ae, ok := l.aorLookup(as, aor)
	if !ok {
		return true
	}
	// A new entry is always stored: a full bucket admits one REGISTER.
	if !as.lim.register.take(&ae.register, now, 1, 1) {
		return false
	}
	as.m[ae.key] = ae
	return true
}

// aorLookup returns aor's entry (a new one if needed and below max_aors).
// as.mu must be held; the caller stores the entry back under ae.key.
func (l *Limiter) aorLookup(as *aorShard, aor string) (aorEntry, bool) {
	if ae, ok := as.m[aor]; ok {
		return ae, true
	}
	if l.aorCount.Add(1) > int64(as.lim.cfg.MaxAORs) {
		l.aorCount.Add(-1)
		l.aorOverflow.Add(1)
		return aorEntry{}, false
	}
	return aorEntry{key: strings.Clone(aor)}, true
}

// AuthFailure records that the core answered 401 or 403 to a request from
// src that already carried credentials for aor ("" if unknown). Call it
// once per such answer, not for the first, credential-less challenge, and
// only for a proven source (as for Request): it may ban src, and a
// spoofed source must not be banned.
//
// auth_failures from src within auth_window ban it (ReasonAuthFailures;
// the limit scaled by its bindings); aor_auth_failures on one AOR, from
// any sources, ban each source that fails on it while the count stays
// over (ReasonAORAuthFailures).
func (l *Limiter) AuthFailure(src netip.Addr, aor string) {
	k, a, ok := keyOf(src)
	if !ok || l.lim.Load().allowed(a) {
		return
	}
	now := l.nowNS()
	sh := l.shardOf(k)
	sh.mu.Lock()
	if sh.banned(k, now) {
		sh.mu.Unlock()
		return
	}
	sl := sh.lim
	r, ev := ReasonNone, evidence{window: int64(sl.cfg.AuthWindow)}
	e := l.lookup(sh, k, insert)
	if e != nil {
		f := sl.factor(e)
		if sl.auth.add(&e.auth, now, f) {
			r, ev.events = ReasonAuthFailures, sl.auth.count(e.auth, now, f)
		}
	}
	if aor != "" {
		if hit, n := l.aorFail(aor, now); hit && r == ReasonNone {
			r, ev.events = ReasonAORAuthFailures, n
		}
	}
	var b Ban
	var banned bool
	if r != ReasonNone {
		b, banned = l.banLocked(sh, k, e, r, ev, now)
	}
	sh.mu.Unlock()
	if banned {
		l.emitBan(b)
	}
}

// aorFail scores one authentication failure on aor and reports whether
// aor_auth_failures is reached, and the failures counted.
func (l *Limiter) aorFail(aor string, now int64) (bool, int32) {
	as := l.aorShardOf(aor)
	as.mu.Lock()
	defer as.mu.Unlock()
	ae, ok := l.aorLookup(as, aor)
	if !ok {
		return false, 0
	}
	hit := as.lim.aorAuth.add(&ae.auth, now, 1)
	as.m[ae.key] = ae
	return hit, as.lim.aorAuth.count(ae.auth, now, 1)
}

// Malformed records an unparsable or insane message from src;
// malformed_limit within malformed_window ban it. Messages from an
// unproven source (see Request) are not scored at all: anyone can send
// junk from a spoofed address.
func (l *Limiter) Malformed(src netip.Addr, proven bool) {
	if !proven {
		return
	}
	k, a, ok := keyOf(src)
	if !ok || l.lim.Load().allowed(a) {
		return
	}
	now := l.nowNS()
	sh := l.shardOf(k)
	sh.mu.Lock()
	if sh.banned(k, now) {
		sh.mu.Unlock()
		return
	}
	var b Ban
	var banned bool
	if e := l.lookup(sh, k, insert); e != nil {
		sl := sh.lim
		if f := sl.factor(e); sl.malformed.add(&e.malformed, now, f) {
			ev := evidence{events: sl.malformed.count(e.malformed, now, f), window: int64(sl.cfg.MalformedWindow)}
			b, banned = l.banLocked(sh, k, e, ReasonMalformed, ev, now)
		}
	}
	sh.mu.Unlock()
	if banned {
		l.emitBan(b)
	}
}

// SetBindings tells how many registered, authenticated bindings src holds
// (for IPv6, the whole /64: count per SourcePrefix). With n > 0 the source
// is tracked even beyond max_sources, its budgets are multiplied by
// 1 + binding_weight*min(n, max_bindings), and unless ban_bound it is
// never banned automatically. n <= 0 clears it.
func (l *Limiter) SetBindings(src netip.Addr, n int) {
	k, a, ok := keyOf(src)
	if !ok || l.lim.Load().allowed(a) {
		return
	}
	n = min(max(n, 0), math.MaxInt32)
	sh := l.shardOf(k)
	sh.mu.Lock()
	mode := find
	if n > 0 {
		mode = insertBound
	}
	if e := l.lookup(sh, k, mode); e != nil {
		switch old := e.bindings; {
		case old == 0 && n > 0:
			l.bound.Add(1)
		case old > 0 && n == 0:
			l.bound.Add(-1)
		}
		// The buckets scale by themselves: the factor is applied per
		// call, and keeps each one's fill level as a fraction of its burst.
		e.bindings = int32(n)
	}
	sh.mu.Unlock()
}

// RetryAfter is the Retry-After for a 503: retry_after ± retry_jitter,
// rounded to whole seconds (the header's unit), at least one second.
func (l *Limiter) RetryAfter() time.Duration {
	lm := l.lim.Load()
	d := float64(lm.cfg.RetryAfter)
	if j := lm.cfg.RetryJitter; j > 0 {
		d *= 1 + j*(2*l.float64()-1)
	}
	return max(time.Duration(d).Round(time.Second), time.Second)
}

func (l *Limiter) float64() float64 {
	if l.rnd == nil {
		return rand.Float64()
	}
	l.rndMu.Lock()
	defer l.rndMu.Unlock()
	return float64(l.rnd.Uint64()>>11) / (1 << 53)
}
