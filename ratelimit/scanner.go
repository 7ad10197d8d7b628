package ratelimit

import "strings"

// maxPatternLen bounds a scanner pattern (Validate).
const maxPatternLen = 64

// scanner matches User-Agents against scanner names, case-insensitively
// (ASCII) and only as whole words: a pattern matches where the bytes
// either side of it are not word bytes (ASCII letters and digits, and any
// byte of a non-ASCII character) or are the ends of the User-Agent. So
// "sipcli" matches "sipcli/v1.8" and "x sipcli-2", but not "sipcliente",
// "mysipclient" or "sipcliënt"; "smap" does not match "Bismapper". This
// covers a User-Agent whose product name (the text before the first '/'
// or space) is the pattern, and a pattern of several words ("PortSIP VoIP
// SDK") matches as a phrase.
//
// One pass over the User-Agent that looks only where a word may start
// (the first byte, and each byte after a non-word byte), with a bitset of
// the patterns' first two bytes, so the cost hardly grows with the number
// of patterns; no allocation.
type scanner struct {
	pats    []pattern
	bigrams [1 << 16 / 64]uint64 // first two bytes of each pattern
	single  [256 / 64]uint64     // one-byte patterns (rare)
}

// pattern is a lower-cased pattern of at least two bytes and its first
// two bytes.
type pattern struct {
	s  string
	bg uint16
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

// wordByte: ASCII letters and digits, and the bytes of UTF-8 sequences
// (a non-ASCII letter must not end a word).
var wordByte = func() (t [256]bool) {
	for i := range t {
		t[i] = 'a' <= i && i <= 'z' || 'A' <= i && i <= 'Z' || '0' <= i && i <= '9' || i >= 0x80
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
			s.single[p[0]>>6] |= 1 << (p[0] & 63)
		default:
			bg := uint16(p[0])<<8 | uint16(p[1])
			s.pats = append(s.pats, pattern{s: p, bg: bg})
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
	for i := 0; i < len(ua); i++ {
		// ua[i] starts a word: i is 0 or ua[i-1] is not a word byte.
		lc := lower[ua[i]]
		if i+1 < len(ua) {
			bg := uint16(lc)<<8 | uint16(lower[ua[i+1]])
			if s.bigrams[bg>>6]&(1<<(bg&63)) != 0 && s.matchFrom(ua, i, bg) {
				return true
			}
		}
		if s.single[lc>>6]&(1<<(lc&63)) != 0 && (i+1 == len(ua) || !wordByte[ua[i+1]]) {
			return true
		}
		// Skip the rest of the word, and the non-word byte after it.
		for wordByte[ua[i]] {
			if i++; i == len(ua) {
				return false
			}
		}
	}
	return false
}

// matchFrom reports whether a pattern starting with bg ends a word in ua
// that starts at i.
func (s *scanner) matchFrom(ua string, i int, bg uint16) bool {
	for _, p := range s.pats {
		if p.bg == bg && matchAt(ua, i, p.s) {
			return true
		}
	}
	return false
}

// matchAt reports whether the lower-case p occurs in ua at i followed by
// a non-word byte or the end. The caller checked the byte before i.
func matchAt(ua string, i int, p string) bool {
	end := i + len(p)
	if end > len(ua) {
		return false
	}
	for j := 2; j < len(p); j++ { // the first two bytes matched the bigram
		if lower[ua[i+j]] != p[j] {
			return false
		}
	}
	return end == len(ua) || !wordByte[ua[end]]
}
