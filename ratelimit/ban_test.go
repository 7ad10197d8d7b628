package ratelimit

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestBanEscalation(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) {
		c.BanTime, c.BanMax, c.BanForget = time.Minute, 5*time.Minute, time.Hour
		c.MalformedLimit = 1
	}, Events{})
	src := addr("203.0.113.9")
	for i, want := range []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute} {
		l.Malformed(src)
		bans := l.Bans()
		if len(bans) != 1 {
			t.Fatalf("ban %d: %v", i+1, bans)
		}
		if b := bans[0]; b.Count != i+1 || b.Until.Sub(b.Since) != want || b.Reason != ReasonMalformed {
			t.Fatalf("ban %d: %+v, want %v", i+1, b, want)
		}
		c.Advance(want) // serve it
		if l.Banned(src) {
			t.Fatalf("ban %d outlived %v", i+1, want)
		}
		l.Sweep()
	}
	// Forgotten ban_forget after the last one ended: back to ban_time.
	c.Advance(time.Hour)
	l.Sweep()
	if s := l.Stats(); s.BanRecords != 0 {
		t.Fatalf("history not swept: %+v", s)
	}
	l.Malformed(src)
	if b := l.Bans(); len(b) != 1 || b[0].Count != 1 || b[0].Until.Sub(b[0].Since) != time.Minute {
		t.Fatalf("after forget: %+v", b)
	}
}

// TestBanDurationBounds: huge durations neither overflow nor wrap into
// the past.
func TestBanDurationBounds(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) {
		c.BanTime, c.BanMax = time.Hour, time.Duration(1<<62)
		c.MalformedLimit = 1
	}, Events{})
	src := addr("192.0.2.1")
	l.Ban(SourcePrefix(src), ReasonManual, time.Duration(1<<63-1))
	if !l.Banned(src) {
		t.Fatal("maximal ban not in force")
	}
	c.Advance(50 * 365 * 24 * time.Hour)
	l.Sweep()
	if !l.Banned(src) || len(l.Bans()) != 1 || !l.Bans()[0].Until.After(l.Bans()[0].Since) {
		t.Fatalf("maximal ban: %+v", l.Bans())
	}
	if got, want := l.banDuration(100), time.Duration(1<<62); got != want {
		t.Fatalf("100th ban lasts %v, want ban_max %v", got, want)
	}
	if got := l.banDuration(3); got != 4*time.Hour {
		t.Fatalf("3rd ban lasts %v", got)
	}
}

func TestUnban(t *testing.T) {
	var rec recorder
	l, _ := newLimiter(t, nil, rec.events())
	src := addr("2001:db8:5::1")
	l.Ban(pfx("2001:db8:5::1/128"), ReasonManual, 0) // widens to the /64
	if !l.Banned(addr("2001:db8:5::beef")) {
		t.Fatal("the /64 is not banned")
	}
	if b := l.Bans(); len(b) != 1 || b[0].Addr != pfx("2001:db8:5::/64") || b[0].Reason != ReasonManual {
		t.Fatalf("Bans = %+v", b)
	}
	if !l.Unban(pfx("2001:db8:5::/64")) {
		t.Fatal("Unban = false")
	}
	if l.Banned(src) || l.Packet(src, 100) != Allow {
		t.Fatal("still banned")
	}
	if l.Unban(pfx("2001:db8:5::/64")) {
		t.Fatal("second Unban = true")
	}
	if u := rec.Unbans(); len(u) != 1 || u[0].Addr != pfx("2001:db8:5::/64") {
		t.Fatalf("OnUnban = %+v", u)
	}
	// History was forgotten: the next ban is a first one.
	l.Ban(pfx("2001:db8:5::/64"), ReasonManual, 0)
	if b := l.Bans(); b[0].Count != 1 {
		t.Fatalf("count after Unban: %+v", b)
	}
}

func TestPrefixBan(t *testing.T) {
	var rec recorder
	l, c := newLimiter(t, func(c *Config) { c.BanForget = 0 }, rec.events())
	l.Ban(pfx("192.0.2.77/24"), ReasonManual, time.Hour) // masked to /24
	for _, a := range []string{"192.0.2.1", "::ffff:192.0.2.200"} {
		if !l.Banned(addr(a)) || l.Packet(addr(a), 10) != Drop {
			t.Errorf("%s not banned", a)
		}
		if d, r := l.Request(addr(a), "OPTIONS", "", ""); d != Drop || r != ReasonBanned {
			t.Errorf("%s: %v %v", a, d, r)
		}
	}
	if l.Banned(addr("192.0.3.1")) {
		t.Error("192.0.3.1 banned")
	}
	if b := l.Bans(); len(b) != 1 || b[0].Addr != pfx("192.0.2.0/24") || b[0].Until.Sub(b[0].Since) != time.Hour {
		t.Fatalf("Bans = %+v", b)
	}
	if s := l.Stats(); s.Bans != 1 {
		t.Fatalf("Stats.Bans = %d", s.Bans)
	}
	// Expiry is reported by Sweep, and the record forgotten (ban_forget 0).
	c.Advance(time.Hour)
	l.Sweep()
	if l.Banned(addr("192.0.2.1")) || len(rec.Unbans()) != 1 || l.Unban(pfx("192.0.2.0/24")) {
		t.Fatalf("after expiry: unbans %+v", rec.Unbans())
	}
	l.Ban(pfx("2001:db8::/32"), ReasonManual, time.Hour)
	if !l.Banned(addr("2001:db8:ffff::1")) || !l.Unban(pfx("2001:db8::/32")) || l.Banned(addr("2001:db8:ffff::1")) {
		t.Fatal("IPv6 prefix ban")
	}
}

func TestAllowlist(t *testing.T) {
	l, _ := newLimiter(t, func(c *Config) {
		c.Allow = []string{"10.0.0.0/8", "2001:db8:a::/48"}
		c.AuthFailures, c.MalformedLimit = 1, 1
		c.MaxInflight = 1
	}, Events{})
	for _, a := range []string{"10.9.8.7", "2001:db8:a:1::1"} {
		src := addr(a)
		for range 1000 {
			if d := l.Packet(src, 60_000); d != Allow {
				t.Fatalf("%s Packet: %v", a, d)
			}
			if d, r := l.Request(src, "REGISTER", "sip:x@y", "friendly-scanner"); d != Allow {
				t.Fatalf("%s Request: %v %v", a, d, r)
			}
			if d, _ := l.Accept(src); d != Allow {
				t.Fatalf("%s Accept: %v", a, d)
			}
			l.AuthFailure(src, "sip:x@y")
			l.Malformed(src)
		}
		l.Ban(netip.PrefixFrom(src, src.BitLen()), ReasonManual, time.Hour)
		if l.Banned(src) {
			t.Fatalf("%s banned", a)
		}
	}
	// A wider ban does not catch allowlisted addresses either.
	l.Ban(pfx("10.0.0.0/7"), ReasonManual, time.Hour)
	if l.Banned(addr("10.1.1.1")) || l.Packet(addr("10.1.1.1"), 1) != Allow || !l.Banned(addr("11.1.1.1")) {
		t.Fatal("prefix ban over the allowlist")
	}
	if s := l.Stats(); s.Sources != 0 || s.BanRecords != 0 {
		t.Fatalf("allowlisted sources tracked: %+v", s)
	}
}

func TestScannerBan(t *testing.T) {
	var rec recorder
	l, _ := newLimiter(t, nil, rec.events())
	tests := []struct {
		ua   string
		want Decision
	}{
		{"friendly-scanner", Drop},
		{"sipvicious", Drop},
		{"SIPVicious/0.3.4", Drop},
		{"sipcli/v1.8", Drop},
		{"VaxSIPUserAgent/3.1", Drop},
		{"iWar", Drop},
		{"smap 0.6.0", Drop},
		{"Yealink SIP-T46S 66.86.0.15", Allow},
		{"PolycomVVX-VVX_450-UA/6.4.3.5018", Allow},
		{"Grandstream GXP2170 1.0.11.23", Allow},
		{"Cisco-SIPGateway/IOS-15.7.3", Allow},
		{"Z 5.6.1 v2.10.19.9", Allow},
		{"Linphone/5.2.0 (belle-sip/5.2.0)", Allow},
		{"MicroSIP/3.21.3", Allow},
		{"Bismapper/1.0", Allow}, // "smap" inside a word
		{"", Allow},
	}
	for i, tt := range tests {
		src := nthAddr(i)
		d, r := l.Request(src, "REGISTER", fmt.Sprintf("sip:%d@example.com", i), tt.ua)
		if d != tt.want {
			t.Errorf("%q: %v %v, want %v", tt.ua, d, r, tt.want)
			continue
		}
		if banned := l.Banned(src); banned != (tt.want == Drop) {
			t.Errorf("%q: banned = %v", tt.ua, banned)
		}
		if tt.want == Drop && r != ReasonScanner {
			t.Errorf("%q: reason %v", tt.ua, r)
		}
	}
	for _, b := range rec.Bans() {
		if b.Reason != ReasonScanner || b.Until.Sub(b.Since) != DefaultConfig().BanTime {
			t.Errorf("ban %+v", b)
		}
	}
}

func TestScannerMatch(t *testing.T) {
	s := newScanner([]string{"friendly-scanner", "smap", "Q"})
	const uaWindow = 512
	long := func(n int, mid string) string { return string(slices.Repeat([]byte("a "), n/2)) + mid }
	tests := []struct {
		ua   string
		want bool
	}{
		{"FRIENDLY-SCANNER", true},
		{"x friendly-scanner/1", true},
		{"friendly-scanners", false},
		{"smap", true},
		{"SMAP/0.6", true},
		{"bismap", false},
		{"smapper", false},
		{long(uaWindow-70, "smap"), true},
		{long(uaWindow-2, "smapx"), false},
		{long(uaWindow-3, "xsmap"), false},
		{long(3*uaWindow, "friendly-scanner"), true},
		{long(3*uaWindow, "friendly-scanner2"), false},
		{"q", true}, // one-byte pattern
		{"a Q b", true},
		{"aq", false},
		{"s", false},
		{"sma", false},
	}
	for _, tt := range tests {
		if got := s.match(tt.ua); got != tt.want {
			t.Errorf("match(len %d ...%q) = %v, want %v", len(tt.ua), tt.ua[max(0, len(tt.ua)-20):], got, tt.want)
		}
	}
	for pad := range 40 {
		dots := string(slices.Repeat([]byte("."), pad))
		if !s.match(dots+"friendly-scanner") || s.match(dots+"friendly-scannerx") || s.match(dots+"xfriendly-scanner") {
			t.Fatalf("at %d", pad)
		}
	}
}

func TestAuthFailures(t *testing.T) {
	var rec recorder
	l, c := newLimiter(t, func(c *Config) {
		c.AuthFailures, c.AuthWindow = 5, time.Minute
		c.AORAuthFailures = 1000
	}, rec.events())
	bad, other := addr("198.51.100.1"), addr("198.51.100.2")
	for i := range 4 {
		l.AuthFailure(bad, fmt.Sprintf("sip:%d@example.com", 100+i))
		l.AuthFailure(other, "sip:200@example.com")
	}
	if l.Banned(bad) || l.Banned(other) {
		t.Fatal("banned below auth_failures")
	}
	l.AuthFailure(bad, "sip:104@example.com")
	if !l.Banned(bad) {
		t.Fatal("not banned at auth_failures")
	}
	if l.Banned(other) {
		t.Fatal("a different source was banned")
	}
	if d, _ := l.Request(other, "REGISTER", "sip:200@example.com", ""); d != Allow {
		t.Fatalf("other source: %v", d)
	}
	if b := rec.Bans(); len(b) != 1 || b[0].Reason != ReasonAuthFailures || b[0].Addr != pfx("198.51.100.1/32") {
		t.Fatalf("bans %+v", b)
	}

	// The count decays: one failure forgiven every window/limit (12 s).
	slow := addr("198.51.100.3")
	for range 20 {
		l.AuthFailure(slow, "sip:300@example.com")
		c.Advance(13 * time.Second)
	}
	if l.Banned(slow) {
		t.Fatal("slow failures banned")
	}
}

func TestAORAuthFailures(t *testing.T) {
	l, _ := newLimiter(t, func(c *Config) {
		c.AuthFailures, c.AORAuthFailures = 100, 5
	}, Events{})
	const aor = "sip:1001@example.com"
	office := addr("203.0.113.50")
	l.SetBindings(office, 40)
	// A distributed guess at one AOR: each source fails once.
	for i := range 4 {
		l.AuthFailure(nthAddr(i), aor)
		if l.Banned(nthAddr(i)) {
			t.Fatalf("source %d banned below aor_auth_failures", i)
		}
	}
	l.AuthFailure(nthAddr(4), aor)
	if !l.Banned(nthAddr(4)) {
		t.Fatal("not banned at aor_auth_failures")
	}
	// While the AOR stays hot, each new failing source is banned at once...
	l.AuthFailure(nthAddr(5), aor)
	if !l.Banned(nthAddr(5)) {
		t.Fatal("next source not banned")
	}
	// ...but not a source holding bindings: its phone with a stale
	// password must not lock the office out.
	l.AuthFailure(office, aor)
	if l.Banned(office) {
		t.Fatal("bound source banned")
	}
	// Other AORs are unaffected.
	l.AuthFailure(nthAddr(6), "sip:1002@example.com")
	if l.Banned(nthAddr(6)) {
		t.Fatal("failure on another AOR banned")
	}
}

func TestMalformed(t *testing.T) {
	l, _ := newLimiter(t, func(c *Config) { c.MalformedLimit = 3 }, Events{})
	src := addr("192.0.2.99")
	l.Malformed(src)
	l.Malformed(src)
	if l.Banned(src) {
		t.Fatal("banned early")
	}
	l.Malformed(src)
	if b := l.Bans(); !l.Banned(src) || len(b) != 1 || b[0].Reason != ReasonMalformed {
		t.Fatalf("bans %+v", b)
	}
}

func TestBoundSourcesNotAutoBanned(t *testing.T) {
	for _, banBound := range []bool{false, true} {
		t.Run(fmt.Sprint("ban_bound=", banBound), func(t *testing.T) {
			l, c := newLimiter(t, func(c *Config) {
				c.BanBound = banBound
				c.AuthFailures, c.MalformedLimit = 1, 1
				c.BindingWeight = 0
				c.FloodWindow = 2 * time.Second
			}, Events{})
			office := addr("203.0.113.10")
			l.SetBindings(office, 3)
			checks := []struct {
				name string
				do   func()
			}{
				{"auth", func() { l.AuthFailure(office, "") }},
				{"malformed", func() { l.Malformed(office) }},
				{"scanner", func() { l.Request(office, "OPTIONS", "", "friendly-scanner") }},
				{"flood", func() { flood(l, c, office, 500, 3*time.Second) }},
			}
			for _, ch := range checks {
				ch.do()
				if got := l.Banned(office); got != banBound {
					t.Errorf("%s: banned = %v", ch.name, got)
				}
				l.Unban(SourcePrefix(office))
			}
			// Scanner requests are dropped even when the source is not banned.
			if d, r := l.Request(office, "OPTIONS", "", "sipvicious"); d != Drop || r != ReasonScanner {
				t.Errorf("scanner from bound source: %v %v", d, r)
			}
		})
	}
}

func TestMaxBans(t *testing.T) {
	l, _ := newLimiter(t, func(c *Config) { c.MaxBans = 3 }, Events{})
	for i := range 5 {
		if d, r := l.Request(nthAddr(i), "OPTIONS", "", "sipvicious"); d != Drop || r != ReasonScanner {
			t.Fatalf("scanner %d: %v %v", i, d, r)
		}
	}
	s := l.Stats()
	if s.Bans != 3 || s.BanRecords != 3 || s.BanOverflow != 2 {
		t.Fatalf("stats %+v", s)
	}
	// Operators can still ban.
	l.Ban(pfx("192.0.2.1/32"), ReasonManual, time.Minute)
	if !l.Banned(addr("192.0.2.1")) {
		t.Fatal("manual ban refused at max_bans")
	}
}
