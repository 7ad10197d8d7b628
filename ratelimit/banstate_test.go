package ratelimit

import (
	"net/netip"
	"testing"
	"time"
)

// sameBan compares two Bans field by field (times with Equal).
func sameBan(a, b Ban) bool {
	return a.Addr == b.Addr && a.Reason == b.Reason && a.Since.Equal(b.Since) && a.Until.Equal(b.Until) &&
		a.Count == b.Count && a.Manual == b.Manual && a.Events == b.Events && a.Window == b.Window && a.Over == b.Over
}

func sameBans(t *testing.T, what string, got, want []Ban) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d bans, want %d:\n got %+v\nwant %+v", what, len(got), len(want), got, want)
	}
	for i := range got {
		if !sameBan(got[i], want[i]) {
			t.Fatalf("%s[%d]:\n got %+v\nwant %+v", what, i, got[i], want[i])
		}
	}
}

func withoutAddrs(bs []Ban, drop ...netip.Prefix) []Ban {
	var out []Ban
	for _, b := range bs {
		keep := true
		for _, p := range drop {
			keep = keep && b.Addr != p
		}
		if keep {
			out = append(out, b)
		}
	}
	return out
}

// TestBanStateRoundTrip: BanHistory, fed to a new Limiter's RestoreBans
// after a restart, keeps bans in force, escalation history and what
// OnUnban has already been told.
func TestBanStateRoundTrip(t *testing.T) {
	edit := func(c *Config) {
		c.BanTime, c.BanMax, c.BanForget = time.Minute, time.Hour, time.Hour
		c.MalformedLimit, c.AuthFailures = 1, 1
	}
	var rec1 recorder
	l1, c1 := newLimiter(t, edit, rec1.events())
	var (
		a    = addr("192.0.2.1")     // banned twice, in force
		b    = addr("192.0.2.2")     // banned once, expired, remembered
		c    = addr("2001:db8:1::7") // manual, in force
		d    = addr("192.0.2.4")     // expired long ago: forgotten by the restart
		al   = addr("10.1.2.3")      // allowlisted after the restart
		wide = pfx("198.51.100.0/24")
	)
	// No Sweep on l1: D's record is still held at export, but past
	// ban_forget by the time the new Limiter starts.
	l1.Malformed(d, true)
	c1.Advance(61 * time.Minute)
	l1.Malformed(a, true)
	c1.Advance(time.Minute)
	l1.Malformed(a, true) // count 2: 2m
	l1.AuthFailure(b, "")
	l1.Ban(SourcePrefix(c), ReasonManual, 30*time.Minute)
	l1.Ban(wide, ReasonManual, 30*time.Minute)
	l1.Ban(SourcePrefix(al), ReasonManual, 30*time.Minute)
	c1.Advance(90 * time.Second) // b's ban has ended, a's has not

	hist := l1.BanHistory()
	if len(hist) != 6 {
		t.Fatalf("BanHistory = %+v", hist)
	}
	active := l1.Bans()
	if len(active) != 4 {
		t.Fatalf("Bans = %+v", active)
	}

	// Restart 10s later: a new clock, so a new epoch.
	var rec2 recorder
	cfg := DefaultConfig()
	edit(&cfg)
	cfg.Allow = []string{"10.0.0.0/8"}
	c2 := new(clock)
	c2.Advance(time.Duration(c1.ns.Load()) + 10*time.Second)
	l2, err := New(cfg, c2.Now, rec2.events())
	if err != nil {
		t.Fatal(err)
	}
	if l2.epoch.Equal(l1.epoch) {
		t.Fatal("same epoch")
	}
	if n := l2.RestoreBans(hist); n != 4 {
		t.Fatalf("RestoreBans = %d, want 4", n)
	}
	if len(rec2.Bans()) != 0 || len(rec2.Unbans()) != 0 {
		t.Fatalf("events on restore: %+v %+v", rec2.Bans(), rec2.Unbans())
	}
	sameBans(t, "Bans", l2.Bans(), withoutAddrs(active, SourcePrefix(al)))
	sameBans(t, "BanHistory", l2.BanHistory(), withoutAddrs(hist, SourcePrefix(al), SourcePrefix(d)))
	if s := l2.Stats(); s.BanRecords != 3 || s.Bans != 3 {
		t.Fatalf("Stats = %+v", s)
	}
	for _, tt := range []struct {
		a    netip.Addr
		want bool
	}{{a, true}, {b, false}, {addr("2001:db8:1::beef"), true}, {addr("198.51.100.9"), true}, {d, false}, {al, false}} {
		if got := l2.Banned(tt.a); got != tt.want {
			t.Errorf("Banned(%s) = %v", tt.a, got)
		}
	}

	// b's expiry was reported before the restart: not again.
	l2.Sweep()
	if u := rec2.Unbans(); len(u) != 0 {
		t.Fatalf("OnUnban after restore: %+v", u)
	}
	// a's is, when it comes.
	c2.Advance(time.Minute)
	l2.Sweep()
	if u := rec2.Unbans(); len(u) != 1 || u[0].Addr != SourcePrefix(a) || u[0].Count != 2 {
		t.Fatalf("OnUnban = %+v", u)
	}
	// b's history is kept: its next ban is a second one.
	l2.Malformed(b, true)
	if bs := rec2.Bans(); len(bs) != 1 || bs[0].Addr != SourcePrefix(b) || bs[0].Count != 2 || bs[0].Duration() != 2*time.Minute {
		t.Fatalf("OnBan = %+v", bs)
	}
}

// TestRestoreBansMaxBans: max_bans bounds restored automatic source
// records; manual ones and replacements of held records pass.
func TestRestoreBansMaxBans(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) { c.MaxBans = 2 }, Events{})
	until := c.Now().Add(time.Hour)
	auto := func(i int) Ban {
		return Ban{Addr: SourcePrefix(nthAddr(i)), Reason: ReasonScanner, Since: c.Now(), Until: until, Count: 1, Events: 1}
	}
	manual := Ban{Addr: pfx("192.0.2.1/32"), Reason: ReasonManual, Since: c.Now(), Until: until, Count: 1, Manual: true}
	if n := l.RestoreBans([]Ban{auto(0), auto(1), auto(2), manual}); n != 3 {
		t.Fatalf("RestoreBans = %d, want 3", n)
	}
	if !l.Banned(nthAddr(0)) || !l.Banned(nthAddr(1)) || l.Banned(nthAddr(2)) || !l.Banned(addr("192.0.2.1")) {
		t.Fatalf("Bans = %+v", l.Bans())
	}
	// A held prefix is replaced, whatever the cap.
	b := auto(1)
	b.Count = 5
	if n := l.RestoreBans([]Ban{b, auto(3)}); n != 1 {
		t.Fatalf("RestoreBans = %d, want 1", n)
	}
	if s := l.Stats(); s.BanRecords != 3 || s.BanOverflow != 0 {
		t.Fatalf("Stats = %+v", s)
	}
	if h := l.BanHistory(); len(h) != 3 || h[1].Addr != SourcePrefix(nthAddr(1)) || h[1].Count != 5 {
		t.Fatalf("BanHistory = %+v", h)
	}
}

// TestRestoreBansGarbage: invalid input is skipped or clamped, never
// panics or overflows.
func TestRestoreBansGarbage(t *testing.T) {
	var rec recorder
	l, c := newLimiter(t, nil, rec.events())
	year1 := time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	year9999 := time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
	bs := []Ban{
		{},
		{Addr: netip.PrefixFrom(addr("192.0.2.1"), 99), Until: year9999},
		{Addr: pfx("192.0.2.2/32"), Until: year1, Manual: true},
		{Addr: pfx("192.0.2.3/32")}, // zero Until: long forgotten
		{Addr: pfx("192.0.2.4/32"), Since: year1, Until: year9999, Count: -5, Events: -1, Window: 1 << 62},
		{Addr: pfx("::ffff:198.51.100.0/120"), Since: year9999, Until: year9999, Count: 1 << 40, Manual: true},
	}
	if n := l.RestoreBans(bs); n != 2 {
		t.Fatalf("RestoreBans = %d, want 2", n)
	}
	now := c.Now()
	got := l.BanHistory()
	if len(got) != 2 || got[0].Addr != pfx("192.0.2.4/32") || got[1].Addr != pfx("198.51.100.0/24") {
		t.Fatalf("BanHistory = %+v", got)
	}
	for _, b := range got {
		if b.Until.After(now.Add(maxBan)) || b.Until.Before(now) || b.Since.After(b.Until) || b.Duration() < 0 ||
			b.Count < 1 || b.Count > 1<<30 || b.Events < 0 || b.Window < 0 {
			t.Errorf("not clamped: %+v", b)
		}
	}
	if !l.Banned(addr("192.0.2.4")) || !l.Banned(addr("198.51.100.1")) {
		t.Fatal("far-future bans not in force")
	}
	// Still in force 50 years on, and a ban on top neither overflows nor
	// shortens them.
	c.Advance(50 * 365 * 24 * time.Hour)
	l.Sweep()
	l.Ban(pfx("192.0.2.4/32"), ReasonManual, 0)
	l.Ban(pfx("198.51.100.0/24"), ReasonManual, 0)
	if b := l.Bans(); len(b) != 2 || !b[0].Until.After(c.Now()) || !b[1].Until.After(c.Now()) {
		t.Fatalf("Bans = %+v", b)
	}
	if u := rec.Unbans(); len(u) != 0 {
		t.Fatalf("OnUnban = %+v", u)
	}
	if n := l.RestoreBans(nil); n != 0 {
		t.Fatalf("RestoreBans(nil) = %d", n)
	}
}
