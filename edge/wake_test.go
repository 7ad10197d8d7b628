package edge_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/edge/push"
	"github.com/sipedge/sipedge/edge/push/pushtest"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// fakePusher records pushes and runs wake for each, as a push service and
// the phone's app would.
type fakePusher struct {
	mu     sync.Mutex
	pushes []registry.Push
	wake   func(registry.Push)
	fail   error
}

func (f *fakePusher) Supports(provider string) bool { return provider == "apns" }

func (f *fakePusher) Push(_ context.Context, to registry.Push, method, callID, from string) error {
	f.mu.Lock()
	f.pushes = append(f.pushes, to)
	wake, fail := f.wake, f.fail
	f.mu.Unlock()
	if fail != nil {
		return fail
	}
	if wake != nil {
		go wake(to)
	}
	return nil
}

func (f *fakePusher) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pushes)
}

const mobileInstance = `"<urn:uuid:00000000-0000-4000-8000-00000000beef>"`

// mobileReg is a REGISTER from a push-capable phone over TCP.
func mobileReg(p *edgetest.Phone, cseq int) string {
	return mobileRegTo(p, cseq, "ab12cd34ef56", "TEAM1.com.example.phone.voip")
}

func mobileRegTo(p *edgetest.Phone, cseq int, prid, param string) string {
	return p.Register(edgetest.Reg{User: "mob", CSeq: cseq, CallID: "mob-reg",
		Contact: fmt.Sprintf("<sip:mob@%s;transport=tcp;pn-provider=apns;pn-prid=%s;pn-param=%s>;+sip.instance=%s;reg-id=1",
			p.Local, prid, param, mobileInstance)})
}

type pushLab struct {
	e      *edgetest.Edge
	core   *upstreamtest.Registrar
	coreSk *edgetest.Phone // the core's raw socket
	pusher *fakePusher
	path   string
	events events
}

func startPushLab(t *testing.T, hold time.Duration) *pushLab {
	t.Helper()
	l := &pushLab{pusher: &fakePusher{}}
	l.start(t, hold, l.pusher, "ab12cd34ef56", "TEAM1.com.example.phone.voip")
	return l
}

func (l *pushLab) start(t *testing.T, hold time.Duration, pusher edge.Pusher, prid, param string) {
	t.Helper()
	l.core, l.events = upstreamtest.Start(t, upstreamtest.Options{}), make(events, 256)
	l.e = edgetest.StartWith(t, l.core.URI("udp"), func(c *edgetest.Config) { c.Wake.Hold = hold },
		edgetest.Hooks{Pusher: pusher, Events: l.events.hook})
	phone := edgetest.Dial(t, "tcp", l.e.TCP)
	phone.Send(mobileRegTo(phone, 1, prid, param))
	res := phone.MustRecvResponse(wait)
	if res.StatusCode != 200 {
		t.Fatalf("REGISTER got %d", res.StatusCode)
	}
	if fc := res.GetHeader("Feature-Caps"); fc == nil || !strings.Contains(fc.Value(), `+sip.pns="apns"`) ||
		!strings.Contains(fc.Value(), `+sip.pnspurr="`) {
		t.Errorf("the 200 does not say the edge pushes (Feature-Caps %v)", fc)
	}
	bs := l.core.Bindings("sip:mob@example.com")
	if len(bs) != 1 || len(bs[0].Path) != 1 {
		t.Fatalf("core bindings %+v", bs)
	}
	l.path = bs[0].Path[0]
	// The app is suspended: its connection goes.
	phone.Close()
	for deadline := time.Now().Add(wait); l.e.Flows().Len() > 0; {
		if time.Now().After(deadline) {
			t.Fatal("the closed connection's flow is still there")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if bs := l.e.Bindings().Lookup("sip:mob@example.com"); len(bs) != 1 {
		t.Fatalf("the sleeping phone's binding went with its flow: %+v", bs)
	}
	l.coreSk = edgetest.Dial(t, "udp", l.e.CoreAddr())
}

func (l *pushLab) invite(callID string) string {
	c := &callSetup{core: l.coreSk}
	return c.request("INVITE", "sip:mob@example.com", l.path, callID, 1, "")
}

// A phone asleep (its connection gone) is woken by one push when the core
// calls; it registers again on a new connection and the held INVITE goes
// out there. Nothing secret of the push reaches the audit events.
func TestPushWakesASleepingPhone(t *testing.T) {
	l := startPushLab(t, 5*time.Second)
	woken := make(chan *edgetest.Phone, 1)
	l.pusher.mu.Lock() // the push comes from the edge's goroutine
	l.pusher.wake = func(registry.Push) {
		p := edgetest.Dial(t, "tcp", l.e.TCP)
		p.Send(mobileReg(p, 2))
		woken <- p
	}
	l.pusher.mu.Unlock()
	start := time.Now()
	l.coreSk.Send(l.invite("wake-1"))
	var p *edgetest.Phone
	select {
	case p = <-woken:
	case <-time.After(wait):
		t.Fatal("no push")
	}
	if res := p.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("the woken phone's REGISTER got %d", res.StatusCode)
	}
	inv := p.MustRecvRequest("INVITE", wait)
	t.Logf("push to INVITE on the new connection: %v", time.Since(start).Round(time.Millisecond))
	p.Respond(inv, 200, "OK", "mob")
	for {
		res := l.coreSk.MustRecvResponse(wait)
		if res.StatusCode >= 200 {
			if res.StatusCode != 200 {
				t.Fatalf("the core's INVITE got %d", res.StatusCode)
			}
			break
		}
	}
	if n := l.pusher.count(); n != 1 {
		t.Errorf("%d pushes, want 1", n)
	}
	for {
		e := l.events.waitFor(t, audit.Push, "", wait)
		if strings.Contains(fmt.Sprint(e), "ab12cd34ef56") {
			t.Errorf("the device token reached the audit log: %+v", e)
		}
		if e.Detail == "answered" {
			break
		}
	}
}

// Without the phone coming back the core gets 480 when the hold ends; a
// CANCEL ends the hold at once; requests waiting together cost one push.
func TestPushHoldEnds(t *testing.T) {
	l := startPushLab(t, time.Second)
	l.coreSk.Send(l.invite("nobody-1"))
	l.coreSk.Send(l.invite("nobody-2"))
	got := map[string]int{}
	for len(got) < 2 {
		res := l.coreSk.MustRecvResponse(3 * time.Second)
		if res.StatusCode >= 200 {
			got[res.CallID().Value()] = res.StatusCode
		}
	}
	if got["nobody-1"] != 480 || got["nobody-2"] != 480 {
		t.Errorf("held INVITEs got %v, want 480 each", got)
	}
	if n := l.pusher.count(); n != 1 {
		t.Errorf("two INVITEs held together sent %d pushes, want 1", n)
	}

	l.coreSk.Send(l.invite("cancel-1"))
	for l.pusher.count() < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	c := &callSetup{core: l.coreSk}
	l.coreSk.Send(strings.Replace(c.request("CANCEL", "sip:mob@example.com", l.path, "cancel-1", 1, ""), "-cancel;", "-invite;", 1))
	codes := map[sip.RequestMethod]int{}
	for len(codes) < 2 {
		res := l.coreSk.MustRecvResponse(wait)
		if res.StatusCode >= 200 {
			codes[res.CSeq().MethodName] = res.StatusCode
		}
	}
	if codes[sip.CANCEL] != 200 || codes[sip.INVITE] != 487 {
		t.Errorf("CANCEL during the hold: %v, want CANCEL 200 and INVITE 487", codes)
	}

	// A push that fails ends the hold at once.
	l.pusher.mu.Lock()
	l.pusher.fail = fmt.Errorf("BadDeviceToken")
	l.pusher.mu.Unlock()
	start := time.Now()
	l.coreSk.Send(l.invite("failed-1"))
	for {
		res := l.coreSk.MustRecvResponse(wait)
		if res.StatusCode >= 200 {
			if res.StatusCode != 480 || time.Since(start) > 500*time.Millisecond {
				t.Errorf("a failed push: %d after %v, want 480 at once", res.StatusCode, time.Since(start))
			}
			break
		}
	}
}

// A held INVITE is answered 100 Trying even when its first copy comes
// at once: sipgo's own 100 (after 200 ms) is cancelled by any copy that
// reaches the transaction first, after which the transaction had
// nothing to resend for the whole hold. Later copies get the 100 again.
func TestPushHoldTryingSurvivesACopy(t *testing.T) {
	l := startPushLab(t, 5*time.Second)
	inv := l.invite("copied-1")
	l.coreSk.Send(inv)
	l.coreSk.Send(inv) // the copy, before sipgo's Timer_1xx
	trying := func(what string) {
		t.Helper()
		res := l.coreSk.MustRecvResponse(2 * time.Second)
		if res.StatusCode != 100 {
			t.Fatalf("%s: got %d, want 100 Trying", what, res.StatusCode)
		}
	}
	trying("the INVITE and its copy")
	l.coreSk.Send(inv)
	trying("a later copy")
}

// apnsPusher is cmd/sipedge's adapter, for the edge's tests.
type apnsPusher struct{ s *push.Senders }

func (p apnsPusher) Supports(provider string) bool { return p.s.Supports(provider) }

func (p apnsPusher) Push(ctx context.Context, to registry.Push, method, callID, from string) error {
	return p.s.Send(ctx, push.Push{Provider: to.Provider, PRID: to.PRID, Param: to.Param, Method: method, CallID: callID, From: from})
}

// The whole way to Apple: the edge's push reaches an APNs stand-in that
// checks what Apple checks (HTTP/2, the ES256 provider token, a VoIP
// push to the bundle's .voip topic) and the phone's app wakes on it.
func TestPushThroughAPNs(t *testing.T) {
	apns := pushtest.NewAPNs(t)
	senders, err := push.New(push.Config{APNsKeyFile: apns.KeyFile, APNsKeyID: apns.KeyID, APNsTeamID: apns.TeamID,
		Timeout: 5 * time.Second, TTL: 30 * time.Second},
		push.WithTLSConfig(apns.TLSConfig()), push.WithAPNsURL(apns.Server.URL, apns.Server.URL))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(senders.Close)
	token := strings.Repeat("4e2f8a19", 8)
	l := &pushLab{}
	l.start(t, 5*time.Second, apnsPusher{senders}, token, apns.Param())
	woken := make(chan *edgetest.Phone, 1)
	go func() {
		got := apns.Next(t)
		if got.Token != token || got.Header.Get("apns-push-type") != "voip" {
			t.Errorf("APNs got %+v", got)
		}
		p := edgetest.Dial(t, "tcp", l.e.TCP)
		p.Send(mobileRegTo(p, 2, token, apns.Param()))
		woken <- p
	}()
	l.coreSk.Send(l.invite("apns-1"))
	var p *edgetest.Phone
	select {
	case p = <-woken:
	case <-time.After(wait):
		t.Fatal("no push reached APNs")
	}
	if res := p.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("the woken phone's REGISTER got %d", res.StatusCode)
	}
	p.Respond(p.MustRecvRequest("INVITE", wait), 486, "Busy Here", "mob")
	for {
		if res := l.coreSk.MustRecvResponse(wait); res.StatusCode >= 200 {
			if res.StatusCode != 486 {
				t.Errorf("the core's INVITE got %d, want the phone's 486", res.StatusCode)
			}
			break
		}
	}
}

// A phone naming a push service the edge cannot use is told so (555), not
// registered with a binding nothing could wake.
func TestPushServiceNotSupported(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.StartWith(t, core.URI("udp"), nil, edgetest.Hooks{Pusher: &fakePusher{}})
	p := edgetest.Dial(t, "tcp", e.TCP)
	p.Send(strings.Replace(mobileReg(p, 1), "pn-provider=apns", "pn-provider=webpush", 1))
	if res := p.MustRecvResponse(wait); res.StatusCode != 555 {
		t.Errorf("an unsupported push service got %d, want 555", res.StatusCode)
	}
	if n := len(registerRequests(core)); n != 0 {
		t.Errorf("the core got %d REGISTERs", n)
	}
}

// A phone that falls asleep during a call is woken for the core's
// in-dialog request too: the edge's Record-Route names its flow, and the
// BYE goes out on the connection it opens when woken.
func TestPushWakesForMidDialog(t *testing.T) {
	l := startPushLab(t, 5*time.Second)
	woken := make(chan *edgetest.Phone, 2)
	cseq := 1
	l.pusher.mu.Lock()
	l.pusher.wake = func(registry.Push) {
		l.pusher.mu.Lock()
		cseq++
		n := cseq
		l.pusher.mu.Unlock()
		p := edgetest.Dial(t, "tcp", l.e.TCP)
		p.Send(mobileReg(p, n))
		woken <- p
	}
	l.pusher.mu.Unlock()
	wake := func() *edgetest.Phone {
		t.Helper()
		select {
		case p := <-woken:
			if res := p.MustRecvResponse(wait); res.StatusCode != 200 {
				t.Fatalf("the woken phone's REGISTER got %d", res.StatusCode)
			}
			return p
		case <-time.After(wait):
			t.Fatal("no push")
		}
		return nil
	}
	l.coreSk.Send(l.invite("mid-1"))
	p := wake()
	p.Respond(p.MustRecvRequest("INVITE", wait), 200, "OK", "mob")
	var ok *sip.Response
	for ok == nil || ok.StatusCode < 200 {
		ok = l.coreSk.MustRecvResponse(wait)
	}
	// The app is suspended again, mid-call.
	p.Close()
	for deadline := time.Now().Add(wait); l.e.Flows().Len() > 0; {
		if time.Now().After(deadline) {
			t.Fatal("the closed connection's flow is still there")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c := &callSetup{core: l.coreSk}
	contact := ok.GetHeader("Contact").(*sip.ContactHeader).Address.String()
	l.coreSk.Send(c.request("BYE", contact, routeSet(ok), "mid-1", 2, ";tag=mob"))
	p = wake()
	p.Respond(p.MustRecvRequest("BYE", wait), 200, "OK", "")
	for {
		res := l.coreSk.MustRecvResponse(wait)
		if res.CSeq().MethodName == sip.BYE {
			if res.StatusCode != 200 {
				t.Fatalf("the core's BYE got %d", res.StatusCode)
			}
			break
		}
	}
	if n := l.pusher.count(); n != 2 {
		t.Errorf("%d pushes, want 2 (the INVITE, then the BYE)", n)
	}
}
