package ratelimit

import (
	"net/netip"
	"testing"
	"time"
)

// FuzzDecisions drives the limiter with arbitrary sequences of events
// from a handful of sources and checks what must always hold: no panic,
// allowlisted sources always pass, banned sources never do, an unproven
// source is never banned but by an operator, and tracked state stays
// within its caps.
func FuzzDecisions(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	f.Add([]byte{2, 0, 2, 0, 2, 0, 2, 0, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1})
	methods := []string{"REGISTER", "INVITE", "OPTIONS", "MESSAGE", "SUBSCRIBE", "BYE"}
	uas := []string{"Yealink SIP-T46U", "friendly-scanner", "", "Linphone/5.2", "sipcli/v1.8"}
	f.Fuzz(func(t *testing.T, ops []byte) {
		l, c := newLimiter(t, func(cfg *Config) {
			cfg.Allow = []string{"10.9.0.0/16"}
			cfg.MaxSources = 8
			cfg.MaxAORs = 8
			cfg.AuthFailures = 3
			cfg.MalformedLimit = 3
		}, Events{})
		srcOf := func(b byte) netip.Addr {
			if b%7 == 0 {
				return netip.AddrFrom4([4]byte{10, 9, 0, b})
			}
			if b%5 == 0 {
				return netip.MustParseAddr("2001:db8::1").Next() // an IPv6 source
			}
			return netip.AddrFrom4([4]byte{198, 51, 100, b % 32})
		}
		// Odd IPv4 sources only ever send unproven UDP: they never
		// connect, and the caller reports no auth failures for them.
		proven := func(a netip.Addr) bool { return a.Is6() || a.As4()[3]%2 == 0 }
		manual := map[netip.Addr]bool{}
		var releases []func()
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i]%10, ops[i+1]
			src := srcOf(arg)
			allowed := arg%7 == 0
			var d Decision
			switch op {
			case 0:
				d = l.Packet(src, int(arg)*8, proven(src))
			case 1:
				if !proven(src) {
					continue
				}
				var rel func()
				d, rel = l.Accept(src)
				releases = append(releases, rel)
			case 2:
				d, _ = l.Request(src, methods[int(arg)%len(methods)], "sip:u"+string('a'+arg%16)+"@x", uas[int(arg)%len(uas)], proven(src))
			case 3:
				if proven(src) {
					l.AuthFailure(src, "sip:u@x")
				}
			case 4:
				l.Malformed(src, proven(src))
			case 5:
				l.SetBindings(src, int(arg))
			case 6:
				c.Advance(time.Duration(arg) * 100 * time.Millisecond)
			case 7:
				l.Sweep()
			case 8:
				if len(releases) > 0 {
					releases[0]()
					releases = releases[1:]
				}
			case 9:
				l.Ban(netip.PrefixFrom(src, src.BitLen()), ReasonManual, time.Duration(arg)*time.Second)
				manual[src] = true
			}
			if !proven(src) && !manual[src] && l.Banned(src) {
				t.Fatalf("op %d: unproven %v banned: %+v", op, src, l.Bans())
			}
			if op <= 2 {
				if d != Allow && d != Reject && d != Drop {
					t.Fatalf("op %d: decision %v", op, d)
				}
				if allowed && d != Allow {
					t.Fatalf("allowlisted %v got %v", src, d)
				}
			}
			if l.Banned(src) && !allowed {
				if d := l.Packet(src, 100, true); d != Drop {
					t.Fatalf("banned %v: Packet %v", src, d)
				}
			}
		}
		if st := l.Stats(); st.Sources-st.BoundSources > 8 {
			t.Fatalf("%d unbound sources tracked, cap 8", st.Sources-st.BoundSources)
		}
	})
}

// FuzzParsePrefix: whatever parses is masked, unmapped and zone-free, and
// parses back to itself from its String.
func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "192.0.2.7", "::ffff:198.51.100.0/120", "fe80::1%eth0", "2001:db8::/32", "::ffff:0:0/95"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePrefix(s)
		if err != nil {
			return
		}
		a := p.Addr()
		if p != p.Masked() || a.Zone() != "" || a.Is4In6() && p.Bits() >= 96 {
			t.Fatalf("ParsePrefix(%q) = %v: not normalised", s, p)
		}
		if q, err := ParsePrefix(p.String()); err != nil || q != p {
			t.Fatalf("ParsePrefix(%q) = %v, but %v parses to %v, %v", s, p, p, q, err)
		}
	})
}
