//go:build interop

// Interop tests for a core that goes away (issue 12, registrar offload
// and branch survivability): sipp phones refresh through a real sipedge
// binary while the Kamailio core behind it is killed (kill -9) and
// started again on the same port with an empty location (usrloc in
// memory only, as a core without persistence restarts).
//
//	TestInteropCoreRestart  the core restarts empty: sipedge registers
//	                        every phone there again, paced, before the
//	                        phones' next refresh is due; the core reaches
//	                        them again
//	TestInteropSurvival     the core stays down for two minutes: known
//	                        phones keep their registrations and call each
//	                        other through the edge, new phones get 503;
//	                        once the core is back it holds every phone and
//	                        calls go through it again
//
// Both read sipedge's audit log (JSON lines) for the events that mark
// each step: core_down, core_up, mode_change, core_repopulate.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ------------------------------------------------------------------ lab

// survLab is one Kamailio core, restartable on its port, and one sipedge
// in front of it that probes it with OPTIONS every second (the least
// health_interval; each within 500 ms; down after
// two misses, up after two answers).
type survLab struct {
	users     int
	k         *kamailio // the core running now
	access    string    // sipedge's phone side (UDP and TCP)
	core      string    // sipedge's core side
	edge      *proc
	auditPath string
	adminAddr string
	tokenFile string
}

type survOpts struct {
	users        int    // Kamailio subscribers 1000..
	registration string // TOML for [registration]
	extra        string // more TOML (e.g. [survival])
}

func startSurvLab(t *testing.T, o survOpts) *survLab {
	t.Helper()
	needTools(t, "kamailio", "kamcmd", "sipp")
	l := &survLab{users: o.users}
	l.k = startKamailio(t, kamOpts{users: o.users, logCalls: true})
	bin := buildSipedge(t, buildRace)
	dir := t.TempDir()
	l.access = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	l.core = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	l.auditPath = filepath.Join(dir, "audit.log")
	l.adminAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	l.tokenFile = filepath.Join(dir, "admin.token")
	up := fmt.Sprintf("sip:%s;transport=udp", l.k.addr())
	cfg := sipedgeConfig(l.access, l.core, dir, edgeOpts{mode: "path", upstream: up, level: "info",
		registration: o.registration,
		extra: fmt.Sprintf("\n[admin]\nlisten = %q\ntoken_file = %q\n\n[audit]\nfile = %q\n", l.adminAddr, l.tokenFile, l.auditPath) +
			o.extra})
	upLine := fmt.Sprintf("upstreams = [%q]", up)
	if !strings.Contains(cfg, upLine) {
		t.Fatalf("sipedge's config has no %s line:\n%s", upLine, cfg)
	}
	cfg = strings.Replace(cfg, upLine, upLine+"\nhealth_interval = \"1s\"\nhealth_timeout = \"500ms\"\nup_after = 2\ndown_after = 2\ntry_timeout = \"1s\"", 1)
	cfgPath, out, err := writeSipedgeConfig(t, bin, dir, cfg)
	if err != nil {
		t.Fatalf("sipedge check-config: %v\n%s\nconfig:\n%s", err, out, cfg)
	}
	l.edge = runSipedge(t, procOpts{logPath: filepath.Join(dir, "sipedge.log")}, bin, cfgPath)
	waitSIP(t, l.edge, l.access)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(l.auditPath)
			t.Logf("sipedge audit log, core and mode events:\n%s", grepLines(string(b), `"event":"core_`)+"\n"+grepLines(string(b), `"event":"mode_change"`))
		}
	})
	return l
}

// killCore kills the core with SIGKILL (its process group: Kamailio and
// its children) and waits until it is gone.
func (l *survLab) killCore(t *testing.T) time.Time {
	t.Helper()
	l.k.p.kill()
	if !l.k.p.wait(10 * time.Second) {
		t.Fatal("Kamailio did not die of SIGKILL within 10 s")
	}
	return time.Now()
}

// restartCore starts a new Kamailio on the old one's port: same
// subscribers, an empty location.
func (l *survLab) restartCore(t *testing.T) time.Time {
	t.Helper()
	at := time.Now()
	k := runKamailio(t, procOpts{}, filepath.Join(interopDir, "kamailio.cfg.tmpl"), l.k.port, l.users, 256,
		map[string]any{"LogRegister": 0, "LogCalls": 1, "Children": 4})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("restarted kamailio log (tail):\n%s", tail(k.p.log(), 40))
		}
	})
	waitSIP(t, k.p, k.addr())
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(k.ctl); err == nil {
			break
		}
		if time.Now().After(deadline) || k.p.exited() {
			t.Fatalf("restarted Kamailio's ctl socket %s did not appear\n%s", k.ctl, tail(k.p.log(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.k = k
	return at
}

// aors is how many AORs the core's location holds (-1: kamcmd failed).
func (l *survLab) aors() int {
	n, err := kamStat(l.k, "location_users")
	if err != nil {
		return -1
	}
	return int(n)
}

// waitAORs polls the core's location every 200 ms until it holds n AORs;
// it returns when, or fails after within. It logs how the count grew,
// each second, from since.
func (l *survLab) waitAORs(t *testing.T, n int, since time.Time, within time.Duration, what string) time.Time {
	t.Helper()
	deadline := since.Add(within)
	var timeline []string
	last := time.Time{}
	for {
		got := l.aors()
		now := time.Now()
		if now.Sub(last) >= time.Second || got >= n {
			timeline, last = append(timeline, fmt.Sprintf("%.0fs:%d", now.Sub(since).Seconds(), got)), now
		}
		if got >= n && !now.After(deadline) {
			t.Logf("%s: AORs in the core's location, seconds after the start: %s", what, strings.Join(timeline, " "))
			return now
		}
		if now.After(deadline) {
			t.Fatalf("%s: the core's location holds %d AORs %v after the start, want %d; seconds after the start: %s",
				what, got, within, n, strings.Join(timeline, " "))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ------------------------------------------------------------ audit log

// auditLine is one event of sipedge's audit log.
type auditLine struct {
	Time   time.Time `json:"time"`
	Event  string    `json:"event"`
	Core   string    `json:"core"`
	Reason string    `json:"reason"`
	Detail string    `json:"detail"`
	Count  int       `json:"count"`
	AOR    string    `json:"aor"`
	Auth   string    `json:"auth"`
	raw    string
}

func (a auditLine) String() string { return a.raw }

// audit reads the audit log's complete lines.
func (l *survLab) audit(t *testing.T) []auditLine {
	t.Helper()
	b, err := os.ReadFile(l.auditPath)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	s := string(b)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i] // the last line may be half written
	} else {
		s = ""
	}
	var out []auditLine
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var a auditLine
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		a.raw = sc.Text()
		out = append(out, a)
	}
	return out
}

// waitAudit polls the audit log every 100 ms for an event of kind event,
// from the from-th line on, that match accepts (nil: any); it returns it
// and its index, or fails after within.
func (l *survLab) waitAudit(t *testing.T, from int, event string, match func(auditLine) bool, within time.Duration) (auditLine, int) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		lines := l.audit(t)
		for i := from; i < len(lines); i++ {
			if lines[i].Event == event && (match == nil || match(lines[i])) {
				return lines[i], i
			}
		}
		if l.edge.exited() {
			t.Fatalf("sipedge exited (%v) while the test waited for %q\n%s", l.edge.err, event, tail(l.edge.log(), 40))
		}
		if time.Now().After(deadline) {
			var seen []string
			for _, a := range lines[min(from, len(lines)):] {
				if a.Event != "register" && a.Event != "refresh" && a.Event != "challenged" {
					seen = append(seen, a.raw)
				}
			}
			t.Fatalf("no %q audit event within %v; since then (registrations left out):\n%s", event, within, tail(strings.Join(seen, "\n"), 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// reauths counts, from the from-th audit line on, the phones' answers to
// a challenge the core sent to a refresh the edge forwarded (the next
// event of the AOR after an auth_failure): forwarded to the core
// ("accepted", or another auth_failure) or answered by the edge
// ("cached"), and the AORs of those answered by the edge.
func reauths(lines []auditLine, from int) (forwarded, cached int, cachedAORs []string) {
	pending := map[string]bool{}
	for _, a := range lines[min(from, len(lines)):] {
		if a.AOR == "" {
			continue
		}
		if pending[a.AOR] && (a.Event == "refresh" || a.Event == "register" || a.Event == "auth_failure") {
			delete(pending, a.AOR)
			if a.Auth == "cached" {
				cached++
				cachedAORs = append(cachedAORs, a.AOR)
			} else {
				forwarded++
			}
		}
		if a.Event == "auth_failure" {
			pending[a.AOR] = true
		}
	}
	return forwarded, cached, cachedAORs
}

func hasDetail(s string) func(auditLine) bool {
	return func(a auditLine) bool { return strings.Contains(a.Detail, s) }
}

// ------------------------------------------------------------ sipp

// sippProc is a long-running sipp process: phones that register and
// stay registered, callers, and what talks to them. It dumps its
// statistics and per-message counts every second (-fd 1), so a test
// can follow it while it runs.
type sippProc struct {
	name      string
	target    string // host:port it sends to
	transport string // u1 | un | t1
	scenario  string // in testdata/interop
	ooc       string // out-of-call scenario, optional
	lines     []string
	keys      map[string]string // -key
	sets      map[string]string // -set (global variables)
	calls     int
	rate      int
	limit     time.Duration
	trace     bool // -trace_msg (small runs only)
}

func startSippProc(t *testing.T, o sippProc) *phone {
	t.Helper()
	dir := t.TempDir()
	ph := &phone{opts: phoneOpts{name: o.name, target: o.target, transport: o.transport, scenario: o.scenario,
		ooc: o.ooc, calls: o.calls, rate: o.rate, limit: o.limit}, dir: dir, port: freePort(t)}
	abs := func(name string) string {
		p, err := filepath.Abs(filepath.Join(interopDir, name))
		must(t, err)
		return p
	}
	csv := filepath.Join(dir, "inf.csv")
	must(t, os.WriteFile(csv, []byte("SEQUENTIAL\n"+strings.Join(o.lines, "\n")+"\n"), 0o644))
	args := []string{
		"sipp", o.target,
		"-sf", abs(o.scenario), "-inf", csv,
		"-i", "127.0.0.1", "-p", strconv.Itoa(ph.port), "-t", o.transport, "-max_socket", "5000",
		"-m", strconv.Itoa(o.calls), "-l", strconv.Itoa(o.calls), "-r", strconv.Itoa(o.rate), "-rp", "1000",
		"-timeout", strconv.Itoa(int((o.limit + time.Second - 1) / time.Second)), "-timeout_error",
		"-recv_timeout", "10000", "-aa", "-nostdin", "-buff_size", strconv.Itoa(4 << 20),
		"-trace_err", "-error_file", filepath.Join(dir, "errors.log"),
		"-trace_stat", "-stf", filepath.Join(dir, "stat.csv"), "-trace_counts", "-fd", "1",
		"-trace_screen", "-screen_file", filepath.Join(dir, "screen.log"),
	}
	if o.trace {
		args = append(args, "-trace_msg", "-message_file", filepath.Join(dir, "messages.log"))
	}
	if o.ooc != "" {
		args = append(args, "-oocsf", abs(o.ooc))
	}
	for k, v := range o.keys {
		args = append(args, "-key", k, v)
	}
	for k, v := range o.sets {
		args = append(args, "-set", k, v)
	}
	ph.p = startProc(t, "sipp "+o.name, procOpts{dir: dir, logPath: filepath.Join(dir, "sipp.out"), lifetime: o.limit + time.Minute}, args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- sipp %s (port %d) errors:\n%s", o.name, ph.port, sippErrors(ph.file("errors.log"), 20))
		}
	})
	return ph
}

// counts is the phone's last per-message counts dump (empty before the
// first).
func (ph *phone) counts() map[string]int64 {
	files, _ := filepath.Glob(filepath.Join(ph.dir, "*_counts.csv"))
	out := map[string]int64{}
	if len(files) != 1 {
		return out
	}
	for col, v := range lastStat(files[0]) {
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && col != "" {
			out[col] = n
		}
	}
	return out
}

// failed is the phone's failed calls so far (its last statistics dump).
func (ph *phone) failed() int64 { return ph.stat().stat64("FailedCall(C)") }

// succeeded is the phone's calls that ended well so far.
func (ph *phone) succeeded() int64 { return ph.stat().stat64("SuccessfulCall(C)") }

// sum adds the counts of the columns that end with suffix.
func sum(counts map[string]int64, suffix string) int64 {
	var n int64
	for col, v := range counts {
		if strings.HasSuffix(col, suffix) {
			n += v
		}
	}
	return n
}

// healthy fails the test when a phone lost a call (a refresh without its
// 200, a call that failed) or its sipp ended early.
func healthy(t *testing.T, when string, phs ...*phone) {
	t.Helper()
	for _, ph := range phs {
		if n := ph.failed(); n != 0 {
			t.Fatalf("%s: sipp %s has %d failed calls\n%s", when, ph.opts.name, n, sippErrors(ph.file("errors.log"), 20))
		}
		if ph.p.exited() {
			t.Fatalf("%s: sipp %s ended (%v)\n%s\n%s", when, ph.opts.name, ph.p.err, sippErrors(ph.file("errors.log"), 20), tail(ph.file("sipp.out"), 20))
		}
	}
}

// trigger tells a uac_call_on_trigger.xml caller on port to place its
// next call: a MESSAGE straight to its socket, answered 200 by its
// out-of-call scenario.
func trigger(t *testing.T, port int, n int) {
	t.Helper()
	p := dialRaw(t, "127.0.0.1", fmt.Sprintf("127.0.0.1:%d", port))
	p.send(fmt.Sprintf("MESSAGE sip:caller@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-trigger-%d\nMax-Forwards: 70\n"+
		"From: <sip:test@127.0.0.1>;tag=trigger%d\nTo: <sip:caller@127.0.0.1>\nCall-ID: trigger-%d-%d@127.0.0.1\nCSeq: 1 MESSAGE\n"+
		"Content-Length: 0\n\n", port, p.addr, n, n, n, port))
	if r := p.recv(5 * time.Second); r == nil || r.StatusCode != 200 {
		t.Fatalf("the caller did not take trigger %d: %v", n, r)
	}
}

// waitSucceeded polls a phone's statistics until n calls ended well;
// fails at once when one failed, or after within.
func waitSucceeded(t *testing.T, ph *phone, n int64, within time.Duration, what string) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if ph.succeeded() >= n {
			return time.Now()
		}
		if f := ph.failed(); f > 0 || time.Now().After(deadline) || ph.p.exited() {
			t.Fatalf("%s: sipp %s has %d calls through (want %d) and %d failed\n%s", what, ph.opts.name, ph.succeeded(), n, f, sippReport(ph))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stopPhones stops the sipp processes (SIGTERM: each writes its last
// statistics) and fails the test for any failed call.
func stopPhones(t *testing.T, phs ...*phone) {
	t.Helper()
	for _, ph := range phs {
		ph.p.stop(t)
		if n := ph.failed(); n != 0 {
			t.Errorf("sipp %s: %d failed calls\n%s", ph.opts.name, n, sippErrors(ph.file("errors.log"), 20))
		}
	}
}

// sippErrEntry starts each entry of sipp's -trace_err file (entries are
// not always separated by a newline).
var sippErrEntry = regexp.MustCompile(`\d{4}-\d\d-\d\d\t\d\d:\d\d:\d\d\.\d+\t`)

// sippErrors returns the last n entries of sipp's -trace_err output,
// leaving out the OPTIONS keepalives -aa answered.
func sippErrors(s string, n int) string {
	idx := sippErrEntry.FindAllStringIndex(s, -1)
	var out []string
	for i, m := range idx {
		end := len(s)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		e := strings.TrimSpace(s[m[0]:end])
		if !strings.Contains(e, "Automatic response mode for an unexpected") {
			out = append(out, e)
		}
	}
	if len(idx) == 0 && strings.TrimSpace(s) != "" {
		out = append(out, tail(s, n))
	}
	if len(out) > n {
		out = append([]string{fmt.Sprintf("[... %d entries before]", len(out)-n)}, out[len(out)-n:]...)
	}
	return strings.Join(out, "\n")
}

// sippReport is what to show when a phone's part failed: its errors and the
// tail of its message trace, if any.
func sippReport(ph *phone) string {
	return fmt.Sprintf("--- sipp %s (port %d, %s) errors:\n%s\n--- sipp %s messages (tail):\n%s",
		ph.opts.name, ph.port, ph.opts.scenario, sippErrors(ph.file("errors.log"), 20),
		ph.opts.name, tail(ph.file("messages.log"), 100))
}

func userLines(first, n int) []string {
	var out []string
	for u := first; u < first+n; u++ {
		out = append(out, fmt.Sprintf("%d;pw%d", u, u))
	}
	return out
}

// ------------------------------------------------------ core restart

// TestInteropCoreRestart: 300 phones register through sipedge (offload:
// phones granted 20 s ±10%, the core an hour) and refresh 2 s before
// their grant runs out, each on a socket of its own. They start 20 a
// second, so their refreshes arrive spread over each interval as a
// real population's do, not in one burst. The core is killed
// (kill -9) and, once sipedge saw it down, started again on its port
// with an empty location. Asserted: sipedge says core_down, core_up and
// core_repopulate started/done; every phone is back in the core's
// location within one refresh interval (20 s) plus the pacing time
// (phones / repopulate_rate) plus 5 s from core_up; MESSAGEs the core
// relays to some of them get their 200; no phone missed a 200.
//
// [survival] is on (grace 1m): between core_down and core_up (about two
// seconds) some twenty phones refresh, and with survival off each would
// get 503 (no core up), which sipp phones cannot retry and real ones
// retry only after Retry-After, their binding expired meanwhile. This
// test is about re-population; TestInteropSurvival about the outage.
func TestInteropCoreRestart(t *testing.T) {
	const (
		phones  = 300
		repopul = 50 // repopulate_rate
		// The longest a phone waits between two refreshes: 2 s before
		// the longest grant, 22 s.
		interval = 20 * time.Second
	)
	l := startSurvLab(t, survOpts{users: phones,
		registration: fmt.Sprintf("offload = true\nphone_expires = \"20s\"\ncore_expires = \"1h\"\nrepopulate_rate = %d\n", repopul),
		extra:        "\n[survival]\ngrace = \"1m\"\n"})
	ph := startSippProc(t, sippProc{name: "phones", target: l.access, transport: "un",
		scenario: "register_refresh_granted.xml", ooc: "uas_message_any.xml", lines: userLines(1000, phones),
		keys: map[string]string{"expires": "3600"}, sets: map[string]string{"refreshes": "100", "early": "2"},
		calls: phones, rate: 20, limit: 5 * time.Minute})
	l.waitAORs(t, phones, time.Now(), 30*time.Second, "first registrations")
	healthy(t, "registered", ph)

	mark := len(l.audit(t))
	killed := l.killCore(t)
	down, _ := l.waitAudit(t, mark, "core_down", nil, 10*time.Second)
	restarted := l.restartCore(t)
	up, _ := l.waitAudit(t, mark, "core_up", nil, 15*time.Second)
	bound := interval + time.Duration(phones/repopul)*time.Second + 5*time.Second
	// Told after the wait, whatever its outcome: how the phones' answers
	// to the restarted core's challenges were handled. One the edge
	// answers itself leaves its binding lost at the core until the
	// phone's next refresh, an interval later.
	defer func() {
		fwd, cached, aors := reauths(l.audit(t), mark)
		t.Logf("answers to the restarted core's challenges: %d forwarded to the core, %d answered by the edge from cache (their bindings wait for the next refresh): %v",
			fwd, cached, aors[:min(len(aors), 10)])
	}()
	back := l.waitAORs(t, phones, up.Time, bound, "re-population (from core_up)")
	started, _ := l.waitAudit(t, mark, "core_repopulate", hasDetail("started"), 5*time.Second)
	done, _ := l.waitAudit(t, mark, "core_repopulate", hasDetail("done"), time.Until(up.Time.Add(bound+5*time.Second)))
	t.Logf("core killed; core_down after %v; restarted; core_up %v after the restart; every phone back in its location %v after core_up (bound %v: one refresh interval %v + %d phones at %d/s + 5 s)",
		down.Time.Sub(killed).Round(time.Millisecond), up.Time.Sub(restarted).Round(time.Millisecond),
		back.Sub(up.Time).Round(100*time.Millisecond), bound, interval, phones, repopul)
	t.Logf("audit: %s\naudit: %s", started, done)
	if started.Count != phones {
		t.Errorf("core_repopulate started with count %d, want %d (every binding)", started.Count, phones)
	}

	// The core reaches the phones again: MESSAGEs from the core side.
	sample := []string{"1000", strconv.Itoa(1000 + phones/2), strconv.Itoa(1000 + phones - 1), "1001", "1002"}
	msgs := startSippProc(t, sippProc{name: "core-sender", target: l.k.addr(), transport: "u1",
		scenario: "uac_message_to.xml", lines: sample, calls: len(sample), rate: 10, limit: 20 * time.Second, trace: true})
	if code := msgs.wait(t); code != 0 || msgs.succeeded() != int64(len(sample)) {
		t.Errorf("MESSAGEs from the core to %v: sipp exit %d, %d of %d answered 200\n%s", sample, code, msgs.succeeded(), len(sample), sippReport(msgs))
	}
	healthy(t, "after the restart", ph)
	c := ph.counts()
	stopPhones(t, ph)
	m := scrapeMetrics(t, l.adminAddr, l.tokenFile)
	// A refresh the restarted core hears carries a nonce of the core that
	// died, which Kamailio refuses as older than itself: 401, and the
	// phone answers the new challenge (element 1 is the first 401).
	t.Logf("phones: %d REGISTERs sent (%d retransmitted), %d 200s, %d refreshes challenged again by the restarted core; sipedge answered %.0f itself, the cores %.0f",
		sum(c, "_REGISTER_Sent"), sum(c, "_REGISTER_Retrans"), sum(c, "_200_Recv"), sum(c, "_401_Recv")-c["1_401_Recv"],
		m["sipedge_register_absorbed_total"], m["sipedge_register_core_duration_seconds_count"])
}

// ----------------------------------------------------------- survival

// TestInteropSurvival: [survival] grace = "5m". A caller and a callee
// (both behind sipedge, both refreshing) and 50 more refreshing phones
// are registered; the core is killed and kept down for two minutes.
// Meanwhile: every refresh gets its 200, a call from the caller to the
// callee's AOR completes through the edge alone, a phone never seen
// before gets 503 with Retry-After, and the audit log says survival
// began. Then the core comes back, empty: survival ends, the core's
// location holds every phone again, and the next call goes through the
// core (Kamailio logs its location lookup). Run with offload on (phones
// granted 20 s, the core an hour) and off (phones ask 60 s of the core),
// side by side.
func TestInteropSurvival(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp")
	for _, offload := range []bool{true, false} {
		name := map[bool]string{true: "offload", false: "no-offload"}[offload]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			runSurvival(t, offload)
		})
	}
}

func runSurvival(t *testing.T, offload bool) {
	const (
		group  = 50
		outage = 2 * time.Minute
	)
	callerUser, calleeUser, newUser := 1000+group, 1000+group+1, 1000+group+2
	// interval: the longest a phone waits between two refreshes (2 s
	// before the longest grant: without offload the core grants the 60 s
	// a phone asks for, but the edge in survival phone_expires, 60 s ±10%).
	reg, expires, interval := "", "60", 64*time.Second
	if offload {
		reg, expires, interval = "offload = true\nphone_expires = \"20s\"\ncore_expires = \"1h\"\nrepopulate_rate = 50\n", "3600", 20*time.Second
	}
	l := startSurvLab(t, survOpts{users: group + 3, registration: reg, extra: "\n[survival]\ngrace = \"5m\"\n"})
	sets := map[string]string{"refreshes": "1000", "early": "2"}
	limit := 8 * time.Minute
	callee := startSippProc(t, sippProc{name: "callee", target: l.access, transport: "u1",
		scenario: "register_refresh_granted.xml", ooc: "uas_call_any.xml", lines: userLines(calleeUser, 1),
		keys: map[string]string{"expires": expires, "user": strconv.Itoa(calleeUser), "mport": strconv.Itoa(freePort(t))},
		sets: sets, calls: 1, rate: 10, limit: limit, trace: true})
	callerSets := map[string]string{"go": "0"}
	for k, v := range sets {
		callerSets[k] = v
	}
	caller := startSippProc(t, sippProc{name: "caller", target: l.access, transport: "u1",
		scenario: "uac_call_on_trigger.xml", ooc: "uas_trigger.xml", lines: []string{"register", "call;1", "call;2"},
		keys: map[string]string{"expires": expires, "user": strconv.Itoa(callerUser), "pass": fmt.Sprintf("pw%d", callerUser),
			"callee": strconv.Itoa(calleeUser), "mport": strconv.Itoa(freePort(t))},
		sets: callerSets, calls: 3, rate: 10, limit: limit, trace: true})
	phones := startSippProc(t, sippProc{name: "phones", target: l.access, transport: "un",
		scenario: "register_refresh_granted.xml", lines: userLines(1000, group),
		keys: map[string]string{"expires": expires}, sets: sets, calls: group, rate: 50, limit: limit})
	all := []*phone{callee, caller, phones}
	l.waitAORs(t, group+2, time.Now(), 30*time.Second, "first registrations")
	healthy(t, "registered", all...)

	// The core goes away.
	mark := len(l.audit(t))
	before := phones.counts()
	killed := l.killCore(t)
	down, _ := l.waitAudit(t, mark, "core_down", nil, 10*time.Second)
	enter, _ := l.waitAudit(t, mark, "mode_change", hasDetail("survival"), 5*time.Second)
	t.Logf("core killed; core_down after %v; %s", down.Time.Sub(killed).Round(time.Millisecond), enter)

	// A phone the edge never saw: 503 with Retry-After, at once.
	raw := dialRaw(t, "127.0.0.1", l.access)
	sent := time.Now()
	raw.send(raw.register(strconv.Itoa(newUser), "survival-newcomer", 1, ""))
	switch r := raw.recv(5 * time.Second); {
	case r == nil:
		t.Errorf("a new phone's REGISTER during survival got no answer within 5 s, want 503 with Retry-After")
	case r.StatusCode != 503 || r.GetHeader("Retry-After") == nil:
		t.Errorf("a new phone's REGISTER during survival got %d %s (Retry-After %v), want 503 with Retry-After", r.StatusCode, r.Reason, r.GetHeader("Retry-After"))
	default:
		t.Logf("a new phone during survival: %d %s, Retry-After %s, in %v", r.StatusCode, r.Reason, r.GetHeader("Retry-After").Value(), time.Since(sent).Round(time.Microsecond))
	}

	// A call between two phones behind the edge, the core down.
	trigger(t, caller.port, 1)
	called := waitSucceeded(t, caller, 1, 15*time.Second, "the call during survival")
	t.Logf("call during survival done %v after the core died", called.Sub(killed).Round(time.Second))

	// Two minutes without a core: refreshes keep getting their 200.
	tick := time.NewTicker(time.Second)
	for now := time.Now(); now.Before(killed.Add(outage)); now = <-tick.C {
		healthy(t, fmt.Sprintf("%v into the outage", now.Sub(killed).Round(time.Second)), all...)
		if l.edge.exited() {
			t.Fatalf("sipedge exited during the outage: %v\n%s", l.edge.err, tail(l.edge.log(), 40))
		}
	}
	tick.Stop()
	after := phones.counts()
	answered := sum(after, "_200_Recv") - sum(before, "_200_Recv")
	least := int64(group) * max(1, int64(outage/interval)-1)
	t.Logf("during the %v outage the %d phones got %d 200s to their refreshes (at least %d expected: an interval of at most %v)",
		outage, group, answered, least, interval)
	if answered < least {
		t.Errorf("the phones got %d 200s during the outage, want at least %d", answered, least)
	}

	// The core comes back, empty.
	mark = len(l.audit(t))
	restarted := l.restartCore(t)
	up, _ := l.waitAudit(t, mark, "core_up", nil, 15*time.Second)
	leave, _ := l.waitAudit(t, mark, "mode_change", hasDetail("survival ended"), 5*time.Second)
	bound := interval + time.Second + 5*time.Second // one refresh interval, 52 phones at 50/s, slack
	back := l.waitAORs(t, group+2, up.Time, bound, "re-population after survival (from core_up)")
	t.Logf("core restarted; core_up after %v; %s; every phone back in the core's location %v after core_up (bound %v)",
		up.Time.Sub(restarted).Round(time.Millisecond), leave, back.Sub(up.Time).Round(100*time.Millisecond), bound)
	if offload {
		done, _ := l.waitAudit(t, mark, "core_repopulate", hasDetail("done"), 10*time.Second)
		t.Logf("audit: %s", done)
	}

	// The next call goes through the core.
	trigger(t, caller.port, 2)
	waitSucceeded(t, caller, 2, 15*time.Second, "the call after the core came back")
	healthy(t, "the end", all...)
	stopPhones(t, all...)

	// What the phones saw of the two calls.
	cms, ems := caller.messages(), callee.messages()
	var invites []sipMsg
	for _, m := range cms {
		if m.sent && m.isRequest("INVITE") {
			if len(invites) == 0 || invites[len(invites)-1].header("Call-ID") != m.header("Call-ID") {
				invites = append(invites, m)
			}
		}
	}
	if len(invites) != 2 {
		t.Fatalf("the caller sent %d INVITEs (distinct Call-IDs), want 2", len(invites))
	}
	for i, inv := range invites {
		callID := inv.header("Call-ID")
		of := func(ms []sipMsg, sent bool, ok func(sipMsg) bool) bool {
			_, found := find(ms, sent, func(m sipMsg) bool { return m.header("Call-ID") == callID && ok(m) })
			return found
		}
		for _, step := range []struct {
			who  string
			ms   []sipMsg
			what string
			ok   func(sipMsg) bool
		}{
			{"callee", ems, "INVITE", func(m sipMsg) bool { return m.isRequest("INVITE") }},
			{"caller", cms, "180", func(m sipMsg) bool { return m.isResponse(180, "INVITE") }},
			{"caller", cms, "200 (INVITE)", func(m sipMsg) bool { return m.isResponse(200, "INVITE") }},
			{"callee", ems, "ACK", func(m sipMsg) bool { return m.isRequest("ACK") }},
			{"callee", ems, "BYE", func(m sipMsg) bool { return m.isRequest("BYE") }},
			{"caller", cms, "200 (BYE)", func(m sipMsg) bool { return m.isResponse(200, "BYE") }},
		} {
			if !of(step.ms, false, step.ok) {
				t.Errorf("call %d (%s): the %s did not receive %s", i+1, callID, step.who, step.what)
			}
		}
		if got, ok := find(ems, false, func(m sipMsg) bool { return m.header("Call-ID") == callID && m.isRequest("INVITE") }); ok {
			rrs := got.values("Record-Route")
			if len(rrs) == 0 || uriHostPort(rrs[0]) != l.access {
				t.Errorf("call %d: the INVITE reached the callee with Record-Route %v, want sipedge's access side %s first (ACK and BYE through the edge)", i+1, rrs, l.access)
			}
			if i == 0 {
				t.Logf("INVITE as the callee received it during survival:\n%s", got.raw)
			}
		}
		if bye, ok := find(cms, true, func(m sipMsg) bool { return m.header("Call-ID") == callID && m.isRequest("BYE") }); ok {
			if routes := bye.values("Route"); len(routes) == 0 || uriHostPort(routes[0]) != l.access {
				t.Errorf("call %d: the caller's BYE had Route %v, want sipedge's access side %s first", i+1, routes, l.access)
			}
		}
		core := (&reachLab{k: l.k}).coreLog(callID)
		du, looked := coreDst(core, "CORE-LOOKUP INVITE")
		// Kamailio's log reaches the test through a pipe, a moment after the
		// call: wait for the lookup line (bounded) before calling it missing.
		for deadline := time.Now().Add(5 * time.Second); i == 1 && !looked && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			core = (&reachLab{k: l.k}).coreLog(callID)
			du, looked = coreDst(core, "CORE-LOOKUP INVITE")
		}
		switch {
		case i == 0 && looked:
			t.Errorf("call 1 (during survival) reached a core: %v", core)
		case i == 1 && !looked:
			t.Errorf("call 2 (after the core came back): Kamailio logged no location lookup for its INVITE (Call-ID %s)", callID)
		case i == 1 && uriHostPort(du) != l.core:
			t.Errorf("call 2: Kamailio relayed the INVITE to %s, want sipedge's core side %s (the Path of the callee's binding)", du, l.core)
		case i == 1:
			t.Logf("call 2 at the core:\n%s", strings.Join(core, "\n"))
		}
	}
}
