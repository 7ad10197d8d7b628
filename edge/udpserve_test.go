package edge

import "testing"

func TestLeanMethod(t *testing.T) {
	for line, want := range map[string]bool{
		"REGISTER sip:x SIP/2.0": true, "OPTIONS sip:x SIP/2.0": true, "BYE sip:x SIP/2.0": true,
		"MESSAGE sip:x SIP/2.0": true, "SUBSCRIBE sip:x SIP/2.0": true, "FOO sip:x SIP/2.0": true,
		"REGISTER":             true, // the method alone, as the second check passes it
		"INVITE sip:x SIP/2.0": false, "ACK sip:x SIP/2.0": false, "CANCEL sip:x SIP/2.0": false,
		"SIP/2.0 200 OK": false, "": false, " REGISTER sip:x SIP/2.0": false,
	} {
		if got := leanMethod([]byte(line)); got != want {
			t.Errorf("%q: %v, want %v", line, got, want)
		}
	}
}
