package sipwire_test

import (
	"fmt"
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
	b.Run("sipgo", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := p.ParseSIP(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
