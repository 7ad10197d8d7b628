//go:build interop || bench

// Interop tests for reachability: sipp phones call, cancel and message
// each other through a real sipedge binary and a real Kamailio 5.6 core
// (lookup("location") with Path, record_route, t_relay), on 127.0.0.1,
// over UDP and over TCP.
//
//	go test -race -tags interop -count=1 -v ./cmd/sipedge/ -run 'Interop(Call|Cancel|Message)'
//
// Each test runs the exchange for several placements of the two phones:
//
//	edge-to-edge  both phones registered through sipedge (the goal: the
//	              request crosses sipedge twice, phone → edge → core →
//	              edge → phone, and the edge is in the route set twice)
//	core-to-edge  the caller/sender straight at Kamailio, the called phone
//	              through sipedge (requests from the core to a phone)
//	edge-to-core  the caller through sipedge, the called phone straight at
//	              Kamailio (phone requests to the core)
//
// sipp scenarios (testdata/interop): the called phone runs
// uas_register_wait.xml (REGISTER with digest auth, then wait) with an
// out-of-call scenario (-oocsf uas_call.xml | uas_cancel.xml |
// uas_message.xml) that takes the request, whose Call-ID the registering
// call does not know. The caller runs uac_call.xml or uac_cancel.xml as
// two sipp calls of one process (call 1 registers, call 2 calls), so both
// use the phone's one socket or connection; uac_message.xml sends one
// MESSAGE without registering.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ------------------------------------------------------------ sipp phones

type phoneOpts struct {
	name      string            // for logs: "callee", "caller", ...
	target    string            // host:port it sends to: sipedge's access side or Kamailio
	transport string            // u1 | t1
	scenario  string            // file in testdata/interop
	ooc       string            // out-of-call scenario in testdata/interop, optional
	roles     []string          // -inf SEQUENTIAL, one line (field0) per sipp call
	keys      map[string]string // -key NAME VALUE
	port      int               // local port; 0 picks a free one
	calls     int               // -m (default 1)
	rate      int               // -r (default 10)
	limit     time.Duration     // sipp -timeout (with -timeout_error)
	load      bool              // load generator: no -trace_msg, 4 MiB socket buffers
	args      []string          // more sipp arguments (-trace_rtt ...)
}

// phone is a sipp process playing one phone (or a load generator).
type phone struct {
	opts phoneOpts
	dir  string
	port int
	p    *proc
}

func startPhone(t *testing.T, o phoneOpts) *phone {
	t.Helper()
	if o.calls == 0 {
		o.calls = 1
	}
	if o.rate == 0 {
		o.rate = 10
	}
	if o.limit == 0 {
		o.limit = 30 * time.Second
	}
	dir := t.TempDir()
	ph := &phone{opts: o, dir: dir, port: o.port}
	if ph.port == 0 {
		ph.port = freePort(t)
	}
	abs := func(name string) string {
		p, err := filepath.Abs(filepath.Join(interopDir, name))
		must(t, err)
		return p
	}
	args := []string{
		"sipp", o.target,
		"-sf", abs(o.scenario),
		"-i", "127.0.0.1", "-p", strconv.Itoa(ph.port), "-t", o.transport,
		"-m", strconv.Itoa(o.calls), "-r", strconv.Itoa(o.rate), "-rp", "1000",
		"-timeout", strconv.Itoa(int((o.limit + time.Second - 1) / time.Second)), "-timeout_error",
		"-recv_timeout", "10000",
		"-nostdin",
		"-trace_err", "-error_file", filepath.Join(dir, "errors.log"),
		"-trace_stat", "-stf", filepath.Join(dir, "stat.csv"),
		"-trace_screen", "-screen_file", filepath.Join(dir, "screen.log"),
	}
	if o.load {
		// A busy sipp must not lose the responses it is measured on.
		args = append(args, "-buff_size", strconv.Itoa(4<<20))
	} else {
		args = append(args, "-trace_msg", "-message_file", filepath.Join(dir, "messages.log"))
	}
	if o.ooc != "" {
		args = append(args, "-oocsf", abs(o.ooc))
	}
	if len(o.roles) > 0 {
		csv := filepath.Join(dir, "roles.csv")
		must(t, os.WriteFile(csv, []byte("SEQUENTIAL\n"+strings.Join(o.roles, "\n")+"\n"), 0o644))
		args = append(args, "-inf", csv)
	}
	for k, v := range o.keys {
		args = append(args, "-key", k, v)
	}
	args = append(args, o.args...)
	ph.p = startProc(t, "sipp "+o.name, procOpts{dir: dir, logPath: filepath.Join(dir, "sipp.out")}, args...)
	return ph
}

// wait waits for sipp to end by itself (its -timeout plus a margin) and
// returns its exit status; -1 when it had to be killed.
func (ph *phone) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-ph.p.done:
	case <-time.After(ph.opts.limit + 15*time.Second):
		t.Errorf("sipp %s did not end within %s; killing it", ph.opts.name, ph.opts.limit+15*time.Second)
		ph.p.stop(t)
		return -1
	}
	var ee *exec.ExitError
	if errors.As(ph.p.err, &ee) {
		return ee.ExitCode()
	}
	if ph.p.err != nil {
		t.Errorf("sipp %s: %v", ph.opts.name, ph.p.err)
		return -1
	}
	return 0
}

// waitAfter waits for a phone that waits to be reached, once the other
// side ended with exit status other: when that failed, the request may
// never come, so it is stopped at once (-2) rather than left to its
// -timeout.
func (ph *phone) waitAfter(t *testing.T, other int) int {
	t.Helper()
	if other != 0 {
		select {
		case <-ph.p.done:
		case <-time.After(2 * time.Second):
			ph.p.stop(t)
			return -2
		}
	}
	return ph.wait(t)
}

func (ph *phone) file(name string) string {
	b, _ := os.ReadFile(filepath.Join(ph.dir, name))
	return string(b)
}

func (ph *phone) stat() sippResult {
	return sippResult{stat: lastStat(filepath.Join(ph.dir, "stat.csv")), errors: ph.file("errors.log")}
}

// report is what to show when the phone's part failed.
func (ph *phone) report() string {
	return fmt.Sprintf("--- sipp %s (port %d, %s) errors:\n%s\n--- sipp %s messages (tail):\n%s",
		ph.opts.name, ph.port, ph.opts.scenario, tail(ph.file("errors.log"), 30),
		ph.opts.name, tail(ph.file("messages.log"), 150))
}

// messages parses sipp's -trace_msg file.
func (ph *phone) messages() []sipMsg { return parseSippTrace(ph.file("messages.log")) }

// ------------------------------------------------------------ SIP messages

// sipMsg is one message of a sipp -trace_msg file.
type sipMsg struct {
	sent  bool   // sent by sipp (else received)
	first string // start line
	hdrs  [][2]string
	body  string
	raw   string
}

var traceHead = regexp.MustCompile(`^(UDP|TCP) message (sent|received)`)

func parseSippTrace(s string) []sipMsg {
	var out []sipMsg
	for _, block := range strings.Split(s, "\n-----------------------------------------------") {
		lines := strings.Split(strings.ReplaceAll(block, "\r", ""), "\n")
		i := 0
		for i < len(lines) && !traceHead.MatchString(lines[i]) {
			i++
		}
		if i == len(lines) {
			continue
		}
		m := sipMsg{sent: strings.Contains(lines[i], " sent")}
		i++
		for i < len(lines) && strings.TrimSpace(lines[i]) == "" {
			i++
		}
		start := i
		if i < len(lines) {
			m.first = lines[i]
			i++
		}
		for ; i < len(lines) && lines[i] != ""; i++ {
			name, val, ok := strings.Cut(lines[i], ":")
			if !ok {
				continue
			}
			m.hdrs = append(m.hdrs, [2]string{strings.TrimSpace(name), strings.TrimSpace(val)})
		}
		m.body = strings.TrimSpace(strings.Join(lines[min(i, len(lines)):], "\n"))
		m.raw = strings.TrimSpace(strings.Join(lines[start:], "\n"))
		if m.first != "" {
			out = append(out, m)
		}
	}
	return out
}

// values returns every value of header name, comma-joined lists split
// (sipp joins repeated headers into one).
func (m sipMsg) values(name string) []string {
	var vs []string
	for _, h := range m.hdrs {
		if strings.EqualFold(h[0], name) {
			vs = append(vs, splitList(h[1])...)
		}
	}
	return vs
}

func (m sipMsg) header(name string) string {
	if vs := m.values(name); len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// splitList splits a header value at commas outside <> and quotes.
func splitList(v string) []string {
	var out []string
	depth, quoted, from := 0, false, 0
	for i, c := range v {
		switch {
		case c == '"':
			quoted = !quoted
		case quoted:
		case c == '<':
			depth++
		case c == '>':
			depth--
		case c == ',' && depth == 0:
			out = append(out, strings.TrimSpace(v[from:i]))
			from = i + 1
		}
	}
	return append(out, strings.TrimSpace(v[from:]))
}

func (m sipMsg) isRequest(method string) bool { return strings.HasPrefix(m.first, method+" ") }

func (m sipMsg) isResponse(code int, method string) bool {
	return strings.HasPrefix(m.first, fmt.Sprintf("SIP/2.0 %d ", code)) &&
		strings.HasSuffix(m.header("CSeq"), " "+method)
}

// find returns the first message (sent or received) that matches.
func find(ms []sipMsg, sent bool, match func(sipMsg) bool) (sipMsg, bool) {
	for _, m := range ms {
		if m.sent == sent && match(m) {
			return m, true
		}
	}
	return sipMsg{}, false
}

// viaSentBy returns host:port of a Via value ("SIP/2.0/UDP h:p;branch=...").
func viaSentBy(v string) string {
	_, rest, _ := strings.Cut(strings.TrimSpace(v), " ")
	rest = strings.TrimSpace(rest)
	if i := strings.IndexAny(rest, "; "); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// uriUser returns the user part of a name-addr or URI ("" if none).
func uriUser(u string) string {
	u = strings.Trim(strings.TrimSpace(u), "<>")
	if i := strings.IndexByte(u, '>'); i >= 0 {
		u = u[:i]
	}
	_, rest, _ := strings.Cut(u, ":")
	user, _, ok := strings.Cut(rest, "@")
	if !ok {
		return ""
	}
	return user
}

// ----------------------------------------------------------- the lab

// reachLab is one Kamailio core and one sipedge in front of it.
type reachLab struct {
	k         *kamailio
	e         *sipedge
	transport string // u1 | t1 (phones); sipedge → Kamailio uses the same
	proto     string // UDP | TCP
	nextUser  int
}

func startReachLab(t *testing.T, transport string) *reachLab {
	t.Helper()
	needTools(t, "kamailio", "kamcmd", "sipp")
	up := map[string]string{"u1": "udp", "t1": "tcp"}[transport]
	k := startKamailio(t, kamOpts{users: 100, logCalls: true})
	e := startSipedge(t, edgeOpts{mode: "path", upstream: fmt.Sprintf("sip:%s;transport=%s", k.addr(), up)})
	return &reachLab{k: k, e: e, transport: transport, proto: strings.ToUpper(up), nextUser: 1000}
}

// users hands out a fresh pair of subscribers for each exchange, so
// contacts of an earlier one never take part (Kamailio would fork to them).
func (l *reachLab) users() (caller, callee string) {
	l.nextUser += 2
	return strconv.Itoa(l.nextUser - 2), strconv.Itoa(l.nextUser - 1)
}

// placement says which phones register (and send) through sipedge.
type placement struct {
	name                   string
	callerEdge, calleeEdge bool
}

var placements = []placement{
	{"edge-to-edge", true, true},
	{"core-to-edge", false, true},
	{"edge-to-core", true, false},
}

func (l *reachLab) target(viaEdge bool) string {
	if viaEdge {
		return l.e.udp // the access side listens on one address for UDP and TCP
	}
	return l.k.addr()
}

// waitRegistered waits until Kamailio has a contact for user (with
// sipedge's Path when it registered through sipedge).
func (l *reachLab) waitRegistered(t *testing.T, ph *phone, user string, viaEdge bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, c := range l.k.ulDump(t) {
			if c.AOR != user {
				continue
			}
			if viaEdge && !strings.Contains(c.Path, l.e.core) {
				t.Fatalf("AoR %s registered without sipedge's Path (%s): Path=%q", user, l.e.core, c.Path)
			}
			return
		}
		if ph.p.exited() || time.Now().After(deadline) {
			t.Fatalf("%s (user %s) did not register with Kamailio\n%s", ph.opts.name, user, ph.report())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// coreLog returns Kamailio's CORE-* lines for a Call-ID, prefix dropped.
func (l *reachLab) coreLog(callID string) []string {
	var out []string
	for _, line := range strings.Split(l.k.p.log(), "\n") {
		i := strings.Index(line, "CORE-")
		if i < 0 || !strings.Contains(line, "ci="+callID+" ") {
			continue
		}
		out = append(out, strings.TrimSpace(line[i:]))
	}
	return out
}

// coreDst returns the du= (destination URI) Kamailio logged for the first
// line that starts with prefix ("CORE-LOOKUP INVITE").
func coreDst(lines []string, prefix string) (string, bool) {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix+" ") {
			_, du, ok := strings.Cut(l, " du=")
			return du, ok
		}
	}
	return "", false
}

// expectedPath is the Via and Record-Route sets (top first, host:port) a
// dialog-creating request has when it reaches the called phone, and
// which Record-Route entries carry a flow token. A phone behind sipedge
// sees sipedge alone (topology hiding, on by default): its Via, and its
// access-side Record-Route with the phone's own flow token.
func (l *reachLab) expectedPath(pl placement, callerAddr string, recordRoute bool) (vias, rrs []string, tokens []bool) {
	core := l.k.addr()
	if pl.calleeEdge {
		vias = append(vias, l.e.udp)
		rrs = append(rrs, l.e.udp)
		tokens = append(tokens, true)
		if !recordRoute {
			rrs, tokens = nil, nil
		}
		return vias, rrs, tokens
	}
	vias = append(vias, core)
	rrs = append(rrs, core)
	tokens = append(tokens, false)
	if pl.callerEdge {
		vias = append(vias, l.e.core)
		rrs = append(rrs, l.e.core, l.e.udp)
		tokens = append(tokens, false, true)
	}
	vias = append(vias, callerAddr)
	if !recordRoute {
		rrs, tokens = nil, nil
	}
	return vias, rrs, tokens
}

// checkArrival checks that req (as the called phone received it) took
// the expected path: its Via set, and for a dialog its Record-Route set,
// with sipedge's access-side entries carrying a flow token.
func (l *reachLab) checkArrival(t *testing.T, req sipMsg, pl placement, callerAddr string, dialog bool) {
	t.Helper()
	wantVias, wantRRs, tokens := l.expectedPath(pl, callerAddr, dialog)
	var gotVias []string
	for _, v := range req.values("Via") {
		gotVias = append(gotVias, viaSentBy(v))
	}
	if strings.Join(gotVias, " ") != strings.Join(wantVias, " ") {
		t.Errorf("%s reached the phone with Vias %v, want %v (callee side first; sipedge access %s, sipedge core %s, Kamailio %s)",
			strings.Fields(req.first)[0], gotVias, wantVias, l.e.udp, l.e.core, l.k.addr())
	}
	if pl.calleeEdge {
		if top := req.header("Via"); !strings.Contains(top, "/"+l.proto+" ") {
			t.Errorf("top Via %q: want transport %s (the phone's flow)", top, l.proto)
		}
	}
	if !dialog {
		return
	}
	rrs := req.values("Record-Route")
	var got []string
	for _, rr := range rrs {
		got = append(got, uriHostPort(rr))
	}
	if strings.Join(got, " ") != strings.Join(wantRRs, " ") {
		t.Errorf("%s reached the phone with Record-Route %v, want %v", strings.Fields(req.first)[0], rrs, wantRRs)
		return
	}
	for i, tok := range tokens {
		if u := uriUser(rrs[i]); tok != (u != "") {
			t.Errorf("Record-Route %d %s: flow token present = %v, want %v", i, rrs[i], u != "", tok)
		}
		if pl.calleeEdge || pl.callerEdge {
			if l.proto == "TCP" && got[i] != l.k.addr() && !strings.Contains(rrs[i], "transport=tcp") {
				t.Errorf("Record-Route %d %s: want ;transport=tcp", i, rrs[i])
			}
		}
	}
}

// ---------------------------------------------------------------- calls

type callKind int

const (
	plainCall    callKind = iota // INVITE/180/200/ACK ... BYE/200
	canceledCall                 // INVITE/180, CANCEL/200, 487/ACK
)

func TestInteropCallUDP(t *testing.T) { runCallInterop(t, "u1", plainCall) }
func TestInteropCallTCP(t *testing.T) { runCallInterop(t, "t1", plainCall) }

func TestInteropCancelUDP(t *testing.T) { runCallInterop(t, "u1", canceledCall) }
func TestInteropCancelTCP(t *testing.T) { runCallInterop(t, "t1", canceledCall) }

func runCallInterop(t *testing.T, transport string, kind callKind) {
	l := startReachLab(t, transport)
	for _, pl := range placements {
		t.Run(pl.name, func(t *testing.T) { l.call(t, pl, kind) })
	}
}

func (l *reachLab) call(t *testing.T, pl placement, kind callKind) {
	callerUser, calleeUser := l.users()
	uas, uac := "uas_call.xml", "uac_call.xml"
	if kind == canceledCall {
		uas, uac = "uas_cancel.xml", "uac_cancel.xml"
	}
	callee := startPhone(t, phoneOpts{
		name: "callee", target: l.target(pl.calleeEdge), transport: l.transport,
		scenario: "uas_register_wait.xml", ooc: uas,
		keys:  map[string]string{"user": calleeUser, "pass": "pw" + calleeUser, "mport": strconv.Itoa(freePort(t))},
		limit: 30 * time.Second,
	})
	l.waitRegistered(t, callee, calleeUser, pl.calleeEdge)
	caller := startPhone(t, phoneOpts{
		name: "caller", target: l.target(pl.callerEdge), transport: l.transport,
		scenario: uac, roles: []string{"register", "call"}, calls: 2,
		keys: map[string]string{
			"user": callerUser, "pass": "pw" + callerUser, "callee": calleeUser,
			"mport": strconv.Itoa(freePort(t)),
		},
		limit: 20 * time.Second,
	})
	callerExit := caller.wait(t)
	calleeExit := callee.waitAfter(t, callerExit)
	callerAddr := fmt.Sprintf("127.0.0.1:%d", caller.port)

	cms, ems := caller.messages(), callee.messages()
	inv, gotInvite := find(ems, false, func(m sipMsg) bool { return m.isRequest("INVITE") })
	callID := ""
	if gotInvite {
		callID = inv.header("Call-ID")
	} else if m, ok := find(cms, true, func(m sipMsg) bool { return m.isRequest("INVITE") }); ok {
		callID = m.header("Call-ID")
	}
	core := l.coreLog(callID)
	if callerExit != 0 || calleeExit != 0 {
		t.Errorf("caller exit %d, callee exit %d (want 0 and 0; -2: stopped)\nKamailio for Call-ID %s:\n%s\n%s\n%s",
			callerExit, calleeExit, callID, strings.Join(core, "\n"), caller.report(), callee.report())
		if res, ok := find(cms, false, func(m sipMsg) bool { return m.isResponse(482, "INVITE") }); ok && pl.callerEdge && pl.calleeEdge {
			t.Errorf("sipedge answered 482 Loop Detected: the INVITE spirals (phone → sipedge → Kamailio → sipedge → phone) "+
				"and sipedge's core side took its own earlier Via (%s) for a loop:\n%s", l.e.core, res.raw)
		}
	}
	if !gotInvite {
		t.Fatalf("the callee received no INVITE")
	}
	l.checkArrival(t, inv, pl, callerAddr, true)
	t.Logf("INVITE as the callee received it:\n%s", inv.raw)
	t.Logf("Kamailio for Call-ID %s:\n%s", callID, strings.Join(core, "\n"))

	du, ok := coreDst(core, "CORE-LOOKUP INVITE")
	switch {
	case !ok:
		t.Errorf("Kamailio logged no lookup for the INVITE")
	case pl.calleeEdge && uriHostPort(du) != l.e.core:
		t.Errorf("Kamailio relayed the INVITE to %s, want sipedge's core side %s (Path)", du, l.e.core)
	case !pl.calleeEdge && du != "<null>":
		t.Errorf("Kamailio relayed the INVITE to %s, want the callee's contact", du)
	}

	switch kind {
	case plainCall:
		l.checkCall(t, pl, cms, ems, core)
	case canceledCall:
		l.checkCancel(t, pl, cms, ems, core)
	}
}

func (l *reachLab) checkCall(t *testing.T, pl placement, cms, ems []sipMsg, core []string) {
	t.Helper()
	for _, step := range []struct {
		who  string
		ms   []sipMsg
		sent bool
		what string
		ok   func(sipMsg) bool
	}{
		{"caller", cms, false, "180", func(m sipMsg) bool { return m.isResponse(180, "INVITE") }},
		{"caller", cms, false, "200 (INVITE)", func(m sipMsg) bool { return m.isResponse(200, "INVITE") }},
		{"callee", ems, false, "ACK", func(m sipMsg) bool { return m.isRequest("ACK") }},
		{"callee", ems, false, "BYE", func(m sipMsg) bool { return m.isRequest("BYE") }},
		{"caller", cms, false, "200 (BYE)", func(m sipMsg) bool { return m.isResponse(200, "BYE") }},
	} {
		if _, ok := find(step.ms, step.sent, step.ok); !ok {
			t.Errorf("the %s did not receive %s", step.who, step.what)
		}
	}
	// The caller's BYE follows the route set: sipedge first when the
	// caller is behind it.
	if bye, ok := find(cms, true, func(m sipMsg) bool { return m.isRequest("BYE") }); ok {
		routes := bye.values("Route")
		t.Logf("BYE as the caller sent it:\n%s", bye.raw)
		if pl.callerEdge && (len(routes) == 0 || uriHostPort(routes[0]) != l.e.udp) {
			t.Errorf("caller's BYE Route %v: want sipedge's access side %s first", routes, l.e.udp)
		}
	}
	if bye, ok := find(ems, false, func(m sipMsg) bool { return m.isRequest("BYE") }); ok && pl.calleeEdge {
		if got := viaSentBy(bye.header("Via")); got != l.e.udp {
			t.Errorf("callee's BYE came from %s (top Via), want sipedge's access side %s", got, l.e.udp)
		}
		du, ok := coreDst(core, "CORE-INDIALOG BYE")
		if !ok || uriHostPort(du) != l.e.core {
			t.Errorf("Kamailio routed the BYE to %q, want sipedge's core side %s (its Record-Route)", du, l.e.core)
		}
	}
	if ack, ok := find(ems, false, func(m sipMsg) bool { return m.isRequest("ACK") }); ok && pl.calleeEdge {
		if got := viaSentBy(ack.header("Via")); got != l.e.udp {
			t.Errorf("callee's ACK came from %s (top Via), want sipedge's access side %s", got, l.e.udp)
		}
	}
}

func (l *reachLab) checkCancel(t *testing.T, pl placement, cms, ems []sipMsg, core []string) {
	t.Helper()
	for _, step := range []struct {
		who  string
		ms   []sipMsg
		what string
		ok   func(sipMsg) bool
	}{
		{"caller", cms, "180", func(m sipMsg) bool { return m.isResponse(180, "INVITE") }},
		{"callee", ems, "CANCEL", func(m sipMsg) bool { return m.isRequest("CANCEL") }},
		{"callee", ems, "ACK (for its 487)", func(m sipMsg) bool { return m.isRequest("ACK") }},
		{"caller", cms, "200 (CANCEL)", func(m sipMsg) bool { return m.isResponse(200, "CANCEL") }},
		{"caller", cms, "487 (INVITE)", func(m sipMsg) bool { return m.isResponse(487, "INVITE") }},
	} {
		if _, ok := find(step.ms, false, step.ok); !ok {
			t.Errorf("the %s did not receive %s", step.who, step.what)
		}
	}
	if c, ok := find(ems, false, func(m sipMsg) bool { return m.isRequest("CANCEL") }); ok {
		t.Logf("CANCEL as the callee received it:\n%s", c.raw)
		if pl.calleeEdge {
			if got := viaSentBy(c.header("Via")); got != l.e.udp {
				t.Errorf("CANCEL came from %s (top Via), want sipedge's access side %s", got, l.e.udp)
			}
		}
	}
	if !strings.Contains(strings.Join(core, "\n"), "CORE-CANCEL") {
		t.Errorf("Kamailio logged no CANCEL")
	}
	// Who made the caller's 487: the callee's To tag says it was relayed
	// end to end; another tag means a proxy answered on its own.
	if r, ok := find(cms, false, func(m sipMsg) bool { return m.isResponse(487, "INVITE") }); ok {
		calleeTag := ""
		if m, ok := find(ems, true, func(m sipMsg) bool { return m.isResponse(487, "INVITE") }); ok {
			calleeTag = tagOf(m.header("To"))
		}
		if tag := tagOf(r.header("To")); tag != calleeTag {
			t.Logf("note: the caller's 487 has To tag %q, the callee's 487 had %q: a proxy on the way answered 487 itself", tag, calleeTag)
		}
	}
}

func tagOf(nameAddr string) string {
	_, after, ok := strings.Cut(nameAddr, ";tag=")
	if !ok {
		return ""
	}
	if i := strings.IndexAny(after, ";, "); i >= 0 {
		after = after[:i]
	}
	return after
}

// -------------------------------------------------------------- MESSAGE

func TestInteropMessageUDP(t *testing.T) { runMessageInterop(t, "u1") }
func TestInteropMessageTCP(t *testing.T) { runMessageInterop(t, "t1") }

// runMessageInterop: a phone registered through sipedge takes a MESSAGE
// sent to its AOR, from a sender straight at Kamailio (core-to-edge: a
// request from the core) and from a sender behind sipedge (edge-to-edge).
func runMessageInterop(t *testing.T, transport string) {
	l := startReachLab(t, transport)
	for _, pl := range []placement{placements[1], placements[0]} {
		t.Run(pl.name, func(t *testing.T) { l.message(t, pl) })
	}
}

func (l *reachLab) message(t *testing.T, pl placement) {
	senderUser, user := l.users()
	rcpt := startPhone(t, phoneOpts{
		name: "recipient", target: l.target(pl.calleeEdge), transport: l.transport,
		scenario: "uas_register_wait.xml", ooc: "uas_message.xml",
		keys:  map[string]string{"user": user, "pass": "pw" + user},
		limit: 30 * time.Second,
	})
	l.waitRegistered(t, rcpt, user, pl.calleeEdge)
	sender := startPhone(t, phoneOpts{
		name: "sender", target: l.target(pl.callerEdge), transport: l.transport,
		scenario: "uac_message.xml", roles: []string{"register", "message"}, calls: 2,
		keys:  map[string]string{"user": senderUser, "pass": "pw" + senderUser, "callee": user},
		limit: 15 * time.Second,
	})
	senderExit := sender.wait(t)
	rcptExit := rcpt.waitAfter(t, senderExit)

	sms, rms := sender.messages(), rcpt.messages()
	callID := ""
	if m, ok := find(sms, true, func(m sipMsg) bool { return m.isRequest("MESSAGE") }); ok {
		callID = m.header("Call-ID")
	}
	core := l.coreLog(callID)
	if senderExit != 0 || rcptExit != 0 {
		t.Errorf("sender exit %d, recipient exit %d (want 0 and 0; -2: stopped)\nKamailio for Call-ID %s:\n%s\n%s\n%s",
			senderExit, rcptExit, callID, strings.Join(core, "\n"), sender.report(), rcpt.report())
		if res, ok := find(sms, false, func(m sipMsg) bool { return m.isResponse(482, "MESSAGE") }); ok && pl.callerEdge {
			t.Errorf("sipedge answered 482 Loop Detected: the MESSAGE spirals (phone → sipedge → Kamailio → sipedge → phone) "+
				"and sipedge's core side took its own earlier Via (%s) for a loop:\n%s", l.e.core, res.raw)
		}
	}
	msg, ok := find(rms, false, func(m sipMsg) bool { return m.isRequest("MESSAGE") })
	if !ok {
		t.Fatalf("the recipient received no MESSAGE")
	}
	t.Logf("MESSAGE as the recipient received it:\n%s", msg.raw)
	t.Logf("Kamailio for Call-ID %s:\n%s", callID, strings.Join(core, "\n"))
	l.checkArrival(t, msg, pl, fmt.Sprintf("127.0.0.1:%d", sender.port), false)
	if !strings.Contains(msg.body, "from the core side") {
		t.Errorf("MESSAGE body %q lost on the way", msg.body)
	}
	if du, ok := coreDst(core, "CORE-LOOKUP MESSAGE"); !ok || uriHostPort(du) != l.e.core {
		t.Errorf("Kamailio relayed the MESSAGE to %q, want sipedge's core side %s (Path)", du, l.e.core)
	}
	if _, ok := find(sms, false, func(m sipMsg) bool { return m.isResponse(200, "MESSAGE") }); !ok {
		t.Errorf("the sender did not receive 200 for its MESSAGE")
	}
}
