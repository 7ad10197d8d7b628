package dialog

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sipedge/sipedge/nat"
)

func TestDialogTable(t *testing.T) {
	now := time.Unix(1e9, 0)
	clock := func() time.Time { return now }
	tab := New(2, time.Hour, clock)
	a := nat.FlowKey{Transport: nat.UDP, Local: netip.MustParseAddrPort("192.0.2.1:5060"), Remote: netip.MustParseAddrPort("198.51.100.1:1000")}
	b := a
	b.Remote = netip.MustParseAddrPort("198.51.100.2:1000")
	id := NewID("call", "x", "y")
	if NewID("call", "y", "x") != id {
		t.Fatal("tag order matters")
	}
	route := []string{"sip:core;lr"}
	if !tab.Establish(id, Dialog{Flow: a, Route: route}) {
		t.Fatal("not established")
	}
	if _, _, ok := tab.Allow(id, b, route); ok {
		t.Fatal("another flow allowed")
	}
	if _, _, ok := tab.Allow(id, a, []string{"sip:elsewhere;lr"}); ok {
		t.Fatal("another route set allowed")
	}
	if r, _, ok := tab.Allow(id, a, route); !ok || r != nil {
		t.Fatal("the dialog's own route set refused")
	}
	if r, _, ok := tab.Allow(id, a, nil); !ok || len(r) != 1 {
		t.Fatal("a hidden route set is not restored")
	}
	tab.Establish(NewID("c2", "1", "2"), Dialog{Flow: a})
	if tab.Establish(NewID("c3", "1", "2"), Dialog{Flow: a}) {
		t.Fatal("a full table took a new dialog")
	}
	now = now.Add(2 * time.Hour)
	if _, _, ok := tab.Allow(id, a, route); ok {
		t.Fatal("an idle dialog outlived its ttl")
	}
	if n := tab.Sweep(); n != 2 || tab.Len() != 0 {
		t.Fatalf("swept %d, left %d", n, tab.Len())
	}
	tab.Establish(id, Dialog{Flow: a})
	tab.End(id)
	if _, _, ok := tab.Allow(id, a, nil); ok {
		t.Fatal("an ended dialog allowed")
	}
}

// An early dialog that never confirms is forgotten after EarlyTTL; a
// confirmed one lives the table's ttl.
func TestEarlyDialogExpires(t *testing.T) {
	now := time.Unix(1e9, 0)
	tab := New(10, time.Hour, func() time.Time { return now })
	f := nat.FlowKey{Transport: nat.UDP, Local: netip.MustParseAddrPort("192.0.2.1:5060"), Remote: netip.MustParseAddrPort("198.51.100.1:1000")}
	early, confirmed := NewID("e", "1", "2"), NewID("c", "1", "2")
	tab.Establish(early, Dialog{Flow: f})
	tab.Establish(confirmed, Dialog{Flow: f})
	tab.Establish(confirmed, Dialog{Flow: f, Confirmed: true})
	now = now.Add(EarlyTTL + time.Second)
	if _, _, ok := tab.Allow(early, f, nil); ok {
		t.Fatal("an early dialog outlived EarlyTTL")
	}
	if _, _, ok := tab.Allow(confirmed, f, nil); !ok {
		t.Fatal("a confirmed dialog was forgotten after EarlyTTL")
	}
}
