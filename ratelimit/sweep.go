package ratelimit

// idle reports whether e's own state holds nothing that a fresh entry
// would not: every bucket full, every score zero, no connections, bindings
// or flood streak. Its post-parse buckets (e.req) are checked apart.
func (e *entry) idle(now int64) bool {
	if e.bindings > 0 || e.conns > 0 || e.lastOver != 0 && now-e.lastOver <= floodBreak {
		return false
	}
	return max(e.pkt, e.bytes, e.conn, e.reply, e.auth, e.malformed) <= now
}

// sweepEntry drops e's post-parse buckets if they are all full, and
// reports whether e is then idle as a whole. sh.mu must be held.
func (sh *shard) sweepEntry(e *entry, now int64) bool {
	if e.req != 0 && sh.reqs[e.req-1].idle(now) {
		sh.dropReqs(e)
	}
	return e.req == 0 && e.idle(now)
}

// Sweep deletes idle sources and AORs and forgotten ban records, and
// reports bans that have expired since the last Sweep to OnUnban. Run it
// on a ticker (every few seconds); its cost is linear in what is tracked,
// one shard lock at a time.
func (l *Limiter) Sweep() {
	now := l.nowNS()
	forget := int64(l.lim.Load().cfg.BanForget)
	var expired []Ban
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for k, j := range sh.idx {
			if sh.sweepEntry(&sh.ents[j], now) {
				delete(sh.idx, k)
				sh.free = append(sh.free, j)
				l.tracked.Add(-1)
			}
		}
		sh.compact()
		for k, rec := range sh.bans {
			if rec.until <= now && !rec.notified {
				rec.notified = true
				sh.bans[k] = rec
				expired = append(expired, l.banOf(k.prefix(), rec))
			}
			if rec.until <= now-forget {
				delete(sh.bans, k)
				l.banRecs.Add(-1)
			}
		}
		sh.mu.Unlock()
	}
	for i := range l.aors {
		as := &l.aors[i]
		as.mu.Lock()
		for k, ae := range as.m {
			if max(ae.register, ae.auth) <= now {
				delete(as.m, k)
				l.aorCount.Add(-1)
			}
		}
		as.mu.Unlock()
	}
	expired = l.sweepWide(now, forget, expired)
	l.inflight.pace(now, l.lim.Load().cfg.InflightTime)
	if l.ev.OnUnban != nil {
		for _, b := range expired {
			l.ev.OnUnban(b)
		}
	}
}

// compact gives back the memory of a shard that has shrunk to a quarter of
// its peak (after a flood of distinct sources, say). Go maps never shrink,
// so the index is rebuilt too. The slots of post-parse buckets are
// compacted the same way, on their own. sh.mu must be held.
func (sh *shard) compact() {
	if len(sh.free) >= 256 && len(sh.free) >= 3*len(sh.idx) {
		ents := make([]entry, 0, 2*len(sh.idx))
		idx := make(map[key]int32, len(sh.idx))
		for k, j := range sh.idx {
			idx[k] = int32(len(ents))
			ents = append(ents, sh.ents[j])
		}
		sh.ents, sh.idx, sh.free = ents, idx, nil
	}
	if live := len(sh.reqs) - len(sh.reqFree); len(sh.reqFree) >= 256 && len(sh.reqFree) >= 3*live {
		reqs := make([]reqLimits, 0, 2*live)
		for _, j := range sh.idx {
			if e := &sh.ents[j]; e.req != 0 {
				reqs = append(reqs, sh.reqs[e.req-1])
				e.req = int32(len(reqs))
			}
		}
		sh.reqs, sh.reqFree = reqs, nil
	}
}

// Stats is a snapshot for metrics.
type Stats struct {
	Sources       int // sources tracked individually, bound ones included
	BoundSources  int // tracked sources holding bindings
	AORs          int // addresses-of-record tracked
	Bans          int // bans in force (sources and prefixes)
	BanRecords    int // source ban records, in force or kept for escalation
	Inflight      int // requests toward the core now
	InflightLimit int // how many may be: max_inflight, or more at the core's pace

	OverflowHits uint64 // times an untracked source used the shared budget (max_sources reached)
	AOROverflow  uint64 // times an AOR went unlimited because max_aors was reached
	BanOverflow  uint64 // automatic bans not recorded because max_bans was reached

	Allowed  uint64
	Rejected [NumReasons]uint64 // by Reason
	Dropped  [NumReasons]uint64 // by Reason
}

// Stats counts what is tracked (walking the ban tables under their locks,
// one shard at a time) and sums the decision counters.
func (l *Limiter) Stats() Stats {
	now := l.nowNS()
	s := Stats{
		Sources:       int(l.tracked.Load()),
		BoundSources:  int(l.bound.Load()),
		AORs:          int(l.aorCount.Load()),
		BanRecords:    int(l.banRecs.Load()),
		Inflight:      int(l.inflight.n.Load()),
		InflightLimit: int(l.inflightLimit(false)),
		OverflowHits:  l.overflowHits.Load(),
		AOROverflow:   l.aorOverflow.Load(),
		BanOverflow:   l.banOverflow.Load(),
	}
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for _, rec := range sh.bans {
			if now < rec.until {
				s.Bans++
			}
		}
		sh.mu.Unlock()
		s.Allowed += sh.counts[Allow][ReasonNone].Load()
		for r := range NumReasons {
			s.Rejected[r] += sh.counts[Reject][r].Load()
			s.Dropped[r] += sh.counts[Drop][r].Load()
		}
	}
	if p := l.wide.Load(); p != nil {
		for _, w := range *p {
			if now < w.rec.until {
				s.Bans++
			}
		}
	}
	return s
}
