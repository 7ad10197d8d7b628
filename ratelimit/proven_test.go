package ratelimit

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// offences are the ways a source earns an automatic ban from traffic that
// may be spoofed: each sends from src, proven or not, and returns the
// decisions seen.
var offences = []struct {
	name string
	do   func(l *Limiter, c *clock, src netip.Addr, proven bool) map[string]int
	// seen must appear among the decisions either way: the traffic is
	// still dropped, proven or not.
	seen string
	ban  Reason
}{
	{"scanner", func(l *Limiter, c *clock, src netip.Addr, proven bool) map[string]int {
		d, r := l.Request(src, "OPTIONS", "", "friendly-scanner", proven)
		return map[string]int{d.String() + " " + r.String(): 1}
	}, "drop scanner", ReasonScanner},
	{"malformed", func(l *Limiter, c *clock, src netip.Addr, proven bool) map[string]int {
		for range 3 * DefaultConfig().MalformedLimit {
			l.Malformed(src, proven)
		}
		return nil
	}, "", ReasonMalformed},
	{"packet flood", func(l *Limiter, c *clock, src netip.Addr, proven bool) map[string]int {
		got := map[string]int{}
		for range 2 * 1000 { // 1000/s for 2 s, flood_window 1 s
			got[l.Packet(src, 200, proven).String()]++
			c.Advance(time.Millisecond)
		}
		return got
	}, "drop", ReasonFlood},
	{"request flood", func(l *Limiter, c *clock, src netip.Addr, proven bool) map[string]int {
		got := map[string]int{}
		for range 2 * 200 { // 200/s for 2 s
			d, r := l.Request(src, "OPTIONS", "", "", proven)
			got[d.String()+" "+r.String()]++
			c.Advance(5 * time.Millisecond)
		}
		return got
	}, "drop method_rate", ReasonFlood},
}

// TestUnprovenNeverBanned: over UDP anyone can spoof a victim's address,
// so no traffic from an unproven source bans it, whatever the path, and
// nothing is reported to OnBan; its offending traffic is still dropped
// one by one. The same traffic from a proven source bans it.
func TestUnprovenNeverBanned(t *testing.T) {
	for _, tc := range offences {
		for _, proven := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/proven=%v", tc.name, proven), func(t *testing.T) {
				var rec recorder
				l, c := newLimiter(t, func(c *Config) { c.FloodWindow = time.Second }, rec.events())
				src := addr("198.51.100.66")
				got := tc.do(l, c, src, proven)
				if tc.seen != "" && got[tc.seen] == 0 {
					t.Errorf("not dropped: %v", got)
				}
				bans := rec.Bans()
				if !proven {
					if l.Banned(src) || len(bans) != 0 || len(l.Bans()) != 0 || got["drop flood"] != 0 {
						t.Fatalf("unproven source banned: %v, OnBan %+v", got, bans)
					}
					if s := l.Stats(); s.BanRecords != 0 || s.Dropped[ReasonFlood] != 0 {
						t.Fatalf("stats %+v", s)
					}
					return
				}
				if !l.Banned(src) || len(bans) != 1 || bans[0].Reason != tc.ban || bans[0].Manual {
					t.Fatalf("proven source not banned: %v, OnBan %+v", got, bans)
				}
			})
		}
	}
}

// TestUnprovenNotScored: a source's unproven offences do not add up to a
// ban once it is proven, nor do they leave state behind.
func TestUnprovenNotScored(t *testing.T) {
	l, _ := newLimiter(t, func(c *Config) { c.MalformedLimit = 3 }, Events{})
	src := addr("198.51.100.67")
	for range 100 {
		l.Malformed(src, false)
		l.Request(src, "OPTIONS", "", "sipvicious", false)
	}
	if s := l.Stats(); s.Sources != 0 || s.BanRecords != 0 || s.Dropped[ReasonScanner] != 100 {
		t.Fatalf("unproven offences kept state: %+v", s)
	}
	l.Malformed(src, true)
	l.Malformed(src, true)
	if l.Banned(src) {
		t.Fatal("unproven junk counted towards a proven source's ban")
	}
	l.Malformed(src, true)
	if !l.Banned(src) {
		t.Fatal("not banned at malformed_limit")
	}
}

// TestSpoofedDrainDoesNotBan: a spoofer floods unproven traffic from a
// victim's address, draining its budgets, while the victim's own proven
// traffic keeps coming (once a second or more): the victim's requests are
// limited like the spoofed ones, but the victim is never banned. Once the
// spoofing stops, a proven flood of its own still bans.
func TestSpoofedDrainDoesNotBan(t *testing.T) {
	var rec recorder
	l, c := newLimiter(t, func(c *Config) { c.FloodWindow = 2 * time.Second }, rec.events())
	victim := addr("203.0.113.77")
	victimOver := 0
	for i := range 10 * 100 { // 10 s at 100 spoofed requests a second
		l.Packet(victim, 500, false)
		l.Request(victim, "OPTIONS", "", "", false)
		if i%20 == 0 { // the victim itself, 5 times a second, over TCP
			if d, r := l.Request(victim, "OPTIONS", "", "", true); d != Allow {
				if r == ReasonFlood {
					t.Fatalf("victim banned at %d", i)
				}
				victimOver++
			}
		}
		c.Advance(10 * time.Millisecond)
	}
	if l.Banned(victim) || len(rec.Bans()) != 0 {
		t.Fatalf("victim banned: %+v", rec.Bans())
	}
	if victimOver == 0 {
		t.Fatal("the spoofed flood did not drain the victim's budget: the test tests nothing")
	}
	// Without the spoofer, the source's own proven flood is banned.
	for range 3 * 200 {
		l.Request(victim, "OPTIONS", "", "", true)
		c.Advance(5 * time.Millisecond)
	}
	if b := rec.Bans(); !l.Banned(victim) || len(b) != 1 || b[0].Reason != ReasonFlood {
		t.Fatalf("proven flood not banned: %+v", b)
	}
}

// TestUnprovenOverflow: at max_sources, unproven offenders still cost
// nothing beyond the cap, and no ban records at all.
func TestUnprovenOverflow(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) {
		c.MaxSources = 100
		c.FloodWindow = time.Second
	}, Events{})
	for i := range 10_000 {
		src := nthAddr(i % 1000)
		l.Packet(src, 1000, false)
		l.Request(src, "OPTIONS", "", "", false)
		l.Request(src, "OPTIONS", "", "sipcli/v1.8", false)
		l.Malformed(src, false)
		if i%100 == 99 {
			c.Advance(10 * time.Millisecond)
		}
	}
	if s := l.Stats(); s.Sources > 100 || s.BanRecords != 0 || s.Bans != 0 || s.BanOverflow != 0 {
		t.Fatalf("stats %+v", s)
	}
}
