package nat

import (
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// framerStream is a stream of messages whose ends are known, built to
// trip a framer that is not careful: bodies and header values holding
// CRLFs, compact and folded Content-Length, several Content-Lengths,
// keepalives between messages.
type framerStream struct {
	b      []byte
	idle   []bool   // idle[i]: the framer is between messages after byte i
	bodies []string // of each message, in order
}

func (s *framerStream) add(text string, between bool) {
	for range text {
		s.idle = append(s.idle, false)
	}
	s.b = append(s.b, text...)
	if between {
		// Every byte of a keepalive leaves the stream between messages.
		for i := len(s.idle) - len(text); i < len(s.idle); i++ {
			s.idle[i] = true
		}
	} else {
		s.idle[len(s.idle)-1] = true // the message's last byte ends it
	}
}

func testFramerStream() *framerStream {
	s := &framerStream{}
	msg := func(hdrs, body string) string {
		s.bodies = append(s.bodies, body)
		return "OPTIONS sip:edge.example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n" + hdrs + "\r\n" + body
	}
	s.add("\r\n\r\n", true)
	s.add(msg("Content-Length: 0\r\n", ""), false)
	s.add("\r\n", true)
	s.add(msg("Content-Type: text/plain\r\nContent-Length: 8\r\n", "\r\n\r\n\r\n\r\n"), false)
	s.add(msg("l: 4\r\n", "\r\n\r\n"), false)
	s.add(msg("content-length :   6 \r\nSubject: Content-Length: 99\r\n", "ab\r\ncd"), false)
	s.add(msg("Content-Length:\r\n  13\r\n", "\r\n\r\nCSeq: 1\r\n"), false) // 13 bytes
	s.add("\r\n\r\n", true)
	s.add(msg("Content-Length: 99\r\nContent-Length: 2\r\n", "\r\n"), false)
	s.add(msg("Call-ID: "+strings.Repeat("x", 100)+"\r\nContent-Length: 0\r\n", ""), false)
	s.add(msg("L: 3\r\n", "end"), false)
	s.add(msg("Content-Length"+strings.Repeat(" ", 60)+":"+strings.Repeat(" \t", 30)+strings.Repeat("0", 40)+"5 \r\n", "\r\n\r\n\n"), false)
	s.add(msg("\tContent-Length: 2\r\nContent-Lengthy: 7\r\nX-Content-Length: 9\r\nl : 1\r\n", "\r"), false)
	return s
}

// TestFramerStreamIsSIP checks the test stream against sipgo's own
// stream parser: the framer must find the messages sipgo finds.
func TestFramerStreamIsSIP(t *testing.T) {
	s := testFramerStream()
	var bodies []string
	par := sip.NewParser().NewSIPStream()
	if err := par.ParseSIPStream(s.b, func(m sip.Message) { bodies = append(bodies, string(m.Body())) }); err != nil {
		t.Fatalf("sipgo: %v", err)
	}
	if !slices.Equal(bodies, s.bodies) {
		t.Errorf("sipgo found bodies %q, want %q", bodies, s.bodies)
	}
}

func TestFramerByteByByte(t *testing.T) {
	s := testFramerStream()
	var f framer
	if !f.idle() {
		t.Fatal("a new framer is not idle")
	}
	for i := range s.b {
		f.feed(s.b[i : i+1])
		if f.idle() != s.idle[i] {
			t.Fatalf("after byte %d (%q in %q): idle = %v, want %v", i, s.b[i], around(s.b, i), f.idle(), s.idle[i])
		}
	}
}

func TestFramerChunks(t *testing.T) {
	s := testFramerStream()
	// Whatever the chunking, the framer's state at each chunk's end is
	// the same as byte by byte.
	for i := range s.b {
		var f framer
		f.feed(s.b[:i+1])
		if f.idle() != s.idle[i] {
			t.Fatalf("after the first %d bytes in one chunk: idle = %v, want %v", i+1, f.idle(), s.idle[i])
		}
		f.feed(s.b[i+1:])
		if !f.idle() {
			t.Fatalf("split at %d: not idle at the end", i+1)
		}
	}
	rnd := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		var f framer
		for i := 0; i < len(s.b); {
			n := 1 + rnd.IntN(40)
			n = min(n, len(s.b)-i)
			f.feed(s.b[i : i+n])
			i += n
			if f.idle() != s.idle[i-1] {
				t.Fatalf("after a chunk ending at %d: idle = %v, want %v", i, f.idle(), s.idle[i-1])
			}
		}
	}
}

func TestFramerAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	s := testFramerStream()
	var f framer
	if n := testing.AllocsPerRun(100, func() { f.feed(s.b) }); n != 0 {
		t.Errorf("feed: %v allocs", n)
	}
}

func around(b []byte, i int) []byte {
	return b[max(0, i-20):min(len(b), i+20)]
}

func BenchmarkFramer(b *testing.B) {
	s := testFramerStream()
	var f framer
	b.SetBytes(int64(len(s.b)))
	for b.Loop() {
		f.feed(s.b)
	}
}

// FuzzFramer checks the framer against sipgo's stream parser: fed the
// input a byte at a time, the framer must come back to idle exactly where
// each message sipgo parses from the whole input ends, up to the first
// input sipgo rejects (sipgo then closes the connection).
func FuzzFramer(f *testing.F) {
	s := testFramerStream()
	f.Add(s.b)
	f.Add([]byte("OPTIONS sip:a SIP/2.0\r\nContent-Length: 2\r\n\r\n\r\n\r\n\r\n"))
	f.Add([]byte("SIP/2.0 200 OK\r\nl:1\r\n\r\nx"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 8192 || slices.ContainsFunc(data, func(c byte) bool { return c >= 0x80 }) {
			return // sipgo also trims Unicode spaces from header names and values
		}
		par := sip.NewParser().NewSIPStream()
		par.Write(data)
		ends := map[int]bool{} // byte index of each message's last byte
		last, total, partial := -1, 0, false
		for par.Buffer().Len() > 0 {
			_, n, err := par.ParseNext()
			if errors.Is(err, io.ErrUnexpectedEOF) {
				partial = true
				break
			}
			if err != nil {
				break
			}
			total += n
			ends[total-1] = true
			last = total - 1
		}
		// Beyond the last message, only an incomplete one is comparable.
		upto := last
		if partial {
			upto = len(data) - 1
		}
		var fr framer
		for i := 0; i <= upto; i++ {
			wasIdle := fr.idle()
			fr.feed(data[i : i+1])
			if end := fr.idle() && !wasIdle; end != ends[i] {
				t.Fatalf("at byte %d (%q): the framer ended a message %v, sipgo %v", i, around(data, i), end, ends[i])
			}
		}
	})
}

// TestFramerLimits checks where the caps bite: a header block or a
// Content-Length at its cap passes, one byte more fails at the byte that
// shows it, whatever the chunking.
func TestFramerLimits(t *testing.T) {
	const body = "hello"
	msg := "MESSAGE sip:a@example.com SIP/2.0\r\nContent-Length: 99\r\nSubject: x\r\nl: 5\r\n\r\n" + body
	head := int64(strings.Index(msg, "\r\n\r\n") + 4)
	for _, tc := range []struct {
		name string
		lim  frameLimits
		fail int // index of the byte that fails, -1 for none
	}{
		{"at both caps", frameLimits{head: head, body: int64(len(body))}, -1},
		{"no caps", frameLimits{}, -1},
		{"header block over", frameLimits{head: head - 1}, int(head) - 1},
		{"header line over", frameLimits{head: 10}, 10},
		// The last Content-Length counts, not the 99 before it.
		{"Content-Length over", frameLimits{body: int64(len(body)) - 1}, int(head) - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := framer{lim: tc.lim}
			for i := range len(msg) {
				err := f.feed([]byte{msg[i]})
				if (err != nil) != (i == tc.fail) {
					t.Fatalf("byte %d: %v, want the failure at %d", i, err, tc.fail)
				}
				if err != nil {
					if !errors.Is(err, errTooLarge) {
						t.Fatalf("byte %d: %v, want errTooLarge", i, err)
					}
					break
				}
			}
			for split := range len(msg) + 1 {
				f := framer{lim: tc.lim}
				err := f.feed([]byte(msg[:split]))
				if err == nil {
					err = f.feed([]byte(msg[split:]))
				}
				if (err != nil) != (tc.fail >= 0) {
					t.Fatalf("split at %d: %v", split, err)
				}
			}
			// Limits carry over to the next message.
			f = framer{lim: tc.lim}
			err := f.feed([]byte(msg + "\r\n" + msg))
			if (err != nil) != (tc.fail >= 0) || err == nil && (!f.idle() || f.msgs != 2) {
				t.Fatalf("two messages: %v, idle %v, %d begun", err, f.idle(), f.msgs)
			}
		})
	}
}

func TestFramerCounts(t *testing.T) {
	s := testFramerStream()
	var f framer
	if err := f.feed(s.b); err != nil || int(f.msgs) != len(s.bodies) {
		t.Errorf("feed: %v, %d messages begun, want %d", err, f.msgs, len(s.bodies))
	}
}

// TestFramerOne follows a WebSocket upgrade request and ignores the frames
// after it, however many bytes they are.
func TestFramerOne(t *testing.T) {
	req := "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
	frames := "\x81\x85\x00\x00\x00\x00hello" + strings.Repeat("\x82\x7e\x01\x00", 100)
	f := framer{lim: frameLimits{head: int64(len(req)), body: 1, one: true}}
	for i := range len(req) - 1 {
		if err := f.feed([]byte{req[i]}); err != nil || f.idle() {
			t.Fatalf("byte %d: %v, idle %v", i, err, f.idle())
		}
	}
	if err := f.feed([]byte(req[len(req)-1:] + frames)); err != nil || !f.idle() || f.msgs != 1 {
		t.Fatalf("end and frames: %v, idle %v, %d begun", err, f.idle(), f.msgs)
	}
}
