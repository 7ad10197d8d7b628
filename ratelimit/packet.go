package ratelimit

import (
	"math"
	"net/netip"
	"sync/atomic"
)

// Packet decides on a UDP datagram of size bytes from src, before parsing:
// Allow or Drop. It does not allocate.
//
// proven says that src has shown it receives what is sent to it (the
// datagram belongs to a registered flow, or echoes a nonce sent to src);
// over UDP anyone can spoof any source, so only a proven source is ever
// banned.
//
// Drop: src is banned; or unproven while unproven sources together are
// over unproven_rate; or over its packet or byte budget (a proven source
// over budget without pause for flood_window is banned); or untracked and
// the shared overflow budget is spent.
func (l *Limiter) Packet(src netip.Addr, size int, proven bool) Decision {
	k, a, ok := keyOf(src)
	if !ok {
		l.count(&l.shards[0], Drop, ReasonMalformed, src)
		return Drop
	}
	sh := l.shardOf(k)
	lm := l.lim.Load()
	if lm.allowed(a) {
		l.count(sh, Allow, ReasonNone, src)
		return Allow
	}
	now := l.nowNS()
	if l.wideBanned(a, now) {
		l.count(sh, Drop, ReasonBanned, src)
		return Drop
	}
	sh.mu.Lock()
	if sh.banned(k, now) {
		sh.mu.Unlock()
		l.count(sh, Drop, ReasonBanned, src)
		return Drop
	}
	// A new unproven source is charged to unproven_rate before it gets an
	// entry: forged addresses beyond it cost no state at all.
	charged := false
	e := l.lookup(sh, k, find)
	if e == nil && !proven {
		if !l.unprovenAllow(lm, false, now) {
			sh.mu.Unlock()
			l.count(sh, Drop, ReasonOverflow, src)
			return Drop
		}
		charged = true
	}
	if e == nil {
		e = l.lookup(sh, k, insert)
	}
	if e == nil {
		sh.mu.Unlock()
		f := lm.cfg.OverflowShare
		if !lm.pkt.takeAtomic(&l.overPkt, now, 1, f) || !lm.bytes.takeAtomic(&l.overBytes, now, float64(max(size, 0)), f) ||
			!(charged || l.unprovenAllow(lm, proven, now)) {
			l.count(sh, Drop, ReasonOverflow, src)
			return Drop
		}
		l.count(sh, Allow, ReasonNone, src)
		return Allow
	}
	sl := sh.lim // e's tats are scaled to it
	f := sl.factor(e)
	r := ReasonNone
	tp, okp := sl.pkt.next(e.pkt, now, 1, f)
	tb, okb := sl.bytes.next(e.bytes, now, float64(max(size, 0)), f)
	switch {
	case !okp:
		r = ReasonPacketRate
	case !okb:
		r = ReasonByteRate
	default:
		e.pkt, e.bytes = tp, tb
	}
	b, banned := l.floodLocked(sh, k, e, r, now, proven)
	if banned {
		r = ReasonFlood
	}
	sh.mu.Unlock()
	if banned {
		l.emitBan(b)
	}
	if r == ReasonNone && !charged && !l.unprovenAllow(lm, proven, now) {
		r = ReasonOverflow
	}
	if r == ReasonNone {
		l.count(sh, Allow, ReasonNone, src)
		return Allow
	}
	l.count(sh, Drop, r, src)
	return Drop
}

// unprovenAllow charges a datagram its own source allowed to the budget
// all unproven sources share (unproven_rate): a flood from many spoofed
// addresses, each within its own budget, still cannot hand the parser
// more than that, and a single flooder only ever spends its own.
func (l *Limiter) unprovenAllow(lm *limits, proven bool, now int64) bool {
	return proven || lm.unproven.takeAtomic(&l.unprovenTat, now, 1, 1)
}

// Accept decides on a new TCP, TLS or WebSocket connection from src:
// Allow or Drop (close it). On Allow, release must be called when the
// connection closes; it is idempotent. release is never nil. A connection
// attempt is taken as proven (the handshake, or SYN cookies under load,
// show that src receives what is sent to it): a connection flood bans.
//
// Drop: src is banned; or opens connections faster than conn_rate, or
// already holds max_conns (both scaled by bindings); or is untracked and
// the shared overflow budget is spent.
func (l *Limiter) Accept(src netip.Addr) (Decision, func()) {
	k, a, ok := keyOf(src)
	if !ok {
		l.count(&l.shards[0], Drop, ReasonMalformed, src)
		return Drop, noop
	}
	sh := l.shardOf(k)
	if l.lim.Load().allowed(a) {
		l.count(sh, Allow, ReasonNone, src)
		return Allow, noop
	}
	now := l.nowNS()
	if l.wideBanned(a, now) {
		l.count(sh, Drop, ReasonBanned, src)
		return Drop, noop
	}
	sh.mu.Lock()
	if sh.banned(k, now) {
		sh.mu.Unlock()
		l.count(sh, Drop, ReasonBanned, src)
		return Drop, noop
	}
	e := l.lookup(sh, k, insert)
	if e == nil {
		sh.mu.Unlock()
		l.overMu.Lock()
		r := l.overLim.acceptLocked(&l.overEnt, l.overLim.cfg.OverflowShare, now)
		l.overMu.Unlock()
		if r != ReasonNone {
			l.count(sh, Drop, ReasonOverflow, src)
			return Drop, noop
		}
		l.count(sh, Allow, ReasonNone, src)
		return Allow, l.releaser(k, true)
	}
	r := sh.lim.acceptLocked(e, sh.lim.factor(e), now)
	b, banned := l.floodLocked(sh, k, e, r, now, true)
	if banned {
		r = ReasonFlood
	}
	sh.mu.Unlock()
	if banned {
		l.emitBan(b)
	}
	if r != ReasonNone {
		l.count(sh, Drop, r, src)
		return Drop, noop
	}
	l.count(sh, Allow, ReasonNone, src)
	return Allow, l.releaser(k, false)
}

// acceptLocked applies the connection limits to e, whose tats lm is the
// scale of, and takes a slot.
func (lm *limits) acceptLocked(e *entry, f float64, now int64) Reason {
	if float64(e.conns) >= float64(lm.cfg.MaxConns)*f {
		return ReasonConnCount
	}
	if !lm.conn.take(&e.conn, now, 1, f) {
		return ReasonConnRate
	}
	e.conns++
	return ReasonNone
}

// releaser returns the idempotent func that gives back k's connection slot.
func (l *Limiter) releaser(k key, overflow bool) func() {
	var done atomic.Bool
	return func() {
		if !done.CompareAndSwap(false, true) {
			return
		}
		if overflow {
			l.overMu.Lock()
			l.overEnt.conns--
			l.overMu.Unlock()
			return
		}
		sh := l.shardOf(k)
		sh.mu.Lock()
		// The entry cannot have been swept while it held a connection.
		if e := l.lookup(sh, k, find); e != nil && e.conns > 0 {
			e.conns--
		}
		sh.mu.Unlock()
	}
}

// floodLocked records that source k (entry e) went over limit r at now
// (ReasonNone: it did not) and bans it once it has been over, without a
// pause of floodBreak, for flood_window. Only a proven source's over-limit
// events make that streak. An unproven one's may be spoofed: they end the
// streak instead, so that whoever drains a source's budgets with spoofed
// traffic gets neither that traffic nor the source's own (then over the
// limit too) counted towards a ban. sh.mu must be held; the ban is
// emitted by the caller once the lock is released.
func (l *Limiter) floodLocked(sh *shard, k key, e *entry, r Reason, now int64, proven bool) (Ban, bool) {
	switch {
	case r == ReasonNone:
		return Ban{}, false
	case !proven:
		e.overSince, e.lastOver, e.overN = 0, 0, 0
		return Ban{}, false
	}
	if e.lastOver == 0 || now-e.lastOver > floodBreak {
		e.overSince, e.overN = now, 0
	}
	e.lastOver = now
	e.overN = min(e.overN+1, math.MaxInt32-1)
	if now-e.overSince < int64(sh.lim.cfg.FloodWindow) {
		return Ban{}, false
	}
	return l.banLocked(sh, k, e, ReasonFlood, evidence{over: r, events: e.overN, window: now - e.overSince}, now)
}
