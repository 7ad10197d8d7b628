package registry

import (
	"strings"
	"testing"
	"time"
	"unsafe"
)

// within reports whether s points into msg: a string kept from it.
func within(s, msg string) bool {
	if s == "" {
		return false
	}
	p, start := uintptr(unsafe.Pointer(unsafe.StringData(s))), uintptr(unsafe.Pointer(unsafe.StringData(msg)))
	return p >= start && p < start+uintptr(len(msg))
}

// A binding keeps none of the strings of the message it was made from:
// the edge cuts them all from one copy of the datagram, which one kept
// string would keep alive for the binding's life. A refresh that says
// the same things shares the strings already kept.
func TestBindingsOwnTheirStrings(t *testing.T) {
	g := newRig(t)
	msg := strings.Repeat("x", 4096) + "sip:al@example.com|<sip:al@192.0.2.7:5060>|call-1|Phone/1.0|<urn:uuid:1>|fcm|token|param"
	cut := func() Binding {
		f := strings.Split(msg[4096:], "|")
		return Binding{AOR: f[0], Contact: f[1], CoreContact: f[1], CallID: f[2], UserAgent: f[3], Instance: f[4], RegID: 1,
			Push: Push{Provider: f[5], PRID: f[6], Param: f[7]}, Expires: g.clk.Now().Add(time.Hour), CoreExpires: g.clk.Now().Add(time.Hour)}
	}
	g.put(cut())
	first := g.r.Lookup("sip:al@example.com")
	if len(first) != 1 {
		t.Fatalf("%d bindings, want 1", len(first))
	}
	check := func(b Binding) {
		t.Helper()
		for name, s := range map[string]string{"AOR": b.AOR, "Contact": b.Contact, "CoreContact": b.CoreContact, "CallID": b.CallID,
			"UserAgent": b.UserAgent, "Instance": b.Instance, "pn-provider": b.Push.Provider, "pn-prid": b.Push.PRID, "pn-param": b.Push.Param} {
			if within(s, msg) {
				t.Errorf("the binding's %s keeps the message it came from", name)
			}
		}
	}
	check(first[0])

	g.put(cut()) // a refresh
	again := g.r.Lookup("sip:al@example.com")
	if len(again) != 1 {
		t.Fatalf("%d bindings after the refresh, want 1", len(again))
	}
	check(again[0])
	if unsafe.StringData(again[0].CallID) != unsafe.StringData(first[0].CallID) || unsafe.StringData(again[0].Contact) != unsafe.StringData(first[0].Contact) {
		t.Error("a refresh copied strings the binding already had")
	}
}
