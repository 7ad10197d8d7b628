package nat

import "bytes"

// framer follows SIP message boundaries in a byte stream (RFC 3261
// §7.5, §18.3) just well enough to tell whether the stream is between
// messages, the only place a CRLF keepalive (RFC 5626 §3.5.1) can be.
// A read of exactly "\r\n\r\n" may as well be the end of a header block
// or part of a body, depending on how the sender's writes were cut.
//
// It mirrors sipgo's stream parser: lines end in CRLF, CRLFs before a
// start-line are skipped, the empty line ends the headers, and the last
// Content-Length (or "l") header, folded or not, sizes the body. Where
// sipgo fails a message it closes the connection, so what the framer
// makes of malformed input does not matter.
type framer struct {
	state uint8

	// In frameHead:
	cr    bool // the last byte was the CR ending a line
	bol   bool // at the beginning of a header line
	start bool // in the start-line
	empty bool // the current line has no bytes yet
	keep  bool // the current header may be Content-Length: buffer it
	over  bool // it overflowed hdr
	n     uint8
	hdr   [48]byte
	clen  int64 // the last Content-Length, -1 for none

	body int64 // in frameBody: bytes left
}

const (
	frameIdle uint8 = iota // between messages
	frameHead              // in a start-line or headers
	frameBody              // in a body
)

func (f *framer) idle() bool { return f.state == frameIdle }

// feed advances the framer over p.
func (f *framer) feed(p []byte) {
	for len(p) > 0 {
		switch f.state {
		case frameIdle:
			i := 0
			for i < len(p) && (p[i] == '\r' || p[i] == '\n') {
				i++
			}
			if p = p[i:]; len(p) == 0 {
				return
			}
			*f = framer{state: frameHead, start: true, empty: true, clen: -1}
		case frameHead:
			p = f.head(p)
		case frameBody:
			if int64(len(p)) < f.body {
				f.body -= int64(len(p))
				return
			}
			p = p[f.body:]
			f.state, f.body = frameIdle, 0
		}
	}
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
			if c := p[0]; c == ' ' || c == '\t' {
				f.add([]byte{' '}) // a folded continuation of the header
			} else {
				f.endHeader()
				f.keep = c == 'c' || c == 'C' || c == 'l' || c == 'L'
				f.n, f.over = 0, false
			}
		}
		i := bytes.IndexByte(p, '\r')
		line := p
		if i >= 0 {
			line = p[:i]
		}
		if len(line) > 0 {
			f.empty = false
			f.add(line)
		}
		if i < 0 {
			return nil
		}
		f.cr = true
		p = p[i+1:]
	}
	return nil
}

// add buffers b if the current header may be Content-Length.
func (f *framer) add(b []byte) {
	if !f.keep || f.over {
		return
	}
	if int(f.n)+len(b) > len(f.hdr) {
		f.over = true
		return
	}
	f.n += uint8(copy(f.hdr[f.n:], b))
}

// endHeader takes the Content-Length from the header just ended, if it
// is one.
func (f *framer) endHeader() {
	if !f.keep {
		return
	}
	f.keep = false
	if f.over {
		return
	}
	h := f.hdr[:f.n]
	colon := bytes.IndexByte(h, ':')
	if colon < 0 {
		return
	}
	name := bytes.TrimSpace(h[:colon])
	if !bytes.EqualFold(name, []byte("content-length")) && !bytes.EqualFold(name, []byte("l")) {
		return
	}
	v := bytes.TrimSpace(h[colon+1:])
	if len(v) == 0 || len(v) > 10 {
		return
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return
		}
		n = n*10 + int64(c-'0')
	}
	f.clen = n
}
