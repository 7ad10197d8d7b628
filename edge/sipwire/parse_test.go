package sipwire_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/sipwire"
)

// parsedAsSipgo fails t unless Parse makes of data what sipgo's parser
// makes: the same error or none, and then the same start line, the
// same headers of the same types in the same order, the same body.
func parsedAsSipgo(t *testing.T, data []byte) {
	want, werr := sip.NewParser().ParseSIP(data)
	got, gerr := sipwire.Parse(sip.NewParser(), data)
	if (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error() {
		t.Fatalf("error %v, sipgo %v", gerr, werr)
	}
	if werr != nil {
		return
	}
	if g, w := describe(got), describe(want); g != w {
		t.Fatalf("parsed\n%s\nsipgo parsed\n%s", g, w)
	}
}

// describe is a message as sipgo writes it, with each header's type.
func describe(m sip.Message) string {
	s := fmt.Sprintf("%T %q body %q\n", m, m.String(), m.Body())
	var hs []sip.Header
	switch m := m.(type) {
	case *sip.Request:
		hs = m.Headers()
	case *sip.Response:
		hs = m.Headers()
	}
	for _, h := range hs {
		s += fmt.Sprintf("%T %s: %s\n", h, h.Name(), h.Value())
	}
	return s
}

func TestParseMatchesSipgo(t *testing.T) {
	for _, s := range append(seeds,
		"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\nm: <sip:a@b>, <sip:c@d>;q=0.5\r\nl: 3\r\n\r\nabcdef", // compact, commas, a body longer than said
		"SIP/2.0 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",                                                                         // folded
		"SIP/2.0 200 OK\r\nTo: <sip:a@b>;tag=1, x\r\nContent-Length: 0\r\n\r\n",                                                                    // a comma sipgo refuses after
		"SIP/2.0 200 OK\r\nContent-Length: 9\r\n\r\nshort",                                                                                         // cut short
		"SIP/2.0 200 OK\r\nCSeq: x REGISTER\r\n\r\n",                                                                                               // a header sipgo refuses
		"SIP/2.0 200 OK\r\nNo colon\r\n\r\n",
		"SIP/2.0 200 OK\r\nCall-ID: a\r\n",       // no end of headers
		"SIP/2.0 200 OK\r\nCall-ID: a\r\r\n\r\n", // CR without LF
		"\r\n\r\n",
		"SIP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nab",
		"register sip:a@b SIP/2.0\r\nCall-ID: a\r\nContent-Length: 0\r\n\r\n", // a method in lower case
		"REGISTER * SIP/2.0\r\nCall-ID: a\r\n\r\n",                            // a wildcard sipgo refuses
		"REGISTER sip:a@b:x SIP/2.0\r\nCall-ID: a\r\n\r\n",                    // a URI sipgo refuses
		"REGISTER sip:a@b SIP/2.0 x\r\nCall-ID: a\r\n\r\n",                    // no request line for sipgo
		"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabcdef",          // a body longer than said
		"OPTIONS sips:[::1]:5061;transport=tls SIP/2.0\r\nl: 0\r\nv: SIP/2.0/TLS x;branch=z9hG4bKa\r\n\r\n",
	) {
		parsedAsSipgo(t, []byte(s))
	}
}

// FuzzParseMatchesSipgo: Parse and sipgo make the same of anything.
func FuzzParseMatchesSipgo(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) { parsedAsSipgo(t, data) })
}

func BenchmarkParse(b *testing.B) {
	data := []byte(seeds[2])
	p := sip.NewParser()
	b.Run("sipwire", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := sipwire.Parse(p, data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sparse", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := sipwire.ParseSparse(p, data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sipgo", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := p.ParseSIP(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// parsedSparse fails t unless ParseSparse makes of data what it
// promises: whatever sipgo's parser takes it takes too, with the same
// start line and body, the same typed CSeq, Contact, Expires and
// Content-Length headers, the first Via line's Vias; and every other
// header as written, never parsed; or, where it leaves the message to
// sipgo, sipgo's parse whole.
func parsedSparse(t *testing.T, data []byte) {
	want, werr := sip.NewParser().ParseSIP(data)
	got, gerr := sipwire.ParseSparse(sip.NewParser(), data)
	if werr == nil && gerr != nil {
		t.Fatalf("sipgo took it, ParseSparse: %v", gerr)
	}
	if werr != nil || gerr != nil {
		return
	}
	g, ok := got.(*sip.Response)
	if !ok || !sparse(g) { // a request, or what Parse leaves to sipgo: sipgo's whole
		if g, w := describe(got), describe(want); g != w {
			t.Fatalf("parsed\n%s\nsipgo parsed\n%s", g, w)
		}
		return
	}
	w := want.(*sip.Response)
	if g.StartLine() != w.StartLine() || string(g.Body()) != string(w.Body()) {
		t.Fatalf("start line %q body %q, sipgo %q %q", g.StartLine(), g.Body(), w.StartLine(), w.Body())
	}
	gotTyped, gotVias := sparseTyped(g)
	wantTyped, wantVias := sparseTyped(w)
	if !slices.Equal(gotTyped, wantTyped) {
		t.Fatalf("typed %q, sipgo %q", gotTyped, wantTyped)
	}
	if len(gotVias) > len(wantVias) || !slices.Equal(gotVias, wantVias[:len(gotVias)]) || len(wantVias) > 0 && len(gotVias) == 0 {
		t.Fatalf("Vias %q, sipgo %q", gotVias, wantVias)
	}
}

// sparseTyped is res's headers of the types ParseSparse parses: the
// Vias apart, each written out with its type.
func sparseTyped(res *sip.Response) (typed, vias []string) {
	for _, h := range res.Headers() {
		switch h.(type) {
		case *sip.ViaHeader:
			vias = append(vias, h.String())
		case *sip.CSeqHeader, *sip.ContactHeader, *sip.ExpiresHeader, *sip.ContentLengthHeader:
			typed = append(typed, fmt.Sprintf("%T %s", h, h.String()))
		}
	}
	return typed, vias
}

// sparse reports whether every header of res is of a type ParseSparse
// parses, or as written.
func sparse(res *sip.Response) bool {
	generic := fmt.Sprintf("%T", sip.NewHeader("X", "y"))
	for _, h := range res.Headers() {
		switch h.(type) {
		case *sip.ViaHeader, *sip.CSeqHeader, *sip.ContactHeader, *sip.ExpiresHeader, *sip.ContentLengthHeader:
		default:
			if fmt.Sprintf("%T", h) != generic {
				return false
			}
		}
	}
	return true
}

func TestParseSparse(t *testing.T) {
	for _, s := range append(seeds,
		"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\nVia: SIP/2.0/UDP c;branch=z9hG4bK3\r\nm: <sip:a@b>, <sip:c@d>;q=0.5\r\nl: 0\r\n\r\n",
		"SIP/2.0 200 OK\r\nTo: <sip:a@b>;tag=1, x\r\nContent-Length: 0\r\n\r\n", // a To sipgo refuses: as written here
		"SIP/2.0 200 OK\r\nCSeq: x REGISTER\r\n\r\n",                            // a CSeq sipgo refuses: refused here too
	) {
		parsedSparse(t, []byte(s))
	}

	// A 200 to a REGISTER: From, To, Call-ID and the phone's Via go on
	// as they came, byte for byte.
	res, err := sipwire.ParseSparse(sip.NewParser(), []byte(seeds[2][:strings.Index(seeds[2], "From:")]+
		"Via: SIP/2.0/UDP 10.0.0.1:5060;rport=4000;received=192.0.2.1;branch=z9hG4bKp\r\nfrom: sip:al@example.com;tag=1\r\n"+
		seeds[2][strings.Index(seeds[2], "To:"):]))
	if err != nil {
		t.Fatal(err)
	}
	out := string(sipwire.AppendResponse(nil, res.(*sip.Response)))
	for _, line := range []string{"\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;rport=4000;received=192.0.2.1;branch=z9hG4bKp\r\n",
		"\r\nfrom: sip:al@example.com;tag=1\r\n", "\r\nTo: <sip:al@example.com>;tag=x\r\n", "\r\nCall-ID: c1\r\n"} {
		if !strings.Contains(out, line) {
			t.Errorf("%q not relayed as it came:\n%s", line, out)
		}
	}
}

// FuzzParseSparse: ParseSparse keeps its promise on anything.
func FuzzParseSparse(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) { parsedSparse(t, data) })
}
