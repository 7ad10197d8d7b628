package ratelimit

import "strings"

// maxPatternLen bounds a scanner pattern (Validate).
const maxPatternLen = 64

// scanner matches User-Agents against scanner names, case-insensitively
// (ASCII) and as whole words: the bytes either side of a match must not be
// letters or digits, so "smap" does not match "Bismapper". One pass over
// the User-Agent with a bitset of the patterns' first two bytes, so the
// cost hardly grows with the number of patterns; no allocation.
type scanner struct {
	pats    []string             // lower-cased, at least two bytes
	bigrams [1 << 16 / 64]uint64 // first two bytes of each pattern
	single  []string             // one-byte patterns (rare)
}

var lower = func() (t [256]byte) {
	for i := range t {
		t[i] = byte(i)
		if 'A' <= i && i <= 'Z' {
			t[i] = byte(i) + 'a' - 'A'
		}
	}
	return t
}()

func newScanner(pats []string) scanner {
	var s scanner
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

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		b[i] = lower[c]
	}
	return string(b)
}

// match reports whether ua names a scanner.
func (s *scanner) match(ua string) bool {
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
				if matchAt(ua, i-1, p) {
					return true
				}
			}
		}
	}
	for _, p := range s.single {
		for i := range len(ua) {
			if matchAt(ua, i, p) {
				return true
			}
		}
	}
	return false
}

// matchAt reports whether the lower-case word p occurs in ua at i.
func matchAt(ua string, i int, p string) bool {
	end := i + len(p)
	if end > len(ua) {
		return false
	}
	for j := range len(p) {
		if lower[ua[i+j]] != p[j] {
			return false
		}
	}
	return (i == 0 || !isWordByte(ua[i-1])) && (end == len(ua) || !isWordByte(ua[end]))
}

func isWordByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
