package edge_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/pion/stun/v2"
	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// flowDeaths sends the flow of every FlowDead event that took want
// bindings (any number if want < 0).
func flowDeaths(want int) (chan nat.FlowKey, func(registry.Event)) {
	dead := make(chan nat.FlowKey, 4)
	return dead, func(e registry.Event) {
		if e.Kind == registry.FlowDead && (want < 0 || len(e.Removed) == want) {
			dead <- e.Flow
		}
	}
}

func fakeClock() *clock.Fake { return clock.NewFake(time.Unix(1_700_000_000, 0)) }

// A STUN Binding request on the SIP port is answered with the phone's
// public address (RFC 5626 §8), and SIP keeps working on the same socket.
func TestSTUNOnSIPPort(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", e.UDP)

	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(e.UDP))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if _, err := c.Write(req.Raw); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no STUN answer: %v", err)
	}
	res := &stun.Message{Raw: buf[:n]}
	if err := res.Decode(); err != nil || res.Type != stun.BindingSuccess || res.TransactionID != req.TransactionID {
		t.Fatalf("bad STUN answer %v: %v", res, err)
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(res); err != nil {
		t.Fatal(err)
	}
	if got := c.LocalAddr().(*net.UDPAddr); !xor.IP.Equal(got.IP) || xor.Port != got.Port {
		t.Fatalf("XOR-MAPPED-ADDRESS %v, want %v", xor, got)
	}
	c.Write([]byte("\r\n\r\n")) // a CRLF keepalive is swallowed, not answered
	phone.Send(phone.Register(edgetest.Reg{User: "stun"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER after STUN got %d", res.StatusCode)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("CRLF keepalive was answered on UDP: %q", buf[:n])
	}
}

func TestCRLFKeepalivesReachRegisteredUDPFlows(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	clk := fakeClock()
	e := edgetest.StartWith(t, core.URI("udp"), func(c *edgetest.Config) {
		c.NAT.Mode = nat.KeepaliveCRLF
		c.NAT.Interval = 25 * time.Second
	}, edgetest.Hooks{Clock: clk})
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "ka"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("got %d", res.StatusCode)
	}
	// The phone stays silent for an interval of the edge's clock; the
	// edge's ping arrives from the SIP port.
	clk.Advance(25 * time.Second)
	raw, from := phone.RecvRaw(wait)
	if string(raw) != "\r\n\r\n" || from != e.UDP {
		t.Fatalf("got %q from %v, want a CRLF keepalive from %v", raw, from, e.UDP)
	}
}

func TestUnansweredOptionsKillTheFlow(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	dead, onEvent := flowDeaths(1)
	clk := fakeClock()
	e := edgetest.StartWith(t, core.URI("udp"), func(c *edgetest.Config) {
		c.NAT.Mode = nat.KeepaliveOptions
		c.NAT.Interval = 2 * time.Second // each ping waits a second for its answer
		c.NAT.Failures = 2
	}, edgetest.Hooks{OnEvent: onEvent, Clock: clk})
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "gone"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("got %d", res.StatusCode)
	}
	// Two intervals of the edge's clock, two pings; the phone never answers.
	clk.Advance(2 * time.Second)
	opt := phone.MustRecvRequest("OPTIONS", wait)
	if opt.Recipient.Host != "127.0.0.1" || opt.Recipient.Port != int(phone.Local.Port()) {
		t.Errorf("OPTIONS to %s", opt.Recipient.String())
	}
	clk.Advance(2 * time.Second)
	select {
	case k := <-dead:
		if k.Remote != phone.Local {
			t.Fatalf("dead flow %v, want the phone's", k)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("flow not declared dead after unanswered OPTIONS")
	}
	if n := len(e.Bindings().All()); n != 0 {
		t.Fatalf("%d bindings survive a dead flow", n)
	}
	// A new REGISTER revives it.
	phone.Send(phone.Register(edgetest.Reg{User: "gone", CSeq: 2}))
	for {
		m, err := phone.Recv(wait)
		if err != nil {
			t.Fatal(err)
		}
		if res, ok := m.(*sip.Response); ok {
			if res.StatusCode != 200 {
				t.Fatalf("re-REGISTER got %d", res.StatusCode)
			}
			break
		}
	}
	if n := len(e.Bindings().All()); n != 1 {
		t.Fatalf("%d bindings after re-REGISTER, want 1", n)
	}
}

func TestTCPCloseKillsTheFlowAtOnce(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	dead := make(chan string, 1)
	e := edgetest.StartWith(t, core.URI("udp"), nil, edgetest.Hooks{OnEvent: func(e registry.Event) {
		if e.Kind == registry.FlowDead {
			dead <- e.Why
		}
	}})
	phone := edgetest.Dial(t, "tcp", e.TCP)
	phone.Send(phone.Register(edgetest.Reg{User: "tcp"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("got %d", res.StatusCode)
	}
	// A CRLF ping gets a pong and does not disturb SIP.
	phone.SendRaw("\r\n\r\n")
	if raw, _ := phone.RecvRaw(wait); string(raw) != "\r\n" {
		t.Fatalf("ping answered %q, want a CRLF pong", raw)
	}
	phone.Close()
	select {
	case why := <-dead:
		t.Logf("flow dead: %s", why)
	case <-time.After(wait):
		t.Fatal("closing the connection did not kill the flow")
	}
	if n := len(e.Bindings().All()); n != 0 {
		t.Fatalf("%d bindings survive the closed connection", n)
	}
}

func TestOutboundClientsGetFlowTimer(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	for _, tc := range []struct {
		network string
		want    string
	}{{"udp", "25"}, {"tcp", "120"}} {
		access := e.UDP
		if tc.network == "tcp" {
			access = e.TCP
		}
		phone := edgetest.Dial(t, tc.network, access)
		contact := "<sip:ob@" + phone.Local.String() + ";transport=" + tc.network + `;ob>;+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";reg-id=1`
		phone.Send(phone.Register(edgetest.Reg{User: "ob" + tc.network, Contact: contact, Extra: "Supported: path, outbound"}))
		res := phone.MustRecvResponse(wait)
		if res.StatusCode != 200 {
			t.Fatalf("%s: got %d", tc.network, res.StatusCode)
		}
		req, ft := res.GetHeader("Require"), res.GetHeader("Flow-Timer")
		if req == nil || req.Value() != "outbound" || ft == nil || ft.Value() != tc.want {
			t.Fatalf("%s: Require %v, Flow-Timer %v; want outbound and %s", tc.network, req, ft, tc.want)
		}
	}
	// Without outbound support: neither header.
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "plain"}))
	if res := phone.MustRecvResponse(wait); res.GetHeader("Require") != nil || res.GetHeader("Flow-Timer") != nil {
		t.Fatalf("plain client got outbound headers:\n%s", res)
	}
}

// A TCP connection that went silent (dropped by a NAT without a FIN, or a
// frozen phone) is probed with OPTIONS after the stream flow timer; one
// that answers stays, one that does not is dead after the failures.
func TestSilentTCPFlowIsProbed(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	dead, onEvent := flowDeaths(-1)
	clk := fakeClock()
	e := edgetest.StartWith(t, core.URI("udp"), func(c *edgetest.Config) {
		c.NAT.FlowTimerStream = 2 * time.Second
		c.NAT.Failures = 2
	}, edgetest.Hooks{OnEvent: onEvent, Clock: clk})

	alive := edgetest.Dial(t, "tcp", e.TCP)
	alive.Send(alive.Register(edgetest.Reg{User: "alive"}))
	alive.MustRecvResponse(wait)
	frozen := edgetest.Dial(t, "tcp", e.TCP)
	frozen.Send(frozen.Register(edgetest.Reg{User: "frozen"}))
	frozen.MustRecvResponse(wait)

	for range 3 { // the live phone answers every probe
		clk.Advance(2 * time.Second)
		opt := alive.MustRecvRequest("OPTIONS", wait)
		alive.Respond(opt, 200, "OK", "a")
	}
	frozen.MustRecvRequest("OPTIONS", wait) // and the frozen one never does
	select {
	case k := <-dead:
		if k.Remote != frozen.Local {
			t.Fatalf("dead flow %v, want the frozen phone's %v", k, frozen.Local)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the silent TCP flow was never declared dead")
	}
	if len(e.Bindings().Lookup("sip:alive@example.com")) != 1 || len(e.Bindings().Lookup("sip:frozen@example.com")) != 0 {
		t.Fatal("wrong bindings after the probes")
	}
}

// A binding the phone does not refresh expires on the edge's clock: it
// leaves the registry, its flow is no longer kept open, and requests
// from the core for it get 430.
func TestBindingExpiresOnTheEdgesClock(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	clk := fakeClock()
	expired := make(chan registry.Binding, 1)
	e := edgetest.StartWith(t, core.URI("udp"), func(c *edgetest.Config) {
		c.NAT.Mode = nat.KeepaliveCRLF
		c.NAT.Interval = 25 * time.Second
	}, edgetest.Hooks{Clock: clk, OnEvent: func(ev registry.Event) {
		if ev.Kind == registry.Expired {
			expired <- ev.Binding
		}
	}})
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "brief", Expires: "60"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("got %d", res.StatusCode)
	}
	clk.Advance(59 * time.Second)
	if n := len(e.Bindings().Lookup("sip:brief@example.com")); n != 1 {
		t.Fatalf("%d bindings before expiry, want 1", n)
	}
	clk.Advance(2 * time.Second)
	select {
	case b := <-expired:
		if b.AOR != "sip:brief@example.com" || b.Flow.Remote != phone.Local {
			t.Fatalf("expired %+v", b)
		}
	case <-time.After(wait):
		t.Fatal("binding did not expire")
	}
	if e.Bindings().Len() != 0 || e.Bindings().HasFlow(nat.FlowKey{Transport: nat.UDP, Local: e.UDP, Remote: phone.Local}) {
		t.Fatal("expired binding or its flow still held")
	}
}

// Auto keepalives: the phone that answers OPTIONS keeps getting them, the
// one that does not gets CRLF after two tries and stays registered; each
// flow says which works.
func TestAutoKeepalivePerPhone(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	clk := fakeClock()
	e := edgetest.StartWith(t, core.URI("udp"), func(c *edgetest.Config) {
		c.NAT.Mode = nat.KeepaliveAuto
		c.NAT.Interval = 2 * time.Second // each OPTIONS waits a second for its answer
		c.NAT.Failures = 2
	}, edgetest.Hooks{Clock: clk})
	answers, silent := edgetest.Dial(t, "udp", e.UDP), edgetest.Dial(t, "udp", e.UDP)
	for i, p := range []*edgetest.Phone{answers, silent} {
		p.Send(p.Register(edgetest.Reg{User: fmt.Sprintf("ka%d", i)}))
		if res := p.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("got %d", res.StatusCode)
		}
	}
	flowOf := func(p *edgetest.Phone) nat.Flow {
		for _, f := range e.Flows().Snapshot() {
			if f.Key.Remote == p.Local {
				return f
			}
		}
		t.Fatalf("no flow for %v", p.Local)
		return nat.Flow{}
	}
	// Two rounds of OPTIONS: one phone answers them, the other does not.
	for range 2 {
		clk.Advance(2 * time.Second)
		opt := answers.MustRecvRequest("OPTIONS", wait)
		answers.Respond(opt, 200, "OK", "")
		silent.MustRecvRequest("OPTIONS", wait)
	}
	// Then a CRLF for the silent one, OPTIONS again for the other.
	deadline := time.Now().Add(wait)
	for flowOf(silent).Keepalive != nat.KeepaliveCRLF || flowOf(answers).Keepalive != nat.KeepaliveOptions {
		if time.Now().After(deadline) {
			t.Fatalf("flows: answering %+v, silent %+v", flowOf(answers), flowOf(silent))
		}
		time.Sleep(5 * time.Millisecond)
	}
	clk.Advance(2 * time.Second)
	for {
		raw, from := silent.RecvRaw(wait) // past retransmissions of the unanswered OPTIONS
		if strings.HasPrefix(string(raw), "OPTIONS ") {
			continue
		}
		if string(raw) != "\r\n\r\n" || from != e.UDP {
			t.Fatalf("silent phone got %q from %v, want a CRLF", raw, from)
		}
		break
	}
	answers.Respond(answers.MustRecvRequest("OPTIONS", wait), 200, "OK", "")
	if n := len(e.Bindings().All()); n != 2 {
		t.Errorf("%d bindings, want both phones still registered", n)
	}
}
