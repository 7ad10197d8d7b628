package nat

import (
	"net/netip"
	"sync"
	"time"
)

// Forgetting learns which NATs forget a mapping sooner than the
// keepalive interval. A UDP flow that died of unanswered keepalives, whose
// endpoint registers again from the same public address, as the same
// running phone (the caller's identity includes what a reboot changes,
// such as the Call-ID), was not left by its phone: its NAT dropped the
// mapping between two keepalives. That NAT's flows then get a shorter interval
// (Keepaliver.Shorten), halved each time it happens again, so the
// interval comes down to what the NAT keeps. Nothing is probed: the
// measurement costs no phone its reachability beyond the loss that
// revealed it. Safe for concurrent use.
type Forgetting struct {
	ka     *Keepaliver
	now    func() time.Time
	within time.Duration // a registration this soon after the death counts

	mu   sync.Mutex
	died map[string]death // by identity (an AOR)
	// learned is when each NAT's interval was last shortened: deaths
	// from before then (several lines of one phone) teach nothing new.
	learned map[netip.Addr]time.Time
}

type death struct {
	nat netip.Addr
	at  time.Time
}

// maxDeaths bounds what Forgetting remembers.
const maxDeaths = 100_000

// NewForgetting shortens ka's intervals; a registration within `within`
// of the death it follows counts (the phones' registration interval).
func NewForgetting(ka *Keepaliver, now func() time.Time, within time.Duration) *Forgetting {
	if now == nil {
		now = time.Now
	}
	return &Forgetting{ka: ka, now: now, within: within, died: make(map[string]death), learned: make(map[netip.Addr]time.Time)}
}

// Died notes that UDP flow f died of unanswered keepalives, taking the
// bindings of ids (their AORs) along.
func (l *Forgetting) Died(f FlowKey, ids []string) {
	if f.Transport != UDP {
		return
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.died)+len(ids) > maxDeaths {
		for id, d := range l.died {
			if now.Sub(d.at) > l.within {
				delete(l.died, id)
			}
		}
		if len(l.died)+len(ids) > maxDeaths {
			return // a wave of deaths this large is not one NAT's habit
		}
	}
	for _, id := range ids {
		l.died[id] = death{nat: f.Remote.Addr().Unmap(), at: now}
	}
}

// Registered notes that id registered on UDP flow f. When id's flow died
// of unanswered keepalives shortly before, behind the same public
// address, that NAT forgot the mapping: its interval is shortened, and
// the new one returned (0: nothing learned).
func (l *Forgetting) Registered(f FlowKey, id string) time.Duration {
	if f.Transport != UDP {
		return 0
	}
	now := l.now()
	l.mu.Lock()
	d, ok := l.died[id]
	if ok {
		delete(l.died, id)
	}
	if !ok || d.nat != f.Remote.Addr().Unmap() || now.Sub(d.at) > l.within || !d.at.After(l.learned[d.nat]) {
		l.mu.Unlock()
		return 0
	}
	if len(l.learned) >= maxDeaths {
		clear(l.learned)
	}
	l.learned[d.nat] = now
	l.mu.Unlock()
	return l.ka.Shorten(d.nat)
}
