package edge_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

func offloading(c *edgetest.Config) {
	c.Registration.Offload = true
	c.Registration.PhoneExpires = 60 * time.Second
	c.Registration.CoreExpires = time.Hour
}

// grantedExpires is the expires the 200 gives the phone's contact.
func grantedExpires(t *testing.T, res *sip.Response) int {
	t.Helper()
	cs := res.GetHeaders("Contact")
	if len(cs) == 0 {
		t.Fatalf("200 without a Contact:\n%s", res)
	}
	v, ok := cs[0].(*sip.ContactHeader).Params.Get("expires")
	n, err := strconv.Atoi(v)
	if !ok || err != nil {
		t.Fatalf("Contact %s has no expires", cs[0].Value())
	}
	return n
}

// The core is registered for an hour, the phone for a minute (±10%), and
// the phone's unchanged refreshes are answered by the edge until the
// core's registration nears its end.
func TestOffloadAbsorbsRefreshes(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	clk := fakeClock()
	e := edgetest.StartWith(t, core.URI("udp"), func(c *edgetest.Config) {
		offloading(c)
		c.NAT.Mode = nat.KeepaliveOff // the test's clock jumps past many keepalives
	}, edgetest.Hooks{Clock: clk})
	phone := edgetest.Dial(t, "udp", e.UDP)
	aor := "sip:olive@example.com"
	reg := func(cseq int, extra ...func(*edgetest.Reg)) *sip.Response {
		t.Helper()
		r := edgetest.Reg{User: "olive", CSeq: cseq, CallID: "olive-1"}
		for _, f := range extra {
			f(&r)
		}
		phone.Send(phone.Register(r))
		res := phone.MustRecvResponse(wait)
		if int(res.CSeq().SeqNo) != r.CSeq {
			t.Fatalf("REGISTER CSeq %d got an answer to CSeq %d:\n%s", r.CSeq, res.CSeq().SeqNo, res)
		}
		if res.StatusCode != 200 {
			t.Fatalf("REGISTER CSeq %d got %d", cseq, res.StatusCode)
		}
		return res
	}
	atCore := func() int { return registers(core)["olive@example.com"] }

	res := reg(1)
	if g := grantedExpires(t, res); g < 54 || g > 66 {
		t.Errorf("phone granted %d s, want 60 ± 10%%", g)
	}
	if bs := core.Bindings(aor); len(bs) != 1 || bs[0].Expires != time.Hour {
		t.Fatalf("core bindings %+v, want one for an hour", bs)
	}
	for cseq := 2; cseq <= 11; cseq++ {
		clk.Advance(50 * time.Second)
		if g := grantedExpires(t, reg(cseq)); g < 54 || g > 66 {
			t.Errorf("absorbed refresh granted %d s", g)
		}
	}
	if n := atCore(); n != 1 {
		t.Errorf("the core got %d REGISTERs for 11 from the phone, want 1", n)
	}
	if bs := e.Bindings().Lookup(aor); len(bs) != 1 || bs[0].CSeq != 11 || bs[0].Expires.Sub(clk.Now()) > 66*time.Second {
		t.Errorf("edge binding after absorbed refreshes: %+v", bs)
	}

	// What is not a plain refresh goes to the core.
	reg(50)
	for i, change := range []func(*edgetest.Reg){
		func(r *edgetest.Reg) { r.CSeq = 20 },                                                // an older CSeq
		func(r *edgetest.Reg) { r.Contact = "<sip:olive-new@" + phone.Local.String() + ">" }, // another contact
		func(r *edgetest.Reg) { r.CallID = "olive-2" },                                       // another Call-ID
		func(r *edgetest.Reg) { r.Expires = "0" },                                            // unregistering
	} {
		before := atCore()
		res := reg(100+i, change)
		if atCore() != before+1 {
			t.Errorf("change %d was absorbed, want it at the core (core %d→%d)\n%s", i, before, atCore(), res)
		}
	}
	// Back to one binding: register again, then near the core's end.
	reg(200)
	before := atCore()
	clk.Advance(time.Hour - 100*time.Second)
	reg(201)
	if atCore() != before+1 {
		t.Error("a refresh as the core's registration nears its end was absorbed")
	}
}

// Someone else refreshing a phone's binding, from another source, with
// its Call-ID and a higher CSeq, or with a changed contact, reaches the
// core and its challenge; the phone's binding stays as it was.
func TestOffloadHijackGoesToTheCore(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{Users: map[string]string{"vic": "pw"}})
	e := edgetest.Start(t, core.URI("udp"), offloading)
	victim := edgetest.Dial(t, "udp", e.UDP)
	victim.Send(victim.Register(edgetest.Reg{User: "vic", CSeq: 1, CallID: "vic-call"}))
	res := victim.MustRecvResponse(wait)
	chal, err := digest.ParseChallenge(res.GetHeader("WWW-Authenticate").Value())
	if err != nil {
		t.Fatal(err)
	}
	cred, _ := digest.Digest(chal, digest.Options{Method: "REGISTER", URI: "sip:example.com", Username: "vic", Password: "pw"})
	victim.Send(victim.Register(edgetest.Reg{User: "vic", CSeq: 2, CallID: "vic-call", Extra: "Authorization: " + cred.String()}))
	if res := victim.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("victim got %d", res.StatusCode)
	}
	before := registers(core)["vic@example.com"]

	attacker := edgetest.Dial(t, "udp", e.UDP)
	for i, r := range []edgetest.Reg{
		{User: "vic", CSeq: 3, CallID: "vic-call", Contact: "<sip:vic@" + victim.Local.String() + ";transport=udp>"}, // the victim's contact, from elsewhere
		{User: "vic", CSeq: 4, CallID: "vic-call"}, // its own contact
	} {
		attacker.Send(attacker.Register(r))
		if res := attacker.MustRecvResponse(wait); res.StatusCode == 200 {
			t.Errorf("hijack %d got 200", i)
		}
	}
	if got := registers(core)["vic@example.com"]; got != before+2 {
		t.Errorf("the core saw %d of the 2 hijack attempts", got-before)
	}
	bs := e.Bindings().Lookup("sip:vic@example.com")
	if len(bs) != 1 || bs[0].Flow.Remote != victim.Local || !strings.Contains(bs[0].Contact, victim.Local.String()) {
		t.Errorf("the victim's binding changed: %+v", bs)
	}
	// The victim's own refresh is still absorbed.
	victim.Send(victim.Register(edgetest.Reg{User: "vic", CSeq: 6, CallID: "vic-call", Extra: "Authorization: " + cred.String()}))
	if res := victim.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("victim's refresh got %d", res.StatusCode)
	}
	if got := registers(core)["vic@example.com"]; got != before+2 {
		t.Error("the victim's refresh went to the core")
	}
}
