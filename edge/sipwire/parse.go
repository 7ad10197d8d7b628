package sipwire

import (
	"reflect"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// Parse is sipgo's ParseSIP for one datagram, with the message's strings
// cut from one copy of b instead of a copy per name and value: for a
// REGISTER or its 200, a score of allocations fewer. The price is that any
// one of those strings keeps the whole copy alive: a caller that keeps one
// past the message clones it (the registry does, for what a binding
// keeps).
//
// Whatever it would not parse exactly as sipgo does (a folded line, a
// header or start line sipgo refuses, a message cut short, a body longer
// than its Content-Length says) goes to sipgo whole.
// FuzzParseMatchesSipgo holds the two to the same messages.
func Parse(p *sip.Parser, b []byte) (sip.Message, error) {
	if msg, ok := parse(b); ok {
		return msg, nil
	}
	return p.ParseSIP(b)
}

// parser is one of sipgo's header parsers with the lower-case name it is
// called with.
type parser struct {
	name  []byte
	parse sip.HeaderParser
}

// parsers are sipgo's header parsers by lower-case name: read only.
var parsers = func() map[string]parser {
	m := map[string]parser{}
	for name, parse := range sip.DefaultHeadersParser() {
		m[name] = parser{[]byte(name), parse}
	}
	return m
}()

func parse(b []byte) (sip.Message, bool) {
	if len(b) > sip.ParseMaxMessageLength {
		return nil, false
	}
	s := string(b) // the one copy every string of the message shares
	end, next, ok := lineEnd(s)
	if !ok {
		return nil, false
	}
	msg, ok := startLine(s[:end])
	if !ok {
		return nil, false
	}
	s = s[next:]
	var (
		contentLength *sip.ContentLengthHeader
		out           []sip.Header
	)
	for {
		end, next, ok := lineEnd(s)
		if !ok {
			return nil, false
		}
		line := s[:end]
		s = s[next:]
		if line == "" {
			break
		}
		if len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
			return nil, false // folded: sipgo joins the lines into a new one
		}
		if out, ok = header(out[:0], line); !ok {
			return nil, false
		}
		for _, h := range out {
			if cl, ok := h.(*sip.ContentLengthHeader); ok {
				contentLength = cl
			}
			msg.AppendHeader(h)
		}
	}
	size := len(s)
	if contentLength != nil {
		size = int(*contentLength)
	}
	if size == 0 {
		return msg, true
	}
	if size > len(s) || size > sip.ParseMaxMessageLength-(len(b)-len(s)) {
		return nil, false // sipgo says why
	}
	msg.SetBody([]byte(s[:size]))
	return msg, true
}

// lineEnd finds the CRLF that ends the line at the start of s: sipgo's
// nextLine, less its errors.
func lineEnd(s string) (end, next int, ok bool) {
	i := strings.IndexByte(s, '\r')
	return i, i + 2, i >= 0 && i+1 < len(s) && s[i+1] == '\n'
}

// startLine is sipgo's parse of a start line; nothing, where sipgo
// refuses it.
func startLine(line string) (sip.Message, bool) {
	first, rest, ok := strings.Cut(line, " ")
	if !ok {
		return nil, false
	}
	second, third, ok := strings.Cut(rest, " ")
	if !ok {
		return nil, false
	}
	if len(third) >= 3 && !strings.Contains(third, " ") && sip.UriIsSIP(third[:3]) {
		// A request: method, Request-URI, version.
		var uri sip.Uri
		if sip.ParseUri(second, &uri) != nil || uri.Wildcard {
			return nil, false
		}
		req := sip.NewRequest(sip.RequestMethod(strings.ToUpper(first)), uri)
		req.SipVersion = third
		return req, true
	}
	if len(first) < 3 || !sip.UriIsSIP(first[:3]) {
		return nil, false
	}
	code, err := strconv.ParseUint(second, 10, 16)
	if err != nil {
		return nil, false
	}
	res := sip.NewResponse(int(code), third)
	res.SipVersion = first
	return res, true
}

// header parses one unfolded header line into out as sipgo's
// HeadersParser.ParseHeader does.
func header(out []sip.Header, line string) ([]sip.Header, bool) {
	colon := strings.IndexByte(line, ':')
	if colon < 0 {
		return out, false
	}
	name, value := strings.TrimSpace(line[:colon]), strings.TrimSpace(line[colon+1:])
	var lower [32]byte
	if len(name) > len(lower) {
		return append(out, sip.NewHeader(name, value)), true // no parser has so long a name
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	p, ok := parsers[string(lower[:len(name)])]
	if !ok {
		return append(out, sip.NewHeader(name, value)), true
	}
	for {
		h, err := p.parse(p.name, value)
		if err == nil {
			return append(out, h), true
		}
		i, ok := comma(err)
		if !ok {
			return out, false
		}
		out = append(out, h) // the part before the comma, as sipgo keeps it
		value = value[i+1:]
	}
}

// comma reads sipgo's errComaDetected: a header value goes on after the
// comma at this index. Its type is unexported, so by reflection.
func comma(err error) (int, bool) {
	v := reflect.ValueOf(err)
	if v.Kind() != reflect.Int || v.Type().Name() != "errComaDetected" || v.Type().PkgPath() != reflect.TypeFor[sip.Uri]().PkgPath() {
		return 0, false
	}
	return int(v.Int()), true
}
