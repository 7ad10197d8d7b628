package main

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/sipedge/sipedge/edge/admin"
	"github.com/sipedge/sipedge/edge/alert"
	"github.com/sipedge/sipedge/edge/audit"
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
