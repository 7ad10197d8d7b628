package nat

import (
	"bytes"
	"math"
)

// framer follows SIP message boundaries in a byte stream (RFC 3261
// §7.5, §18.3) just well enough to tell whether the stream is between
// messages, the only place a CRLF keepalive (RFC 5626 §3.5.1) can be.
// A read of exactly "\r\n\r\n" may as well be the end of a header block
// or part of a body, depending on how the sender's writes were cut.
//
// It mirrors sipgo's stream parser: lines end in CRLF, CRLFs before a
// start-line are skipped, the empty line ends the headers, and the last
// Content-Length (or "l") header, folded or not, sizes the body. Header
// names and values may carry any amount of ASCII space around them, as
// sipgo trims it (sipgo also trims Unicode spaces; the framer does not).
// Where sipgo fails a message it closes the connection, so what the
// framer makes of malformed input does not matter.
//
// It also sizes each message against its limits, so that a connection
// can be closed before sipgo buffers an oversized one.
type framer struct {
	state uint8

	// In frameHead:
	cr    bool  // the last byte was the CR ending a line
	bol   bool  // at the beginning of a header line
	start bool  // in the start-line
	hdrs  bool  // a header line has begun
	empty bool  // the current line has no bytes yet
	clen  int64 // the last Content-Length, -1 for none

	// The current header, read a byte at a time while it may be
	// Content-Length:
	hs     uint8    // hdrSkip, hdrName or hdrValue
	name   [14]byte // lower-cased, len("content-length")
	nn     uint8
	nameSP bool // space after the name began
	num    int64
	digits bool
	numSP  bool // space after the digits

	body int64 // in frameBody: bytes left

	hlen int64  // bytes of the current message's header block so far
	msgs uint64 // messages begun
	lim  frameLimits
}

// frameLimits is what a framer enforces.
type frameLimits struct {
	head int64 // cap on a header block (start-line to empty line); 0: none
	body int64 // cap on a Content-Length; 0: none
	// one makes the framer follow the first message only and ignore
	// what follows it: a WebSocket upgrade request, after which the
	// stream is WebSocket frames.
	one bool
}

// errTooLarge is returned by framer.feed for a message over its limits.
var errTooLarge = &limitError{"too large"}

const (
	frameIdle uint8 = iota // between messages
	frameHead              // in a start-line or headers
	frameBody              // in a body
)

const (
	hdrSkip  uint8 = iota // not Content-Length, or not a valid one
	hdrName               // before the colon
	hdrValue              // after the colon of a Content-Length
)

func (f *framer) idle() bool { return f.state == frameIdle }

// feed advances the framer over p. It fails with errTooLarge as soon as
// the current message's header block is over its cap, or when the header
// block ends with a Content-Length over its cap; the framer is then of no
// further use.
func (f *framer) feed(p []byte) error {
	for len(p) > 0 {
		switch f.state {
		case frameIdle:
			if f.lim.one && f.msgs > 0 {
				return nil
			}
			i := 0
			for i < len(p) && (p[i] == '\r' || p[i] == '\n') {
				i++
			}
			if p = p[i:]; len(p) == 0 {
				return nil
			}
			*f = framer{state: frameHead, start: true, empty: true, clen: -1, msgs: f.msgs + 1, lim: f.lim}
		case frameHead:
			rest := f.head(p)
			f.hlen += int64(len(p) - len(rest))
			if f.lim.head > 0 && f.hlen > f.lim.head ||
				f.lim.body > 0 && f.state != frameHead && f.clen > f.lim.body {
				return errTooLarge
			}
			p = rest
		case frameBody:
			if int64(len(p)) < f.body {
				f.body -= int64(len(p))
				return nil
			}
			p = p[f.body:]
			f.state, f.body = frameIdle, 0
		}
	}
	return nil
}

// head consumes start-line and header bytes from p and returns what
// follows the header block, if p holds its end.
func (f *framer) head(p []byte) []byte {
	for len(p) > 0 {
		if f.cr {
			f.cr = false
			if p[0] == '\n' {
				p = p[1:]
			}
			if f.empty && !f.start { // the empty line
				f.endHeader()
				if f.clen > 0 {
					f.state, f.body = frameBody, f.clen
				} else {
					f.state = frameIdle
				}
				return p
			}
			f.start, f.bol, f.empty = false, true, true
			continue
		}
		if f.bol {
			f.bol = false
			switch c := p[0]; {
			case (c == ' ' || c == '\t') && f.hdrs:
				f.headerByte(' ') // a folded continuation of the header
			default:
				f.endHeader()
				f.hdrs = true
				f.hs, f.nn, f.nameSP, f.num, f.digits, f.numSP = hdrName, 0, false, 0, false, false
				if isAlnum(c) && c != 'c' && c != 'C' && c != 'l' && c != 'L' {
					f.hs = hdrSkip // the common case, decided on one byte
				}
			}
		}
		i := bytes.IndexByte(p, '\r')
		line := p
		if i >= 0 {
			line = p[:i]
		}
		if len(line) > 0 {
			f.empty = false
			for j := 0; j < len(line) && f.hs != hdrSkip; j++ {
				f.headerByte(line[j])
			}
		}
		if i < 0 {
			return nil
		}
		f.cr = true
		p = p[i+1:]
	}
	return nil
}

// headerByte advances over one byte of a header that may be
// Content-Length.
func (f *framer) headerByte(c byte) {
	switch f.hs {
	case hdrName:
		switch {
		case c == ':':
			if n := string(f.name[:f.nn]); n == "content-length" || n == "l" {
				f.hs = hdrValue
			} else {
				f.hs = hdrSkip
			}
		case isSpace(c):
			f.nameSP = f.nn > 0
		case f.nameSP || int(f.nn) == len(f.name):
			f.hs = hdrSkip // space inside the name, or too long a name
		default:
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			f.name[f.nn] = c
			f.nn++
		}
	case hdrValue:
		switch {
		case '0' <= c && c <= '9' && !f.numSP:
			f.num = f.num*10 + int64(c-'0')
			f.digits = true
			if f.num > math.MaxUint32 {
				f.hs = hdrSkip // sipgo refuses it
			}
		case isSpace(c):
			f.numSP = f.digits
		default:
			f.hs = hdrSkip
		}
	}
}

// endHeader takes the Content-Length from the header just ended, if it
// is a valid one.
func (f *framer) endHeader() {
	if f.hs == hdrValue && f.digits {
		f.clen = f.num
	}
	f.hs = hdrSkip
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// isSpace reports ASCII white space, as bytes.TrimSpace trims it.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}
