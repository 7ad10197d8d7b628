package nat

import (
	"net/netip"
	"testing"
	"time"
)

// A NAT that forgot a mapping between two keepalives gets half the
// interval, and half again the next time; a phone that left, another
// address, a late return or a stream flow teach nothing.
func TestForgettingShortensTheNAT(t *testing.T) {
	h := newKA(t, func(c *KeepaliveConfig) { c.Mode = KeepaliveOptions; c.Interval = 24 * time.Second })
	l := NewForgetting(h.ka, h.clk.Now, time.Hour)
	keys := h.watch(3)
	nat := keys[0].Remote.Addr()
	moved := keys[0]
	moved.Remote = netip.AddrPortFrom(nat, 40000) // the NAT's new port for the phone

	l.Died(keys[0], []string{"sip:a@x", "sip:a2@x"})
	h.clk.Advance(30 * time.Second)
	if d := l.Registered(moved, "sip:a@x"); d != 12*time.Second {
		t.Fatalf("after the NAT forgot: interval %v, want 12s", d)
	}
	if d := l.Registered(moved, "sip:a2@x"); d != 0 {
		t.Errorf("the same death through a second line shortened again: %v", d)
	}
	if got := h.ka.Interval(nat); got != 12*time.Second {
		t.Errorf("Interval(%v) = %v", nat, got)
	}
	if got := h.ka.Interval(netip.MustParseAddr("192.0.2.99")); got != 24*time.Second {
		t.Errorf("another NAT's interval changed: %v", got)
	}
	// It happens again: half again, not below 5 s.
	for _, want := range []time.Duration{6 * time.Second, 5 * time.Second, 5 * time.Second} {
		h.clk.Advance(time.Minute)
		l.Died(moved, []string{"sip:a@x"})
		h.clk.Advance(time.Second)
		if d := l.Registered(moved, "sip:a@x"); d != want {
			t.Fatalf("interval %v, want %v", d, want)
		}
	}
	other := keys[1]
	l.Died(other, []string{"sip:b@x"})
	elsewhere := other
	elsewhere.Remote = netip.MustParseAddrPort("192.0.2.77:5060")
	if d := l.Registered(elsewhere, "sip:b@x"); d != 0 {
		t.Errorf("a phone back from another address shortened: %v", d)
	}
	l.Died(keys[2], []string{"sip:c@x"})
	h.clk.Advance(2 * time.Hour)
	if d := l.Registered(keys[2], "sip:c@x"); d != 0 {
		t.Errorf("a return after two hours shortened: %v", d)
	}
	tcp := keys[2]
	tcp.Transport = TCP
	l.Died(tcp, []string{"sip:d@x"})
	if d := l.Registered(tcp, "sip:d@x"); d != 0 {
		t.Errorf("a stream flow shortened: %v", d)
	}
}

// The flows of a shortened NAT get their next keepalive within the new
// interval, not the old one.
func TestShortenReschedules(t *testing.T) {
	h := newKA(t, func(c *KeepaliveConfig) { c.Interval = 100 * time.Second })
	keys := h.watch(2)
	h.ka.Shorten(keys[0].Remote.Addr())
	seen := map[FlowKey]bool{}
	for range 50 {
		h.tick(t, time.Second)
		for _, c := range h.p.take() {
			seen[c.k] = true
		}
	}
	if !seen[keys[0]] {
		t.Error("the shortened NAT's flow got no keepalive within 50 s")
	}
}
