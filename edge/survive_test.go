package edge_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// events collects the edge's own audit events.
type events chan audit.Event

func (ev events) hook(e audit.Event) {
	select {
	case ev <- e:
	default: // a test that stopped reading does not stall the edge
	}
}

// waitFor returns the first event of kind whose detail contains detail.
func (ev events) waitFor(t *testing.T, kind audit.Kind, detail string, d time.Duration) audit.Event {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case e := <-ev:
			if e.Kind == kind && strings.Contains(e.Detail, detail) {
				return e
			}
		case <-deadline:
			t.Fatalf("no %s event %q within %v", kind, detail, d)
		}
	}
}

// healthFast probes the core every second and moves it after one result.
func healthFast(c *edgetest.Config) {
	c.Core.HealthInterval, c.Core.HealthTimeout = time.Second, 200*time.Millisecond
	c.Core.DownAfter, c.Core.UpAfter = 1, 1
}

// offloadPhone is a registered phone refreshing with its own Call-ID.
type offloadPhone struct {
	*edgetest.Phone
	user string
	cseq int
}

func (p *offloadPhone) refresh(t *testing.T) *sip.Response {
	t.Helper()
	p.cseq++
	p.Send(p.Register(edgetest.Reg{User: p.user, CSeq: p.cseq, CallID: "call-" + p.user}))
	for {
		res := p.MustRecvResponse(wait)
		if int(res.CSeq().SeqNo) == p.cseq {
			return res
		}
	}
}

func registerPhones(t *testing.T, e *edgetest.Edge, n int) []*offloadPhone {
	t.Helper()
	var out []*offloadPhone
	for i := range n {
		p := &offloadPhone{Phone: edgetest.Dial(t, "udp", e.UDP), user: fmt.Sprintf("p%d", i)}
		if res := p.refresh(t); res.StatusCode != 200 {
			t.Fatalf("%s registering got %d", p.user, res.StatusCode)
		}
		out = append(out, p)
	}
	return out
}

// A core that goes down and comes back empty (a restart without
// persistence) learns every binding again from the phones' next
// refreshes, paced at repopulate_rate; refreshes over the pace are
// answered from cache and go on the next round.
func TestOffloadRepopulatesARestartedCore(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	ev := make(events, 256)
	e := edgetest.StartWith(t, core.URI("udp"), func(c *edgetest.Config) {
		offloading(c)
		healthFast(c)
		c.Registration.RepopulateRate = 2 // a burst of one
	}, edgetest.Hooks{Events: ev.hook})
	phones := registerPhones(t, e, 5)
	for _, p := range phones {
		p.refresh(t)
	}
	before := len(registerRequests(core))
	if before != 5 {
		t.Fatalf("the core got %d REGISTERs for 5 phones and their refreshes, want 5", before)
	}

	core.SetSilent(true)
	ev.waitFor(t, audit.CoreRepopulate, "started", 5*time.Second)
	core.Forget()
	core.SetSilent(false)
	waitCoreUp(t, e)

	rounds := 0
	for deadline := time.Now().Add(20 * time.Second); ; rounds++ {
		atCore := len(registerRequests(core))
		for _, p := range phones {
			if res := p.refresh(t); res.StatusCode != 200 {
				t.Fatalf("%s's refresh while re-populating got %d", p.user, res.StatusCode)
			}
		}
		sent := len(registerRequests(core)) - atCore
		if rounds == 0 && sent != 1 {
			t.Errorf("the first round sent %d of 5 refreshes to the core, want 1 (repopulate_rate 2/s)", sent)
		}
		missing := 0
		for _, p := range phones {
			if len(core.Bindings("sip:"+p.user+"@example.com")) == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d rounds the core still misses %d of 5 phones", rounds+1, missing)
		}
		time.Sleep(300 * time.Millisecond) // the phones' refresh interval, shortened
	}
	done := ev.waitFor(t, audit.CoreRepopulate, "done", 5*time.Second)
	t.Logf("re-populated in %d rounds: %s, %d bindings", rounds+1, done.Detail, done.Count)
	// Re-populated: refreshes are absorbed again.
	atCore := len(registerRequests(core))
	for _, p := range phones {
		p.refresh(t)
	}
	if n := len(registerRequests(core)) - atCore; n != 0 {
		t.Errorf("%d refreshes reached the core after re-population", n)
	}
}

// A 200 from the core that leaves out a binding the edge holds for the
// AOR (the core lost it) sends that binding's next refresh to the core.
func TestOffloadNoticesWhatTheCoreLeftOut(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	ev := make(events, 256)
	e := edgetest.StartWith(t, core.URI("udp"), offloading, edgetest.Hooks{Events: ev.hook})
	desk := &offloadPhone{Phone: edgetest.Dial(t, "udp", e.UDP), user: "ann"}
	mobile := &offloadPhone{Phone: edgetest.Dial(t, "udp", e.UDP), user: "ann"}
	desk.refresh(t)
	mobile.Send(mobile.Register(edgetest.Reg{User: "ann", CSeq: 1, CallID: "mobile-ann"}))
	mobile.MustRecvResponse(wait)
	core.Forget()
	// The desk phone reboots (a new Call-ID): the core hears it, and
	// answers with the desk phone's contact alone.
	desk.Send(desk.Register(edgetest.Reg{User: "ann", CSeq: 1, CallID: "desk-ann-2"}))
	if res := desk.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("desk got %d", res.StatusCode)
	}
	ev.waitFor(t, audit.CoreRepopulate, "started", wait)
	before := len(registerRequests(core))
	mobile.Send(mobile.Register(edgetest.Reg{User: "ann", CSeq: 2, CallID: "mobile-ann"}))
	if res := mobile.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("mobile got %d", res.StatusCode)
	}
	if len(registerRequests(core)) != before+1 {
		t.Fatal("the mobile's refresh was absorbed though the core had lost it")
	}
	if n := len(core.Bindings("sip:ann@example.com")); n != 2 {
		t.Errorf("the core holds %d of ann's 2 contacts", n)
	}
}

func registerRequests(core *upstreamtest.Registrar) []*sip.Request {
	var out []*sip.Request
	for _, r := range core.Requests() {
		if r.Method == sip.REGISTER {
			out = append(out, r)
		}
	}
	return out
}

func waitCoreUp(t *testing.T, e *edgetest.Edge) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; {
		up := true
		for _, c := range e.Cores() {
			up = up && c.State == "up"
		}
		if up {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cores not up within 5s: %+v", e.Cores())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// With every core down and survival on, the phones the edge knows keep
// their registrations, a new phone gets 503 with Retry-After, and a call
// between two phones behind the edge goes straight from one flow to the
// other, ACK and BYE included, both ways. When a core returns, survival
// ends and calls go through the core again.
func TestSurvivalKeepsABranchWorking(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	ev := make(events, 256)
	e := edgetest.StartWith(t, core.URI("udp"), func(c *edgetest.Config) {
		healthFast(c)
		c.Survival.Grace = time.Minute
	}, edgetest.Hooks{Events: ev.hook})
	alice := &offloadPhone{Phone: edgetest.Dial(t, "udp", e.UDP), user: "alice"}
	bob := &offloadPhone{Phone: edgetest.Dial(t, "udp", e.UDP), user: "bob"}
	alice.refresh(t)
	bob.refresh(t)

	core.SetSilent(true)
	ev.waitFor(t, audit.ModeChange, "survival", 5*time.Second)
	atCore := len(registerRequests(core))
	if res := alice.refresh(t); res.StatusCode != 200 {
		t.Fatalf("a known phone's refresh in survival got %d", res.StatusCode)
	}
	if len(registerRequests(core)) != atCore {
		t.Error("a refresh in survival was sent to the dead core")
	}
	stranger := edgetest.Dial(t, "udp", e.UDP)
	stranger.Send(stranger.Register(edgetest.Reg{User: "carol"}))
	if res := stranger.MustRecvResponse(wait); res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
		t.Errorf("a new phone in survival got %d (Retry-After %v), want 503 with Retry-After", res.StatusCode, res.GetHeader("Retry-After"))
	}

	// alice calls bob.
	inv := "INVITE sip:bob@example.com SIP/2.0\n" +
		"Via: SIP/2.0/UDP " + alice.Local.String() + ";branch=z9hG4bK-local1;rport\n" +
		"Max-Forwards: 70\nFrom: <sip:alice@example.com>;tag=a1\nTo: <sip:bob@example.com>\n" +
		"Call-ID: local-call\nCSeq: 1 INVITE\nContact: <sip:alice@" + alice.Local.String() + ">\nContent-Length: 0\n\n"
	alice.Send(inv)
	got := bob.MustRecvRequest("INVITE", wait)
	if !strings.Contains(got.Recipient.String(), bob.Local.String()) {
		t.Errorf("bob got the INVITE for %s, want his contact", got.Recipient.String())
	}
	bobRoute := got.GetHeaders("Record-Route")
	if len(bobRoute) != 1 {
		t.Errorf("bob sees %d Record-Route entries, want the edge's one for his flow (hiding)", len(bobRoute))
	}
	bob.Respond(got, 200, "OK", "b1")
	var ok *sip.Response
	for ok == nil || ok.StatusCode < 200 {
		ok = alice.MustRecvResponse(wait)
	}
	if ok.StatusCode != 200 {
		t.Fatalf("alice's INVITE got %d", ok.StatusCode)
	}
	route := routeSet(ok)
	bobContact := ok.GetHeader("Contact").(*sip.ContactHeader).Address.String()
	ack := fmt.Sprintf("ACK %s SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-local1-ack;rport\nRoute: %s\nMax-Forwards: 70\n"+
		"From: <sip:alice@example.com>;tag=a1\nTo: <sip:bob@example.com>;tag=b1\nCall-ID: local-call\nCSeq: 1 ACK\nContent-Length: 0\n\n",
		bobContact, alice.Local, route)
	alice.Send(ack)
	bob.MustRecvRequest("ACK", wait)

	// bob hangs up: his route set is the INVITE's Record-Route, in order.
	var rr []string
	for _, h := range bobRoute {
		rr = append(rr, h.Value())
	}
	bye := fmt.Sprintf("BYE sip:alice@%s SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-local1-bye;rport\nRoute: %s\nMax-Forwards: 70\n"+
		"From: <sip:bob@example.com>;tag=b1\nTo: <sip:alice@example.com>;tag=a1\nCall-ID: local-call\nCSeq: 1 BYE\nContent-Length: 0\n\n",
		alice.Local, bob.Local, strings.Join(rr, ", "))
	bob.Send(bye)
	gotBye := alice.MustRecvRequest("BYE", wait)
	alice.Respond(gotBye, 200, "OK", "")
	if res := bob.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("bob's BYE got %d", res.StatusCode)
	}
	for _, r := range core.Requests() {
		if r.CallID().Value() == "local-call" {
			t.Errorf("the dead core got %s of the local call", r.Method)
		}
	}

	// A stranger (no binding on its flow) cannot use survival to reach a
	// phone: the border policy stands.
	stranger.Send(strings.NewReplacer("local-call", "stranger-call", "local1", "stranger1",
		alice.Local.String(), stranger.Local.String()).Replace(inv))
	for {
		res := stranger.MustRecvResponse(wait)
		if res.CallID().Value() == "stranger-call" {
			if res.StatusCode != 403 {
				t.Errorf("a stranger's INVITE in survival got %d, want 403", res.StatusCode)
			}
			break
		}
	}
	if b := bob.Silent(100 * time.Millisecond); b != nil {
		t.Errorf("bob got something from a stranger:\n%s", b)
	}

	// A message to someone not registered here gets 503.
	alice.Send("MESSAGE sip:dave@example.com SIP/2.0\nVia: SIP/2.0/UDP " + alice.Local.String() + ";branch=z9hG4bK-away;rport\n" +
		"Max-Forwards: 70\nFrom: <sip:alice@example.com>;tag=m2\nTo: <sip:dave@example.com>\nCall-ID: msg-dave\nCSeq: 1 MESSAGE\nContent-Length: 0\n\n")
	for {
		res := alice.MustRecvResponse(wait)
		if res.CallID().Value() == "msg-dave" {
			if res.StatusCode != 503 {
				t.Errorf("a MESSAGE to an AOR not registered here got %d, want 503", res.StatusCode)
			}
			break
		}
	}

	// The core returns: survival ends, calls go through it again.
	core.SetSilent(false)
	ev.waitFor(t, audit.ModeChange, "survival ended", 5*time.Second)
	alice.Send(strings.NewReplacer("local-call", "core-call", "local1", "core1").Replace(inv))
	for deadline := time.Now().Add(wait); ; {
		if invitesAt(core, "core-call") > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("after survival the INVITE did not reach the core")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Over core_rate, new registrations wait a moment for a turn and are
// then refused with 503 and a Retry-After: the core is not flooded, and
// the phones come back spread out.
func TestCoreRateRefusesBeyondTheCap(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		offloading(c)
		c.Registration.CoreRate = 1 // a burst of one, one waiting
	})
	registerPhones(t, e, 1) // takes the burst
	var phones []*edgetest.Phone
	for i := range 5 {
		p := edgetest.Dial(t, "udp", e.UDP)
		p.Send(p.Register(edgetest.Reg{User: fmt.Sprintf("new%d", i)}))
		phones = append(phones, p)
	}
	codes := map[int]int{}
	for _, p := range phones {
		res := p.MustRecvResponse(wait)
		codes[res.StatusCode]++
		if res.StatusCode == 503 && res.GetHeader("Retry-After") == nil {
			t.Error("503 without Retry-After")
		}
	}
	if codes[200] != 1 || codes[503] != 4 {
		t.Errorf("answers %v, want one 200 (its turn a second later) and four 503", codes)
	}
	if n := len(registerRequests(core)); n != 2 {
		t.Errorf("the core got %d REGISTERs, want 2", n)
	}
}

// A REGISTER waiting for its turn at core_rate waits on a worker, not on
// the access read loop that handles REGISTERs: meanwhile a registered
// phone's refresh is answered from the cache at once.
func TestCoreRateWaitHoldsUpNobody(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		offloading(c)
		c.Registration.CoreRate = 1 // a burst of one, one waiting
	})
	known := registerPhones(t, e, 1)[0] // takes the burst
	waiting := edgetest.Dial(t, "udp", e.UDP)
	waiting.Send(waiting.Register(edgetest.Reg{User: "new"}))
	if res := known.refresh(t); res.StatusCode != 200 {
		t.Fatalf("the known phone's refresh got %d", res.StatusCode)
	}
	for _, r := range registerRequests(core) {
		if r.To().Address.User == "new" {
			t.Fatal("the waiting REGISTER reached the core before the refresh behind it was answered")
		}
	}
	if res := waiting.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("the waiting REGISTER got %d, want 200 at its turn", res.StatusCode)
	}
}
