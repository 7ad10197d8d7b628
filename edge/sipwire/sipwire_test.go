package sipwire_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/sipwire"
)

// seeds are messages that exercise every branch of the writer: IPv6
// hosts bracketed and not, display names, wildcard and tel: contacts,
// quoted parameters, URI headers, Route and Record-Route, a body.
var seeds = []string{
	"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport\r\nMax-Forwards: 70\r\nFrom: \"Al\" <sip:al@example.com>;tag=1\r\nTo: <sip:al@example.com>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\nContact: <sip:al@192.0.2.1:5060;transport=udp;ob>;+sip.instance=\"<urn:uuid:1>\";reg-id=1;expires=60\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n",
	"INVITE sip:bob@[2001:db8::1]:5070;transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP [2001:db8::2]:5060;branch=z9hG4bK2\r\nVia: SIP/2.0/UDP 10.0.0.1;received=192.0.2.9;branch=z9hG4bK3\r\nRoute: <sip:edge.example.com;lr>\r\nRecord-Route: <sip:tok@[::1]:5060;lr;ob>\r\nFrom: <sip:al@example.com>;tag=2\r\nTo: \"Bob B\" <sip:bob@example.com>\r\nCall-ID: c2@host\r\nCSeq: 7 INVITE\r\nContact: <sip:al@[2001:db8::2]:5060?Subject=hi&Priority=urgent>\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n",
	"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK4;received=127.0.0.1;rport=5062\r\nFrom: <sip:al@example.com>;tag=1\r\nTo: <sip:al@example.com>;tag=x\r\nCall-ID: c1\r\nCSeq: 2 REGISTER\r\nContact: <sip:al@127.0.0.1:5062>;expires=3600, <sip:al@127.0.0.1:5064>;expires=10\r\nPath: <sip:tok@127.0.0.1:5070;lr;ob>\r\nContent-Length: 0\r\n\r\n",
	"SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK5\r\nFrom: <sip:al@example.com>;tag=1\r\nTo: <sip:al@example.com>;tag=y\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\nWWW-Authenticate: Digest realm=\"example.com\", nonce=\"abc\"\r\nContent-Length: 0\r\n\r\n",
	"REGISTER sips:example.com SIP/2.0\r\nVia: SIP/2.0/TLS host.example.com;branch=z9hG4bK6\r\nFrom: <tel:+15551234;phone-context=example.com>;tag=3\r\nTo: <sip:al:secret@example.com;user=phone>\r\nCall-ID: c3\r\nCSeq: 1 REGISTER\r\nContact: *\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n",
	"MESSAGE sip:al@example.com SIP/2.0\r\nVia: SIP/2.0/UDP ::ffff:192.0.2.1;branch=z9hG4bK7\r\nFrom: <sip:b@example.com>;tag=4\r\nTo: <sip:al@example.com>\r\nCall-ID: c4\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n",
}

func addSeeds(f *testing.F) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	for _, dir := range []string{"register", "torture", "golden"} {
		paths, _ := filepath.Glob(filepath.Join("../../testdata", dir, "*.sip"))
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
}

// sameAsSipgo fails t unless the writer's bytes for data's message are
// sipgo's own, and says whether data parsed at all.
func sameAsSipgo(t *testing.T, data []byte) bool {
	msg, err := sip.ParseMessage(data)
	if err != nil {
		return false
	}
	var got []byte
	switch m := msg.(type) {
	case *sip.Request:
		got = sipwire.AppendRequest(nil, m)
		if want := m.Recipient.String(); sipwire.URI(&m.Recipient) != want {
			t.Fatalf("URI: got %q, sipgo %q", sipwire.URI(&m.Recipient), want)
		}
	case *sip.Response:
		got = sipwire.AppendResponse(nil, m)
	}
	if want := msg.String(); string(got) != want {
		t.Fatalf("wrote\n%q\nsipgo writes\n%q", got, want)
	}
	return true
}

func TestMatchesSipgo(t *testing.T) {
	for i, s := range seeds {
		if !sameAsSipgo(t, []byte(s)) {
			t.Fatalf("seed %d does not parse", i)
		}
	}
}

// TestBuiltMatchesSipgo covers what only code builds: a URI with no
// scheme, a tel: URI sipgo did not parse, compact headers.
func TestBuiltMatchesSipgo(t *testing.T) {
	req := sip.NewRequest(sip.OPTIONS, sip.Uri{Host: "2001:db8::5", Port: 5060, UriParams: params("lr", "")})
	req.AppendHeader(&sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "UDP", Host: "::ffff:192.0.2.1", Port: 5060, Params: params("branch", "z9hG4bK8", "x", "a b")})
	req.AppendHeader(&sip.FromHeader{Address: sip.Uri{Scheme: "tel", User: "+1555"}, Params: params("tag", "t")})
	req.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: "u", Host: "h", Headers: params("a", "b")}})
	req.AppendHeader(sip.NewHeader("X-Any", "v"))
	if got, want := string(sipwire.AppendRequest(nil, req)), req.String(); got != want {
		t.Fatalf("wrote\n%q\nsipgo writes\n%q", got, want)
	}
	req.CompactHeaders = true
	if got, want := string(sipwire.AppendRequest(nil, req)), req.String(); got != want {
		t.Fatalf("compact: wrote\n%q\nsipgo writes\n%q", got, want)
	}
	res := sip.NewResponseFromRequest(req, 486, "Busy Here", []byte("x"))
	if got, want := string(sipwire.AppendResponse([]byte("keep"), res)), "keep"+res.String(); got != want {
		t.Fatalf("wrote\n%q\nsipgo writes\n%q", got, want)
	}
}

// params is the pairs k, v, ... as header parameters.
func params(kv ...string) sip.HeaderParams {
	p := sip.NewParams()
	for i := 0; i+1 < len(kv); i += 2 {
		p.Add(kv[i], kv[i+1])
	}
	return p
}

// FuzzMatchesSipgo: whatever sipgo parses, the writer writes as sipgo
// does.
func FuzzMatchesSipgo(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) { sameAsSipgo(t, data) })
}

func BenchmarkWrite(b *testing.B) {
	msg, err := sip.ParseMessage([]byte(seeds[2]))
	if err != nil {
		b.Fatal(err)
	}
	res := msg.(*sip.Response)
	buf := make([]byte, 0, 2048)
	b.Run("sipwire", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			buf = sipwire.AppendResponse(buf[:0], res)
		}
	})
	b.Run("sipgo", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			res.StringWrite(bytes.NewBuffer(buf[:0]))
		}
	})
}
