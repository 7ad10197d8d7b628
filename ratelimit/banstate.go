package ratelimit

import (
	"math"
	"slices"
	"time"
)

// timeBound bounds the ns readings of restored times (±146 years around
// the epoch), so that adding maxBan or ban_time to them cannot overflow.
const timeBound = 1 << 62

// fromTime is toTime's inverse: t in ns since the epoch (negative before
// it), clamped to ±timeBound. The zero Time, or year 9999, saturates
// Sub and is then clamped.
func (l *Limiter) fromTime(t time.Time) int64 {
	return min(max(int64(t.Sub(l.epoch)), -timeBound), timeBound)
}

// BanHistory lists every ban record held, sorted by prefix: bans in
// force, and expired ones still remembered for escalation (not yet
// forgotten, see ban_forget), sources' and prefixes' alike. It is what to
// persist across a restart and give back to RestoreBans.
func (l *Limiter) BanHistory() []Ban {
	var out []Ban
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for k, rec := range sh.bans {
			out = append(out, l.banOf(k.prefix(), rec))
		}
		sh.mu.Unlock()
	}
	if p := l.wide.Load(); p != nil {
		for _, w := range *p {
			out = append(out, l.banOf(w.p, w.rec))
		}
	}
	slices.SortFunc(out, func(a, b Ban) int { return a.Addr.Compare(b.Addr) })
	return out
}

// RestoreBans re-creates ban records saved from BanHistory, typically
// once at start, before traffic; it returns how many it restored. A
// record replaces any held for the same prefix. Skipped: invalid or
// allowlisted prefixes, records already forgotten (ended ban_forget ago or
// more) and, once max_bans source records are held, further automatic
// ones (in the order given). Until is clamped to maxBan (100 years)
// ahead, Since to at most Until. A record already expired is taken as
// reported to OnUnban (it was, before the restart), so Sweep does not
// report it again; one in force is reported by Sweep when it ends.
// Neither OnBan nor OnUnban is called: these are not new bans.
func (l *Limiter) RestoreBans(bs []Ban) (restored int) {
	now := l.nowNS()
	lm := l.lim.Load()
	forget := int64(lm.cfg.BanForget)
	wideChanged := false
	for _, b := range bs {
		if !b.Addr.IsValid() {
			continue
		}
		p := normPrefix(b.Addr)
		if lm.allowedPrefix(p) {
			continue
		}
		rec := l.recOf(b, now)
		if rec.until <= now-forget { // as Sweep forgets it
			continue
		}
		if k, ok := prefixKey(p); ok {
			sh := l.shardOf(k)
			sh.mu.Lock()
			_, held := sh.bans[k]
			if !held {
				if n := l.banRecs.Add(1); !rec.manual && n > int64(lm.cfg.MaxBans) {
					l.banRecs.Add(-1)
					sh.mu.Unlock()
					continue
				}
			}
			sh.bans[k] = rec
			sh.mu.Unlock()
		} else {
			l.wideMu.Lock()
			if i := l.wideIndex(p); i >= 0 {
				l.wideList[i].rec = rec
			} else {
				l.wideList = append(l.wideList, wideBan{p: p, rec: rec})
			}
			l.wideMu.Unlock()
			wideChanged = true
		}
		restored++
	}
	if wideChanged {
		l.wideMu.Lock()
		l.publishWide()
		l.wideMu.Unlock()
	}
	return restored
}

// recOf is the record of b, clamped so that no later arithmetic
// overflows.
func (l *Limiter) recOf(b Ban, now int64) banRec {
	rec := banRec{
		until:  min(l.fromTime(b.Until), now+int64(maxBan)),
		count:  int32(min(max(b.Count, 1), 1<<30)),
		reason: b.Reason,
		manual: b.Manual,
	}
	rec.since = min(l.fromTime(b.Since), rec.until)
	rec.notified = rec.until <= now // Sweep's test of expiry
	if !rec.manual {
		rec.over = b.Over
		rec.events = int32(min(max(b.Events, 0), math.MaxInt32))
		rec.windowMS = int32(min(max(b.Window/time.Millisecond, 0), math.MaxInt32))
	}
	return rec
}
