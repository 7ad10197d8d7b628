package ratelimit

import (
	"net/netip"
	"testing"
	"time"
)

// packetStep sends n datagrams of size bytes from src after moving the
// clock by after, and expects every decision to be want.
type packetStep struct {
	after time.Duration
	src   string
	n     int
	size  int
	want  Decision
}

func runPackets(t *testing.T, l *Limiter, c *clock, steps []packetStep) {
	t.Helper()
	for i, s := range steps {
		c.Advance(s.after)
		for j := range s.n {
			if got := l.Packet(addr(s.src), s.size, true); got != s.want {
				t.Fatalf("step %d (%s), datagram %d: %v, want %v", i, s.src, j, got, s.want)
			}
		}
	}
}

func TestPacket(t *testing.T) {
	small := func(c *Config) {
		c.PacketRate, c.PacketBurst = 10, 20
		c.ByteRate, c.ByteBurst = 100_000, 100_000
	}
	tests := []struct {
		name  string
		edit  func(*Config)
		steps []packetStep
	}{
		{"burst then refill", small, []packetStep{
			{0, "192.0.2.1", 20, 100, Allow},
			{0, "192.0.2.1", 3, 100, Drop},
			{100 * time.Millisecond, "192.0.2.1", 1, 100, Allow}, // 10/s: one back
			{0, "192.0.2.1", 1, 100, Drop},
			{2 * time.Second, "192.0.2.1", 20, 100, Allow}, // full again
		}},
		{"sources are independent", small, []packetStep{
			{0, "192.0.2.1", 20, 100, Allow},
			{0, "192.0.2.1", 1, 100, Drop},
			{0, "192.0.2.2", 20, 100, Allow},
		}},
		{"byte budget", small, []packetStep{
			{0, "192.0.2.1", 1, 65_000, Allow},
			{0, "192.0.2.1", 1, 35_000, Allow},
			{0, "192.0.2.1", 1, 1, Drop}, // 100 kB spent
			{10 * time.Millisecond, "192.0.2.1", 1, 1000, Allow},
		}},
		{"allowlist is never limited", func(c *Config) { small(c); c.Allow = []string{"10.0.0.0/8"} }, []packetStep{
			{0, "10.1.2.3", 10_000, 1500, Allow},
		}},
		{"ipv4-mapped is the ipv4 source", small, []packetStep{
			{0, "192.0.2.1", 10, 100, Allow},
			{0, "::ffff:192.0.2.1", 10, 100, Allow},
			{0, "192.0.2.1", 1, 100, Drop},
		}},
		{"ipv6 /64 is one source", small, []packetStep{
			{0, "2001:db8:0:1::1", 10, 100, Allow},
			{0, "2001:db8:0:1:ffff::2", 10, 100, Allow},
			{0, "2001:db8:0:1::3%eth0", 1, 100, Drop},
			{0, "2001:db8:0:2::1", 20, 100, Allow}, // another /64
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, c := newLimiter(t, tt.edit, Events{})
			runPackets(t, l, c, tt.steps)
		})
	}
}

func TestPacketInvalidSource(t *testing.T) {
	l, _ := newLimiter(t, nil, Events{})
	if d := l.Packet(netip.Addr{}, 10, true); d != Drop {
		t.Fatalf("invalid source: %v", d)
	}
	if d, r := l.Request(netip.Addr{}, "REGISTER", "", "", true); d != Drop || r != ReasonMalformed {
		t.Fatalf("invalid source: %v %v", d, r)
	}
	if s := l.Stats(); s.Dropped[ReasonMalformed] != 2 || s.Sources != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// flood sends datagrams from src at rate per second for d, returning the
// decisions seen.
func flood(l *Limiter, c *clock, src netip.Addr, rate int, d time.Duration) map[Decision]int {
	got := map[Decision]int{}
	step := time.Second / time.Duration(rate)
	for el := time.Duration(0); el < d; el += step {
		got[l.Packet(src, 200, true)]++
		c.Advance(step)
	}
	return got
}

func TestFloodBan(t *testing.T) {
	var rec recorder
	l, c := newLimiter(t, func(c *Config) {
		c.PacketRate, c.PacketBurst = 50, 10
		c.FloodWindow = 5 * time.Second
		c.BanTime = time.Minute
	}, rec.events())
	src := addr("198.51.100.7")

	// Twice the rate: after the 0.2 s burst, half dropped; for 4 s, under
	// the window: no ban.
	flood(l, c, src, 100, 4*time.Second)
	if l.Banned(src) {
		t.Fatal("banned before flood_window")
	}
	// A pause longer than a second ends the streak.
	c.Advance(2 * time.Second)
	flood(l, c, src, 100, 4*time.Second)
	if l.Banned(src) {
		t.Fatal("a pause did not reset the flood streak")
	}
	got := flood(l, c, src, 100, 2*time.Second) // the streak reaches 5 s
	if !l.Banned(src) {
		t.Fatalf("not banned after 6 s of flooding: %v", got)
	}
	bans := rec.Bans()
	if len(bans) != 1 || bans[0].Reason != ReasonFlood || bans[0].Addr != pfx("198.51.100.7/32") || bans[0].Count != 1 ||
		bans[0].Until.Sub(bans[0].Since) != time.Minute {
		t.Fatalf("OnBan: %+v", bans)
	}
	// Banned: everything dropped, even after its budget refills.
	c.Advance(30 * time.Second)
	if d := l.Packet(src, 10, true); d != Drop {
		t.Fatalf("banned source: %v", d)
	}
	if d, r := l.Request(src, "REGISTER", "sip:a@x", "", true); d != Drop || r != ReasonBanned {
		t.Fatalf("banned source: %v %v", d, r)
	}
	if d, _ := l.Accept(src); d != Drop {
		t.Fatalf("banned source: %v", d)
	}
	// Another source is unaffected.
	if d := l.Packet(addr("198.51.100.8"), 10, true); d != Allow {
		t.Fatalf("bystander: %v", d)
	}
	// Expiry: allowed again; Sweep reports it once.
	c.Advance(31 * time.Second)
	if l.Banned(src) || l.Packet(src, 10, true) != Allow {
		t.Fatal("ban did not expire")
	}
	l.Sweep()
	l.Sweep()
	if u := rec.Unbans(); len(u) != 1 || u[0].Addr != pfx("198.51.100.7/32") {
		t.Fatalf("OnUnban: %+v", u)
	}
	s := l.Stats()
	if s.Dropped[ReasonFlood] != 1 || s.Dropped[ReasonBanned] < 3 || s.Dropped[ReasonPacketRate] == 0 || s.Bans != 0 || s.BanRecords != 1 {
		t.Fatalf("stats: %+v", s)
	}
}

func TestAccept(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) {
		c.MaxConns, c.ConnRate, c.ConnBurst = 3, 1, 5
		c.BindingWeight = 1
	}, Events{})
	src := addr("192.0.2.10")
	var rel []func()
	for i := range 3 {
		d, r := l.Accept(src)
		if d != Allow {
			t.Fatalf("conn %d: %v", i, d)
		}
		rel = append(rel, r)
	}
	if d, _ := l.Accept(src); d != Drop {
		t.Fatalf("4th concurrent conn: %v", d)
	}
	rel[0]()
	rel[0]() // idempotent: frees one slot, not two
	if d, r := l.Accept(src); d != Allow {
		t.Fatalf("after release: %v", d)
	} else {
		rel[0] = r
	}
	if d, _ := l.Accept(src); d != Drop {
		t.Fatalf("double release freed two slots: %v", d)
	}
	// Connection rate: burst 5, four spent; the concurrent cap is not hit
	// once everything is released.
	for _, r := range rel {
		r()
	}
	if d, r := l.Accept(src); d != Allow {
		t.Fatalf("5th: %v", d)
	} else {
		r()
	}
	if d, _ := l.Accept(src); d != Drop {
		t.Fatalf("over conn_burst: %v", d)
	}
	c.Advance(time.Second)
	if d, r := l.Accept(src); d != Allow {
		t.Fatalf("after refill: %v", d)
	} else {
		r()
	}
	// Bindings scale the cap: weight 1, 2 bindings: 3 * 3 = 9.
	l.SetBindings(src, 2)
	c.Advance(time.Minute)
	n := 0
	for {
		d, r := l.Accept(src)
		if d != Allow {
			break
		}
		defer r()
		n++
	}
	if n != 9 {
		t.Fatalf("bound source held %d connections, want 9", n)
	}
	s := l.Stats()
	if s.Dropped[ReasonConnCount] != 3 || s.Dropped[ReasonConnRate] != 1 {
		t.Fatalf("stats: %+v", s)
	}
}

func TestAcceptHoldsEntryAcrossSweep(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) { c.MaxConns = 1 }, Events{})
	src := addr("192.0.2.11")
	_, rel := l.Accept(src)
	c.Advance(time.Hour)
	l.Sweep()
	if d, _ := l.Accept(src); d != Drop {
		t.Fatal("Sweep forgot an open connection")
	}
	rel()
	if d, r := l.Accept(src); d != Allow {
		t.Fatal("release lost")
	} else {
		r()
	}
	c.Advance(time.Hour)
	l.Sweep()
	if s := l.Stats(); s.Sources != 0 {
		t.Fatalf("idle entry kept: %+v", s)
	}
}

func TestIPv6Aggregation(t *testing.T) {
	l, _ := newLimiter(t, func(c *Config) { c.MalformedLimit = 2 }, Events{})
	l.Malformed(addr("2001:db8:1:2::a"), true)
	l.Malformed(addr("2001:db8:1:2:ffff:ffff:ffff:ffff"), true)
	if !l.Banned(addr("2001:db8:1:2::1234")) {
		t.Fatal("/64 not banned as one source")
	}
	if l.Banned(addr("2001:db8:1:3::a")) {
		t.Fatal("neighbouring /64 banned")
	}
	if b := l.Bans(); len(b) != 1 || b[0].Addr != pfx("2001:db8:1:2::/64") {
		t.Fatalf("Bans = %+v", b)
	}
	for in, want := range map[string]string{
		"2001:db8:1:2::a": "2001:db8:1:2::/64", "192.0.2.1": "192.0.2.1/32", "::ffff:192.0.2.1": "192.0.2.1/32",
		"::1": "::/64", "fe80::1%eth0": "fe80::/64",
	} {
		if got := SourcePrefix(addr(in)); got != pfx(want) {
			t.Errorf("SourcePrefix(%s) = %v, want %v", in, got, want)
		}
	}
	if SourcePrefix(netip.Addr{}).IsValid() {
		t.Error("SourcePrefix of the zero Addr is valid")
	}
}

// TestOverflow: at max_sources, new sources share one budget and cannot
// take anything from tracked ones; sources with bindings are always
// tracked.
func TestOverflow(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) {
		c.MaxSources = 10
		c.PacketRate, c.PacketBurst = 10, 10
		c.OverflowShare = 2
	}, Events{})
	for i := range 10 {
		l.Packet(nthAddr(i), 100, true)
	}
	// Untracked sources share 2*10 datagrams.
	got := map[Decision]int{}
	for i := range 1000 {
		got[l.Packet(nthAddr(1000+i), 100, true)]++
	}
	if got[Allow] != 20 || got[Drop] != 980 {
		t.Fatalf("overflow: %v", got)
	}
	// Tracked sources keep their own budgets.
	for i := range 10 {
		for j := range 9 {
			if d := l.Packet(nthAddr(i), 100, true); d != Allow {
				t.Fatalf("tracked source %d datagram %d: %v", i, j, d)
			}
		}
	}
	// A source with bindings is tracked beyond the cap.
	office := addr("203.0.113.1")
	l.SetBindings(office, 10)
	for range 50 {
		if d := l.Packet(office, 100, true); d != Allow {
			t.Fatalf("bound source beyond the cap: %v", d)
		}
	}
	s := l.Stats()
	if s.Sources != 11 || s.BoundSources != 1 || s.OverflowHits != 1000 || s.Dropped[ReasonOverflow] != 980 {
		t.Fatalf("stats %+v", s)
	}
	// Requests and connections from untracked sources share too.
	if d, r := l.Request(nthAddr(5000), "REGISTER", "sip:z@x", "", true); d != Allow || r != ReasonNone {
		t.Fatalf("overflow request: %v %v", d, r)
	}
	d, rel := l.Accept(nthAddr(5001))
	if d != Allow {
		t.Fatalf("overflow accept: %v", d)
	}
	rel()
	// Once idle, sweeping frees room for new sources.
	c.Advance(time.Minute)
	l.Sweep()
	if s := l.Stats(); s.Sources != 1 {
		t.Fatalf("after sweep: %+v", s)
	}
	if d := l.Packet(nthAddr(2000), 100, true); d != Allow {
		t.Fatalf("new source after sweep: %v", d)
	}
	if s := l.Stats(); s.Sources != 2 {
		t.Fatalf("new source not tracked: %+v", s)
	}
	// Unbinding makes the source an ordinary one again.
	l.SetBindings(office, 0)
	c.Advance(time.Minute)
	l.Sweep()
	if s := l.Stats(); s.Sources != 0 || s.BoundSources != 0 {
		t.Fatalf("after unbinding: %+v", s)
	}
}
