package edge_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// callSetup is an edge with one phone registered through it, and a raw
// "core" socket that talks to the edge's core side.
type callSetup struct {
	e     *edgetest.Edge
	reg   *upstreamtest.Registrar
	phone *edgetest.Phone
	core  *edgetest.Phone
	path  string // the Path the registrar stored
}

func setupCall(t *testing.T, network string, mutate func(*edgetest.Config)) *callSetup {
	t.Helper()
	reg := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, reg.URI("udp"), mutate)
	access := e.UDP
	if network == "tcp" {
		access = e.TCP
	}
	c := &callSetup{e: e, reg: reg, phone: edgetest.Dial(t, network, access)}
	c.phone.Send(c.phone.Register(edgetest.Reg{User: "bob"}))
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER got %d", res.StatusCode)
	}
	if bs := reg.Bindings("sip:bob@example.com"); len(bs) == 1 && len(bs[0].Path) == 1 {
		c.path = bs[0].Path[0]
	}
	c.core = edgetest.Dial(t, "udp", e.CoreAddr())
	return c
}

// request builds a request from the raw core socket.
func (c *callSetup) request(method, ruri, route, callID string, cseq int, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s SIP/2.0\n", method, ruri)
	fmt.Fprintf(&b, "Via: SIP/2.0/UDP %s;branch=z9hG4bK-%s-%d-%s;rport\n", c.core.Local, callID, cseq, strings.ToLower(method))
	if route != "" {
		fmt.Fprintf(&b, "Route: %s\n", route)
	}
	b.WriteString("Max-Forwards: 70\n")
	fmt.Fprintf(&b, "From: <sip:alice@example.com>;tag=caller\nTo: <sip:bob@example.com>%s\n", extra)
	fmt.Fprintf(&b, "Call-ID: %s\nCSeq: %d %s\n", callID, cseq, method)
	if method == "INVITE" {
		fmt.Fprintf(&b, "Contact: <sip:alice@%s>\n", c.core.Local)
	}
	b.WriteString("Content-Length: 0\n\n")
	return b.String()
}

func (c *callSetup) contact() string {
	return fmt.Sprintf("sip:bob@%s;transport=%s", c.phone.Local, strings.ToLower(c.phone.Transport()))
}

// (Topology hiding off: the phone sees the whole route; TestTopologyHiding
// covers what it sees with hiding on.)
func TestInviteFromCoreReachesTheFlow(t *testing.T) {
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			c := setupCall(t, network, func(cfg *edgetest.Config) { cfg.Access.HideTopology = false })
			c.core.Send(c.request("INVITE", c.contact(), c.path, "call-"+network, 1, ""))

			inv := c.phone.MustRecvRequest("INVITE", wait)
			if inv.Route() != nil {
				t.Errorf("the edge's own Route reached the phone: %s", inv.Route().Value())
			}
			rrs := inv.GetHeaders("Record-Route")
			if len(rrs) != 2 {
				t.Fatalf("phone got %d Record-Routes, want the edge's two", len(rrs))
			}
			top := rrs[0].(*sip.RecordRouteHeader).Address
			access := c.e.UDP
			if network == "tcp" {
				access = c.e.TCP
			}
			if top.Host != "127.0.0.1" || top.Port != int(access.Port()) || top.User == "" {
				t.Errorf("top Record-Route %s should be the access side with a token", top.String())
			}
			if n := len(inv.GetHeaders("Via")); n != 2 {
				t.Errorf("phone got %d Vias, want the core's and the edge's", n)
			}
			if mf := inv.MaxForwards(); mf == nil || mf.Val() != 69 {
				t.Errorf("Max-Forwards %v, want 69", mf)
			}
			c.phone.Respond(inv, 180, "Ringing", "callee")
			if res := c.core.MustRecvResponse(wait); res.StatusCode != 180 {
				t.Fatalf("core got %d, want 180", res.StatusCode)
			}
			c.phone.Respond(inv, 200, "OK", "callee")
			res := c.core.MustRecvResponse(wait)
			if res.StatusCode != 200 || len(res.GetHeaders("Via")) != 1 {
				t.Fatalf("core got %d with %d Vias", res.StatusCode, len(res.GetHeaders("Via")))
			}

			// The core's ACK and BYE follow the Record-Route back onto the flow.
			route := routeSet(res)
			c.core.Send(c.request("ACK", c.contact(), route, "call-"+network, 1, ";tag=callee"))
			c.phone.MustRecvRequest("ACK", wait)
			c.core.Send(c.request("BYE", c.contact(), route, "call-"+network, 2, ";tag=callee"))
			bye := c.phone.MustRecvRequest("BYE", wait)
			c.phone.Respond(bye, 200, "OK", "")
			if res := c.core.MustRecvResponse(wait); res.StatusCode != 200 {
				t.Fatalf("BYE got %d", res.StatusCode)
			}
		})
	}
}

// routeSet turns a 2xx's Record-Route into the Route header value the
// UAC uses (RFC 3261 §12.1.2: the reverse order).
func routeSet(res *sip.Response) string {
	rrs := res.GetHeaders("Record-Route")
	var out []string
	for i := len(rrs) - 1; i >= 0; i-- {
		out = append(out, rrs[i].Value())
	}
	return strings.Join(out, ", ")
}

func TestTamperedTokenIsForbidden(t *testing.T) {
	c := setupCall(t, "udp", nil)
	tok := strings.TrimPrefix(c.path[:strings.Index(c.path, "@")], "<sip:")
	// Another base64url letter: still a well-formed URI, only the seal
	// breaks (a flipped bit could make a ',' and split the Route).
	bad := []byte(tok)
	if bad[5] == 'A' {
		bad[5] = 'B'
	} else {
		bad[5] = 'A'
	}
	tampered := strings.Replace(c.path, tok, string(bad), 1)
	c.core.Send(c.request("INVITE", c.contact(), tampered, "tampered", 1, ""))
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("tampered token got %d, want 403", res.StatusCode)
	}
	// A token signed with another key is just as foreign.
	other, _ := nat.NewSigner(nat.Keys{Current: []byte(strings.Repeat("k", 32))}, 0, time.Now)
	foreign := "<sip:" + other.Encode(c.e.Bindings().All()[0].Flow, time.Now()) + "@" + c.e.CoreAddr().String() + ";lr>"
	c.core.Send(c.request("MESSAGE", c.contact(), foreign, "foreign", 1, ""))
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("foreign token got %d, want 403", res.StatusCode)
	}
}

func TestClosedTCPFlowGives430(t *testing.T) {
	c := setupCall(t, "tcp", nil)
	c.phone.Close()
	// The edge learns of the close asynchronously; keep asking until it
	// answers 430 (bounded), never forwarding anywhere else.
	deadline := time.Now().Add(wait)
	for i := 1; ; i++ {
		c.core.Send(c.request("MESSAGE", c.contact(), c.path, fmt.Sprintf("closed-%d", i), 1, ""))
		res := c.core.MustRecvResponse(wait)
		if res.StatusCode == 430 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("closed TCP flow still answers %d", res.StatusCode)
		}
	}
}

func TestCancelDuringRinging(t *testing.T) {
	c := setupCall(t, "udp", nil)
	c.core.Send(c.request("INVITE", c.contact(), c.path, "cancel-1", 1, ""))
	inv := c.phone.MustRecvRequest("INVITE", wait)
	c.phone.Respond(inv, 180, "Ringing", "callee")
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 180 {
		t.Fatalf("core got %d, want 180", res.StatusCode)
	}
	// CANCEL has the INVITE's branch (RFC 3261 §9.1).
	cancel := c.request("CANCEL", c.contact(), c.path, "cancel-1", 1, "")
	cancel = strings.Replace(cancel, "-cancel;rport", "-invite;rport", 1)
	c.core.Send(cancel)

	got := map[string]int{}
	for len(got) < 2 {
		res := c.core.MustRecvResponse(wait)
		got[string(res.CSeq().MethodName)] = res.StatusCode
	}
	if got["CANCEL"] != 200 || got["INVITE"] != 487 {
		t.Fatalf("core got %v, want CANCEL 200 and INVITE 487", got)
	}
	cr := c.phone.MustRecvRequest("CANCEL", wait)
	if cr.CSeq().SeqNo != inv.CSeq().SeqNo || cr.Via().Params.GetOr("branch", "") != inv.Via().Params.GetOr("branch", "x") {
		t.Fatalf("downstream CANCEL does not match the INVITE: %s / %s", cr.CSeq().Value(), cr.Via().Value())
	}
	c.phone.Respond(cr, 200, "OK", "callee")
	c.phone.Respond(inv, 487, "Request Terminated", "callee")
	ack := c.phone.MustRecvRequest("ACK", wait) // hop-by-hop ACK for the 487
	if ack.CSeq().SeqNo != inv.CSeq().SeqNo {
		t.Fatalf("ACK CSeq %s", ack.CSeq().Value())
	}
}

func TestTwoHundredRetransmissionsReachTheCaller(t *testing.T) {
	c := setupCall(t, "udp", nil)
	c.core.Send(c.request("INVITE", c.contact(), c.path, "retrans-1", 1, ""))
	inv := c.phone.MustRecvRequest("INVITE", wait)
	for i := 0; i < 3; i++ { // the callee retransmits its 2xx until it sees the ACK
		c.phone.Respond(inv, 200, "OK", "callee")
		if res := c.core.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("transmission %d: core got %d", i+1, res.StatusCode)
		}
	}
}

func TestPhoneCallsOutThroughTheCore(t *testing.T) {
	c := setupCall(t, "udp", nil)
	invite := `INVITE sip:carol@example.com SIP/2.0
Via: SIP/2.0/UDP ` + c.phone.Local.String() + `;branch=z9hG4bK-out-1;rport
Max-Forwards: 70
From: <sip:bob@example.com>;tag=bob1
To: <sip:carol@example.com>
Call-ID: out-1
CSeq: 1 INVITE
Contact: <sip:bob@` + c.phone.Local.String() + `>
Content-Length: 0

`
	c.phone.Send(invite)
	got := nextRequestOf(t, c.reg, "INVITE")
	rrs := got.GetHeaders("Record-Route")
	if len(rrs) != 2 {
		t.Fatalf("core got %d Record-Routes, want 2", len(rrs))
	}
	top := rrs[0].(*sip.RecordRouteHeader).Address
	if top.Host != c.e.CoreAddr().Addr().String() || top.Port != int(c.e.CoreAddr().Port()) {
		t.Errorf("top Record-Route %s should face the core", top.String())
	}
	if rrs[1].(*sip.RecordRouteHeader).Address.User == "" {
		t.Errorf("access-side Record-Route carries no flow token")
	}
	var res *sip.Response
	for res == nil || res.StatusCode < 200 {
		res = c.phone.MustRecvResponse(wait)
	}
	if res.StatusCode != 200 {
		t.Fatalf("phone got %d", res.StatusCode)
	}
	// BYE from the phone, in dialog: Route is the reversed Record-Route.
	bye := `BYE sip:carol@example.com SIP/2.0
Via: SIP/2.0/UDP ` + c.phone.Local.String() + `;branch=z9hG4bK-out-2;rport
Route: ` + routeSet(res) + `
Max-Forwards: 70
From: <sip:bob@example.com>;tag=bob1
To: ` + res.To().Value() + `
Call-ID: out-1
CSeq: 2 BYE
Content-Length: 0

`
	c.phone.Send(bye)
	gotBye := nextRequestOf(t, c.reg, "BYE")
	if gotBye.Route() != nil && c.e.CoreAddr().String() == gotBye.Route().Address.HostPort() {
		t.Errorf("the edge's own Route was not removed: %s", gotBye.Route().Value())
	}
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("BYE got %d", res.StatusCode)
	}
}

func nextRequestOf(t *testing.T, reg *upstreamtest.Registrar, method string) *sip.Request {
	t.Helper()
	for {
		req := nextRequest(t, reg)
		if string(req.Method) == method {
			return req
		}
	}
}

func TestOptionsToTheEdgeAnsweredLocally(t *testing.T) {
	c := setupCall(t, "udp", nil)
	c.phone.Send(`OPTIONS sip:` + c.e.UDP.String() + ` SIP/2.0
Via: SIP/2.0/UDP ` + c.phone.Local.String() + `;branch=z9hG4bK-opt-1;rport
Max-Forwards: 70
From: <sip:bob@example.com>;tag=o1
To: <sip:` + c.e.UDP.String() + `>
Call-ID: opt-1
CSeq: 1 OPTIONS
Content-Length: 0

`)
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("OPTIONS got %d", res.StatusCode)
	}
	for _, r := range c.reg.Requests() {
		if r.Method == sip.OPTIONS {
			t.Fatal("OPTIONS to the edge reached the core")
		}
	}
}

func TestRewriteModeRestoresContact(t *testing.T) {
	c := setupCall(t, "udp", func(cfg *edgetest.Config) { cfg.Core.Mode = upstream.ModeRewrite })
	b := c.e.Bindings().All()[0]
	c.core.Send(c.request("MESSAGE", b.CoreContact, "", "rw-1", 1, ""))
	msg := c.phone.MustRecvRequest("MESSAGE", wait)
	if msg.Recipient.String() != b.Contact {
		t.Fatalf("phone got Request-URI %s, want its own contact %s", msg.Recipient.String(), b.Contact)
	}
	c.phone.Respond(msg, 200, "OK", "p")
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("core got %d", res.StatusCode)
	}
}

func TestLoopAndHops(t *testing.T) {
	c := setupCall(t, "udp", nil)
	c.core.Send(c.request("MESSAGE", c.contact(), c.path, "loop-1", 1, ""))
	first := c.phone.MustRecvRequest("MESSAGE", wait)
	c.phone.Respond(first, 200, "OK", "p")
	c.core.MustRecvResponse(wait)

	// Someone sends the very request the edge forwarded back to it (a
	// loop): same Request-URI, tags, Call-ID and CSeq, the edge's Via inside.
	resend := func(ruri string) {
		var b strings.Builder
		fmt.Fprintf(&b, "MESSAGE %s SIP/2.0\n", ruri)
		fmt.Fprintf(&b, "Via: SIP/2.0/UDP %s;branch=z9hG4bK-back-%d;rport\n", c.core.Local, len(ruri))
		for _, v := range first.GetHeaders("Via") {
			b.WriteString("Via: " + v.Value() + "\n")
		}
		b.WriteString("Route: " + c.path + "\nMax-Forwards: 60\n")
		b.WriteString("From: " + first.From().Value() + "\nTo: " + first.To().Value() + "\n")
		b.WriteString("Call-ID: loop-1\nCSeq: 1 MESSAGE\nContent-Length: 0\n\n")
		c.core.Send(b.String())
	}
	resend(first.Recipient.String())
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 482 {
		t.Fatalf("loop got %d, want 482", res.StatusCode)
	}
	// The same with a new Request-URI is a spiral (RFC 3261 §16.3 item 4):
	// forwarded, as for a call between two phones behind this edge.
	resend(c.contact() + ";spiral")
	if got := c.phone.MustRecvRequest("MESSAGE", wait); !strings.Contains(got.Recipient.String(), "spiral") {
		t.Fatalf("spiral reached the phone as %s", got.Recipient.String())
	}

	hops := strings.Replace(c.request("MESSAGE", c.contact(), c.path, "hops-1", 1, ""), "Max-Forwards: 70", "Max-Forwards: 0", 1)
	c.core.Send(hops)
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 483 {
		t.Fatalf("Max-Forwards 0 got %d, want 483", res.StatusCode)
	}
}

func TestAnswerAfterCancelIsHungUp(t *testing.T) {
	c := setupCall(t, "udp", nil)
	c.core.Send(c.request("INVITE", c.contact(), c.path, "late-1", 1, ""))
	inv := c.phone.MustRecvRequest("INVITE", wait)
	cancel := strings.Replace(c.request("CANCEL", c.contact(), c.path, "late-1", 1, ""), "-cancel;rport", "-invite;rport", 1)
	c.core.Send(cancel)
	c.phone.MustRecvRequest("CANCEL", wait)
	// The callee answers the INVITE anyway (the 200 crossed the CANCEL).
	c.phone.Respond(inv, 200, "OK", "late")
	c.phone.MustRecvRequest("ACK", wait)
	bye := c.phone.MustRecvRequest("BYE", wait)
	if bye.CallID().Value() != "late-1" || !strings.Contains(bye.To().Value(), "tag=late") {
		t.Fatalf("BYE for the wrong dialog: %s / %s", bye.CallID().Value(), bye.To().Value())
	}
}

func TestLargeInviteCrossesUDP(t *testing.T) {
	c := setupCall(t, "udp", nil)
	sdp := "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 9 18 101\r\n"
	for len(sdp) < 4096 {
		sdp += "a=candidate:1 1 UDP 2130706431 127.0.0.1 4000 typ host generation 0 network-id 1\r\n"
	}
	msg := c.request("INVITE", c.contact(), c.path, "big-1", 1, "")
	msg = strings.Replace(msg, "Content-Length: 0\n\n", fmt.Sprintf("Content-Type: application/sdp\nContent-Length: %d\n\n", len(sdp)), 1)
	c.core.Send(strings.ReplaceAll(msg, "\n", "\r\n") + sdp)
	inv := c.phone.MustRecvRequest("INVITE", wait)
	if len(inv.Body()) != len(sdp) {
		t.Fatalf("phone got %d bytes of SDP, want %d", len(inv.Body()), len(sdp))
	}
}

// Behind a 1:1 NAT the edge names its public address toward phones:
// in its Via and its access-side Record-Route; the core's addresses stay
// out of sight except in the Record-Route entries dialog routing needs.
func TestAdvertisedAddressFacesPhones(t *testing.T) {
	c := setupCall(t, "udp", func(cfg *edgetest.Config) { cfg.Access.Advertise = "203.0.113.5" })
	c.core.Send(c.request("INVITE", c.contact(), c.path, "adv-1", 1, ""))
	inv := c.phone.MustRecvRequest("INVITE", wait)
	if v := inv.Via(); v.Host != "203.0.113.5" || v.Port != int(c.e.UDP.Port()) {
		t.Errorf("top Via %s, want the advertised address", v.Value())
	}
	if rr := inv.RecordRoute(); rr == nil || rr.Address.Host != "203.0.113.5" {
		t.Errorf("access-side Record-Route %v, want the advertised address", rr)
	}
	c.phone.Respond(inv, 200, "OK", "adv")
	res := c.core.MustRecvResponse(wait)
	if res.StatusCode != 200 || len(res.GetHeaders("Via")) != 1 {
		t.Fatalf("core got %d with %d Vias", res.StatusCode, len(res.GetHeaders("Via")))
	}
	// A request routed to the advertised address is recognised as ours.
	c.core.Send(c.request("BYE", c.contact(), routeSet(res), "adv-1", 2, ";tag=adv"))
	c.phone.MustRecvRequest("BYE", wait)
}

// Once no binding uses a flow, its token no longer routes: the NAT
// address may belong to someone else by now.
func TestUnregisteredFlowGives430(t *testing.T) {
	c := setupCall(t, "udp", nil)
	c.phone.Send(c.phone.Register(edgetest.Reg{User: "bob", CSeq: 2, Expires: "0"}))
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("unregister got %d", res.StatusCode)
	}
	c.core.Send(c.request("MESSAGE", c.contact(), c.path, "stale-1", 1, ""))
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 430 {
		t.Fatalf("stale token got %d, want 430", res.StatusCode)
	}
}

// Two different flow tokens stacked in one route is a forgery.
func TestTwoTokensInRouteAreForbidden(t *testing.T) {
	c := setupCall(t, "udp", nil)
	other := edgetest.Dial(t, "udp", c.e.UDP)
	other.Send(other.Register(edgetest.Reg{User: "eve"}))
	other.MustRecvResponse(wait)
	evePath := c.reg.Bindings("sip:eve@example.com")[0].Path[0]
	c.core.Send(c.request("MESSAGE", c.contact(), c.path+", "+evePath, "two-1", 1, ""))
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("stacked tokens got %d, want 403", res.StatusCode)
	}
}

// Only the core (the upstreams, or core.trusted) may send requests to
// the core side: anyone else reaching it gets 403 and no phone is rung.
func TestCoreSideOnlyFromTheCore(t *testing.T) {
	c := setupCall(t, "udp", nil)
	stranger := edgetest.DialFrom(t, "udp", src(0, 0, 77), c.e.CoreAddr())
	c.core = stranger
	c.core.Send(c.request("MESSAGE", c.contact(), c.path, "stranger-1", 1, ""))
	if res := stranger.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("a stranger on the core side got %d, want 403", res.StatusCode)
	}
}

// A CANCEL as early as RFC 3261 §9.1 allows (right after the first
// provisional response, the edge's own 100 Trying) reaches the callee:
// the edge hooks CANCEL before it forwards the INVITE, so none slips
// between the two. (Earlier than that the UAC breaks §9.1, and sipgo,
// which handles each datagram in its own goroutine, may see the CANCEL
// first and answer 481.)
func TestEarliestCancelReachesTheCallee(t *testing.T) {
	c := setupCall(t, "udp", nil)
	for i := range 5 {
		id := fmt.Sprintf("early-%d", i)
		c.core.Send(c.request("INVITE", c.contact(), c.path, id, 1, ""))
		res := c.core.MustRecvResponse(wait)
		for res.CallID().Value() != id { // the last call's 487, retransmitted: the core never ACKs here
			res = c.core.MustRecvResponse(wait)
		}
		if res.StatusCode != 100 {
			t.Fatalf("%s: first answer %d, want 100", id, res.StatusCode)
		}
		c.core.Send(strings.Replace(c.request("CANCEL", c.contact(), c.path, id, 1, ""), "-cancel;rport", "-invite;rport", 1))
		inv := c.phone.MustRecvRequest("INVITE", wait)
		cr := c.phone.MustRecvRequest("CANCEL", wait)
		c.phone.Respond(cr, 200, "OK", "x")
		c.phone.Respond(inv, 487, "Request Terminated", "x")
		c.phone.MustRecvRequest("ACK", wait)
		got := map[string]int{}
		for len(got) < 2 {
			if res := c.core.MustRecvResponse(wait); res.CallID().Value() == id {
				got[string(res.CSeq().MethodName)] = res.StatusCode
			}
		}
		if got["CANCEL"] != 200 || got["INVITE"] != 487 {
			t.Fatalf("%s: core got %v", id, got)
		}
	}
}

// A stream flow that dies while a request waits on it fails that request
// at once: 430 to the core, not a 408 minutes later.
func TestClosedConnectionFailsThePendingRequest(t *testing.T) {
	c := setupCall(t, "tcp", nil)
	c.core.Send(c.request("INVITE", c.contact(), c.path, "call-dies", 1, ""))
	c.phone.MustRecvRequest("INVITE", wait)
	start := time.Now()
	c.phone.Close()
	for {
		res := c.core.MustRecvResponse(wait)
		if res.StatusCode == 100 {
			continue
		}
		if res.StatusCode != 430 {
			t.Fatalf("core got %d, want 430", res.StatusCode)
		}
		t.Logf("430 %v after the close", time.Since(start).Round(time.Millisecond))
		return
	}
}
