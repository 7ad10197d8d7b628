package ratelimit

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestSweep(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) { c.PacketRate, c.PacketBurst = 10, 10 }, Events{})
	for i := range 100 {
		l.Packet(nthAddr(i), 100, true)
	}
	bound := nthAddr(0)
	l.SetBindings(bound, 1)
	drained := nthAddr(1)
	for range 20 {
		l.Packet(drained, 100, true)
	}
	l.Sweep() // nothing is idle yet
	if s := l.Stats(); s.Sources != 100 {
		t.Fatalf("swept early: %+v", s)
	}
	c.Advance(200 * time.Millisecond) // one-datagram buckets are full again
	l.Sweep()
	if s := l.Stats(); s.Sources != 2 {
		t.Fatalf("after 200ms: %+v", s)
	}
	c.Advance(2 * time.Second)
	l.Sweep()
	if s := l.Stats(); s.Sources != 1 || s.BoundSources != 1 {
		t.Fatalf("bound source swept: %+v", s)
	}
	// A swept source starts afresh, as if never seen.
	for range 10 {
		if d := l.Packet(drained, 100, true); d != Allow {
			t.Fatal("swept source not fresh")
		}
	}
}

// TestCallbacksWithoutLocks: callbacks may call back into the Limiter.
func TestCallbacksWithoutLocks(t *testing.T) {
	var l *Limiter
	calls := 0
	ev := Events{
		OnDecision: func(Decision, Reason, netip.Addr) { calls++; l.Stats(); l.Bans() },
		OnBan:      func(b Ban) { calls++; l.Banned(b.Addr.Addr()); l.Bans() },
		OnUnban:    func(b Ban) { calls++; l.Banned(b.Addr.Addr()); l.Stats() },
	}
	l, c := newLimiter(t, func(c *Config) { c.MalformedLimit = 1 }, ev)
	src := addr("192.0.2.5")
	l.Malformed(src, true)
	l.Packet(src, 1, true)
	l.Request(src, "REGISTER", "", "", true)
	l.Accept(src)
	c.Advance(time.Hour)
	l.Sweep()
	l.Request(src, "OPTIONS", "", "friendly-scanner", true)
	l.Unban(SourcePrefix(src))
	if calls != 8 {
		t.Fatalf("%d callbacks", calls)
	}
}

// TestConcurrent hammers every entry point from several goroutines, for
// the race detector.
func TestConcurrent(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) {
		c.MaxSources = 500
		c.MaxConns = 4
		c.MaxInflight = 8
	}, Events{OnBan: func(Ban) {}, OnUnban: func(Ban) {}, OnDecision: func(Decision, Reason, netip.Addr) {}})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 0))
			for i := range 5000 {
				src := nthAddr(r.IntN(2000))
				switch i % 8 {
				case 0:
					if d, rel := l.Accept(src); d == Allow {
						rel()
						rel()
					}
				case 1:
					l.Request(src, "REGISTER", fmt.Sprintf("sip:%d@x", r.IntN(50)), "", r.IntN(2) == 0)
				case 2:
					l.AuthFailure(src, "sip:1@x")
				case 3:
					l.SetBindings(src, r.IntN(3))
				case 4:
					if rel, ok := l.Inflight(); ok {
						rel()
					}
				case 5:
					if g == 0 {
						c.Advance(10 * time.Millisecond)
						l.Sweep()
					}
				case 6:
					l.Request(src, "OPTIONS", "", "friendly-scanner", r.IntN(2) == 0)
				default:
					l.Packet(src, 500, r.IntN(2) == 0)
				}
			}
		}()
	}
	wg.Wait()
	c.Advance(48 * time.Hour)
	for range 2 {
		for i := range 2000 {
			l.SetBindings(nthAddr(i), 0)
		}
		l.Sweep()
	}
	s := l.Stats()
	if s.Sources != 0 || s.BoundSources != 0 || s.Inflight != 0 || s.AORs != 0 || s.Bans != 0 || s.BanRecords != 0 {
		t.Fatalf("left behind: %+v", s)
	}
	for i := range l.shards {
		for _, j := range l.shards[i].idx {
			if e := l.shards[i].ents[j]; e.conns != 0 {
				t.Fatalf("connection slot leaked: %+v", e)
			}
		}
	}
}
