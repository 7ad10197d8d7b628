package audit

import "testing"

func TestRedactPushToken(t *testing.T) {
	for in, want := range map[string]string{
		"sip:mob@1.2.3.4;transport=tcp;pn-provider=apns;pn-prid=ab12cd34ef56;pn-param=T.b.voip": "sip:mob@1.2.3.4;transport=tcp;pn-provider=apns;pn-prid=ab12…;pn-param=T.b.voip",
		"sip:mob@1.2.3.4;PN-PRID=xyz":                    "sip:mob@1.2.3.4;PN-PRID=xyz…",
		"sip:mob:secret@1.2.3.4;pn-prid=0123456789":      "sip:mob@1.2.3.4;pn-prid=0123…",
		"sip:mob@1.2.3.4;pn-prid=aaaaaa;pn-prid=bbbbbbb": "sip:mob@1.2.3.4;pn-prid=aaaa…;pn-prid=bbbb…",
		// Lower-cased, İ takes a byte more: the token is found in the URI as is.
		"sip:İİİİ@1.2.3.4;pn-prid=0123456789": "sip:İİİİ@1.2.3.4;pn-prid=0123…",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}
