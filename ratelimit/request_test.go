package ratelimit

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// TestOffice: 300 phones behind one NAT re-register within 2 s after an
// outage, each REGISTER twice (challenged, then with credentials), every
// datagram also passing Packet. With SetBindings all pass; an unknown
// source doing the same is limited.
func TestOffice(t *testing.T) {
	l, c := newLimiter(t, nil, Events{})
	office, stranger := addr("203.0.113.20"), addr("198.51.100.20")
	l.SetBindings(office, 300)

	run := func(src netip.Addr, domain string) map[string]int {
		got := map[string]int{}
		for i := range 600 {
			c.Advance(2 * time.Second / 600)
			if d := l.Packet(src, 900, true); d != Allow {
				got["packet "+d.String()]++
				continue
			}
			d, r := l.Request(src, "REGISTER", fmt.Sprintf("sip:%d@%s", i/2, domain), "Yealink SIP-T46S 66.86.0.15", true)
			got[d.String()+" "+r.String()]++
		}
		return got
	}
	if got := run(office, "office.example"); got["allow none"] != 600 {
		t.Fatalf("office: %v", got)
	}
	got := run(stranger, "other.example")
	if got["allow none"] >= 600 || got["reject source_rate"] == 0 {
		t.Fatalf("unknown source was not limited: %v", got)
	}
	// It got a few 503s, then silence (reply budget), and no ban: it never
	// went over for flood_window.
	if got["drop source_rate"] == 0 || l.Banned(stranger) {
		t.Fatalf("unknown source: %v, banned %v", got, l.Banned(stranger))
	}
	t.Logf("unknown source, 600 REGISTERs in 2 s: %v", got)

	// Connections too: the office's phones on TCP all reconnect at once.
	for i := range 300 {
		if d, _ := l.Accept(office); d != Allow {
			t.Fatalf("office connection %d: %v", i, d)
		}
	}
}

func TestRequestLimits(t *testing.T) {
	base := func(c *Config) {
		c.RequestRate, c.RequestBurst = 10, 10
		c.MethodRate, c.MethodBurst = 1, 3
		c.Methods = map[string]Budget{"OPTIONS": {Rate: 1, Burst: 2}}
		c.RegisterRate, c.RegisterBurst = 1, 2
		c.ReplyRate, c.ReplyBurst = 1, 100
	}
	type req struct {
		after    time.Duration
		src      string
		method   string
		aor      string
		want     Decision
		wantWhy  Reason
		repeated int
	}
	tests := []struct {
		name string
		edit func(*Config)
		reqs []req
	}{
		{"per-AOR REGISTER rate, any source", base, []req{
			{0, "192.0.2.1", "REGISTER", "sip:a@x", Allow, ReasonNone, 1},
			{0, "192.0.2.2", "REGISTER", "sip:a@x", Allow, ReasonNone, 1},
			{0, "192.0.2.3", "REGISTER", "sip:a@x", Reject, ReasonAORRate, 1},
			{0, "192.0.2.3", "REGISTER", "sip:b@x", Allow, ReasonNone, 2},
			{time.Second, "192.0.2.3", "REGISTER", "sip:a@x", Allow, ReasonNone, 1},
			{0, "192.0.2.3", "REGISTER", "", Allow, ReasonNone, 1}, // no AOR: no AOR limit
		}},
		{"named method budget", base, []req{
			{0, "192.0.2.1", "OPTIONS", "", Allow, ReasonNone, 2},
			{0, "192.0.2.1", "OPTIONS", "", Reject, ReasonMethodRate, 1},
			{0, "192.0.2.1", "INFO", "", Allow, ReasonNone, 3}, // the shared "other" budget
			{0, "192.0.2.1", "MESSAGE", "", Reject, ReasonMethodRate, 1},
			{0, "192.0.2.1", "REGISTER", "sip:a@x", Allow, ReasonNone, 1},
			{0, "192.0.2.2", "OPTIONS", "", Allow, ReasonNone, 2},
			{0, "192.0.2.1", "options", "", Reject, ReasonMethodRate, 1}, // methods are case-sensitive: "other"
		}},
		{"per-source request rate", base, []req{
			{0, "192.0.2.1", "REGISTER", "", Allow, ReasonNone, 10},
			{0, "192.0.2.1", "REGISTER", "", Reject, ReasonSourceRate, 1},
			{0, "192.0.2.2", "REGISTER", "", Allow, ReasonNone, 1},
			{100 * time.Millisecond, "192.0.2.1", "REGISTER", "", Allow, ReasonNone, 1},
		}},
		{"rejected requests do not charge", base, []req{
			{0, "192.0.2.1", "OPTIONS", "", Allow, ReasonNone, 2},
			{0, "192.0.2.1", "OPTIONS", "", Reject, ReasonMethodRate, 20},
			{0, "192.0.2.1", "REGISTER", "", Allow, ReasonNone, 8}, // 2 of 10 spent
			{0, "192.0.2.1", "REGISTER", "", Reject, ReasonSourceRate, 1},
		}},
		{"reply budget: 503 then silence", func(c *Config) { base(c); c.ReplyBurst = 2 }, []req{
			{0, "192.0.2.1", "OPTIONS", "", Allow, ReasonNone, 2},
			{0, "192.0.2.1", "OPTIONS", "", Reject, ReasonMethodRate, 2},
			{0, "192.0.2.1", "OPTIONS", "", Drop, ReasonMethodRate, 5},
			{time.Second, "192.0.2.1", "OPTIONS", "", Allow, ReasonNone, 1},
			{0, "192.0.2.1", "OPTIONS", "", Reject, ReasonMethodRate, 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, c := newLimiter(t, tt.edit, Events{})
			for i, r := range tt.reqs {
				c.Advance(r.after)
				for j := range r.repeated {
					d, why := l.Request(addr(r.src), r.method, r.aor, "", true)
					if d != r.want || why != r.wantWhy {
						t.Fatalf("request %d.%d %s %s %s: %v %v, want %v %v", i, j, r.src, r.method, r.aor, d, why, r.want, r.wantWhy)
					}
				}
			}
		})
	}
}

func TestRequestFloodBan(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) { c.FloodWindow = 3 * time.Second }, Events{})
	src := addr("192.0.2.44")
	var last Decision
	var why Reason
	for range 400 { // 100/s for 4 s, five times request_rate
		last, why = l.Request(src, "OPTIONS", "", "", true)
		c.Advance(10 * time.Millisecond)
	}
	if !l.Banned(src) || last != Drop || why != ReasonBanned {
		t.Fatalf("TCP-style request flood: banned %v, last %v %v", l.Banned(src), last, why)
	}
}

func TestInflight(t *testing.T) {
	var rec recorder
	l, _ := newLimiter(t, func(c *Config) { c.MaxInflight = 2 }, rec.events())
	r1, ok1 := l.Inflight()
	r2, ok2 := l.Inflight()
	r3, ok3 := l.Inflight()
	if !ok1 || !ok2 || ok3 || r3 == nil {
		t.Fatalf("ok = %v %v %v", ok1, ok2, ok3)
	}
	r3() // no-op
	if s := l.Stats(); s.Inflight != 2 || s.Rejected[ReasonInflight] != 1 {
		t.Fatalf("stats %+v", s)
	}
	r1()
	r1() // idempotent
	if s := l.Stats(); s.Inflight != 1 {
		t.Fatalf("after release: %d", s.Inflight)
	}
	r4, ok4 := l.Inflight()
	if !ok4 {
		t.Fatal("slot not released")
	}
	r2()
	r4()
	if s := l.Stats(); s.Inflight != 0 {
		t.Fatalf("after all released: %d", s.Inflight)
	}
	if len(rec.decisions) != 1 || rec.decisions[0] != "reject inflight invalid IP" {
		t.Fatalf("events %v", rec.decisions)
	}
}

func TestMaxAORs(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) { c.MaxAORs = 2; c.RegisterBurst = 1 }, Events{})
	src := addr("192.0.2.1")
	for _, aor := range []string{"sip:a@x", "sip:b@x"} {
		l.Request(src, "REGISTER", aor, "", true)
	}
	// Untracked AORs are not AOR-limited.
	for range 3 {
		if d, r := l.Request(src, "REGISTER", "sip:c@x", "", true); d != Allow {
			t.Fatalf("untracked AOR: %v %v", d, r)
		}
	}
	if d, r := l.Request(src, "REGISTER", "sip:a@x", "", true); d != Reject || r != ReasonAORRate {
		t.Fatalf("tracked AOR: %v %v", d, r)
	}
	s := l.Stats()
	if s.AORs != 2 || s.AOROverflow != 3 {
		t.Fatalf("stats %+v", s)
	}
	c.Advance(time.Minute)
	l.Sweep()
	if s := l.Stats(); s.AORs != 0 {
		t.Fatalf("AORs not swept: %+v", s)
	}
}

func TestRetryAfter(t *testing.T) {
	cfg := DefaultConfig()
	cfg.RetryAfter, cfg.RetryJitter = 20*time.Second, 0.25
	mk := func() *Limiter {
		l, err := New(cfg, nil, Events{}, WithRand(rand.NewPCG(1, 2)))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a, b := mk(), mk()
	seen := map[time.Duration]bool{}
	for range 200 {
		d := a.RetryAfter()
		if d != b.RetryAfter() {
			t.Fatal("same seed, different values")
		}
		if d < 15*time.Second || d > 25*time.Second || d%time.Second != 0 {
			t.Fatalf("RetryAfter = %v", d)
		}
		seen[d] = true
	}
	if len(seen) < 5 {
		t.Fatalf("little jitter: %v", seen)
	}
	cfg.RetryJitter = 0
	if l := mk(); l.RetryAfter() != 20*time.Second {
		t.Fatal("no jitter")
	}
	// The default source works too.
	l, _ := newLimiter(t, nil, Events{})
	if d := l.RetryAfter(); d < 15*time.Second || d > 25*time.Second {
		t.Fatalf("default rand: %v", d)
	}
}

// New registrations stop at three quarters of max_inflight; refreshes
// may use the rest.
func TestInflightNewLeavesRoomForRefreshes(t *testing.T) {
	l, _ := newLimiter(t, func(c *Config) { c.MaxInflight = 4 }, Events{})
	var release []func()
	for i := range 3 {
		r, ok := l.InflightNew()
		if !ok {
			t.Fatalf("new registration %d refused under 3/4 of the cap", i)
		}
		release = append(release, r)
	}
	if _, ok := l.InflightNew(); ok {
		t.Fatal("a new registration took the refreshes' last quarter")
	}
	r, ok := l.Inflight()
	if !ok {
		t.Fatal("a refresh was refused with a slot left")
	}
	if _, ok := l.Inflight(); ok {
		t.Fatal("over the cap")
	}
	for _, f := range append(release, r) {
		f()
	}
}
