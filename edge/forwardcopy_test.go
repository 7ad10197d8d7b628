package edge

import (
	"net/netip"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/upstream/hop"
)

// What the registrar and relay do to a forwarded REGISTER must leave the
// request as received untouched: sipgo's server transaction (streams)
// answers from it, and the edge's own replies are built from it.
func TestForwardCopyLeavesTheRequest(t *testing.T) {
	const raw = "REGISTER sip:example.com SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKphone;rport\r\n" +
		"Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKinner\r\n" +
		"Max-Forwards: 70\r\n" +
		"Route: <sip:evil.example.net;lr>\r\n" +
		"Path: <sip:evil.example.net;lr>\r\n" +
		"From: <sip:alice@example.com>;tag=a\r\n" +
		"To: <sip:alice@example.com>\r\n" +
		"Call-ID: c1\r\n" +
		"CSeq: 7 REGISTER\r\n" +
		"Contact: <sip:alice@10.0.0.2:5060>;expires=7200, <sip:alice@10.0.0.2:5062>\r\n" +
		"Supported: outbound\r\n" +
		"Content-Length: 4\r\n\r\nbody"
	parse := func() *sip.Request {
		m, err := sip.ParseMessage([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		return m.(*sip.Request)
	}
	req, pristine := parse(), parse().String()
	fwd := forwardCopy(req)
	// All the forwarding path does to it.
	stampVia(fwd.Via(), netip.MustParseAddrPort("192.0.2.1:40000"))
	if err := decMaxForwards(fwd); err != nil {
		t.Fatal(err)
	}
	dropHeaders(fwd, "Path")
	dropHeaders(fwd, "Route")
	for _, c := range contactsOf(fwd) {
		c.Params.Add("expires", "3600")
		c.Address.Host = "core.example.net"
	}
	fwd.AppendHeaderAfter(sip.NewHeader("Path", "<sip:tok@127.0.0.1:5070;lr;ob>"), "Via")
	fwd.AppendHeaderAfter(sip.NewHeader("Supported", "path"), "Supported")
	hop.Hop{Transport: "UDP"}.Prepare(fwd, "z9hG4bKedge")
	if got := req.String(); got != pristine {
		t.Fatalf("the request changed:\n%s\nwas\n%s", got, pristine)
	}
	if fwd.String() == pristine || len(fwd.GetHeaders("Via")) != 3 || fwd.GetHeader("Route") != nil {
		t.Fatalf("the copy was not forwarded as changed:\n%s", fwd)
	}
	if string(fwd.Body()) != "body" || fwd.CSeq().SeqNo != 7 {
		t.Fatalf("the copy lost what it shares:\n%s", fwd)
	}
}
