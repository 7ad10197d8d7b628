// Package sipwire writes sipgo messages and URIs byte for byte as sipgo
// does, without its costs on the hot path: sipgo's writer asks
// net.ParseIP of every host it writes whether it is IPv6 (its quick
// check for a dot ranges over indices, not characters, so it never
// fires), turns each Via and Request-URI into a string of its own first,
// and joins URI parameters into another. At 3,000 registrations/s that
// was a twentieth of the edge's CPU and a tenth of its allocations.
//
// Anything it does not know how to write the same way (compact headers,
// a URI other than sip: or sips:, a header type it does not list) it
// leaves to sipgo. FuzzMatchesSipgo holds the two writers to the same
// output.
//
// Parse reads a response as sipgo's parser does, with every string cut
// from one copy of the datagram (see Parse for what that asks of the
// caller); FuzzParseMatchesSipgo holds it to sipgo's parser.
package sipwire

import (
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// AppendRequest appends req as it goes on the wire.
func AppendRequest(dst []byte, req *sip.Request) []byte {
	if req.CompactHeaders {
		return bySipgo(dst, req)
	}
	dst = append(dst, req.Method...)
	dst = append(dst, ' ')
	dst = appendURI(dst, &req.Recipient)
	dst = append(dst, ' ')
	dst = append(dst, req.SipVersion...)
	dst = append(dst, "\r\n"...)
	return appendRest(dst, req.Headers(), req.Body())
}

// AppendResponse appends res as it goes on the wire.
func AppendResponse(dst []byte, res *sip.Response) []byte {
	if res.CompactHeaders {
		return bySipgo(dst, res)
	}
	dst = append(dst, res.SipVersion...)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(res.StatusCode), 10)
	dst = append(dst, ' ')
	dst = append(dst, res.Reason...)
	dst = append(dst, "\r\n"...)
	return appendRest(dst, res.Headers(), res.Body())
}

// bySipgo appends m as sipgo writes it: for what this package does not
// write itself.
func bySipgo(dst []byte, m interface{ StringWrite(io.StringWriter) }) []byte {
	// Through a buffer of its own: handing dst to sipgo's writer would
	// move every caller's stack buffer to the heap.
	var b strings.Builder
	m.StringWrite(&b)
	return append(dst, b.String()...)
}

// URI is u as sipgo's u.String() writes it.
func URI(u *sip.Uri) string {
	var buf [128]byte
	return string(appendURI(buf[:0], u))
}

// AppendURI appends u as sipgo's u.String() writes it.
func AppendURI(dst []byte, u *sip.Uri) []byte { return appendURI(dst, u) }

// appendRest appends the header lines, the blank line and the body.
func appendRest(dst []byte, headers []sip.Header, body []byte) []byte {
	if len(headers) == 0 {
		dst = append(dst, "\r\n"...) // sipgo ends even no header line
	}
	for _, h := range headers {
		dst = appendHeader(dst, h)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	return append(dst, body...)
}

func appendHeader(dst []byte, h sip.Header) []byte {
	switch v := h.(type) {
	case *sip.ViaHeader:
		dst = append(dst, "Via: "...)
		dst = append(dst, v.ProtocolName...)
		dst = append(dst, '/')
		dst = append(dst, v.ProtocolVersion...)
		dst = append(dst, '/')
		dst = append(dst, v.Transport...)
		dst = append(dst, ' ')
		dst = appendHost(dst, v.Host)
		dst = appendPort(dst, v.Port)
		return appendParams(dst, ';', v.Params)
	case *sip.FromHeader:
		return appendAddress(append(dst, "From: "...), v.DisplayName, &v.Address, v.Params)
	case *sip.ToHeader:
		return appendAddress(append(dst, "To: "...), v.DisplayName, &v.Address, v.Params)
	case *sip.ContactHeader:
		dst = append(dst, "Contact: "...)
		if v.Address.Wildcard {
			return append(dst, '*')
		}
		return appendAddress(dst, v.DisplayName, &v.Address, v.Params)
	case *sip.RouteHeader:
		dst = appendURI(append(dst, "Route: <"...), &v.Address)
		return append(dst, '>')
	case *sip.RecordRouteHeader:
		dst = appendURI(append(dst, "Record-Route: <"...), &v.Address)
		return append(dst, '>')
	case *sip.CSeqHeader:
		dst = strconv.AppendUint(append(dst, "CSeq: "...), uint64(v.SeqNo), 10)
		dst = append(dst, ' ')
		return append(dst, v.MethodName...)
	case *sip.MaxForwardsHeader:
		return strconv.AppendInt(append(dst, "Max-Forwards: "...), int64(*v), 10)
	case *sip.ContentLengthHeader:
		return strconv.AppendInt(append(dst, "Content-Length: "...), int64(*v), 10)
	case *sip.ExpiresHeader:
		return strconv.AppendInt(append(dst, "Expires: "...), int64(*v), 10)
	}
	// The rest write their value as they hold it (Call-ID, generic
	// headers) or are rare.
	dst = append(dst, h.Name()...)
	dst = append(dst, ": "...)
	return append(dst, h.Value()...)
}

func appendAddress(dst []byte, display string, u *sip.Uri, params sip.HeaderParams) []byte {
	if display != "" {
		dst = append(dst, '"')
		dst = append(dst, display...)
		dst = append(dst, `" `...)
	}
	dst = appendURI(append(dst, '<'), u)
	dst = append(dst, '>')
	return appendParams(dst, ';', params)
}

func appendURI(dst []byte, u *sip.Uri) []byte {
	if u.Scheme != "sip" && u.Scheme != "sips" {
		// It may hold its text uninterpreted, in a field only sipgo sees.
		return bySipgo(dst, u)
	}
	dst = append(dst, u.Scheme...)
	dst = append(dst, ':')
	if u.HierarhicalSlashes {
		dst = append(dst, "//"...)
	}
	if u.User != "" {
		dst = append(dst, u.User...)
		if u.Password != "" {
			dst = append(dst, ':')
			dst = append(dst, u.Password...)
		}
		dst = append(dst, '@')
	}
	dst = appendHost(dst, u.Host)
	dst = appendPort(dst, u.Port)
	dst = appendParams(dst, ';', u.UriParams)
	if u.Headers.Length() > 0 {
		dst = append(dst, '?')
		dst = appendParamList(dst, '&', u.Headers)
	}
	return dst
}

// appendHost brackets an IPv6 address as sipgo does: only what
// net.ParseIP reads as an address that is not IPv4. Without a colon it
// cannot be one, so the usual host costs no parse.
func appendHost(dst []byte, host string) []byte {
	if strings.IndexByte(host, ':') >= 0 {
		if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
			dst = append(dst, '[')
			dst = append(dst, host...)
			return append(dst, ']')
		}
	}
	return append(dst, host...)
}

func appendPort(dst []byte, port int) []byte {
	if port > 0 {
		dst = strconv.AppendInt(append(dst, ':'), int64(port), 10)
	}
	return dst
}

// appendParams appends sep and the parameters, if there are any.
func appendParams(dst []byte, sep byte, p sip.HeaderParams) []byte {
	if p.Length() == 0 {
		return dst
	}
	return appendParamList(append(dst, sep), sep, p)
}

// appendParamList writes parameters as sipgo's HeaderParams.ToString
// does: a value holding a space or tab quoted, an empty one left out.
func appendParamList(dst []byte, sep byte, p sip.HeaderParams) []byte {
	for i, kv := range p {
		if i > 0 {
			dst = append(dst, sep)
		}
		dst = append(dst, kv.K...)
		switch {
		case strings.ContainsAny(kv.V, " \t"):
			dst = append(dst, `="`...)
			dst = append(dst, kv.V...)
			dst = append(dst, '"')
		case kv.V != "":
			dst = append(dst, '=')
			dst = append(dst, kv.V...)
		}
	}
	return dst
}
