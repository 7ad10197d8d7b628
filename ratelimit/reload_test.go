package ratelimit

import (
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// drain sends datagrams from src until one is dropped; it returns how
// many passed.
func drain(t *testing.T, l *Limiter, src string) int {
	t.Helper()
	for n := range 1000 {
		if l.Packet(addr(src), 100, true) == Drop {
			return n
		}
	}
	t.Fatalf("%s: never dropped", src)
	return 0
}

// TestReloadRates: a drained source refills at a raised rate at once, is
// limited sooner at a lowered one, and keeps its entry either way; method
// budgets follow their method; a smaller max_sources evicts nothing.
func TestReloadRates(t *testing.T) {
	edit := func(c *Config) { c.PacketRate, c.PacketBurst = 10, 10 }
	l, c := newLimiter(t, edit, Events{})
	twin, tc := newLimiter(t, edit, Events{}) // never reloaded
	if n, m := drain(t, l, "192.0.2.1"), drain(t, twin, "192.0.2.1"); n != 10 || m != 10 {
		t.Fatalf("burst: %d, %d", n, m)
	}
	if n := drain(t, l, "192.0.2.2"); n != 10 {
		t.Fatalf("burst: %d", n)
	}
	cfg := DefaultConfig()
	cfg.PacketRate, cfg.PacketBurst = 1000, 10
	if err := l.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	// One new emission interval later: a token under 1000/s, not 10/s.
	c.Advance(time.Millisecond)
	tc.Advance(time.Millisecond)
	if l.Packet(addr("192.0.2.1"), 100, true) != Allow {
		t.Error("raised rate: drained source still dropped")
	}
	if twin.Packet(addr("192.0.2.1"), 100, true) != Drop {
		t.Error("twin without reload: allowed")
	}
	if s := l.Stats(); s.Sources != 2 {
		t.Errorf("sources after reload: %d", s.Sources)
	}

	// Half of a 10/s burst of 10 spent; at 1/s burst 4, half of 4 is left.
	c.Advance(time.Second)
	for range 5 {
		l.Packet(addr("192.0.2.3"), 100, true)
	}
	cfg.PacketRate, cfg.PacketBurst = 1, 4
	if err := l.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if n := drain(t, l, "192.0.2.3"); n != 2 {
		t.Errorf("lowered rate: %d more passed, want 2", n)
	}

	// max_sources below the tracked count: nobody is evicted, a new
	// source goes to the shared overflow budget.
	cfg.MaxSources = 1
	if err := l.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	l.Packet(addr("192.0.2.9"), 100, true)
	if s := l.Stats(); s.Sources != 3 || s.OverflowHits != 1 {
		t.Errorf("after shrinking max_sources: %d sources, %d overflow hits", s.Sources, s.OverflowHits)
	}
}

// TestReloadMethods: a method's budget follows it to its new slot when
// methods changes, and a newly named method gets a budget of its own.
func TestReloadMethods(t *testing.T) {
	l, _ := newLimiter(t, func(c *Config) { c.Methods = map[string]Budget{"OPTIONS": {Rate: 1, Burst: 2}} }, Events{})
	src := addr("192.0.2.1")
	for i, want := range []Decision{Allow, Allow, Reject} {
		if d, _ := l.Request(src, "OPTIONS", "", "", true); d != want {
			t.Fatalf("OPTIONS %d: %v", i, d)
		}
	}
	cfg := DefaultConfig()
	cfg.Methods = map[string]Budget{"INFO": {Rate: 1, Burst: 2}, "OPTIONS": {Rate: 1, Burst: 2}} // OPTIONS moves slot
	if err := l.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if d, r := l.Request(src, "OPTIONS", "", "", true); d != Reject || r != ReasonMethodRate {
		t.Errorf("OPTIONS after reload: %v %v", d, r)
	}
	if d, r := l.Request(src, "INFO", "", "", true); d != Allow {
		t.Errorf("INFO after reload: %v %v", d, r)
	}
}

// TestReloadBans: bans and their history survive; a new ban_time applies
// to the next ban, escalating from the remembered count.
func TestReloadBans(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) {
		c.MalformedLimit, c.BanTime, c.BanMax = 1, time.Minute, time.Hour
	}, Events{})
	src := addr("192.0.2.1")
	l.Malformed(src, true)
	l.Ban(pfx("198.51.100.0/24"), ReasonManual, time.Hour)
	before, stats := l.BanHistory(), l.Stats()

	cfg := DefaultConfig()
	cfg.MalformedLimit, cfg.BanTime, cfg.BanMax = 1, 10*time.Minute, 10*time.Hour
	if err := l.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	after := l.BanHistory()
	if len(after) != 2 || len(before) != 2 || after[0] != before[0] || after[1] != before[1] {
		t.Fatalf("history changed:\n%v\n%v", before, after)
	}
	if s := l.Stats(); s.Bans != stats.Bans || s.BanRecords != stats.BanRecords {
		t.Errorf("stats: %+v, was %+v", s, stats)
	}
	if !l.Banned(src) || !l.Banned(addr("198.51.100.7")) {
		t.Error("ban lifted by reload")
	}
	for _, b := range after {
		if b.Addr == SourcePrefix(src) && b.Duration() != time.Minute {
			t.Errorf("ban in force: %v, want its 1m kept", b.Duration())
		}
	}

	l.Malformed(addr("192.0.2.2"), true)
	c.Advance(2 * time.Minute) // src's first ban is over, remembered
	l.Sweep()
	l.Malformed(src, true)
	for _, b := range l.Bans() {
		want := map[string]time.Duration{"192.0.2.1/32": 20 * time.Minute, "192.0.2.2/32": 10 * time.Minute, "198.51.100.0/24": time.Hour}[b.Addr.String()]
		if b.Duration() != want {
			t.Errorf("%v: %v, want %v", b.Addr, b.Duration(), want)
		}
	}
}

// TestReloadLists: scanner_user_agents and allow apply to the next call;
// an allowlisted source's ban is kept but not enforced.
func TestReloadLists(t *testing.T) {
	l, _ := newLimiter(t, nil, Events{})
	src := addr("192.0.2.1")
	if d, _ := l.Request(src, "OPTIONS", "", "evilscan/1.0", false); d != Allow {
		t.Fatal("unlisted scanner dropped")
	}
	l.Ban(SourcePrefix(src), ReasonManual, time.Hour)

	cfg := DefaultConfig()
	cfg.ScannerUserAgents = []string{"evilscan"}
	cfg.Allow = []string{"192.0.2.0/24"}
	if err := l.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	other := addr("203.0.113.1")
	if d, r := l.Request(other, "OPTIONS", "", "evilscan/1.0", false); d != Drop || r != ReasonScanner {
		t.Errorf("new scanner: %v %v", d, r)
	}
	if d, r := l.Request(other, "OPTIONS", "", "friendly-scanner", false); d != Allow {
		t.Errorf("dropped scanner: %v %v", d, r)
	}
	if l.Banned(src) || l.Packet(src, 100, true) != Allow {
		t.Error("allowlisted source still banned")
	}
	if len(l.BanHistory()) != 1 {
		t.Error("allowlisted source's ban record dropped")
	}
	if err := l.Reload(DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	if !l.Banned(src) {
		t.Error("ban not in force once off the allowlist")
	}
}

// TestReloadInvalid: an invalid config is refused whole; the old one
// stays in force.
func TestReloadInvalid(t *testing.T) {
	l, _ := newLimiter(t, func(c *Config) { c.PacketRate, c.PacketBurst = 10, 10 }, Events{})
	cfg := DefaultConfig()
	cfg.PacketRate, cfg.PacketBurst = 0, 1000
	cfg.Allow = []string{"192.0.2.0/24"}
	if err := l.Reload(cfg); err == nil || !strings.Contains(err.Error(), "ratelimit.packet_rate") {
		t.Fatalf("Reload: %v", err)
	}
	if n := drain(t, l, "192.0.2.1"); n != 10 {
		t.Errorf("burst %d after a refused reload, want 10", n)
	}
}

// TestReloadRace: Reload between two configs while every other entry
// point runs, for -race; every connection and inflight slot taken is
// given back.
func TestReloadRace(t *testing.T) {
	a, b := DefaultConfig(), DefaultConfig()
	a.PacketRate, a.PacketBurst, a.AuthFailures, a.MalformedLimit = 5, 5, 2, 2
	b.Methods = map[string]Budget{"INFO": {Rate: 1, Burst: 1}, "OPTIONS": {Rate: 1, Burst: 3}}
	b.Allow = []string{"192.0.2.0/28"}
	b.ScannerUserAgents = []string{"rnd"}
	b.MaxSources, b.MaxAORs, b.MaxBans, b.MaxInflight = 8, 4, 4, 2
	l, c := newLimiter(t, func(cfg *Config) { *cfg = a }, Events{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 200 {
			cfg := a
			if i%2 == 1 {
				cfg = b
			}
			if err := l.Reload(cfg); err != nil {
				t.Error(err)
				return
			}
			l.Sweep()
		}
	})
	methods := []string{"OPTIONS", "INFO", "INVITE", "REGISTER"}
	for g := range 4 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(g), 1))
			for range 2000 {
				src := nthAddr(rnd.IntN(64))
				if g == 0 {
					src = addr("192.0.2.1") // allowlisted in b
				}
				l.Packet(src, 200, rnd.IntN(2) == 0)
				l.Request(src, methods[rnd.IntN(4)], "sip:"+string(rune('a'+rnd.IntN(8)))+"@x", "rnd", true)
				l.AuthFailure(src, "sip:a@x")
				l.Malformed(src, true)
				l.SetBindings(src, rnd.IntN(2))
				if _, release := l.Accept(src); rnd.IntN(2) == 0 {
					release()
				} else {
					defer release()
				}
				if release, ok := l.Inflight(); ok {
					release()
				}
				l.RetryAfter()
				c.Advance(time.Duration(rnd.IntN(int(time.Millisecond))))
			}
		})
	}
	wg.Wait()
	if s := l.Stats(); s.Inflight != 0 {
		t.Errorf("inflight %d", s.Inflight)
	}
	for i := range l.shards {
		for _, j := range l.shards[i].idx {
			if e := l.shards[i].ents[j]; e.conns != 0 {
				t.Fatalf("%d connections left", e.conns)
			}
		}
	}
}
