package edge_test

import (
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// restart stops e and starts another edge on the same sockets and key,
// as a process restarted by its supervisor would be, with hooks h.
func restart(t *testing.T, e *edgetest.Edge, core string, h edgetest.Hooks) *edgetest.Edge {
	t.Helper()
	e.Stop()
	return edgetest.StartWith(t, core, func(cfg *edgetest.Config) {
		cfg.Access.UDP = []string{e.UDP.String()}
		cfg.Access.TCP = []string{e.TCP.String()}
		cfg.Core.Listen = e.CoreAddr().String()
	}, h)
}

// After a restart without state, the core's request for a UDP phone is
// routed from its token alone and the flow is kept open again; a stream
// flow died with the process and gets 430 at once.
func TestRestartWithoutStateRoutesUDPFromToken(t *testing.T) {
	c := setupCall(t, "udp", nil)
	tcp := edgetest.Dial(t, "tcp", c.e.TCP)
	tcp.Send(tcp.Register(edgetest.Reg{User: "carol"}))
	if res := tcp.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("TCP REGISTER got %d", res.StatusCode)
	}
	tcpPath := c.reg.Bindings("sip:carol@example.com")[0].Path[0]

	events := make(chan registry.Event, 16)
	e2 := restart(t, c.e, c.reg.URI("udp"), edgetest.Hooks{OnEvent: func(ev registry.Event) { events <- ev }})
	if e2.Bindings().Len() != 0 {
		t.Fatal("a restart without state kept bindings")
	}
	c.core.Send(c.request("MESSAGE", c.contact(), c.path, "after-restart", 1, ""))
	msg := c.phone.MustRecvRequest("MESSAGE", wait)
	c.phone.Respond(msg, 200, "OK", "bob")
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("core got %d for the restarted edge's MESSAGE, want 200", res.StatusCode)
	}
	select {
	case ev := <-events:
		if ev.Kind != registry.Recovered || ev.Flow.Remote != c.phone.Local {
			t.Errorf("event %v for %v, want flow recovered for %v", ev.Kind, ev.Flow, c.phone.Local)
		}
	case <-time.After(wait):
		t.Error("no flow recovered event")
	}
	// The phone's next refresh lands on the recovered flow: the Path the
	// core stores does not change.
	c.phone.Send(c.phone.Register(edgetest.Reg{User: "bob", CSeq: 2}))
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("refresh got %d", res.StatusCode)
	}
	if p := c.reg.Bindings("sip:bob@example.com")[0].Path[0]; p != c.path {
		t.Errorf("refresh after the restart changed the Path:\n%s\nwas\n%s", p, c.path)
	}
	c.core.Send(c.request("MESSAGE", "sip:carol@127.0.0.1", tcpPath, "tcp-after-restart", 1, ""))
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 430 {
		t.Fatalf("TCP flow after a restart got %d, want 430", res.StatusCode)
	}

	// A flow this process saw go stays gone, token or not.
	c.phone.Send(c.phone.Register(edgetest.Reg{User: "bob", CSeq: 3, Expires: "0"}))
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("unregister got %d", res.StatusCode)
	}
	c.core.Send(c.request("MESSAGE", c.contact(), c.path, "after-unregister", 1, ""))
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 430 {
		t.Fatalf("token of a flow gone since the restart got %d, want 430", res.StatusCode)
	}
}

// With state loaded, a token the state says nothing about names a flow
// that was gone before the save: 430, not a recovery. One minted after
// the save (the last batch a crash lost) is recovered.
func TestRestartWithStateTrustsIt(t *testing.T) {
	reg := upstreamtest.Start(t, upstreamtest.Options{})
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	e := edgetest.StartWith(t, reg.URI("udp"), nil, edgetest.Hooks{Clock: clk})
	core := edgetest.Dial(t, "udp", e.CoreAddr())
	register := func(user string) (*edgetest.Phone, string) {
		p := edgetest.Dial(t, "udp", e.UDP)
		p.Send(p.Register(edgetest.Reg{User: user}))
		if res := p.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("REGISTER %s got %d", user, res.StatusCode)
		}
		return p, reg.Bindings("sip:" + user + "@example.com")[0].Path[0]
	}
	c := &callSetup{core: core}
	message := func(p *edgetest.Phone, path, user, callID string) int {
		core.Send(c.request("MESSAGE", "sip:"+user+"@"+p.Local.String(), path, callID, 1, ""))
		return core.MustRecvResponse(wait).StatusCode
	}
	old, oldPath := register("bob") // gone before the save
	clk.Advance(2 * time.Second)
	saved := clk.Now()
	clk.Advance(2 * time.Second)
	late, latePath := register("dave") // after the save: lost with the crash
	clk.Advance(2 * time.Second)

	e.Stop()
	e2 := edgetest.StartWith(t, reg.URI("udp"), func(cfg *edgetest.Config) {
		cfg.Access.UDP = []string{e.UDP.String()}
		cfg.Access.TCP = []string{e.TCP.String()}
		cfg.Core.Listen = e.CoreAddr().String()
	}, edgetest.Hooks{Clock: clk, StateSaved: saved})
	if code := message(old, oldPath, "bob", "before-save"); code != 430 {
		t.Errorf("token of a flow the saved state lacks got %d, want 430", code)
	}
	go func() {
		if m, err := late.Recv(wait); err == nil {
			if req, ok := m.(*sip.Request); ok {
				late.Respond(req, 200, "OK", "dave")
			}
		}
	}()
	if code := message(late, latePath, "dave", "after-save"); code != 200 {
		t.Errorf("token minted after the save got %d, want 200", code)
	}
	_ = e2
}
