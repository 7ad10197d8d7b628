package ratelimit

import (
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// benchLimiter has budgets no benchmark exhausts and the real clock, so
// the numbers include reading it.
func benchLimiter(b *testing.B, edit func(*Config)) *Limiter {
	b.Helper()
	return benchLimiterClock(b, edit, time.Now)
}

func benchLimiterClock(b *testing.B, edit func(*Config), now func() time.Time) *Limiter {
	b.Helper()
	cfg := DefaultConfig()
	cfg.PacketRate, cfg.PacketBurst = 1e9, 1e9
	cfg.RequestRate, cfg.RequestBurst = 1e9, 1e9
	cfg.RegisterRate, cfg.RegisterBurst = 1e9, 1e9
	cfg.MethodRate, cfg.MethodBurst = 1e9, 1e9
	cfg.Methods = map[string]Budget{"OPTIONS": {1e9, 1e9}, "INVITE": {1e9, 1e9}, "SUBSCRIBE": {1e9, 1e9}}
	cfg.ByteRate, cfg.ByteBurst = 1e12, 1e9
	if edit != nil {
		edit(&cfg)
	}
	l, err := New(cfg, now, Events{OnDecision: func(Decision, Reason, netip.Addr) {}})
	if err != nil {
		b.Fatal(err)
	}
	return l
}

func BenchmarkPacket(b *testing.B) {
	b.Run("known", func(b *testing.B) {
		l := benchLimiter(b, nil)
		src := addr("192.0.2.1")
		b.ReportAllocs()
		for b.Loop() {
			l.Packet(src, 600, true)
		}
	})
	// The same without reading the system clock: the Limiter's own cost.
	b.Run("known-fixedclock", func(b *testing.B) {
		l := benchLimiterClock(b, nil, func() time.Time { return t0 })
		src := addr("192.0.2.1")
		b.ReportAllocs()
		for b.Loop() {
			l.Packet(src, 600, true)
		}
	})
	// A spoofed flood at max_sources: every source new, all on the
	// shared overflow budget.
	b.Run("unknown", func(b *testing.B) {
		l := benchLimiter(b, func(c *Config) { c.MaxSources = 1000 })
		for i := range 1000 {
			l.Packet(nthAddr(i), 1, true)
		}
		i := 0
		b.ReportAllocs()
		for b.Loop() {
			i++
			l.Packet(nthAddr(1000+i&0xffffff), 600, false)
		}
	})
	b.Run("banned", func(b *testing.B) {
		l := benchLimiter(b, nil)
		src := addr("192.0.2.1")
		l.Ban(SourcePrefix(src), ReasonManual, time.Hour)
		b.ReportAllocs()
		for b.Loop() {
			l.Packet(src, 600, true)
		}
	})
	b.Run("prefix-banned", func(b *testing.B) {
		l := benchLimiter(b, nil)
		l.Ban(pfx("192.0.2.0/24"), ReasonManual, time.Hour)
		src := addr("192.0.2.1")
		b.ReportAllocs()
		for b.Loop() {
			l.Packet(src, 600, true)
		}
	})
	b.Run("known-parallel", func(b *testing.B) {
		l := benchLimiter(b, nil)
		var g atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			base := int(g.Add(1)) * 1000
			i := 0
			for pb.Next() {
				i++
				l.Packet(nthAddr(base+i%100), 600, true)
			}
		})
	})
	b.Run("unknown-parallel", func(b *testing.B) {
		l := benchLimiter(b, func(c *Config) { c.MaxSources = 1000 })
		for i := range 1000 {
			l.Packet(nthAddr(i), 1, true)
		}
		var g atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := int(g.Add(1)) << 20
			for pb.Next() {
				i++
				l.Packet(nthAddr(i&0xffffff|1<<12), 600, false)
			}
		})
	})
}

func BenchmarkRequest(b *testing.B) {
	const ua = "Yealink SIP-T46S 66.86.0.15"
	b.Run("REGISTER", func(b *testing.B) {
		l := benchLimiter(b, nil)
		src := addr("192.0.2.1")
		aors := make([]string, 1000)
		for i := range aors {
			aors[i] = fmt.Sprintf("sip:%d@example.com", 1000+i)
		}
		i := 0
		b.ReportAllocs()
		for b.Loop() {
			i++
			l.Request(src, "REGISTER", aors[i%len(aors)], ua, true)
		}
	})
	b.Run("OPTIONS", func(b *testing.B) {
		l := benchLimiter(b, nil)
		src := addr("192.0.2.1")
		b.ReportAllocs()
		for b.Loop() {
			l.Request(src, "OPTIONS", "", ua, true)
		}
	})
	// The same without reading the system clock: the Limiter's own cost.
	b.Run("REGISTER-fixedclock", func(b *testing.B) {
		l := benchLimiterClock(b, nil, func() time.Time { return t0 })
		src := addr("192.0.2.1")
		b.ReportAllocs()
		for b.Loop() {
			l.Request(src, "REGISTER", "sip:1000@example.com", ua, true)
		}
	})
	b.Run("OPTIONS-fixedclock", func(b *testing.B) {
		l := benchLimiterClock(b, nil, func() time.Time { return t0 })
		src := addr("192.0.2.1")
		b.ReportAllocs()
		for b.Loop() {
			l.Request(src, "OPTIONS", "", ua, true)
		}
	})
	b.Run("scanner", func(b *testing.B) {
		l := benchLimiter(b, nil)
		i := 0
		b.ReportAllocs()
		for b.Loop() {
			i++
			l.Request(nthAddr(i&0xffff), "OPTIONS", "", "friendly-scanner", true)
		}
	})
	// Spoofable scanners: dropped, nothing kept.
	b.Run("scanner-unproven", func(b *testing.B) {
		l := benchLimiter(b, nil)
		i := 0
		b.ReportAllocs()
		for b.Loop() {
			i++
			l.Request(nthAddr(i&0xffff), "OPTIONS", "", "friendly-scanner", false)
		}
	})
	b.Run("REGISTER-parallel", func(b *testing.B) {
		l := benchLimiter(b, nil)
		var g atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			base := int(g.Add(1)) * 1000
			aors := make([]string, 100)
			for i := range aors {
				aors[i] = fmt.Sprintf("sip:%d@example.com", base+i)
			}
			i := 0
			for pb.Next() {
				i++
				l.Request(nthAddr(base+i%100), "REGISTER", aors[i%100], ua, true)
			}
		})
	})
}

func BenchmarkSweep(b *testing.B) {
	c := new(clock)
	l := benchLimiterClock(b, nil, c.Now)
	for i := range DefaultConfig().MaxSources {
		l.Packet(nthAddr(i), 100, true)
	}
	b.ReportAllocs()
	for b.Loop() {
		l.Sweep() // 100,000 sources, none idle: the steady-state cost
	}
}

func BenchmarkAccept(b *testing.B) {
	l := benchLimiter(b, func(c *Config) { c.ConnRate, c.ConnBurst = 1e9, 1e9 })
	src := addr("192.0.2.1")
	b.ReportAllocs()
	for b.Loop() {
		_, release := l.Accept(src)
		release()
	}
}

func BenchmarkInflight(b *testing.B) {
	l := benchLimiter(b, nil)
	b.ReportAllocs()
	for b.Loop() {
		release, _ := l.Inflight()
		release()
	}
}

func BenchmarkScannerMatch(b *testing.B) {
	s := newScanner(DefaultScannerUserAgents())
	for _, ua := range []string{
		"Yealink SIP-T46S 66.86.0.15",
		"Linphone/5.2.0 (belle-sip/5.2.0)",
		"friendly-scanner",
		"sipcli/v1.8",
		// A long User-Agent full of near misses, as an attacker may send.
		strings.Repeat("sipcliente sip-scanner smapper ", 8),
	} {
		b.Run(ua[:min(len(ua), 32)], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s.match(ua)
			}
		})
	}
}
