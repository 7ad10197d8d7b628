package ratelimit

import (
	"math"
	"net/netip"
	"slices"
	"time"
)

// banRec is a ban, in force while now < until, and kept after it ends
// (until ban_forget has passed) so that the next ban of the same source
// lasts longer.
type banRec struct {
	since, until int64
	count        int32
	events       int32 // evidence (Ban.Events)
	windowMS     int32 // evidence (Ban.Window), in milliseconds
	reason, over Reason
	manual       bool
	notified     bool // expiry reported to OnUnban
}

// evidence is what an automatic ban is for (Ban.Events, Window, Over).
type evidence struct {
	over   Reason
	events int32
	window int64 // ns
}

// maxBan bounds any ban, so that until and Ban.Until cannot overflow.
const maxBan = 100 * 365 * 24 * time.Hour

// wideBan is a ban of a prefix wider than one source (an operator's).
type wideBan struct {
	p   netip.Prefix
	rec banRec
}

// banned reports whether k is banned now. sh.mu must be held.
func (sh *shard) banned(k key, now int64) bool {
	rec, ok := sh.bans[k]
	return ok && now < rec.until
}

// wideBanned reports whether a falls in a prefix ban. Lock-free.
func (l *Limiter) wideBanned(a netip.Addr, now int64) bool {
	p := l.wide.Load()
	if p == nil {
		return false
	}
	for i := range *p {
		if w := &(*p)[i]; now < w.rec.until && w.p.Contains(a) {
			return true
		}
	}
	return false
}

func (l *Limiter) banOf(p netip.Prefix, rec banRec) Ban {
	return Ban{
		Addr: p, Reason: rec.reason, Since: l.toTime(rec.since), Until: l.toTime(rec.until), Count: int(rec.count),
		Manual: rec.manual, Events: int(rec.events), Window: time.Duration(rec.windowMS) * time.Millisecond, Over: rec.over,
	}
}

// banLocked is an automatic ban of source k (entry e, nil if untracked)
// for r, with evidence ev. It refuses sources holding bindings (unless
// ban_bound) and new records beyond max_bans. The caller has checked that
// k is proven. sh.mu must be held; the caller emits the Ban.
func (l *Limiter) banLocked(sh *shard, k key, e *entry, r Reason, ev evidence, now int64) (Ban, bool) {
	if e != nil && e.bindings > 0 && !sh.lim.cfg.BanBound {
		return Ban{}, false
	}
	b, ok := l.banKeyLocked(sh, k, r, 0, &ev, now)
	if ok && e != nil {
		e.overSince, e.lastOver, e.overN = 0, 0, 0
	}
	return b, ok
}

// banKeyLocked bans k for d (0: by escalation). An active ban is extended,
// never shortened. Automatic bans (ev != nil) respect max_bans; the
// others are manual. sh.mu must be held.
func (l *Limiter) banKeyLocked(sh *shard, k key, r Reason, d time.Duration, ev *evidence, now int64) (Ban, bool) {
	rec, ok := sh.bans[k]
	if !ok {
		if n := l.banRecs.Add(1); ev != nil && n > int64(sh.lim.cfg.MaxBans) {
			l.banRecs.Add(-1)
			l.banOverflow.Add(1)
			return Ban{}, false
		}
	}
	rec.apply(r, d, ev, now, sh.lim.banDuration)
	sh.bans[k] = rec
	return l.banOf(k.prefix(), rec), true
}

// apply bans (again) for r and d, with evidence ev (nil: a manual ban).
func (rec *banRec) apply(r Reason, d time.Duration, ev *evidence, now int64, dur func(int32) time.Duration) {
	if rec.count < 1<<30 {
		rec.count++
	}
	if d <= 0 {
		d = dur(rec.count)
	}
	until := now + int64(min(d, maxBan))
	if now < rec.until {
		until = max(until, rec.until)
	} else {
		rec.since = now
	}
	rec.until, rec.reason, rec.notified = until, r, false
	rec.manual = ev == nil
	rec.over, rec.events, rec.windowMS = ReasonNone, 0, 0
	if ev != nil {
		rec.over, rec.events = ev.over, ev.events
		rec.windowMS = int32(min(ev.window/int64(time.Millisecond), math.MaxInt32))
	}
}

// Ban bans p (a source, or any prefix) for d, or, if d <= 0, for the
// escalated ban_time, and reports it to OnBan (Ban.Manual set). IPv6
// prefixes longer than /64 widen to the /64. Prefixes inside the
// allowlist are ignored; max_bans does not apply.
func (l *Limiter) Ban(p netip.Prefix, r Reason, d time.Duration) {
	if !p.IsValid() {
		return
	}
	p = normPrefix(p)
	lm := l.lim.Load()
	if lm.allowedPrefix(p) {
		return
	}
	now := l.nowNS()
	var b Ban
	if k, ok := prefixKey(p); ok {
		sh := l.shardOf(k)
		sh.mu.Lock()
		b, _ = l.banKeyLocked(sh, k, r, d, nil, now)
		sh.mu.Unlock()
	} else {
		l.wideMu.Lock()
		i := l.wideIndex(p)
		if i < 0 {
			i = len(l.wideList)
			l.wideList = append(l.wideList, wideBan{p: p})
		}
		l.wideList[i].rec.apply(r, d, nil, now, lm.banDuration)
		b = l.banOf(p, l.wideList[i].rec)
		l.publishWide()
		l.wideMu.Unlock()
	}
	l.emitBan(b)
}

// wideIndex is the index of p's ban in wideList, or -1. wideMu must be
// held.
func (l *Limiter) wideIndex(p netip.Prefix) int {
	return slices.IndexFunc(l.wideList, func(w wideBan) bool { return w.p == p })
}

// publishWide makes a copy of wideList the readers' snapshot. wideMu must
// be held.
func (l *Limiter) publishWide() {
	if len(l.wideList) == 0 {
		l.wide.Store(nil)
		return
	}
	s := slices.Clone(l.wideList)
	l.wide.Store(&s)
}

// Unban lifts the ban of p (as given to Ban, or a source's /32 or /64) and
// forgets its history, so a later ban starts again at ban_time. It reports
// whether a ban was in force. OnUnban is called for a ban in force, and
// for one expired but not yet reported by Sweep (which will not see it).
func (l *Limiter) Unban(p netip.Prefix) bool {
	if !p.IsValid() {
		return false
	}
	p = normPrefix(p)
	now := l.nowNS()
	var rec banRec
	var found bool
	if k, ok := prefixKey(p); ok {
		sh := l.shardOf(k)
		sh.mu.Lock()
		if rec, found = sh.bans[k]; found {
			delete(sh.bans, k)
			l.banRecs.Add(-1)
		}
		sh.mu.Unlock()
		p = k.prefix()
	} else {
		l.wideMu.Lock()
		if i := l.wideIndex(p); i >= 0 {
			rec, found = l.wideList[i].rec, true
			l.wideList = slices.Delete(l.wideList, i, i+1)
			l.publishWide()
		}
		l.wideMu.Unlock()
	}
	active := found && now < rec.until
	if found && (active || !rec.notified) && l.ev.OnUnban != nil {
		l.ev.OnUnban(l.banOf(p, rec))
	}
	return active
}

// Bans lists the bans in force, sorted by prefix.
func (l *Limiter) Bans() []Ban {
	now := l.nowNS()
	var out []Ban
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for k, rec := range sh.bans {
			if now < rec.until {
				out = append(out, l.banOf(k.prefix(), rec))
			}
		}
		sh.mu.Unlock()
	}
	if p := l.wide.Load(); p != nil {
		for _, w := range *p {
			if now < w.rec.until {
				out = append(out, l.banOf(w.p, w.rec))
			}
		}
	}
	slices.SortFunc(out, func(a, b Ban) int { return a.Addr.Compare(b.Addr) })
	return out
}

// Banned reports whether a is banned now (never, if allowlisted).
func (l *Limiter) Banned(a netip.Addr) bool {
	k, a, ok := keyOf(a)
	if !ok || l.lim.Load().allowed(a) {
		return false
	}
	now := l.nowNS()
	if l.wideBanned(a, now) {
		return true
	}
	sh := l.shardOf(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.banned(k, now)
}

// sweepWide is Sweep for prefix bans: expired ones are appended to
// expired, forgotten ones deleted.
func (l *Limiter) sweepWide(now, forget int64, expired []Ban) []Ban {
	l.wideMu.Lock()
	defer l.wideMu.Unlock()
	n, changed := len(l.wideList), false
	for i := range l.wideList {
		if w := &l.wideList[i]; w.rec.until <= now && !w.rec.notified {
			w.rec.notified = true
			expired = append(expired, l.banOf(w.p, w.rec))
			changed = true
		}
	}
	l.wideList = slices.DeleteFunc(l.wideList, func(w wideBan) bool {
		return w.rec.until <= now-forget
	})
	if changed || len(l.wideList) != n {
		l.publishWide()
	}
	return expired
}
