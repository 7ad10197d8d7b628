package ratelimit

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
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
		l.Malformed(src, true)
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
	l.Malformed(src, true)
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
	if got, want := l.lim.Load().banDuration(100), time.Duration(1<<62); got != want {
		t.Fatalf("100th ban lasts %v, want ban_max %v", got, want)
	}
	if got := l.lim.Load().banDuration(3); got != 4*time.Hour {
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
	if l.Banned(src) || l.Packet(src, 100, true) != Allow {
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
		if !l.Banned(addr(a)) || l.Packet(addr(a), 10, true) != Drop {
			t.Errorf("%s not banned", a)
		}
		if d, r := l.Request(addr(a), "OPTIONS", "", "", true); d != Drop || r != ReasonBanned {
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
			if d := l.Packet(src, 60_000, true); d != Allow {
				t.Fatalf("%s Packet: %v", a, d)
			}
			if d, r := l.Request(src, "REGISTER", "sip:x@y", "friendly-scanner", true); d != Allow {
				t.Fatalf("%s Request: %v %v", a, d, r)
			}
			if d, _ := l.Accept(src); d != Allow {
				t.Fatalf("%s Accept: %v", a, d)
			}
			l.AuthFailure(src, "sip:x@y")
			l.Malformed(src, true)
		}
		l.Ban(netip.PrefixFrom(src, src.BitLen()), ReasonManual, time.Hour)
		if l.Banned(src) {
			t.Fatalf("%s banned", a)
		}
	}
	// A wider ban does not catch allowlisted addresses either.
	l.Ban(pfx("10.0.0.0/7"), ReasonManual, time.Hour)
	if l.Banned(addr("10.1.1.1")) || l.Packet(addr("10.1.1.1"), 1, true) != Allow || !l.Banned(addr("11.1.1.1")) {
		t.Fatal("prefix ban over the allowlist")
	}
	if s := l.Stats(); s.Sources != 0 || s.BanRecords != 0 {
		t.Fatalf("allowlisted sources tracked: %+v", s)
	}
}

// TestScannerBan: a scanner User-Agent from a proven source bans it at
// once (TestUnprovenNeverBanned has the unproven case).
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
		d, r := l.Request(src, "REGISTER", fmt.Sprintf("sip:%d@example.com", i), tt.ua, true)
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

// TestDefaultScanners: the default patterns against User-Agents of real
// scanners, and of real clients that must never match (a pattern is a
// whole word, not a substring).
func TestDefaultScanners(t *testing.T) {
	s := newScanner(DefaultScannerUserAgents())
	for _, ua := range []string{
		"friendly-scanner",
		"friendly-scanner/1.0",
		"sipvicious",
		"SIPVicious/0.3.4",
		"sipcli/v1.8",
		"SIPCLI/v1.8",
		"sip-scan",
		"sundayddr",
		"iWar",
		"VaxSIPUserAgent/3.1",
		"VaxSIPUserAgent/3.5",
		"pplsip",
		"siparmyknife",
		"SIPScan 1.2",
		"smap 0.6.0",
		"Asterisk PBX friendly-scanner", // not the product name: still a word
	} {
		if !s.match(ua) {
			t.Errorf("scanner %q not matched", ua)
		}
	}
	for _, ua := range []string{
		"",
		"MicroSIP/3.21.3",
		"Zoiper rv2.10",
		"Z 5.6.1 v2.10.19.9",
		"Linphone/5.2.0 (belle-sip/5.2.0)",
		"baresip v1.0.0 (x86_64/linux)",
		"Yealink SIP-T46U 108.86.0.20",
		"Yealink SIP-T46S 66.86.0.15",
		"Grandstream GXP2170 1.0.11.23",
		"PolycomVVX-VVX_450-UA/6.4.3.5018",
		"Cisco-SIPGateway/IOS-15.7.3",
		"snom760/10.1.54.13",
		"Fanvil X4U 2.12.1",
		"Asterisk PBX 18.20.0",
		"FPBX-16.0.33(18.19.0)",
		"Bria 6 release 6.5.1 stamp 110134",
		"eyeBeam release 1011d stamp 40820",
		"JsSIP 3.10.0",
		"SIP.js/0.21.2",
		"Sipcliente/2.1",
		"mysipclient 1.0",
		"SIPClient",
		"sipcliënt/1.0", // a non-ASCII letter continues the word
		"Bismapper/1.0",
		"iWarp 2.0",
		"pplsipx",
		"PortSIP VoIP SDK 11.2.1", // a real SDK: deliberately not a default
	} {
		if s.match(ua) {
			t.Errorf("client %q matched", ua)
		}
	}
}

func TestScannerMatch(t *testing.T) {
	s := newScanner([]string{"friendly-scanner", "smap", "Q", "PortSIP VoIP SDK", "sipcli"})
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
		{"PortSIP VoIP SDK 11.2.1", true}, // a phrase
		{"portsip voip sdk", true},
		{"PortSIP VoIP SDKs", false},
		{"MyPortSIP VoIP SDK", false},
		{"PortSIP VoIP", false},
		{"sipcli/v1.8", true}, // the product name
		{"(sipcli)", true},
		{"x_sipcli-2", true},
		{"sipcliente", false},
		{"mysipclient", false},
		{"sipcliënt", false}, // UTF-8: a letter, not a boundary
		{"ésipcli", false},
		{"— sipcli", true},
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
	if d, _ := l.Request(other, "REGISTER", "sip:200@example.com", "", true); d != Allow {
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
	l.Malformed(src, true)
	l.Malformed(src, true)
	if l.Banned(src) {
		t.Fatal("banned early")
	}
	l.Malformed(src, true)
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
				{"malformed", func() { l.Malformed(office, true) }},
				{"scanner", func() { l.Request(office, "OPTIONS", "", "friendly-scanner", true) }},
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
			if d, r := l.Request(office, "OPTIONS", "", "sipvicious", true); d != Drop || r != ReasonScanner {
				t.Errorf("scanner from bound source: %v %v", d, r)
			}
		})
	}
}

func TestMaxBans(t *testing.T) {
	l, _ := newLimiter(t, func(c *Config) { c.MaxBans = 3 }, Events{})
	for i := range 5 {
		if d, r := l.Request(nthAddr(i), "OPTIONS", "", "sipvicious", true); d != Drop || r != ReasonScanner {
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

// TestBanEvidence: each automatic ban says what it was for, in OnBan and
// in Bans, enough for an operator's log line.
func TestBanEvidence(t *testing.T) {
	cfg := func(c *Config) {
		c.FloodWindow = 2 * time.Second
		c.PacketRate, c.PacketBurst = 10, 10
		c.AuthFailures, c.AORAuthFailures, c.AuthWindow = 4, 6, time.Minute
		c.MalformedLimit, c.MalformedWindow = 5, 30*time.Second
	}
	tests := []struct {
		name string
		do   func(l *Limiter, c *clock, src netip.Addr)
		want Ban // Addr, Since, Until and Count are checked apart
	}{
		{"flood", func(l *Limiter, c *clock, src netip.Addr) {
			// 100/s: over from the 11th, at 0.1 s; banned 2 s later, after
			// 201 datagrams, 20 of them within the 10/s allowed.
			for l.Packet(src, 100, true) != Drop || !l.Banned(src) {
				c.Advance(10 * time.Millisecond)
			}
		}, Ban{Reason: ReasonFlood, Events: 181, Window: 2 * time.Second, Over: ReasonPacketRate}},
		{"scanner", func(l *Limiter, c *clock, src netip.Addr) {
			l.Request(src, "OPTIONS", "", "sipcli/v1.8", true)
		}, Ban{Reason: ReasonScanner, Events: 1}},
		{"malformed", func(l *Limiter, c *clock, src netip.Addr) {
			for range 5 {
				l.Malformed(src, true)
			}
		}, Ban{Reason: ReasonMalformed, Events: 5, Window: 30 * time.Second}},
		{"auth failures", func(l *Limiter, c *clock, src netip.Addr) {
			for i := range 4 {
				l.AuthFailure(src, fmt.Sprintf("sip:%d@x", i))
			}
		}, Ban{Reason: ReasonAuthFailures, Events: 4, Window: time.Minute}},
		{"aor auth failures", func(l *Limiter, c *clock, src netip.Addr) {
			for i := range 5 {
				l.AuthFailure(nthAddr(i), "sip:1001@x")
			}
			l.AuthFailure(src, "sip:1001@x")
		}, Ban{Reason: ReasonAORAuthFailures, Events: 6, Window: time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec recorder
			l, c := newLimiter(t, cfg, rec.events())
			src := addr("198.51.100.200")
			tt.do(l, c, src)
			bans := rec.Bans()
			if len(bans) != 1 {
				t.Fatalf("OnBan: %+v", bans)
			}
			b := bans[0]
			if b.Addr != pfx("198.51.100.200/32") || b.Count != 1 || b.Manual ||
				b.Duration() != DefaultConfig().BanTime || !b.Since.Equal(c.Now()) {
				t.Errorf("ban %+v", b)
			}
			got := Ban{Reason: b.Reason, Events: b.Events, Window: b.Window, Over: b.Over}
			if got != tt.want {
				t.Errorf("evidence %+v, want %+v", got, tt.want)
			}
			if listed := l.Bans(); len(listed) != 1 || listed[0] != b {
				t.Errorf("Bans() = %+v, OnBan %+v", listed, b)
			}
		})
	}
}

// TestBanEscalationEvidence: Count says how many times the source was
// banned; each ban carries its own evidence.
func TestBanEscalationEvidence(t *testing.T) {
	var rec recorder
	l, c := newLimiter(t, func(c *Config) { c.MalformedLimit = 2 }, rec.events())
	src := addr("198.51.100.201")
	l.Malformed(src, true)
	l.Malformed(src, true)
	c.Advance(time.Hour)
	l.Request(src, "OPTIONS", "", "friendly-scanner", true)
	b := rec.Bans()
	if len(b) != 2 || b[0].Count != 1 || b[0].Events != 2 || b[1].Count != 2 || b[1].Reason != ReasonScanner ||
		b[1].Events != 1 || b[1].Window != 0 || b[1].Duration() != 2*DefaultConfig().BanTime {
		t.Fatalf("bans %+v", b)
	}
}

// TestManualBanEvents: operator bans and unbans are reported like
// automatic ones, flagged Manual, for sources and wider prefixes.
func TestManualBanEvents(t *testing.T) {
	var rec recorder
	l, c := newLimiter(t, nil, rec.events())
	l.Ban(pfx("192.0.2.9/32"), ReasonManual, time.Hour)
	l.Ban(pfx("198.51.100.0/24"), ReasonScanner, 0)
	l.Ban(pfx("10.0.0.1/32"), ReasonManual, 0)
	bans := rec.Bans()
	if len(bans) != 3 {
		t.Fatalf("OnBan: %+v", bans)
	}
	for i, want := range []struct {
		p string
		r Reason
		d time.Duration
	}{{"192.0.2.9/32", ReasonManual, time.Hour}, {"198.51.100.0/24", ReasonScanner, DefaultConfig().BanTime}, {"10.0.0.1/32", ReasonManual, DefaultConfig().BanTime}} {
		if b := bans[i]; b.Addr != pfx(want.p) || b.Reason != want.r || !b.Manual || b.Duration() != want.d || b.Count != 1 || b.Events != 0 {
			t.Errorf("ban %d: %+v", i, b)
		}
	}
	// An operator extending an automatic ban makes it manual.
	l.Request(addr("203.0.113.3"), "OPTIONS", "", "sipvicious", true)
	l.Ban(pfx("203.0.113.3/32"), ReasonManual, 48*time.Hour)
	if b := rec.Bans(); len(b) != 5 || b[3].Manual || !b[4].Manual || b[4].Count != 2 || b[4].Duration() != 48*time.Hour {
		t.Fatalf("extension: %+v", b[3:])
	}
	if !l.Unban(pfx("192.0.2.9/32")) || !l.Unban(pfx("198.51.100.0/24")) {
		t.Fatal("Unban = false")
	}
	u := rec.Unbans()
	if len(u) != 2 || u[0].Addr != pfx("192.0.2.9/32") || u[1].Addr != pfx("198.51.100.0/24") || !u[0].Until.After(c.Now()) {
		t.Fatalf("OnUnban: %+v", u)
	}
	// A ban that has expired but not been swept yet: Unban reports it (as
	// expired), since Sweep no longer will; once.
	c.Advance(6 * time.Minute)
	if l.Unban(pfx("10.0.0.1/32")) {
		t.Fatal("Unban of an expired ban = true")
	}
	l.Sweep()
	l.Unban(pfx("10.0.0.1/32"))
	if u := rec.Unbans(); len(u) != 3 || u[2].Addr != pfx("10.0.0.1/32") || u[2].Until.After(c.Now()) {
		t.Fatalf("OnUnban: %+v", u)
	}
}

// TestBanLogValue: a Ban is one slog group with stable keys.
func TestBanLogValue(t *testing.T) {
	since := t0
	tests := []struct {
		b    Ban
		want string
	}{
		{Ban{Addr: pfx("198.51.100.7/32"), Reason: ReasonFlood, Since: since, Until: since.Add(10 * time.Minute), Count: 2, Events: 950, Window: 10 * time.Second, Over: ReasonPacketRate},
			`{"ban":{"src":"198.51.100.7/32","reason":"flood","until":"2025-03-01T12:10:00Z","for":600000000000,"count":2,"events":950,"window":10000000000,"over":"packet_rate"}}`},
		{Ban{Addr: pfx("2001:db8::/64"), Reason: ReasonScanner, Since: since, Until: since.Add(5 * time.Minute), Count: 1, Events: 1},
			`{"ban":{"src":"2001:db8::/64","reason":"scanner","until":"2025-03-01T12:05:00Z","for":300000000000,"count":1,"events":1,"window":0}}`},
		{Ban{Addr: pfx("192.0.2.0/24"), Reason: ReasonManual, Since: since, Until: since.Add(time.Hour), Count: 1, Manual: true},
			`{"ban":{"src":"192.0.2.0/24","reason":"manual","until":"2025-03-01T13:00:00Z","for":3600000000000,"count":1,"manual":true}}`},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{
			ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey || a.Key == slog.LevelKey || a.Key == slog.MessageKey {
					return slog.Attr{}
				}
				return a
			},
		}))
		log.Info("", "ban", tt.b)
		if got := strings.TrimSpace(buf.String()); got != tt.want {
			t.Errorf("got  %s\nwant %s", got, tt.want)
		}
	}
}
