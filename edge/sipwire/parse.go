package sipwire

import (
	"reflect"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// Parse is sipgo's ParseSIP for one datagram, with the strings of the
// message cut from one copy of b instead of a copy per name and value:
// for a 200 to a REGISTER, a score of allocations fewer. The price is
// that any one of those strings keeps the whole copy alive, so Parse
// suits messages whose strings are not kept past the message (answers
// relayed on), or a caller that clones what it keeps.
//
// Whatever it would not do exactly as sipgo does (a folded line, a
// header sipgo's parser refuses, a message cut short, a body longer than
// its Content-Length says) goes to sipgo whole.
// FuzzParseMatchesSipgo holds the two to the same messages.
func Parse(p *sip.Parser, b []byte) (sip.Message, error) {
	if msg, ok := parse(b, nil); ok {
		return msg, nil
	}
	return p.ParseSIP(b)
}

// ParseSparse is Parse for a response that is relayed after a look at a
// few of its headers: only those are parsed into sipgo's types (the
// first Via line, CSeq, Contact, Expires, Content-Length); every other
// header stays as written, its name and value as they came, and goes
// on so. sipgo's accessors (From, To, CallID) still parse one if asked,
// into a copy of their own: what is changed must be among those parsed
// here. A 200 to a REGISTER costs a sixth fewer allocations and an
// eighth less time to parse, its From and To above all.
//
// A response sipgo's parser takes, ParseSparse takes too, with the same
// headers of those types; it may take one whose fault is in a header it
// leaves as written. FuzzParseSparse holds it to both.
func ParseSparse(p *sip.Parser, b []byte) (sip.Message, error) {
	if msg, ok := parse(b, sparseTypes); ok {
		return msg, nil
	}
	return p.ParseSIP(b)
}

// sparseTypes are the headers ParseSparse parses, by their lower-case
// names, long and compact.
var sparseTypes = map[string]bool{"via": true, "v": true, "cseq": true, "contact": true, "m": true,
	"expires": true, "content-length": true, "l": true}

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

// parse is Parse's own parse, or ParseSparse's with typed set: the
// headers parsed, all others as written (nil: all parsed).
func parse(b []byte, typed map[string]bool) (sip.Message, bool) {
	if len(b) > sip.ParseMaxMessageLength {
		return nil, false
	}
	s := string(b) // the one copy every string of the message shares
	end, next, ok := lineEnd(s)
	if !ok {
		return nil, false
	}
	msg, ok := startLine(s[:end])
	if _, req := msg.(*sip.Request); !ok || req && typed != nil {
		return nil, false // ParseSparse is for answers: requests go to sipgo
	}
	s = s[next:]
	var (
		contentLength *sip.ContentLengthHeader
		out           []sip.Header
		vias          bool // a Via line came: the later ones are as written (sparse)
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
		if out, ok = header(out[:0], line, typed, &vias); !ok {
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

// message is what parse fills: a request or a response.
type message interface {
	sip.Message
	AppendHeader(sip.Header)
}

// startLine is sipgo's parse of a start line (its parseLine): a request
// line where sipgo sees one, else a status line; anything sipgo refuses
// is not ok.
func startLine(line string) (message, bool) {
	first, rest, ok := strings.Cut(line, " ")
	if !ok {
		return nil, false
	}
	second, third, ok := strings.Cut(rest, " ")
	if !ok {
		return nil, false
	}
	if len(third) >= 3 && !strings.Contains(third, " ") && sip.UriIsSIP(third[:3]) { // sipgo's test for a request
		var u sip.Uri
		if err := sip.ParseUri(second, &u); err != nil || u.Wildcard {
			return nil, false
		}
		req := sip.NewRequest(sip.RequestMethod(strings.ToUpper(first)), u)
		req.SipVersion = third
		return req, true
	}
	if len(first) < 3 || !sip.UriIsSIP(first[:3]) {
		return nil, false
	}
	n, err := strconv.ParseUint(second, 10, 16)
	if err != nil {
		return nil, false
	}
	res := sip.NewResponse(int(n), third)
	res.SipVersion = first
	return res, true
}

// header parses one unfolded header line into out as sipgo's
// HeadersParser.ParseHeader does; with typed set, only the headers it
// names, and of Vias only the first line (*vias: one came).
func header(out []sip.Header, line string, typed map[string]bool, vias *bool) ([]sip.Header, bool) {
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
	lname := lower[:len(name)]
	if typed != nil {
		via := string(lname) == "via" || string(lname) == "v"
		if !typed[string(lname)] || via && *vias {
			return append(out, sip.NewHeader(name, value)), true
		}
		*vias = *vias || via
	}
	p, ok := parsers[string(lname)]
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
	if err == nil || reflect.TypeOf(err) != commaType {
		return 0, false
	}
	return int(reflect.ValueOf(err).Int()), true
}

// commaType is errComaDetected's type, as sipgo's Contact parser returns
// it for two contacts in one header.
var commaType = func() reflect.Type {
	_, err := sip.DefaultHeadersParser()["contact"]([]byte("contact"), "<sip:a@b>, <sip:c@d>")
	t := reflect.TypeOf(err)
	if t == nil || t.Kind() != reflect.Int || t.Name() != "errComaDetected" {
		return nil // another sipgo: nothing is taken for a comma, lines with one go to sipgo
	}
	return t
}()
