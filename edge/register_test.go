package edge_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

const wait = 5 * time.Second

func nextRequest(t *testing.T, core *upstreamtest.Registrar) *sip.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	req, err := core.NextRequest(ctx)
	if err != nil {
		t.Fatalf("core got nothing: %v", err)
	}
	return req
}

// pathToken extracts and verifies the flow token of the edge's Path.
func pathToken(t *testing.T, e *edgetest.Edge, req *sip.Request) nat.FlowKey {
	t.Helper()
	h := req.GetHeader("Path")
	if h == nil {
		t.Fatalf("core got no Path:\n%s", req)
	}
	v := h.Value()
	if !strings.HasPrefix(v, "<sip:") || !strings.Contains(v, "@"+e.CoreAddr().String()) || !strings.Contains(v, ";lr") || !strings.Contains(v, ";ob") {
		t.Fatalf("Path %q does not point at the edge's core side %s with lr and ob", v, e.CoreAddr())
	}
	tok := strings.TrimPrefix(v[:strings.Index(v, "@")], "<sip:")
	k, err := e.Signer.Decode(tok)
	if err != nil {
		t.Fatalf("Path token %q: %v", tok, err)
	}
	return k.Flow
}

func TestRegisterPathMode(t *testing.T) {
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			core := upstreamtest.Start(t, upstreamtest.Options{RequirePath: true})
			e := edgetest.Start(t, core.URI(network), nil)
			access := e.UDP
			tp := nat.UDP
			if network == "tcp" {
				access, tp = e.TCP, nat.TCP
			}
			phone := edgetest.Dial(t, network, access)
			phone.Send(phone.Register(edgetest.Reg{User: "alice"}))

			got := nextRequest(t, core)
			flow := pathToken(t, e, got)
			want := nat.FlowKey{Transport: tp, Local: access, Remote: phone.Local}
			if flow != want {
				t.Errorf("token flow = %v, want %v", flow, want)
			}
			vias := got.GetHeaders("Via")
			if len(vias) != 2 {
				t.Fatalf("core got %d Vias, want 2", len(vias))
			}
			top := vias[0].(*sip.ViaHeader)
			if top.Host != e.CoreAddr().Addr().String() || top.Port != int(e.CoreAddr().Port()) {
				t.Errorf("top Via %v is not the edge's core side %v", top, e.CoreAddr())
			}
			client := vias[1].(*sip.ViaHeader)
			if rcv, _ := client.Params.Get("received"); rcv != "127.0.0.1" {
				t.Errorf("client Via received = %q", rcv)
			}
			if rp, _ := client.Params.Get("rport"); rp != itoa(phone.Local.Port()) {
				t.Errorf("client Via rport = %q, want %d", rp, phone.Local.Port())
			}
			if mf := got.MaxForwards(); mf == nil || mf.Val() != 69 {
				t.Errorf("Max-Forwards = %v, want 69", mf)
			}

			res := phone.MustRecvResponse(wait)
			if res.StatusCode != 200 {
				t.Fatalf("phone got %d %s", res.StatusCode, res.Reason)
			}
			if res.GetHeader("Path") != nil {
				t.Errorf("edge's core-side Path leaked to the phone: %s", res.GetHeader("Path").Value())
			}
			if n := len(res.GetHeaders("Via")); n != 1 {
				t.Errorf("phone got %d Vias, want its own only", n)
			}
			bs := e.Bindings().Lookup("sip:alice@example.com")
			if len(bs) != 1 || bs[0].Flow != want {
				t.Fatalf("bindings = %+v, want one on %v", bs, want)
			}
			if d := time.Until(bs[0].Expires); d < 3500*time.Second || d > 3600*time.Second {
				t.Errorf("binding expires in %v, want ~1h", d)
			}
			if cb := core.Bindings("sip:alice@example.com"); len(cb) != 1 || len(cb[0].Path) != 1 { // the core kept it too
				t.Errorf("core bindings = %+v", cb)
			}
		})
	}
}

func itoa(p uint16) string {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), p).String()[len("0.0.0.0:"):]
}

func TestRegisterDigestPassesThrough(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{Users: map[string]string{"alice": "s3cret"}})
	e := edgetest.Start(t, core.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", e.UDP)

	phone.Send(phone.Register(edgetest.Reg{User: "alice", CSeq: 1}))
	res := phone.MustRecvResponse(wait)
	if res.StatusCode != 401 {
		t.Fatalf("got %d, want the core's 401", res.StatusCode)
	}
	wwwAuth := res.GetHeader("WWW-Authenticate")
	if wwwAuth == nil {
		t.Fatal("401 lost its WWW-Authenticate")
	}
	chal, err := digest.ParseChallenge(wwwAuth.Value())
	if err != nil {
		t.Fatal(err)
	}
	cred, err := digest.Digest(chal, digest.Options{Method: "REGISTER", URI: "sip:example.com", Username: "alice", Password: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	phone.Send(phone.Register(edgetest.Reg{User: "alice", CSeq: 2, Extra: "Authorization: " + cred.String()}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("authenticated REGISTER got %d %s", res.StatusCode, res.Reason)
	}
	if n := len(e.Bindings().Lookup("sip:alice@example.com")); n != 1 {
		t.Fatalf("%d bindings after auth, want 1", n)
	}

	// Wrong password: the core's 403 reaches the phone and nothing is bound.
	phone2 := edgetest.Dial(t, "udp", e.UDP)
	cred.Response = strings.Repeat("0", 32)
	phone2.Send(phone2.Register(edgetest.Reg{User: "alice", CSeq: 3, Extra: "Authorization: " + cred.String()}))
	if res := phone2.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("bad credentials got %d, want 403", res.StatusCode)
	}
	if bs := e.Bindings().Lookup("sip:alice@example.com"); len(bs) != 1 || bs[0].Flow.Remote != phone.Local {
		t.Fatalf("a failed REGISTER changed the binding: %+v", bs)
	}
}

func TestRegisterRewriteMode(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) { c.Core.Mode = upstream.ModeRewrite })
	phone := edgetest.Dial(t, "udp", e.UDP)
	own := "<sip:bob@" + phone.Local.String() + ";transport=udp>"
	phone.Send(phone.Register(edgetest.Reg{User: "bob", Contact: own}))

	got := nextRequest(t, core)
	if got.GetHeader("Path") != nil {
		t.Error("rewrite mode added a Path")
	}
	c := got.Contact()
	if c.Address.Host != e.CoreAddr().Addr().String() || c.Address.Port != int(e.CoreAddr().Port()) {
		t.Fatalf("core saw Contact %s, want the edge's core side %s", c.Address.String(), e.CoreAddr())
	}
	k, err := e.Signer.Decode(c.Address.User)
	if err != nil || k.Flow.Remote != phone.Local {
		t.Fatalf("rewritten Contact user %q: flow %v, err %v", c.Address.User, k, err)
	}
	res := phone.MustRecvResponse(wait)
	if res.StatusCode != 200 {
		t.Fatalf("got %d", res.StatusCode)
	}
	rc := res.Contact()
	if rc == nil || rc.Address.Host != "127.0.0.1" || rc.Address.Port != int(phone.Local.Port()) || rc.Address.User != "bob" {
		t.Fatalf("phone got Contact %v, want its own %s", rc, own)
	}
	bs := e.Bindings().Lookup("sip:bob@example.com")
	if len(bs) != 1 || bs[0].CoreContact != c.Address.String() {
		t.Fatalf("bindings %+v", bs)
	}
}

func TestUnregister(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", e.UDP)
	aor := "sip:carol@example.com"
	register := func(r edgetest.Reg) {
		t.Helper()
		r.User = "carol"
		phone.Send(phone.Register(r))
		if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("got %d %s", res.StatusCode, res.Reason)
		}
	}
	c1 := "<sip:carol@" + phone.Local.String() + ">"
	c2 := "<sip:carol2@" + phone.Local.String() + ">"
	register(edgetest.Reg{CSeq: 1, Contact: c1})
	register(edgetest.Reg{CSeq: 2, Contact: c2})
	if n := len(e.Bindings().Lookup(aor)); n != 2 {
		t.Fatalf("%d bindings, want 2", n)
	}
	register(edgetest.Reg{CSeq: 3, Contact: c1, Expires: "0"})
	if bs := e.Bindings().Lookup(aor); len(bs) != 1 || !strings.Contains(bs[0].Contact, "carol2@") {
		t.Fatalf("after Expires: 0, bindings = %+v", bs)
	}
	register(edgetest.Reg{CSeq: 4, Contact: "-"}) // a query changes nothing
	if n := len(e.Bindings().Lookup(aor)); n != 1 {
		t.Fatalf("query REGISTER changed bindings: %d", n)
	}
	register(edgetest.Reg{CSeq: 5, Contact: "*", Expires: "0"})
	if n := len(e.Bindings().Lookup(aor)); n != 0 {
		t.Fatalf("Contact: * left %d bindings", n)
	}
}

func TestRegisterRejects(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		c.Registration.Domains = []string{"example.com"}
		c.Registration.MaxContacts = 2
	})
	cases := []struct {
		name   string
		reg    edgetest.Reg
		edit   func(string) string
		code   int
		header string // a header the answer must carry
	}{
		{name: "foreign domain", reg: edgetest.Reg{Domain: "evil.test"}, code: 403},
		{name: "too brief", reg: edgetest.Reg{Expires: "10"}, code: 423, header: "Min-Expires: 60"},
		{name: "too brief contact param", reg: edgetest.Reg{Contact: "<sip:u@127.0.0.1:5999>;expires=5"}, code: 423},
		{name: "too many contacts", reg: edgetest.Reg{Contact: "<sip:a@127.0.0.1:1>, <sip:b@127.0.0.1:2>, <sip:c@127.0.0.1:3>"}, code: 403},
		{name: "max-forwards zero", edit: func(s string) string { return strings.Replace(s, "Max-Forwards: 70", "Max-Forwards: 0", 1) }, code: 483},
		{name: "cseq method mismatch", edit: func(s string) string { return strings.Replace(s, "1 REGISTER", "1 INVITE", 1) }, code: 400},
		{name: "star with expires", reg: edgetest.Reg{Contact: "*"}, code: 400},
		{name: "bad expires", reg: edgetest.Reg{Expires: "soon"}, code: 400},
		{name: "bad uri scheme", edit: func(s string) string { return strings.Replace(s, "REGISTER sip:", "REGISTER tel:", 1) }, code: 416},
		{name: "version", edit: func(s string) string { return strings.Replace(s, "SIP/2.0\r", "SIP/3.0\r", 1) }, code: 505},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			phone := edgetest.Dial(t, "udp", e.UDP)
			tc.reg.User = "u"
			tc.reg.CSeq = 1
			tc.reg.CallID = "reject-" + itoa(uint16(i))
			msg := strings.ReplaceAll(phone.Register(tc.reg), "\n", "\r\n")
			if tc.edit != nil {
				msg = tc.edit(msg)
			}
			phone.Send(msg)
			res := phone.MustRecvResponse(wait)
			if res.StatusCode != tc.code {
				t.Fatalf("got %d %s, want %d", res.StatusCode, res.Reason, tc.code)
			}
			if res.SipVersion != "SIP/2.0" {
				t.Errorf("answered with %q, want a SIP/2.0 status line", res.SipVersion)
			}
			if tc.header != "" && !strings.Contains(res.String(), tc.header) {
				t.Errorf("answer lacks %q:\n%s", tc.header, res)
			}
		})
	}
	if n := len(core.Requests()); n != 0 {
		t.Errorf("core got %d rejected requests", n)
	}
}

func TestMaxExpiresIsLowered(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "dan", Expires: "86400"}))
	got := nextRequest(t, core)
	if v, _ := got.Contact().Params.Get("expires"); v != "3600" {
		t.Fatalf("core saw contact expires %q, want 3600 (max_expires)", v)
	}
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("got %d", res.StatusCode)
	}
}

func TestSymmetricResponseWithoutRport(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", e.UDP)
	// The Via claims port 5999 and asks for no rport, as a phone behind a
	// NAT would; the answer must still reach the real source port.
	msg := phone.Register(edgetest.Reg{User: "erin"})
	msg = strings.Replace(msg, phone.Local.String()+";branch", "127.0.0.1:5999;branch", 1)
	msg = strings.Replace(msg, ";rport\n", "\n", 1)
	phone.Send(msg)
	res := phone.MustRecvResponse(wait)
	if res.StatusCode != 200 {
		t.Fatalf("got %d", res.StatusCode)
	}
	via := res.Via()
	if rp, _ := via.Params.Get("rport"); rp != itoa(phone.Local.Port()) {
		t.Errorf("response Via rport = %q, want %d", rp, phone.Local.Port())
	}
	if rcv, _ := via.Params.Get("received"); rcv != "127.0.0.1" {
		t.Errorf("response Via received = %q", rcv)
	}
}

// A core that never answers costs the phone one per-try timeout, then
// 503 with Retry-After (not 408 after the whole transaction's time).
func TestCoreSilentGives503(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{Silent: true})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) { c.Core.Timeout = time.Second })
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "fay"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("got %d (Retry-After %v), want 503 with Retry-After", res.StatusCode, res.GetHeader("Retry-After"))
	}
	if n := len(e.Bindings().All()); n != 0 {
		t.Fatalf("%d bindings without a core answer", n)
	}
}

func TestCoreRefusingGives503(t *testing.T) {
	// Nothing listens on this TCP port: the connect fails at once.
	e := edgetest.Start(t, "sip:127.0.0.1:1;transport=tcp", nil)
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "gil"}))
	res := phone.MustRecvResponse(wait)
	if res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("got %d %s (Retry-After %v), want 503 with Retry-After", res.StatusCode, res.Reason, res.GetHeader("Retry-After"))
	}
}

func TestBindingRecordsNATEvidence(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", e.UDP)
	// What a phone behind a home router sends: its private address.
	msg := phone.Register(edgetest.Reg{User: "nat", Contact: "<sip:nat@192.168.1.20:5060>"})
	msg = strings.Replace(msg, phone.Local.String()+";branch", "192.168.1.20:5060;branch", 1)
	phone.Send(msg)
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("got %d", res.StatusCode)
	}
	bs := e.Bindings().Lookup("sip:nat@example.com")
	want := nat.ViaAddrDiffers | nat.ViaPortDiffers | nat.PrivateContact
	if len(bs) != 1 || bs[0].NAT != want || !bs[0].NAT.BehindNAT() {
		t.Fatalf("bindings %+v, want NAT evidence %v", bs, want)
	}
}

// A phone cannot slip a Path (say, another phone's flow token) or a Route
// past the edge: the core sees the edge's own Path only.
func TestPhonePathAndRouteAreDropped(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	victim := edgetest.Dial(t, "udp", e.UDP)
	victim.Send(victim.Register(edgetest.Reg{User: "victim"}))
	victim.MustRecvResponse(wait)
	victimPath := core.Bindings("sip:victim@example.com")[0].Path[0]

	mallory := edgetest.Dial(t, "udp", e.UDP)
	mallory.Send(mallory.Register(edgetest.Reg{User: "mallory",
		Extra: "Path: " + victimPath + "\nRoute: <sip:192.0.2.66;lr>"}))
	if res := mallory.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("got %d", res.StatusCode)
	}
	got := core.Requests()[1]
	if paths := got.GetHeaders("Path"); len(paths) != 1 || strings.Contains(paths[0].Value(), strings.TrimPrefix(strings.Split(victimPath, "@")[0], "<sip:")) {
		t.Fatalf("core got Paths %v", paths)
	}
	if got.GetHeader("Route") != nil {
		t.Fatalf("core got the phone's Route %s", got.GetHeader("Route").Value())
	}
}

// In rewrite mode two phones of one AOR that send the same private
// Contact (two desks on 192.168.1.10 behind different NATs) stay two
// bindings, and each gets its own calls.
func TestRewriteSameContactTwoPhones(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) { c.Core.Mode = upstream.ModeRewrite })
	var phones []*edgetest.Phone
	for i := range 2 {
		p := edgetest.DialFrom(t, "udp", src(0, 2, byte(i+1)), e.UDP)
		p.Send(p.Register(edgetest.Reg{User: "desk", Contact: "<sip:desk@192.168.1.10:5060>", CallID: "desk-" + strconv.Itoa(i)}))
		if res := p.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("got %d", res.StatusCode)
		}
		phones = append(phones, p)
	}
	bs := e.Bindings().Lookup("sip:desk@example.com")
	if len(bs) != 2 || len(core.Bindings("sip:desk@example.com")) != 2 {
		t.Fatalf("edge has %d bindings, core %d; want 2 and 2", len(bs), len(core.Bindings("sip:desk@example.com")))
	}
	coreSock := edgetest.Dial(t, "udp", e.CoreAddr())
	for _, b := range bs {
		coreSock.Send("MESSAGE " + b.CoreContact + " SIP/2.0\nVia: SIP/2.0/UDP " + coreSock.Local.String() + ";branch=z9hG4bK-" + b.Flow.Remote.Addr().String() + "\n" +
			"Max-Forwards: 70\nFrom: <sip:core@example.com>;tag=c\nTo: <sip:desk@example.com>\nCall-ID: desk-msg-" + b.Flow.Remote.Addr().String() + "\nCSeq: 1 MESSAGE\nContent-Length: 0\n\n")
		var p *edgetest.Phone
		for _, ph := range phones {
			if ph.Local == b.Flow.Remote {
				p = ph
			}
		}
		msg := p.MustRecvRequest("MESSAGE", wait)
		p.Respond(msg, 200, "OK", "d")
		if res := coreSock.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("MESSAGE to %s got %d", b.CoreContact, res.StatusCode)
		}
	}
}

// An RFC 5626 client registering one Contact over two flows (reg-id 1
// and 2) has two bindings, each kept alive on its own flow.
func TestOutboundTwoFlowsTwoBindings(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	contact := `<sip:ob@192.168.1.20:5060;ob>;+sip.instance="<urn:uuid:00000000-0000-0000-0000-0000000000aa>";reg-id=`
	for id := 1; id <= 2; id++ {
		p := edgetest.Dial(t, "udp", e.UDP)
		p.Send(p.Register(edgetest.Reg{User: "ob", Contact: contact + strconv.Itoa(id), CallID: "ob-" + strconv.Itoa(id), Extra: "Supported: outbound, path"}))
		if res := p.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("reg-id %d got %d", id, res.StatusCode)
		}
	}
	bs := e.Bindings().Lookup("sip:ob@example.com")
	if len(bs) != 2 || bs[0].Flow == bs[1].Flow {
		t.Fatalf("bindings %+v, want two on two flows", bs)
	}
}

// RFC 4475's invalid messages are answered 400 with a SIP/2.0 status line
// and never reach the core.
func TestTortureInvalidMessages(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	for _, name := range []string{"baddate", "escruri", "multi01", "regbadct"} {
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("..", "testdata", "torture", name+".sip"))
			if err != nil {
				t.Fatal(err)
			}
			phone := edgetest.Dial(t, "udp", e.UDP)
			phone.Send(strings.ReplaceAll(string(raw), "\n", "\r\n"))
			res := phone.MustRecvResponse(wait)
			if res.StatusCode != 400 || res.SipVersion != "SIP/2.0" {
				t.Fatalf("got %s %d %s, want SIP/2.0 400", res.SipVersion, res.StatusCode, res.Reason)
			}
		})
	}
	if n := len(core.Requests()); n != 0 {
		t.Fatalf("the core got %d invalid requests", n)
	}
}

// A copy of a REGISTER the edge already answered (a phone whose 200 was
// lost) is answered with the same bytes by the edge's own UDP server
// transaction, and the core never sees the copy. A copy of it sent from
// elsewhere (spoofed, or a replay) makes no answer there: the answer
// goes only where the request came from.
func TestRegisterRetransmissionAnsweredByTheEdge(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "alice"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("first REGISTER: %d", res.StatusCode)
	}
	refresh := phone.Register(edgetest.Reg{User: "alice", CSeq: 2})
	phone.Send(refresh)
	first, _ := phone.RecvRaw(wait)
	before := len(core.Requests())
	phone.Send(refresh) // the phone did not get first
	again, _ := phone.RecvRaw(wait)
	if string(again) != string(first) {
		t.Fatalf("the copy was answered differently:\n%s\n%s", first, again)
	}
	other := edgetest.Dial(t, "udp", e.UDP)
	other.Send(refresh)
	if b := other.Silent(300 * time.Millisecond); b != nil {
		t.Fatalf("a copy from another source was answered there: %s", b)
	}
	if resent, _ := phone.RecvRaw(wait); string(resent) != string(first) {
		t.Fatalf("the registered phone did not get the answer again:\n%s", resent)
	}
	for _, r := range core.Requests()[before:] {
		if r.Method == sip.REGISTER {
			t.Fatalf("the core got a copy of an answered REGISTER:\n%s", r)
		}
	}
	if access, _ := e.Transactions(); access == 0 {
		t.Fatal("the answered transaction was not kept for copies (Timer J)")
	}
}

// REGISTERs waiting for a slow core hold no goroutine of the edge's:
// over UDP both ways the answer is relayed from the core side's read
// loop (relay.forwardLater), so a core that takes its time costs the
// edge memory for the transactions, not a parked worker for each.
func TestRegistersInFlightHoldNoGoroutine(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{Silent: true})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		c.RateLimit.Allow = []string{"127.0.0.0/8"} // many REGISTERs from one address
	})
	const n = 200
	phones := make([]*edgetest.Phone, n)
	for i := range phones {
		phones[i] = edgetest.Dial(t, "udp", e.UDP)
		phones[i].Send(phones[i].Register(edgetest.Reg{User: fmt.Sprintf("slow%d", i)}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for range n {
		if _, err := core.NextRequest(ctx); err != nil {
			t.Fatalf("the core did not get every REGISTER: %v", err)
		}
	}
	// Where a goroutine would wait for the core's answers.
	if waiting := goroutinesIn("edge.(*relay).relayResponses") + goroutinesIn("edge.firstResponse"); waiting > 0 {
		t.Errorf("%d REGISTERs waiting for the core: %d goroutines wait in the relay", n, waiting)
	}
	core.SetSilent(false)
	for _, p := range phones { // the retransmissions get the answers
		if res := p.MustRecvResponse(10 * time.Second); res.StatusCode != 200 {
			t.Fatalf("REGISTER: %d", res.StatusCode)
		}
	}
}

// goroutinesIn counts the goroutines with fn in their stacks.
func goroutinesIn(fn string) int {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	n := 0
	for _, g := range strings.Split(b.String(), "\n\ngoroutine ") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}
