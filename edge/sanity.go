package edge

import (
	"bytes"
	"context"
	"net/netip"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/sipwire"
	"github.com/sipedge/sipedge/ratelimit"
)

// checkSanity rejects requests a proxy must not forward (RFC 3261 §16.3),
// before anything else looks at them. sipgo accepts many of these (see
// docs/sipgo.md), so the edge checks them itself. clean says the bytes
// the request was parsed from passed cleanHead: no header can then hold
// CR, LF or NUL, and its value need not be written out to look.
func checkSanity(req *sip.Request, clean bool) *Error {
	if req.SipVersion != "SIP/2.0" {
		return reject(505, "Version Not Supported")
	}
	if s := req.Recipient.Scheme; s != "sip" && s != "sips" {
		return reject(416, "Unsupported URI Scheme")
	}
	if req.Via() == nil || req.From() == nil || req.To() == nil || req.CallID() == nil || req.CSeq() == nil {
		return reject(400, "Missing Required Header")
	}
	if req.CSeq().MethodName != req.Method {
		return reject(400, "CSeq Method Mismatch")
	}
	if req.Recipient.Headers != nil && req.Recipient.Headers.Length() > 0 {
		return reject(400, "Bad Request-URI") // headers have no place there (RFC 4475 escruri)
	}
	// One pass over the headers, allocating nothing: values free of CR,
	// LF and NUL; single-valued headers once (which one would the core
	// believe? RFC 4475 multi01); a Date in GMT (RFC 3261 §20.17, RFC
	// 4475 baddate).
	var seen [len(singleValued)]bool
	for _, h := range req.Headers() {
		name := h.Name()
		if !clean && (strings.ContainsAny(h.Value(), "\r\n\x00") || strings.ContainsAny(name, "\r\n\x00")) {
			return reject(400, "Bad Header Value")
		}
		for i, sv := range singleValued {
			if len(name) == len(sv) && strings.EqualFold(name, sv) {
				if seen[i] {
					return reject(400, "Multiple "+sv)
				}
				seen[i] = true
			}
		}
		if len(name) == 4 && strings.EqualFold(name, "Date") && !strings.HasSuffix(strings.TrimSpace(h.Value()), " GMT") {
			return reject(400, "Bad Date")
		}
	}
	var buf [256]byte
	if bytes.ContainsAny(sipwire.AppendURI(buf[:0], &req.Recipient), "\r\n\x00 ") {
		return reject(400, "Bad Request-URI")
	}
	if mf := req.MaxForwards(); mf != nil && mf.Val() == 0 && req.Method != sip.OPTIONS {
		return reject(483, "Too Many Hops")
	}
	return nil
}

// cleanHead reports whether the header block of a datagram (up to its
// blank line) holds no NUL, no CR or LF but in a line end, and no folded
// line. sipgo's parser splits lines at CRLF only, so a header parsed
// from anything else could carry a bare CR or LF on to the core; a clean
// block lets checkSanity skip writing out every header to look (a
// twentieth of the CPU per REGISTER).
func cleanHead(b []byte) bool {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		return false
	}
	head := b[:end+2]
	if bytes.IndexByte(head, 0) >= 0 {
		return false
	}
	lines := 0
	for i := 0; i < len(head); {
		j := bytes.IndexByte(head[i:], '\n')
		if j < 0 {
			return false // cannot be: head ends in CRLF
		}
		j += i
		if j == 0 || head[j-1] != '\r' {
			return false // a bare LF
		}
		if j+1 < len(head) && (head[j+1] == ' ' || head[j+1] == '\t') {
			return false // folded: unfolding is sipgo's business, checked the long way
		}
		lines++
		i = j + 1
	}
	return bytes.Count(head, []byte{'\r'}) == lines // no bare CR
}

// singleValued are the headers a request may carry once (RFC 3261 §7.3).
var singleValued = [...]string{"To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Length", "Content-Type"}

// stampVia records the real source on a Via (RFC 3581 §4): received and
// rport, always, even when the client asked for neither, so every response
// (the edge's own or relayed) finds its way back through the NAT. It is
// applied to copies only: the server transaction's request is shared with
// sipgo's timers.
func stampVia(v *sip.ViaHeader, src netip.AddrPort) {
	if v == nil {
		return
	}
	v.Params.Add("received", src.Addr().String())
	v.Params.Add("rport", strconv.Itoa(int(src.Port())))
}

// sanity rejects what a proxy must not forward, and counts malformed
// requests against their source.
type sanity struct {
	limiter *ratelimit.Limiter // nil on the core side: cores are not scored
	proven  func(*Request) bool
}

func (s sanity) wrap(next Handler) Handler {
	return func(ctx context.Context, r *Request) error {
		if err := checkSanity(r.Request, r.headClean); err != nil {
			if err.Code == 400 && s.limiter != nil {
				s.limiter.Malformed(r.Flow.Remote.Addr(), s.proven(r))
			}
			return err
		}
		return next(ctx, r)
	}
}
