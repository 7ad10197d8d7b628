package edge_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// These tests are the attacks of the border review, run from hosts with
// and without an account; each must now fail.

// inDialog builds an in-dialog request from a phone with the given route.
func inDialog(p *edgetest.Phone, method, callID, fromTag, toTag, route string, cseq int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s sip:alice@198.51.100.77:5060 SIP/2.0\n", method)
	fmt.Fprintf(&b, "Via: SIP/2.0/%s %s;branch=z9hG4bK-%s-%d-%s;rport\n", p.Transport(), p.Local, callID, cseq, strings.ToLower(method))
	if route != "" {
		fmt.Fprintf(&b, "Route: %s\n", route)
	}
	b.WriteString("Max-Forwards: 70\n")
	fmt.Fprintf(&b, "From: <sip:bob@example.com>;tag=%s\nTo: <sip:alice@example.com>;tag=%s\n", fromTag, toTag)
	fmt.Fprintf(&b, "Call-ID: %s\nCSeq: %d %s\nContent-Length: 0\n\n", callID, cseq, method)
	return b.String()
}

// outOfDialog builds a MESSAGE from a phone, with an optional Route.
func outOfDialog(p *edgetest.Phone, callID, route string) string {
	var b strings.Builder
	b.WriteString("MESSAGE sip:alice@example.com SIP/2.0\n")
	fmt.Fprintf(&b, "Via: SIP/2.0/%s %s;branch=z9hG4bK-%s;rport\n", p.Transport(), p.Local, callID)
	if route != "" {
		fmt.Fprintf(&b, "Route: %s\n", route)
	}
	fmt.Fprintf(&b, "Max-Forwards: 70\nFrom: <sip:bob@example.com>;tag=m1\nTo: <sip:alice@example.com>\n")
	fmt.Fprintf(&b, "Call-ID: %s\nCSeq: 1 MESSAGE\nContent-Length: 0\n\n", callID)
	return b.String()
}

// coreGot reports whether the core received a request with callID.
func coreGot(c *callSetup, callID string) bool {
	for _, r := range c.reg.Requests() {
		if r.CallID() != nil && r.CallID().Value() == callID {
			return true
		}
	}
	return false
}

// established sets up a call from the core to bob that bob answered, with
// the core record-routing itself, and returns bob's route set (callee: the
// Record-Route in order) and the dialog's tags.
func established(t *testing.T, c *callSetup, callID string) (route string) {
	t.Helper()
	coreRR := fmt.Sprintf("<sip:%s;lr>", c.reg.Addr())
	inv := c.request("INVITE", c.contact(), c.path, callID, 1, "")
	inv = strings.Replace(inv, "Max-Forwards: 70\n", "Max-Forwards: 70\nRecord-Route: "+coreRR+"\n", 1)
	c.core.Send(inv)
	got := c.phone.MustRecvRequest("INVITE", wait)
	c.phone.Respond(got, 200, "OK", "callee")
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("core got %d", res.StatusCode)
	}
	var rs []string
	for _, h := range got.GetHeaders("Record-Route") {
		rs = append(rs, h.Value())
	}
	return strings.Join(rs, ", ")
}

// An unregistered host cannot use the edge to relay through the core:
// in-dialog requests with a Route of its choosing, out-of-dialog requests
// and ACKs are all refused before the core sees them.
func TestNoRelayForHostsWithoutAccount(t *testing.T) {
	c := setupCall(t, "udp", nil)
	mallory := edgetest.DialFrom(t, "udp", netip.MustParseAddr("127.0.0.2"), c.e.UDP)
	for i, route := range []string{"<sip:203.0.113.9:5060;lr>", fmt.Sprintf("<sip:%s;lr>, <sip:203.0.113.9;lr>", c.e.UDP), ""} {
		cid := fmt.Sprintf("relay-%d", i)
		mallory.Send(inDialog(mallory, "BYE", cid, "a", "b", route, 1))
		if res := mallory.MustRecvResponse(wait); res.StatusCode != 403 {
			t.Fatalf("in-dialog BYE with route %q got %d, want 403", route, res.StatusCode)
		}
		if coreGot(c, cid) {
			t.Fatalf("route %q: the core got the request", route)
		}
	}
	mallory.Send(outOfDialog(mallory, "relay-ood", "<sip:203.0.113.9;lr>"))
	if res := mallory.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("out-of-dialog MESSAGE from an unregistered host got %d, want 403", res.StatusCode)
	}
	// An ACK is never answered; it must not reach the core either. A
	// request sent after it on the same socket is answered first only if
	// the ACK was dropped before it (UDP keeps order on loopback).
	mallory.Send(inDialog(mallory, "ACK", "relay-ack", "a", "b", "<sip:203.0.113.9;lr>", 1))
	mallory.Send(outOfDialog(mallory, "relay-after-ack", ""))
	mallory.MustRecvResponse(wait)
	if coreGot(c, "relay-ack") || coreGot(c, "relay-ood") {
		t.Fatal("the core got an ACK or MESSAGE from a host without an account")
	}
	// The registered phone's own out-of-dialog request goes through.
	c.phone.Send(outOfDialog(c.phone, "bob-msg", ""))
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 200 || !coreGot(c, "bob-msg") {
		t.Fatalf("registered phone's MESSAGE got %d", res.StatusCode)
	}
}

// A trusted peer (a trunk) may send out of dialog without registering.
func TestTrustedPeerNeedsNoBinding(t *testing.T) {
	c := setupCall(t, "udp", func(cfg *edgetest.Config) { cfg.Access.Trusted = []string{"127.0.0.3/32"} })
	trunk := edgetest.DialFrom(t, "udp", netip.MustParseAddr("127.0.0.3"), c.e.UDP)
	trunk.Send(outOfDialog(trunk, "trunk-msg", ""))
	if res := trunk.MustRecvResponse(wait); res.StatusCode != 200 || !coreGot(c, "trunk-msg") {
		t.Fatalf("trusted peer's MESSAGE got %d", res.StatusCode)
	}
}

// A flow token seen in a call's Record-Route, replayed by another host,
// reaches nobody: the token names a flow the request did not come on.
func TestReplayedTokenIsRefused(t *testing.T) {
	c := setupCall(t, "udp", nil)
	route := established(t, c, "call-replay")
	mallory := edgetest.DialFrom(t, "udp", netip.MustParseAddr("127.0.0.2"), c.e.UDP)
	mallory.Send(inDialog(mallory, "MESSAGE", "call-replay", "callee", "caller", route, 2))
	if res := mallory.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("replayed token got %d, want 403", res.StatusCode)
	}
	if n := countMethod(c, "MESSAGE"); n != 0 {
		t.Fatalf("the core got %d MESSAGEs", n)
	}
	// The real callee, with the route set its dialog established, is let
	// through; the BYE ends the dialog, so nothing more passes after it.
	c.phone.Send(inDialog(c.phone, "BYE", "call-replay", "callee", "caller", route, 2))
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("callee's BYE got %d", res.StatusCode)
	}
	c.phone.Send(inDialog(c.phone, "INFO", "call-replay", "callee", "caller", route, 3))
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("INFO after BYE got %d, want 403", res.StatusCode)
	}
}

// A registered phone cannot reach another address by writing a route set
// of its own, nor use a dialog it is not part of; with topology hiding
// off (the phone sees the whole route set) as with it on.
func TestPhoneCannotWriteItsOwnRouteSet(t *testing.T) {
	for _, hide := range []bool{false, true} {
		t.Run(fmt.Sprintf("hide=%v", hide), func(t *testing.T) {
			phoneCannotWriteItsOwnRouteSet(t, hide)
		})
	}
}

func phoneCannotWriteItsOwnRouteSet(t *testing.T, hide bool) {
	c := setupCall(t, "udp", func(cfg *edgetest.Config) { cfg.Access.HideTopology = hide })
	route := established(t, c, "call-own-route")
	coreRR := fmt.Sprintf("<sip:%s;lr>", c.reg.Addr())
	if hide == strings.Contains(route, coreRR) {
		t.Fatalf("hide=%v, yet the phone's route set is %s", hide, route)
	}
	for name, r := range map[string]string{
		"extra hop":       route + ", <sip:203.0.113.9:5060;lr>",
		"no edge route":   coreRR,
		"another address": "<sip:203.0.113.9;lr>",
	} {
		c.phone.Send(inDialog(c.phone, "INFO", "call-own-route", "callee", "caller", r, 2))
		if res := c.phone.MustRecvResponse(wait); res.StatusCode != 403 {
			t.Fatalf("%s: got %d, want 403", name, res.StatusCode)
		}
	}
	c.phone.Send(inDialog(c.phone, "INFO", "no-such-call", "callee", "caller", route, 2))
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("unknown dialog: got %d, want 403", res.StatusCode)
	}
	if n := countMethod(c, "INFO"); n != 0 {
		t.Fatalf("the core got %d INFOs", n)
	}
	c.phone.Send(inDialog(c.phone, "INFO", "call-own-route", "callee", "caller", route, 3))
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 200 || countMethod(c, "INFO") != 1 {
		t.Fatalf("INFO on the dialog's own route set got %d", res.StatusCode)
	}
	// Either way the core gets the route set the dialog established.
	for _, r := range c.reg.Requests() {
		if r.Method == "INFO" && (r.Route() == nil || r.Route().Address.String() != strings.Trim(coreRR, "<>")) {
			t.Fatalf("core got INFO with Route %v, want %s", r.GetHeaders("Route"), coreRR)
		}
	}
}

// Phones see only the edge: no core Via, no Record-Route but the edge's
// access-side entry, none of the core's software names; the core gets
// its own Vias and Record-Routes back in the phone's answers.
func TestTopologyHiding(t *testing.T) {
	c := setupCall(t, "udp", func(cfg *edgetest.Config) { cfg.Access.Server = "sipedge" })
	coreRR := fmt.Sprintf("<sip:%s;lr>", c.reg.Addr())
	inv := c.request("INVITE", c.contact(), c.path, "call-hide", 1, "")
	inv = strings.Replace(inv, "Max-Forwards: 70\n", "Max-Forwards: 70\nRecord-Route: "+coreRR+"\nVia: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK-inner\nUser-Agent: kamailio (5.6.3 (x86_64/linux))\n", 1)
	c.core.Send(inv)
	got := c.phone.MustRecvRequest("INVITE", wait)
	raw := got.String()
	// (The Contact is the far end's, as the caller sent it: a phone's own,
	// or a B2BUA core's, which the edge does not rewrite.)
	raw = strings.Replace(raw, got.Contact().Value(), "", 1)
	for _, leak := range []string{c.reg.Addr().String(), c.e.CoreAddr().String(), "10.9.9.9", c.core.Local.String(), "kamailio"} {
		if strings.Contains(raw, leak) {
			t.Errorf("the phone saw %q:\n%s", leak, raw)
		}
	}
	if n := len(got.GetHeaders("Via")); n != 1 {
		t.Errorf("phone got %d Vias, want the edge's alone", n)
	}
	if n := len(got.GetHeaders("Record-Route")); n != 1 {
		t.Errorf("phone got %d Record-Routes, want the edge's access side alone", n)
	}
	c.phone.Respond(got, 200, "OK", "callee")
	res := c.core.MustRecvResponse(wait)
	if res.StatusCode != 200 {
		t.Fatalf("core got %d", res.StatusCode)
	}
	if vias := res.GetHeaders("Via"); len(vias) != 2 || !strings.Contains(vias[1].Value(), "10.9.9.9") {
		t.Errorf("core got Vias %v, want its own two back", vias)
	}
	rrs := res.GetHeaders("Record-Route")
	if len(rrs) != 3 || rrs[2].Value() != coreRR {
		t.Errorf("core got Record-Routes %v, want the edge's two and its own", rrs)
	}
	// The core's answers to the phone's requests lose their Server too.
	c.phone.Send(outOfDialog(c.phone, "hide-msg", ""))
	if res := c.phone.MustRecvResponse(wait); res.GetHeader("Server") == nil || res.GetHeader("Server").Value() != "sipedge" {
		t.Errorf("phone got Server %v, want sipedge", res.GetHeader("Server"))
	}
}

func countMethod(c *callSetup, m sip.RequestMethod) int {
	n := 0
	for _, r := range c.reg.Requests() {
		if r.Method == m {
			n++
		}
	}
	return n
}

// An INVITE from an address that may be spoofed gets one answer, not the
// final response retransmitted until an ACK that never comes: the edge
// cannot be used to reflect traffic at a victim.
func TestNoReflectionToUnprovenSources(t *testing.T) {
	c := setupCall(t, "udp", nil)
	victim := edgetest.DialFrom(t, "udp", netip.MustParseAddr("127.0.0.2"), c.e.UDP)
	inv := strings.Replace(outOfDialog(victim, "reflect", ""), "MESSAGE", "INVITE", -1)
	victim.Send(inv)
	res := victim.MustRecvResponse(wait)
	if res.StatusCode != 403 {
		t.Fatalf("got %d, want 403", res.StatusCode)
	}
	if len(res.String()) > 3*len(inv) {
		t.Fatalf("answer of %d bytes to a request of %d", len(res.String()), len(inv))
	}
	// sipgo would retransmit the 403 at 0.5, 1.5, 3.5 s (Timer G) waiting
	// for the ACK; nothing may come within the first two.
	if raw := victim.Silent(2 * time.Second); raw != nil {
		t.Fatalf("a second answer arrived: %q", raw)
	}
	// The core side, to a stranger: the same.
	stranger := edgetest.DialFrom(t, "udp", netip.MustParseAddr("127.0.0.9"), c.e.CoreAddr())
	inv = strings.Replace(outOfDialog(stranger, "reflect-core", ""), "MESSAGE", "INVITE", -1)
	stranger.Send(inv)
	if res := stranger.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("core side got %d, want 403", res.StatusCode)
	}
	if raw := stranger.Silent(2 * time.Second); raw != nil {
		t.Fatalf("a second answer arrived on the core side: %q", raw)
	}
}

// The core's software names do not reach a registering phone either.
func TestRegisterAnswerHidesTheCore(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{Server: "kamailio (5.6.3 (x86_64/linux))"})
	e := edgetest.Start(t, core.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "hidden"}))
	res := phone.MustRecvResponse(wait)
	if res.StatusCode != 200 {
		t.Fatalf("got %d", res.StatusCode)
	}
	for _, h := range []string{"Server", "User-Agent", "Warning"} {
		if v := res.GetHeader(h); v != nil {
			t.Errorf("phone got %s: %s", h, v.Value())
		}
	}
}

// A call the callee rings and then declines leaves no dialog behind: the
// early dialog of its 180 ends with the 486, and nothing passes on it.
func TestDeclinedCallLeavesNoDialog(t *testing.T) {
	c := setupCall(t, "udp", nil)
	c.core.Send(c.request("INVITE", c.contact(), c.path, "call-declined", 1, ""))
	inv := c.phone.MustRecvRequest("INVITE", wait)
	c.phone.Respond(inv, 180, "Ringing", "callee")
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 180 { // relayed: the early dialog is known
		t.Fatalf("core got %d", res.StatusCode)
	}
	var route []string
	for _, h := range inv.GetHeaders("Record-Route") {
		route = append(route, h.Value())
	}
	c.phone.Send(inDialog(c.phone, "INFO", "call-declined", "callee", "caller", strings.Join(route, ", "), 2))
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("INFO in the early dialog got %d", res.StatusCode)
	}
	c.phone.Respond(inv, 486, "Busy Here", "callee")
	c.phone.MustRecvRequest("ACK", wait) // the edge's, for the 486: the transaction is over
	// The 486 reaches the core after the edge ended the early dialog.
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 486 {
		t.Fatalf("core got %d, want the 486", res.StatusCode)
	}
	c.phone.Send(inDialog(c.phone, "INFO", "call-declined", "callee", "caller", strings.Join(route, ", "), 3))
	if res := c.phone.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("INFO after the 486 got %d, want 403", res.StatusCode)
	}
}
