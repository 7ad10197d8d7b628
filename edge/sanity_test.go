package edge

import "testing"

func TestCleanHead(t *testing.T) {
	const tail = "Call-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
	for _, c := range []struct {
		name, msg string
		clean     bool
	}{
		{"plain", "REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n" + tail, true},
		{"body may hold anything", "MESSAGE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n" + tail + "a\nb\x00\r", true},
		{"bare LF", "REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\nX-Evil: 1\r\n" + tail, false},
		{"bare CR", "REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\rX-Evil: 1\r\n" + tail, false},
		{"NUL", "REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\x00\r\n" + tail, false},
		{"folded", "REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\n ;branch=z9hG4bK1\r\n" + tail, false},
		{"no end", "REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n", false},
	} {
		if got := cleanHead([]byte(c.msg)); got != c.clean {
			t.Errorf("%s: cleanHead = %v, want %v", c.name, got, c.clean)
		}
	}
}

// FuzzCleanHead holds cleanHead to what checkSanity trusts it for: from
// a clean header block sipgo parses no header whose name or value holds
// CR, LF or NUL, so the short check decides as the long one does.
func FuzzCleanHead(f *testing.F) {
	addRegisterSeeds(f)
	f.Add([]byte("REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1;x=\"a\rb\"\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: <sip:a@b>\r\nContent-Length: 0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if !cleanHead(data) {
			return
		}
		req, ok := parsedRequest(data)
		if !ok {
			return
		}
		short, long := checkSanity(req, true), checkSanity(req, false)
		if (short == nil) != (long == nil) || short != nil && short.Code != long.Code {
			t.Fatalf("clean head, yet the checks differ: %v against %v", short, long)
		}
	})
}
