package udptx

import (
	"bytes"
	"strings"
	"sync"

	"github.com/emiago/sipgo/sip"
)

// buffers recycles the bytes of messages a transaction keeps (a
// request until answered, a response for copies): at 3,000
// registrations/s they were a fifth of the bytes the edge allocated.
// The pool holds *buffer, so that giving one back allocates nothing.
type buffers struct{ pool sync.Pool }

// buffer is a message's bytes, in b.
type buffer struct{ b []byte }

// bufferSize fits a REGISTER with credentials, or a 200 with a few
// contacts, without growing.
const bufferSize = 2048

// get returns an empty buffer.
func (p *buffers) get() *buffer {
	if b, ok := p.pool.Get().(*buffer); ok {
		b.b = b.b[:0]
		return b
	}
	return &buffer{b: make([]byte, 0, bufferSize)}
}

// put takes back a buffer nothing uses any more (nil: nothing to take).
// One that grew far past the usual size is left to the collector.
func (p *buffers) put(b *buffer) {
	if b == nil || cap(b.b) > 4*bufferSize {
		return
	}
	p.pool.Put(b)
}

// topBranch finds the branch parameter of the first Via in a message's
// bytes, without parsing anything else. ok is false when the first Via
// has none (or there is no Via): such a message is sipgo's to handle.
func topBranch(b []byte) (branch []byte, ok bool) {
	_, rest, found := bytes.Cut(b, crlf)
	for found {
		var line []byte
		line, rest, found = bytes.Cut(rest, crlf)
		if len(line) == 0 {
			return nil, false // end of the headers
		}
		value, isVia := viaValue(line)
		if !isVia {
			continue
		}
		// The first Via value of the line: up to a comma outside quotes
		// is enough, since a branch holds no comma.
		if i := bytes.IndexByte(value, ','); i >= 0 {
			value = value[:i]
		}
		for len(value) > 0 {
			i := bytes.IndexByte(value, ';')
			if i < 0 {
				return nil, false
			}
			value = value[i+1:]
			param := bytes.TrimLeft(value, " \t")
			if len(param) > 7 && bytes.EqualFold(param[:7], []byte("branch=")) {
				v := param[7:]
				end := bytes.IndexAny(v, "; \t,")
				if end >= 0 {
					v = v[:end]
				}
				return v, len(v) > 0
			}
		}
		return nil, false
	}
	return nil, false
}

var crlf = []byte("\r\n")

// viaValue reports whether line is a Via header (long or compact name,
// any case) and returns its value.
func viaValue(line []byte) ([]byte, bool) {
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		return nil, false
	}
	name := bytes.TrimRight(line[:colon], " \t")
	if !bytes.EqualFold(name, []byte("via")) && !bytes.EqualFold(name, []byte("v")) {
		return nil, false
	}
	return line[colon+1:], true
}

var _ sip.ClientTransaction = (*ClientTx)(nil)

// ownMethod is m as sipgo's constant for it, or else a copy: a
// transaction kept after its answer (Timers J and K) must not keep the
// message m was cut from (sipwire.Parse cuts all of a message's strings
// from one copy of its datagram).
func ownMethod(m sip.RequestMethod) sip.RequestMethod {
	for _, k := range methods {
		if m == k {
			return k
		}
	}
	return sip.RequestMethod(strings.Clone(string(m)))
}

var methods = [...]sip.RequestMethod{sip.REGISTER, sip.OPTIONS, sip.MESSAGE, sip.SUBSCRIBE, sip.NOTIFY, sip.PUBLISH,
	sip.INFO, sip.BYE, sip.PRACK, sip.UPDATE, sip.REFER, sip.INVITE, sip.ACK, sip.CANCEL}
