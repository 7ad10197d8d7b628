//go:build interop

// Interop tests for push (RFC 8599, issue 15) against a real Kamailio
// 5.6 core, on 127.0.0.1:
//
//	go test -race -tags interop -count=1 -v ./cmd/sipedge/ -run InteropPush
//
// A sipp "mobile phone" (push_register.xml, role sleep) registers through
// the sipedge binary over TCP with pn-provider, pn-prid and pn-param in
// its Contact, +sip.instance and reg-id, and exits: its connection closes
// as when the OS suspends the app, and its binding stays. A caller
// straight at Kamailio calls or messages its AOR; Kamailio routes the
// request by the stored Path to sipedge, which holds it and POSTs one
// push to the gateway, played here by an httptest server. On the push
// the test starts the app again (role wake): a new sipp process, a new
// connection, the same instance, reg-id and push parameters; the held
// request goes out on it. Without the app coming back the caller gets
// 480 once the hold ends; a CANCEL during the hold ends it at once.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// ------------------------------------------------------------ the gateway

// wirePush is one push as the gateway receives it: the JSON documented
// for gateway_url ({id, provider, prid, param, method, call_id, from}),
// decoded strictly, and when it came.
type wirePush struct {
	ID       string `json:"id"`
	Provider string `json:"provider"`
	PRID     string `json:"prid"`
	Param    string `json:"param"`
	Method   string `json:"method"`
	CallID   string `json:"call_id"`
	From     string `json:"from"`

	at  time.Time
	bad string // what was wrong with the HTTP request ("": nothing)
}

// pushGateway is the operator's push relay: it accepts every push (200)
// and hands it to the test, which plays the push service and the app.
type pushGateway struct {
	url    string
	pushes chan wirePush
}

func startPushGateway(t *testing.T) *pushGateway {
	t.Helper()
	g := &pushGateway{pushes: make(chan wirePush, 64)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := wirePush{at: time.Now()}
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		switch ct := r.Header.Get("Content-Type"); {
		case r.Method != http.MethodPost || r.URL.Path != "/push":
			p.bad = r.Method + " " + r.URL.Path
		case !strings.HasPrefix(ct, "application/json"):
			p.bad = "Content-Type " + ct
		case err != nil:
			p.bad = "body: " + err.Error()
		default:
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&p); err != nil {
				p.bad = fmt.Sprintf("JSON %s: %v", body, err)
			}
		}
		select {
		case g.pushes <- p:
		default: // a test that stopped reading does not stall sipedge
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close) // httptest.NewServer listens on 127.0.0.1
	g.url = srv.URL + "/push"
	return g
}

// next is the next push, within d.
func (g *pushGateway) next(t *testing.T, d time.Duration) wirePush {
	t.Helper()
	select {
	case p := <-g.pushes:
		if p.bad != "" {
			t.Errorf("the gateway got a bad push request: %s", p.bad)
		}
		return p
	case <-time.After(d):
		t.Fatalf("the gateway got no push within %v", d)
		return wirePush{}
	}
}

// more returns the pushes that came since the last next (it waits for
// none).
func (g *pushGateway) more() []wirePush {
	var out []wirePush
	for {
		select {
		case p := <-g.pushes:
			out = append(out, p)
		default:
			return out
		}
	}
}

// ------------------------------------------------------------- the lab

// pushRig is a sipedge pushing through the gateway, in front of Kamailio.
type pushRig struct {
	k            *kamailio
	e            *sipedge
	gw           *pushGateway
	hold         time.Duration
	audit        string // sipedge's audit file
	admin, token string // its admin API and token file
	nextUser     int
}

func startPushRig(t *testing.T, hold time.Duration) *pushRig {
	t.Helper()
	needTools(t, "kamailio", "kamcmd", "sipp")
	r := &pushRig{gw: startPushGateway(t), hold: hold, nextUser: 1000}
	r.k = startKamailio(t, kamOpts{users: 100, logCalls: true})
	dir := t.TempDir()
	r.audit, r.token = filepath.Join(dir, "audit.log"), filepath.Join(dir, "admin.token")
	r.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r.e = startSipedge(t, edgeOpts{mode: "path", upstream: fmt.Sprintf("sip:%s;transport=udp", r.k.addr()),
		extra: fmt.Sprintf("\n[push]\ngateway_url = %q\nhold = %q\n\n[audit]\nfile = %q\n\n[admin]\nlisten = %q\ntoken_file = %q\n",
			r.gw.url, hold.String(), r.audit, r.admin, r.token)})
	if !strings.Contains(r.e.p.log(), "push notifications on") {
		t.Errorf("sipedge does not say push is on:\n%s", tail(r.e.p.log(), 20))
	}
	return r
}

// mobile is a push-capable phone: its subscriber and RFC 8599 parameters.
type mobile struct {
	user, prid, param, instance string
}

// users hands out a caller and a mobile phone, fresh for each exchange.
func (r *pushRig) users() (caller string, m mobile) {
	r.nextUser += 2
	c, u := r.nextUser-2, r.nextUser-1
	return strconv.Itoa(c), mobile{
		user: strconv.Itoa(u),
		// An FCM registration token's shape: base64url, a colon, more.
		prid:     fmt.Sprintf("c2lwZWRnZS0%d:APA91bF-interop_%d", u, u),
		param:    "sipedge-interop",
		instance: fmt.Sprintf("00000000-0000-4000-8000-%012d", u),
	}
}

// startMobile runs the mobile phone's app in role sleep, wake or peek
// (push_register.xml) on a connection of its own; ooc takes the held
// request (wake).
func (r *pushRig) startMobile(t *testing.T, m mobile, role, ooc string) *phone {
	t.Helper()
	return startPhone(t, phoneOpts{
		name: "mobile " + m.user + " (" + role + ")", target: r.e.tcp, transport: "t1",
		scenario: "push_register.xml", ooc: ooc, roles: []string{role},
		keys: map[string]string{"user": m.user, "pass": "pw" + m.user, "provider": "fcm", "prid": m.prid,
			"param": m.param, "instance": m.instance, "mport": strconv.Itoa(freePort(t))},
		limit: 30 * time.Second,
	})
}

// sleep registers m and suspends its app: the registration's 200 says
// sipedge pushes fcm, Kamailio holds the contact with the push
// parameters and sipedge's Path, and sipedge saw the connection go.
func (r *pushRig) sleep(t *testing.T, m mobile) {
	t.Helper()
	ph := r.startMobile(t, m, "sleep", "")
	if code := ph.wait(t); code != 0 {
		t.Fatalf("the mobile phone's registration: sipp exit %d\n%s", code, ph.report())
	}
	checkPNS(t, ph)
	var ct ulContact
	for _, c := range r.k.ulDump(t) {
		if c.AOR == m.user {
			ct = c
		}
	}
	if !strings.Contains(ct.Address, "pn-prid="+m.prid) || !strings.Contains(ct.Address, "pn-provider=fcm") || !strings.Contains(ct.Path, r.e.core) {
		t.Fatalf("Kamailio's contact for %s: %+v; want the push parameters and sipedge's Path (%s)", m.user, ct, r.e.core)
	}
	src := fmt.Sprintf("127.0.0.1:%d", ph.port) // sipp binds its TCP connection to -p
	r.waitAudit(t, 10*time.Second, func(a pushAudit) bool {
		return a.Event == "flow_dead" && a.Source == src && a.Transport == "TCP"
	})
}

// checkPNS wants Feature-Caps with +sip.pns="fcm" in the 200 a mobile
// phone got for its REGISTER (RFC 8599 §5.2).
func checkPNS(t *testing.T, ph *phone) {
	t.Helper()
	ok, found := false, false
	for _, msg := range ph.messages() {
		if msg.sent || !msg.isResponse(200, "REGISTER") {
			continue
		}
		found = true
		for _, fc := range msg.values("Feature-Caps") {
			ok = ok || strings.Contains(fc, `+sip.pns="fcm"`)
		}
		if !ok {
			t.Errorf("the 200 for the REGISTER lacks Feature-Caps +sip.pns=\"fcm\":\n%s", msg.raw)
		}
	}
	if !found {
		t.Errorf("%s got no 200 for its REGISTER\n%s", ph.opts.name, ph.report())
	}
}

// checkPush wants the push for m, for a request method from caller.
func checkPush(t *testing.T, p wirePush, m mobile, method, caller string) {
	t.Helper()
	if p.ID == "" || p.Provider != "fcm" || p.PRID != m.prid || p.Param != m.param || p.Method != method ||
		p.CallID == "" || !strings.Contains(p.From, "sip:"+caller+"@sipedge.test") {
		t.Errorf("push %+v; want provider fcm, prid %s, param %s, method %s, a Call-ID, from %s", p, m.prid, m.param, method, caller)
	}
}

// ----------------------------------------------------------------- audit

// pushAudit is one line of sipedge's audit file.
type pushAudit struct {
	Event     string `json:"event"`
	AOR       string `json:"aor"`
	Source    string `json:"source"`
	Transport string `json:"transport"`
	Detail    string `json:"detail"`
	Reason    string `json:"reason"`
	Instance  string `json:"instance"`
	Count     int    `json:"count"`
	raw       string
}

func (r *pushRig) auditLines(t *testing.T) []pushAudit {
	t.Helper()
	b, err := os.ReadFile(r.audit)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []pushAudit
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var a pushAudit
		if json.Unmarshal(sc.Bytes(), &a) == nil { // the last line may be half written
			a.raw = sc.Text()
			out = append(out, a)
		}
	}
	return out
}

// waitAudit polls the audit file every 50 ms until a line matches.
func (r *pushRig) waitAudit(t *testing.T, d time.Duration, match func(pushAudit) bool) pushAudit {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		for _, a := range r.auditLines(t) {
			if match(a) {
				return a
			}
		}
		if time.Now().After(deadline) || r.e.p.exited() {
			t.Fatalf("no such audit line within %v; the audit file (tail):\n%s", d, tail(r.auditRaw(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *pushRig) auditRaw() string {
	b, _ := os.ReadFile(r.audit)
	return string(b)
}

// pushEvents are the details of m's push events, in order, once one has
// detail last.
func (r *pushRig) pushEvents(t *testing.T, m mobile, last string) []pushAudit {
	t.Helper()
	mine := func(a pushAudit) bool { return a.Event == "push" && strings.Contains(a.AOR, "sip:"+m.user+"@") }
	r.waitAudit(t, 10*time.Second, func(a pushAudit) bool { return mine(a) && a.Detail == last })
	var out []pushAudit
	for _, a := range r.auditLines(t) {
		if mine(a) {
			out = append(out, a)
		}
	}
	return out
}

func details(as []pushAudit) string {
	var ds []string
	for _, a := range as {
		ds = append(ds, a.Detail)
	}
	return strings.Join(ds, " ")
}

// noTokens wants no device token whole in sipedge's audit file or log.
func (r *pushRig) noTokens(t *testing.T, ms ...mobile) {
	t.Helper()
	for _, m := range ms {
		if strings.Contains(r.auditRaw(), m.prid) {
			t.Errorf("the audit file holds the device token %s", m.prid)
		}
		if log := r.e.p.log(); strings.Contains(log, m.prid) {
			i := strings.Index(log, m.prid)
			t.Errorf("sipedge's log holds the device token %s: ...%s...", m.prid, log[max(0, i-300):min(len(log), i+100)])
		}
	}
}

// ---------------------------------------------------------------- metrics

// pushMetrics reads sipedge_pushes_total by result and the number of
// wake times observed.
func (r *pushRig) pushMetrics(t *testing.T) (map[string]float64, uint64) {
	t.Helper()
	token, err := os.ReadFile(r.token)
	must(t, err)
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	req, _ := http.NewRequest("GET", "http://"+r.admin+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	res, err := client.Do(req)
	must(t, err)
	defer res.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(res.Body)
	must(t, err)
	out := map[string]float64{}
	for _, m := range fams["sipedge_pushes_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "result" {
				out[l.GetValue()] += m.GetCounter().GetValue()
			}
		}
	}
	var woken uint64
	for _, m := range fams["sipedge_push_wake_seconds"].GetMetric() {
		woken += m.GetHistogram().GetSampleCount()
	}
	return out, woken
}

// ------------------------------------------------------------ sipp times

// stampedMsg is a message of a sipp -trace_msg file and when sipp logged
// it (its separator line carries the wall-clock time).
type stampedMsg struct {
	sipMsg
	at time.Time
}

func stampedTrace(s string) []stampedMsg {
	const sep = "-----------------------------------------------"
	var out []stampedMsg
	for _, block := range strings.Split("\n"+s, "\n"+sep)[1:] {
		stamp, _, _ := strings.Cut(block, "\n")
		at, err := time.ParseInLocation("2006-01-02 15:04:05.000000", strings.TrimSpace(stamp), time.Local)
		got := parseSippTrace("\n" + sep + block)
		if err == nil && len(got) == 1 {
			out = append(out, stampedMsg{got[0], at})
		}
	}
	return out
}

// when is the time of the first message of ph's trace that matches.
func when(t *testing.T, ph *phone, sent bool, what string, match func(sipMsg) bool) time.Time {
	t.Helper()
	for _, m := range stampedTrace(ph.file("messages.log")) {
		if m.sent == sent && match(m.sipMsg) {
			return m.at
		}
	}
	t.Errorf("%s: no %s in its message trace", ph.opts.name, what)
	return time.Time{}
}

func ms(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }

// ------------------------------------------------------------------ tests

// A sleeping phone is called and messaged: one push each, the app wakes
// on a new connection and the held INVITE (then MESSAGE) reaches it there.
func TestInteropPushWakes(t *testing.T) {
	r := startPushRig(t, 20*time.Second)
	var phones []mobile
	t.Run("call", func(t *testing.T) { phones = append(phones, r.wakeForCall(t)) })
	t.Run("message", func(t *testing.T) { phones = append(phones, r.wakeForMessage(t)) })
	r.noTokens(t, phones...)
	got, woken := r.pushMetrics(t)
	t.Logf("sipedge_pushes_total %v, sipedge_push_wake_seconds count %d", got, woken)
	if got["sent"] != float64(len(phones)) || got["answered"] != float64(len(phones)) || got["unanswered"] != 0 || got["failed"] != 0 || woken != uint64(len(phones)) {
		t.Errorf("sipedge_pushes_total %v and %d wake times; want %d sent and answered (and wake times), none else", got, woken, len(phones))
	}
}

func (r *pushRig) wakeForCall(t *testing.T) mobile {
	callerUser, m := r.users()
	r.sleep(t, m)
	r.gw.more()
	caller := startPhone(t, phoneOpts{
		name: "caller", target: r.k.addr(), transport: "u1",
		scenario: "uac_call.xml", roles: []string{"register", "call"}, calls: 2,
		keys: map[string]string{"user": callerUser, "pass": "pw" + callerUser, "callee": m.user,
			"mport": strconv.Itoa(freePort(t))},
		limit: 30 * time.Second,
	})
	p := r.gw.next(t, 15*time.Second)
	checkPush(t, p, m, "INVITE", callerUser)
	woken := r.startMobile(t, m, "wake", "uas_call.xml")
	callerExit := caller.wait(t)
	wokenExit := woken.waitAfter(t, callerExit)
	if callerExit != 0 || wokenExit != 0 {
		t.Errorf("caller exit %d, woken phone exit %d (want 0 and 0; -2: stopped)\nKamailio for Call-ID %s:\n%s\n%s\n%s",
			callerExit, wokenExit, p.CallID, strings.Join(r.coreLog(p.CallID), "\n"), caller.report(), woken.report())
	}
	checkPNS(t, woken)
	inv, ok := find(woken.messages(), false, func(m sipMsg) bool { return m.isRequest("INVITE") })
	if !ok {
		t.Fatalf("the woken phone received no INVITE")
	}
	r.checkWoken(t, inv, woken, p)
	if m, ok := find(caller.messages(), true, func(m sipMsg) bool { return m.isRequest("INVITE") }); !ok || m.header("Call-ID") != p.CallID {
		t.Errorf("the push named Call-ID %s, the caller's INVITE had %q", p.CallID, m.header("Call-ID"))
	}
	for _, step := range []struct {
		ms   []sipMsg
		what string
		ok   func(sipMsg) bool
	}{
		{caller.messages(), "the caller's 180", func(m sipMsg) bool { return !m.sent && m.isResponse(180, "INVITE") }},
		{caller.messages(), "the caller's 200 (INVITE)", func(m sipMsg) bool { return !m.sent && m.isResponse(200, "INVITE") }},
		{woken.messages(), "the woken phone's ACK", func(m sipMsg) bool { return !m.sent && m.isRequest("ACK") }},
		{woken.messages(), "the woken phone's BYE", func(m sipMsg) bool { return !m.sent && m.isRequest("BYE") }},
		{caller.messages(), "the caller's 200 (BYE)", func(m sipMsg) bool { return !m.sent && m.isResponse(200, "BYE") }},
	} {
		if _, ok := find(step.ms, false, step.ok); !ok {
			t.Errorf("missing: %s", step.what)
		}
	}

	// Push to ring on loopback: the gateway has the push; the app (a new
	// sipp) starts and registers; the held INVITE reaches it; its 180
	// reaches the caller through sipedge and Kamailio.
	isInvite := func(m sipMsg) bool { return m.isRequest("INVITE") }
	reg := when(t, woken, true, "REGISTER", func(m sipMsg) bool { return m.isRequest("REGISTER") })
	regOK := when(t, woken, false, "200 (REGISTER)", func(m sipMsg) bool { return m.isResponse(200, "REGISTER") })
	invAt := when(t, woken, false, "INVITE", isInvite)
	ringAt := when(t, caller, false, "180", func(m sipMsg) bool { return m.isResponse(180, "INVITE") })
	sentAt := when(t, caller, true, "INVITE", isInvite)
	ring := ringAt.Sub(p.at)
	t.Logf("push to ring on loopback: %s (push → app's first REGISTER %s, → its 200 %s, → INVITE at the woken phone %s, → 180 at the caller %s); caller's INVITE → push %s, → 180 %s",
		ms(ring), ms(reg.Sub(p.at)), ms(regOK.Sub(p.at)), ms(invAt.Sub(p.at)), ms(ring), ms(p.at.Sub(sentAt)), ms(ringAt.Sub(sentAt)))
	if ring <= 0 || ring > 5*time.Second {
		t.Errorf("push to ring %v: want under 5s on loopback", ring)
	}

	evs := r.pushEvents(t, m, "answered")
	if details(evs) != "sent answered" || evs[1].Reason != "fcm" || !strings.Contains(evs[1].Instance, m.instance) {
		t.Errorf("push audit events for %s: %q, want \"sent answered\" (provider fcm, the instance):\n%v", m.user, details(evs), evs)
	} else {
		t.Logf("sipedge measured the wake (push → registered again) at %d ms: %s", evs[1].Count, evs[1].raw)
	}
	if more := r.gw.more(); len(more) > 0 {
		t.Errorf("one call pushed %d more times: %+v", len(more), more)
	}
	r.logLocation(t, m)
	return m
}

func (r *pushRig) wakeForMessage(t *testing.T) mobile {
	senderUser, m := r.users()
	r.sleep(t, m)
	r.gw.more()
	sender := startPhone(t, phoneOpts{
		name: "sender", target: r.k.addr(), transport: "u1",
		scenario: "uac_message.xml", roles: []string{"register", "message"}, calls: 2,
		keys:  map[string]string{"user": senderUser, "pass": "pw" + senderUser, "callee": m.user},
		limit: 30 * time.Second,
	})
	p := r.gw.next(t, 15*time.Second)
	checkPush(t, p, m, "MESSAGE", senderUser)
	woken := r.startMobile(t, m, "wake", "uas_message.xml")
	senderExit := sender.wait(t)
	wokenExit := woken.waitAfter(t, senderExit)
	if senderExit != 0 || wokenExit != 0 {
		t.Errorf("sender exit %d, woken phone exit %d (want 0 and 0; -2: stopped)\nKamailio for Call-ID %s:\n%s\n%s\n%s",
			senderExit, wokenExit, p.CallID, strings.Join(r.coreLog(p.CallID), "\n"), sender.report(), woken.report())
	}
	msg, ok := find(woken.messages(), false, func(m sipMsg) bool { return m.isRequest("MESSAGE") })
	if !ok {
		t.Fatalf("the woken phone received no MESSAGE")
	}
	r.checkWoken(t, msg, woken, p)
	if !strings.Contains(msg.body, "from the core side") {
		t.Errorf("MESSAGE body %q lost on the way", msg.body)
	}
	if _, ok := find(sender.messages(), false, func(m sipMsg) bool { return m.isResponse(200, "MESSAGE") }); !ok {
		t.Errorf("the sender got no 200 for its MESSAGE")
	}
	got := when(t, woken, false, "MESSAGE", func(m sipMsg) bool { return m.isRequest("MESSAGE") })
	t.Logf("push to MESSAGE at the woken phone: %s", ms(got.Sub(p.at)))
	if evs := r.pushEvents(t, m, "answered"); details(evs) != "sent answered" {
		t.Errorf("push audit events for %s: %q, want \"sent answered\"", m.user, details(evs))
	}
	if more := r.gw.more(); len(more) > 0 {
		t.Errorf("one MESSAGE pushed %d more times: %+v", len(more), more)
	}
	return m
}

// checkWoken wants the held request on the woken phone's new connection:
// the pushed Call-ID, from sipedge, to the contact it registered now.
func (r *pushRig) checkWoken(t *testing.T, req sipMsg, woken *phone, p wirePush) {
	t.Helper()
	t.Logf("%s as the woken phone received it:\n%s", strings.Fields(req.first)[0], req.raw)
	if id := req.header("Call-ID"); id != p.CallID {
		t.Errorf("the woken phone got Call-ID %s, the push named %s", id, p.CallID)
	}
	if via := viaSentBy(req.header("Via")); via != r.e.tcp || !strings.Contains(req.header("Via"), "/TCP ") {
		t.Errorf("top Via %q: want sipedge's access side %s over TCP", req.header("Via"), r.e.tcp)
	}
	ruri := strings.Fields(req.first)[1]
	if hp := uriHostPort(ruri); hp != fmt.Sprintf("127.0.0.1:%d", woken.port) {
		t.Errorf("Request-URI %s: want the contact the phone registered on its new connection (127.0.0.1:%d)", ruri, woken.port)
	}
}

// logLocation shows what Kamailio holds for m after it woke (the same
// instance and reg-id: one contact, on the new connection's Path).
func (r *pushRig) logLocation(t *testing.T, m mobile) {
	t.Helper()
	var cs []string
	for _, c := range r.k.ulDump(t) {
		if c.AOR == m.user {
			cs = append(cs, fmt.Sprintf("%s Path=%s", c.Address, c.Path))
		}
	}
	t.Logf("Kamailio's location for %s after the wake (%d contacts):\n%s", m.user, len(cs), strings.Join(cs, "\n"))
}

func (r *pushRig) coreLog(callID string) []string {
	var out []string
	for _, line := range strings.Split(r.k.p.log(), "\n") {
		if i := strings.Index(line, "CORE-"); i >= 0 && strings.Contains(line, "ci="+callID+" ") {
			out = append(out, strings.TrimSpace(line[i:]))
		}
	}
	return out
}

// A sleeping phone that does not come back: a CANCEL during the hold
// ends it at once (200, 487) and the phone, waking later, gets nothing;
// otherwise the caller gets 480 when the hold ends. One push each.
func TestInteropPushHoldEnds(t *testing.T) {
	r := startPushRig(t, 3*time.Second)
	var phones []mobile
	t.Run("cancel", func(t *testing.T) { phones = append(phones, r.cancelHeld(t)) })
	t.Run("unanswered", func(t *testing.T) { phones = append(phones, r.unanswered(t)) })
	r.noTokens(t, phones...)
	got, woken := r.pushMetrics(t)
	t.Logf("sipedge_pushes_total %v, sipedge_push_wake_seconds count %d", got, woken)
	if got["sent"] != float64(len(phones)) || got["unanswered"] != float64(len(phones)) || got["answered"] != 0 || got["failed"] != 0 || woken != 0 {
		t.Errorf("sipedge_pushes_total %v and %d wake times; want %d sent and unanswered, none else", got, woken, len(phones))
	}
}

func (r *pushRig) cancelHeld(t *testing.T) mobile {
	callerUser, m := r.users()
	r.sleep(t, m)
	r.gw.more()
	caller := startPhone(t, phoneOpts{
		name: "caller", target: r.k.addr(), transport: "u1",
		scenario: "push_uac_held.xml", roles: []string{"cancel"},
		keys:  map[string]string{"user": callerUser, "callee": m.user, "mport": strconv.Itoa(freePort(t))},
		limit: 20 * time.Second,
	})
	p := r.gw.next(t, 15*time.Second)
	checkPush(t, p, m, "INVITE", callerUser)
	// The caller hangs up now that the phone is being pushed.
	tellSipp(t, caller.port, p.CallID)
	if code := caller.wait(t); code != 0 {
		t.Fatalf("caller exit %d\nKamailio for Call-ID %s:\n%s\n%s", code, p.CallID, strings.Join(r.coreLog(p.CallID), "\n"), caller.report())
	}
	cms := caller.messages()
	for _, code := range []struct {
		c      int
		method string
	}{{200, "CANCEL"}, {487, "INVITE"}} {
		if _, ok := find(cms, false, func(m sipMsg) bool { return m.isResponse(code.c, code.method) }); !ok {
			t.Errorf("the caller got no %d (%s)", code.c, code.method)
		}
	}
	// sipedge's 487, not Kamailio's when sipedge's hold ended (480).
	cancelAt := when(t, caller, true, "CANCEL", func(m sipMsg) bool { return m.isRequest("CANCEL") })
	endAt := when(t, caller, false, "487", func(m sipMsg) bool { return m.isResponse(487, "INVITE") })
	t.Logf("CANCEL → 487 at the caller: %s (the hold is %s)", ms(endAt.Sub(cancelAt)), r.hold)
	if d := endAt.Sub(cancelAt); d > r.hold/2 {
		t.Errorf("the 487 came %v after the CANCEL: the hold was not ended by it", d)
	}
	if core := strings.Join(r.coreLog(p.CallID), "\n"); !strings.Contains(core, "CORE-CANCEL") {
		t.Errorf("Kamailio logged no CANCEL for %s:\n%s", p.CallID, core)
	}
	if evs := r.pushEvents(t, m, "unanswered"); details(evs) != "sent unanswered" {
		t.Errorf("push audit events for %s: %q, want \"sent unanswered\"", m.user, details(evs))
	}

	// The app opens later anyway: the canceled call is not waiting for it.
	peek := r.startMobile(t, m, "peek", "")
	if code := peek.wait(t); code != 0 {
		t.Errorf("the phone's registration after the cancel: exit %d\n%s", code, peek.report())
	}
	for _, msg := range peek.messages() {
		if !msg.sent && !strings.HasPrefix(msg.first, "SIP/2.0 ") {
			t.Errorf("the phone, back after the CANCEL, got %s", msg.raw)
		}
	}
	if more := r.gw.more(); len(more) > 0 {
		t.Errorf("a canceled call pushed %d more times: %+v", len(more), more)
	}
	return m
}

func (r *pushRig) unanswered(t *testing.T) mobile {
	callerUser, m := r.users()
	r.sleep(t, m)
	r.gw.more()
	caller := startPhone(t, phoneOpts{
		name: "caller", target: r.k.addr(), transport: "u1",
		scenario: "push_uac_held.xml", roles: []string{"unanswered"},
		keys:  map[string]string{"user": callerUser, "callee": m.user, "mport": strconv.Itoa(freePort(t))},
		limit: 20 * time.Second,
	})
	p := r.gw.next(t, 15*time.Second)
	checkPush(t, p, m, "INVITE", callerUser)
	if code := caller.wait(t); code != 0 {
		t.Fatalf("caller exit %d (want 480 after the hold)\nKamailio for Call-ID %s:\n%s\n%s", code, p.CallID, strings.Join(r.coreLog(p.CallID), "\n"), caller.report())
	}
	isInvite := func(m sipMsg) bool { return m.isRequest("INVITE") }
	sentAt := when(t, caller, true, "INVITE", isInvite)
	endAt := when(t, caller, false, "480", func(m sipMsg) bool { return m.isResponse(480, "INVITE") })
	took := endAt.Sub(sentAt)
	t.Logf("INVITE → 480 at the caller: %s (hold %s; push at %s)", ms(took), r.hold, ms(p.at.Sub(sentAt)))
	if took < r.hold-100*time.Millisecond || took > r.hold+1500*time.Millisecond {
		t.Errorf("480 after %v, want about the hold (%v)", took, r.hold)
	}
	if evs := r.pushEvents(t, m, "unanswered"); details(evs) != "sent unanswered" {
		t.Errorf("push audit events for %s: %q, want \"sent unanswered\"", m.user, details(evs))
	} else {
		t.Logf("%s", evs[1].raw)
	}
	if more := r.gw.more(); len(more) > 0 {
		t.Errorf("an unanswered call pushed %d more times: %+v", len(more), more)
	}
	return m
}

// tellSipp sends the sipp caller on port an INFO within its call callID:
// the word it waits for (push_uac_held.xml, role cancel).
func tellSipp(t *testing.T, port int, callID string) {
	t.Helper()
	c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	must(t, err)
	defer c.Close()
	local := c.LocalAddr().String()
	msg := fmt.Sprintf("INFO sip:caller@127.0.0.1:%d SIP/2.0\r\n"+
		"Via: SIP/2.0/UDP %s;branch=z9hG4bK-tell-%d;rport\r\n"+
		"Max-Forwards: 70\r\n"+
		"From: <sip:test@127.0.0.1>;tag=tell\r\n"+
		"To: <sip:caller@127.0.0.1:%d>\r\n"+
		"Call-ID: %s\r\n"+
		"CSeq: 1 INFO\r\n"+
		"Content-Length: 0\r\n\r\n", port, local, time.Now().UnixNano(), port, callID)
	_, err = c.Write([]byte(msg))
	must(t, err)
}
