package edge

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// addRegisterSeeds gives f the REGISTER captures in testdata as seeds.
func addRegisterSeeds(f *testing.F) {
	seeds, _ := filepath.Glob("../testdata/register/*.sip")
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// parsedRequest is what sipgo's parser makes of data, if a request.
func parsedRequest(data []byte) (*sip.Request, bool) {
	msg, err := sip.ParseMessage(data)
	if err != nil {
		return nil, false
	}
	req, ok := msg.(*sip.Request)
	return req, ok
}

// FuzzRegister feeds arbitrary bytes through sipgo's parser and then the
// edge's own checks and REGISTER parser: none may panic, and what they
// accept must be consistent.
func FuzzRegister(f *testing.F) {
	addRegisterSeeds(f)
	f.Add([]byte("REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: *\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, ok := parsedRequest(data)
		if !ok {
			return
		}
		if checkSanity(req, false) != nil || req.Method != sip.REGISTER {
			return
		}
		reg, rerr := parseRegister(req, "")
		if rerr != nil {
			if rerr.Code < 400 || rerr.Code > 499 {
				t.Fatalf("parse error with code %d", rerr.Code)
			}
			return
		}
		if reg.Star && len(reg.Contacts) > 0 {
			t.Fatal("wildcard accepted beside other contacts")
		}
		if !strings.HasPrefix(reg.AOR, "sip:") && !strings.HasPrefix(reg.AOR, "sips:") {
			t.Fatalf("AOR %q", reg.AOR)
		}
		for _, c := range reg.Contacts {
			if e := reg.effectiveExpires(c, defaultExpires); e < 0 {
				t.Fatalf("negative expires %d", e)
			}
		}
	})
}

// FuzzLooksLikeSIP checks the cheap pre-parse filter never drops a
// datagram that sipgo would parse into a message its transaction layer
// can handle (Via, CSeq and Call-ID present): it may only drop garbage.
func FuzzLooksLikeSIP(f *testing.F) {
	seeds, _ := filepath.Glob("../testdata/register/*.sip")
	for _, p := range seeds {
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	f.Add([]byte("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n"))
	f.Add([]byte("OPTIONS sip:x SIP/2.0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := sip.ParseMessage(data)
		if err != nil || m.Via() == nil || m.CSeq() == nil || m.CallID() == nil {
			return // sipgo would drop or reject it anyway
		}
		if !looksLikeSIP(data) {
			t.Fatalf("filter drops a message sipgo handles: %q", data)
		}
	})
}
