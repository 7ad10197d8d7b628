package edge_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// twoCores starts an edge in front of cores a (the primary) and b.
func twoCores(t *testing.T, a, b *upstreamtest.Registrar, mutate func(*edgetest.Config)) *edgetest.Edge {
	t.Helper()
	return edgetest.Start(t, a.URI("udp"), func(c *edgetest.Config) {
		c.Core.Upstreams = []string{a.URI("udp"), b.URI("udp")}
		c.Core.TryTimeout = 300 * time.Millisecond
		c.Core.HealthInterval = 0 // only what forwarding sees
		c.Core.DownAfter = 2
		if mutate != nil {
			mutate(c)
		}
	})
}

// A primary that does not answer costs a REGISTER one per-try timeout,
// then the backup takes it; once it is down, the backup at once.
func TestFailoverOnSilence(t *testing.T) {
	a := upstreamtest.Start(t, upstreamtest.Options{Silent: true})
	b := upstreamtest.Start(t, upstreamtest.Options{})
	e := twoCores(t, a, b, nil)
	phone := edgetest.Dial(t, "udp", e.UDP)
	registersAt := func(r *upstreamtest.Registrar) (n int) {
		for _, req := range r.Requests() {
			if req.Method == "REGISTER" {
				n++
			}
		}
		return n
	}
	for i := 1; i <= 4; i++ {
		phone.Send(phone.Register(edgetest.Reg{User: "ann", CSeq: i}))
		if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("REGISTER %d got %d, want 200 from the backup", i, res.StatusCode)
		}
	}
	// The first two tried the primary (each a per-try timeout, then the
	// backup); two misses mark it down, and the last two went straight
	// to the backup.
	if got := registersAt(a); got != 2 {
		t.Errorf("the silent primary got %d REGISTERs, want 2 (then down)", got)
	}
	if got := registersAt(b); got != 4 {
		t.Errorf("the backup got %d REGISTERs, want 4", got)
	}
	if len(b.Bindings("sip:ann@example.com")) != 1 {
		t.Error("the backup holds no binding")
	}
	// A retry carries one edge Via, not the first try's as well.
	for _, req := range b.Requests() {
		if req.Method == "REGISTER" && len(req.GetHeaders("Via")) != 2 {
			t.Errorf("the backup got a REGISTER with %d Vias, want the phone's and the edge's", len(req.GetHeaders("Via")))
		}
	}
}

// A 503 moves the request on; with every core refusing, the phone gets
// the last 503.
func TestFailoverOn503(t *testing.T) {
	a := upstreamtest.Start(t, upstreamtest.Options{Refuse: 503})
	b := upstreamtest.Start(t, upstreamtest.Options{})
	e := twoCores(t, a, b, nil)
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "bea"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER got %d, want 200 from the backup", res.StatusCode)
	}
	c := upstreamtest.Start(t, upstreamtest.Options{Refuse: 503})
	e2 := twoCores(t, a, c, nil)
	p2 := edgetest.Dial(t, "udp", e2.UDP)
	p2.Send(p2.Register(edgetest.Reg{User: "cid"}))
	if res := p2.MustRecvResponse(wait); res.StatusCode != 503 {
		t.Fatalf("REGISTER with both cores refusing got %d, want their 503", res.StatusCode)
	}
}

// With every core down by health, a phone gets 503 with Retry-After at
// once: no waiting for a timeout health already predicts.
func TestNoCoreUpAnswersAtOnce(t *testing.T) {
	a := upstreamtest.Start(t, upstreamtest.Options{Silent: true})
	b := upstreamtest.Start(t, upstreamtest.Options{Silent: true})
	e := twoCores(t, a, b, func(c *edgetest.Config) {
		c.Core.HealthInterval, c.Core.HealthTimeout, c.Core.DownAfter = time.Second, 100*time.Millisecond, 1
	})
	phone := edgetest.Dial(t, "udp", e.UDP)
	// Until the probes have marked both down, each REGISTER waits out a
	// per-try timeout at each core; then the 503 comes at once.
	deadline := time.Now().Add(10 * time.Second)
	for cseq := 1; ; cseq++ {
		start := time.Now()
		phone.Send(phone.Register(edgetest.Reg{User: "dan", CSeq: cseq}))
		res := phone.MustRecvResponse(wait)
		took := time.Since(start)
		ra := res.GetHeader("Retry-After")
		if res.StatusCode != 503 || ra == nil {
			t.Fatalf("with silent cores got %d (Retry-After %v), want 503 with Retry-After", res.StatusCode, ra)
		}
		if took < 50*time.Millisecond {
			if s, _ := strconv.Atoi(ra.Value()); s < 1 {
				t.Errorf("Retry-After %q", ra.Value())
			}
			t.Logf("no core up: 503 with Retry-After %s in %v (REGISTER %d)", ra.Value(), took.Round(time.Microsecond), cseq)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("503s still took %v after 10 s: the probes never marked the cores down", took)
		}
	}
}

// invite is an out-of-dialog INVITE from phone p (registered as user).
func invite(p *edgetest.Phone, user, callID string) string {
	return "INVITE sip:carol@example.com SIP/2.0\n" +
		"Via: SIP/2.0/UDP " + p.Local.String() + ";branch=z9hG4bK-" + callID + ";rport\n" +
		"Max-Forwards: 70\nFrom: <sip:" + user + "@example.com>;tag=f-" + callID + "\n" +
		"To: <sip:carol@example.com>\nCall-ID: " + callID + "\nCSeq: 1 INVITE\n" +
		"Contact: <sip:" + user + "@" + p.Local.String() + ">\nContent-Length: 0\n\n"
}

// finalTo waits for the final answer to the INVITE with callID.
func finalTo(t *testing.T, p *edgetest.Phone, callID string) *sip.Response {
	t.Helper()
	for {
		res := p.MustRecvResponse(wait)
		if res.CallID().Value() == callID && res.StatusCode >= 200 {
			return res
		}
	}
}

func invitesAt(r *upstreamtest.Registrar, callID string) (n int) {
	for _, req := range r.Requests() {
		if req.Method == sip.INVITE && req.CallID().Value() == callID {
			n++
		}
	}
	return n
}

// An INVITE fails over like any request while no core has answered it:
// a silent core costs it one per-try timeout, a 503 nothing.
func TestInviteFailsOverBeforeAnyAnswer(t *testing.T) {
	for _, tc := range []struct {
		name string
		a    upstreamtest.Options
	}{{"silent", upstreamtest.Options{Silent: true}}, {"503", upstreamtest.Options{Refuse: 503}}} {
		t.Run(tc.name, func(t *testing.T) {
			a := upstreamtest.Start(t, tc.a)
			b := upstreamtest.Start(t, upstreamtest.Options{})
			e := twoCores(t, a, b, func(c *edgetest.Config) { c.Core.DownAfter = 100 })
			phone := edgetest.Dial(t, "udp", e.UDP)
			phone.Send(phone.Register(edgetest.Reg{User: "eve"}))
			if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
				t.Fatalf("REGISTER got %d", res.StatusCode)
			}
			phone.Send(invite(phone, "eve", "inv-fo"))
			if res := finalTo(t, phone, "inv-fo"); res.StatusCode != 200 {
				t.Fatalf("INVITE got %d, want 200 from the backup", res.StatusCode)
			}
			if invitesAt(a, "inv-fo") != 1 || invitesAt(b, "inv-fo") != 1 {
				t.Errorf("INVITEs at the primary %d, at the backup %d: want one each", invitesAt(a, "inv-fo"), invitesAt(b, "inv-fo"))
			}
		})
	}
}

// Once a core has answered an INVITE provisionally it owns the call: a
// later failure is the phone's answer, not a reason to ring elsewhere.
func TestInviteStaysAfterAProvisional(t *testing.T) {
	gate := make(chan struct{})
	a := upstreamtest.Start(t, upstreamtest.Options{InviteAnswers: []int{180, 503}, InviteGate: gate})
	b := upstreamtest.Start(t, upstreamtest.Options{})
	e := twoCores(t, a, b, func(c *edgetest.Config) { c.Core.DownAfter = 100 })
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "fay"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER got %d", res.StatusCode)
	}
	phone.Send(invite(phone, "fay", "inv-stay"))
	for res := phone.MustRecvResponse(wait); res.StatusCode != 180; res = phone.MustRecvResponse(wait) {
	}
	close(gate) // the phone heard it ring: now the primary fails
	if res := finalTo(t, phone, "inv-stay"); res.StatusCode != 503 {
		t.Fatalf("INVITE got %d, want the primary's 503 after its 180 (primary %d, backup %d INVITEs)", res.StatusCode, invitesAt(a, "inv-stay"), invitesAt(b, "inv-stay"))
	}
	if n := invitesAt(b, "inv-stay"); n != 0 {
		t.Errorf("the backup got %d INVITEs after the primary rang", n)
	}
}

// A CANCEL while the first core has not answered ends the INVITE there:
// it is not rung at the next core.
func TestCancelStopsInviteFailover(t *testing.T) {
	a := upstreamtest.Start(t, upstreamtest.Options{Silent: true})
	b := upstreamtest.Start(t, upstreamtest.Options{})
	e := twoCores(t, a, b, func(c *edgetest.Config) { c.Core.DownAfter = 100 })
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "gus"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER got %d", res.StatusCode)
	}
	inv := invite(phone, "gus", "inv-cancel")
	phone.Send(inv)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for {
		req, err := a.NextRequest(ctx)
		if err != nil {
			t.Fatal("the primary never got the INVITE")
		}
		if req.Method == sip.INVITE && req.CallID().Value() == "inv-cancel" {
			break
		}
	}
	phone.Send(strings.Replace(strings.Replace(inv, "INVITE sip:", "CANCEL sip:", 1), "CSeq: 1 INVITE", "CSeq: 1 CANCEL", 1))
	got := map[string]int{}
	for len(got) < 2 {
		res := phone.MustRecvResponse(wait)
		if res.CallID().Value() == "inv-cancel" && res.StatusCode >= 200 {
			got[string(res.CSeq().MethodName)] = res.StatusCode
		}
	}
	if got["CANCEL"] != 200 || got["INVITE"] != 487 {
		t.Fatalf("phone got %v, want CANCEL 200 and INVITE 487", got)
	}
	for {
		req, err := a.NextRequest(ctx)
		if err != nil {
			t.Fatal("the primary never got the CANCEL")
		}
		if req.Method == sip.CANCEL {
			break
		}
	}
	// A REGISTER now fails over from the silent primary after one per-try
	// timeout: had the canceled INVITE gone on, it would be there first.
	phone.Send(phone.Register(edgetest.Reg{User: "gus", CSeq: 2}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER got %d", res.StatusCode)
	}
	if n := invitesAt(b, "inv-cancel"); n != 0 {
		t.Errorf("the backup got the canceled INVITE %d times", n)
	}
}

// An INVITE's first answer is often a 100 Trying: a sign of life, not a
// failure. Calls in a row must not take the core down (they once did,
// at the second call).
func TestRingingCoreStaysUp(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{InviteAnswers: []int{180, 486}})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) { c.Core.HealthInterval = 0 })
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "ring"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER got %d", res.StatusCode)
	}
	for i := range 4 {
		id := fmt.Sprintf("ring-%d", i)
		phone.Send(invite(phone, "ring", id))
		if res := finalTo(t, phone, id); res.StatusCode != 486 {
			t.Fatalf("call %d got %d, want the core's 486", i, res.StatusCode)
		}
		phone.Send(strings.Replace(strings.Replace(invite(phone, "ring", id), "INVITE sip:", "ACK sip:", 1), "1 INVITE", "1 ACK", 1))
	}
	for _, c := range e.Cores() {
		if c.State != "up" {
			t.Errorf("after 4 calls the core is %s", c.State)
		}
	}
}
