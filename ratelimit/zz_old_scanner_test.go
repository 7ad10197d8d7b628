package ratelimit

import (
	"strings"
	"testing"
)

type oldScanner struct {
	pats    []string             // lower-cased, at least two bytes
	bigrams [1 << 16 / 64]uint64 // first two bytes of each pattern
	single  []string             // one-byte patterns (rare)
}

func newOldScanner(pats []string) oldScanner {
	var s oldScanner
	for _, p := range pats {
		p = asciiLower(strings.TrimSpace(p))
		switch len(p) {
		case 0:
		case 1:
			s.single = append(s.single, p)
		default:
			s.pats = append(s.pats, p)
			bg := uint16(p[0])<<8 | uint16(p[1])
			s.bigrams[bg>>6] |= 1 << (bg & 63)
		}
	}
	return s
}

// match reports whether ua names a oldScanner.
func (s *oldScanner) match(ua string) bool {
	if len(ua) > 0 {
		prev := uint16(lower[ua[0]])
		for i := 1; i < len(ua); i++ {
			cur := uint16(lower[ua[i]])
			bg := prev<<8 | cur
			prev = cur
			if s.bigrams[bg>>6]&(1<<(bg&63)) == 0 {
				continue
			}
			for _, p := range s.pats {
				if oldMatchAt(ua, i-1, p) {
					return true
				}
			}
		}
	}
	for _, p := range s.single {
		for i := range len(ua) {
			if oldMatchAt(ua, i, p) {
				return true
			}
		}
	}
	return false
}

// oldMatchAt reports whether the lower-case word p occurs in ua at i.
func oldMatchAt(ua string, i int, p string) bool {
	end := i + len(p)
	if end > len(ua) {
		return false
	}
	for j := range len(p) {
		if lower[ua[i+j]] != p[j] {
			return false
		}
	}
	return (i == 0 || !oldIsWordByte(ua[i-1])) && (end == len(ua) || !oldIsWordByte(ua[end]))
}

func oldIsWordByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func BenchmarkScannerOldVsNew(b *testing.B) {
	o := newOldScanner(DefaultScannerUserAgents())
	n := newScanner(DefaultScannerUserAgents())
	for _, ua := range []string{
		"Yealink SIP-T46S 66.86.0.15",
		"Linphone/5.2.0 (belle-sip/5.2.0)",
		"friendly-scanner",
		"sipcli/v1.8",
		strings.Repeat("sipcliente sip-scanner smapper ", 8),
	} {
		b.Run("old/"+ua[:min(len(ua), 20)], func(b *testing.B) {
			for b.Loop() {
				o.match(ua)
			}
		})
		b.Run("new/"+ua[:min(len(ua), 20)], func(b *testing.B) {
			for b.Loop() {
				n.match(ua)
			}
		})
	}
}
