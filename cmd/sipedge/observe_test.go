package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/admin"
	"github.com/sipedge/sipedge/edge/alert"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream"
)

// A core's change of health is an audit event naming the tenant and the
// core, at WARN when it goes down or overloaded.
func TestCoreEvents(t *testing.T) {
	target, err := upstream.ParseTarget("sip:192.0.2.5:5060;transport=udp")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	obs := &observer{audit: audit.New(&buf, "n1", nil), feed: admin.NewFeed(nil)}
	obs.alerts = alert.New(alert.DefaultConfig(), nil, obs.emit)
	for _, st := range []upstream.State{upstream.StateDown, upstream.StateOverloaded, upstream.StateUp} {
		obs.emit(coreEvent("acme", target, st))
	}
	want := []struct{ event, level string }{{"core_down", "WARN"}, {"core_overloaded", "WARN"}, {"core_up", "INFO"}}
	dec := json.NewDecoder(&buf)
	for _, w := range want {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		if m["event"] != w.event || m["level"] != w.level || m["tenant"] != "acme" || m["core"] != target.String() || m["node"] != "n1" {
			t.Errorf("got %v, want %s at %s for acme's %s", m, w.event, w.level, target)
		}
	}
}

// A phone whose flow died of unanswered keepalives and that registers
// again from behind the same NAT halves that NAT's interval, an event.
func TestLearnNATs(t *testing.T) {
	flows, err := nat.NewFlowTable(100, nil, nat.FlowEvents{})
	if err != nil {
		t.Fatal(err)
	}
	ka, err := nat.NewKeepaliver(nat.DefaultKeepaliveConfig(), nat.KeepaliverDeps{Flows: flows})
	if err != nil {
		t.Fatal(err)
	}
	var got []audit.Event
	learn := learnNATs(nat.NewForgetting(ka, nil, time.Hour), func(e audit.Event) { got = append(got, e) })
	old := nat.FlowKey{Transport: nat.UDP, Local: netip.MustParseAddrPort("198.18.0.1:5060"), Remote: netip.MustParseAddrPort("198.18.0.2:5080")}
	again := old
	again.Remote = netip.MustParseAddrPort("198.18.0.2:61000")
	learn(registry.Event{Kind: registry.FlowDead, Flow: old, Why: "keepalive", Removed: []registry.Binding{{AOR: "sip:1000@x"}}})
	learn(registry.Event{Kind: registry.Registered, Binding: registry.Binding{AOR: "sip:1000@x", Flow: again}})
	if len(got) != 1 || got[0].Kind != audit.KeepaliveAdapted || got[0].Detail != "keepalives to 198.18.0.2 every 12.5s from now on" {
		t.Fatalf("events %+v", got)
	}
	if d := ka.Interval(netip.MustParseAddr("198.18.0.2")); d != 12500*time.Millisecond {
		t.Errorf("interval %v", d)
	}
	// A phone that unregistered, then came back: nothing learned.
	learn(registry.Event{Kind: registry.FlowDead, Flow: old, Why: "closed", Removed: []registry.Binding{{AOR: "sip:1001@x"}}})
	learn(registry.Event{Kind: registry.Registered, Binding: registry.Binding{AOR: "sip:1001@x", Flow: again}})
	if len(got) != 1 {
		t.Errorf("learned from a flow that did not die of keepalives: %+v", got)
	}
}

// A phone that rebooted (a new Call-ID) after its flow died teaches
// nothing about its NAT.
func TestLearnNATsNotFromReboots(t *testing.T) {
	flows, _ := nat.NewFlowTable(100, nil, nat.FlowEvents{})
	ka, _ := nat.NewKeepaliver(nat.DefaultKeepaliveConfig(), nat.KeepaliverDeps{Flows: flows})
	var got []audit.Event
	learn := learnNATs(nat.NewForgetting(ka, nil, time.Hour), func(e audit.Event) { got = append(got, e) })
	old := nat.FlowKey{Transport: nat.UDP, Local: netip.MustParseAddrPort("198.18.0.1:5060"), Remote: netip.MustParseAddrPort("198.18.0.2:5080")}
	learn(registry.Event{Kind: registry.FlowDead, Flow: old, Why: "keepalive", Removed: []registry.Binding{{AOR: "sip:1000@x", CallID: "before"}}})
	learn(registry.Event{Kind: registry.Registered, Binding: registry.Binding{AOR: "sip:1000@x", CallID: "after-reboot", Flow: old}})
	if len(got) != 0 || ka.Interval(netip.MustParseAddr("198.18.0.2")) != 25*time.Second {
		t.Errorf("learned from a reboot: %+v", got)
	}
}
