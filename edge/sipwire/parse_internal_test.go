package sipwire

import "testing"

// TestCommaKnown: sipgo's comma error is recognised, so a Contact with
// two contacts (Kamailio's 200 to a REGISTER) is parsed here, not handed
// back to sipgo whole.
func TestCommaKnown(t *testing.T) {
	if commaType == nil {
		t.Fatal("sipgo's errComaDetected not found: every header with a comma goes to sipgo")
	}
	b := []byte("SIP/2.0 200 OK\r\nContact: <sip:a@b>;expires=60, <sip:c@d>;expires=10\r\nContent-Length: 0\r\n\r\n")
	msg, ok := parse(b, nil)
	if !ok {
		t.Fatal("not parsed here")
	}
	if n := len(msg.GetHeaders("Contact")); n != 2 {
		t.Fatalf("%d contacts, want 2", n)
	}
}
