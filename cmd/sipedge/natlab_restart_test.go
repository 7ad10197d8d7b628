//go:build natlab

// NAT lab: restarts lose nobody. A phone registers through the NAT and
// sipedge; sipedge is killed with SIGKILL and started again at once with
// the same config (the same flow key file, the same state dir if any);
// the core's next request must still reach the phone.
//
//	go test -count=1 -tags natlab -v -timeout 15m -run NATLabRestart ./cmd/sipedge/
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// nlRestartFlush is [state] flush_interval: the durability window.
	nlRestartFlush = time.Second
	// nlRestartNATTimeout is the router's conntrack UDP timeout: above
	// the few seconds sipedge is away (its 2 s CRLF keepalives stop with
	// it), so the phone's mapping outlives the restart.
	nlRestartNATTimeout = 10
	// nlRestartWithin is how soon after the restart the core's MESSAGE
	// must have reached a UDP phone and its 200 come back.
	nlRestartWithin = 2 * time.Second
	// nlRestartTCPWithin bounds the wait for the TCP phone's re-REGISTER:
	// libre (baresip 1.0) re-registers 30..60 s after its outbound flow
	// failed (failwait(1) = 60 s × 0.5..1.0), the closed connection
	// being that failure.
	nlRestartTCPWithin = 75 * time.Second
)

// kill9 sends SIGKILL to the process itself (by its PID: `ip netns exec`
// execs the program) and waits until it is gone.
func (p *proc) kill9(t *testing.T) {
	t.Helper()
	if p.exited() {
		t.Fatalf("%s (pid %d) exited before the kill: %v\n%s", p.name, p.cmd.Process.Pid, p.err, tail(p.log(), 40))
	}
	if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", p.cmd.Process.Pid, err)
	}
	if !p.wait(10 * time.Second) {
		t.Fatalf("%s (pid %d) did not exit within 10s of SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// startRestartPhone starts baresip in cli registering user through
// sipedge over transport (udp, tcp), with RFC 5626 outbound or as a plain
// phone; its registration interval is long (3600 s): it re-registers
// within the test only when a flow of its own failed.
func (l *natLab) startRestartPhone(user, transport string, outbound bool) *proc {
	t := l.t
	t.Helper()
	dir := t.TempDir()
	renderTemplate(t, filepath.Join(natlabDir, "baresip-config.tmpl"), filepath.Join(dir, "config"),
		map[string]any{"Listen": fmt.Sprintf("%s:%d", nlPhoneIP, nlSIPPort)})
	renderTemplate(t, filepath.Join(natlabDir, "baresip-restart-accounts.tmpl"), filepath.Join(dir, "accounts"), map[string]any{
		"User": user, "Pass": "pw" + user, "Edge": nlEdge.String(), "Transport": transport, "Outbound": outbound, "Regint": 3600,
	})
	must(t, os.WriteFile(filepath.Join(dir, "contacts"), nil, 0o644))
	p := l.start(l.cli, "baresip", dir, "baresip", "-f", dir, "-s", "-v")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("baresip output (tail):\n%s", tail(p.log(), 80))
		}
	})
	return p
}

// nlStateConfig is the [state] section keeping sipedge's state in dir;
// dir "" keeps it in memory only (sipedge's default is a dir: var).
func nlStateConfig(dir string) string {
	return fmt.Sprintf("\n[state]\ndir = %q\nflush_interval = %q\n", dir, nlRestartFlush.String())
}

// nlStateFiles lists the regular files in dir with their size and
// modification time.
func nlStateFiles(dir string) (files []string, newest time.Time) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		files = append(files, fmt.Sprintf("%s (%d bytes, %s)", e.Name(), info.Size(), info.ModTime().Format("15:04:05.000")))
		if info.ModTime().After(newest) {
			newest = info.ModTime()
		}
	}
	return files, newest
}

// waitStateFlushed waits until what sipedge knew at since is on disk in
// the state dir: a file there was written a flush interval after since,
// or was written after since and then left alone for a flush interval
// (nothing left to write). The slack covers the file system's coarse
// timestamps. Fails after 10 flush intervals.
func waitStateFlushed(t *testing.T, p *proc, dir string, since time.Time) {
	t.Helper()
	const slack = 250 * time.Millisecond
	deadline := since.Add(10 * nlRestartFlush)
	for {
		files, newest := nlStateFiles(dir)
		now := time.Now()
		switch {
		case !newest.Before(since.Add(nlRestartFlush)):
			t.Logf("state dir written %s after the registration: %v", newest.Sub(since).Round(time.Millisecond), files)
			return
		case newest.After(since.Add(-10*time.Millisecond)) && now.Sub(newest) > nlRestartFlush+slack && now.Sub(since) > nlRestartFlush+slack:
			t.Logf("state dir written %s after the registration, unchanged since: %v", newest.Sub(since).Round(time.Millisecond), files)
			return
		}
		if p.exited() {
			t.Fatalf("sipedge exited (%v) while the test waited for its state file\n%s", p.err, tail(p.log(), 40))
		}
		if now.After(deadline) {
			t.Fatalf("sipedge wrote no state to %s within %s of the registration (flush_interval %s); files: %v",
				dir, deadline.Sub(since), nlRestartFlush, files)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nlBindingsLoadedRE finds the bindings count in the "state loaded" line.
var nlBindingsLoadedRE = regexp.MustCompile(`\bbindings=(\d+)`)

// nlBinding is one binding as `sipedge state-dump` prints it: the JSON
// values of its aor, contact and flow fields, compacted.
type nlBinding struct{ aor, contact, flow string }

func (b nlBinding) String() string {
	return fmt.Sprintf("{aor %s contact %s flow %s}", b.aor, b.contact, b.flow)
}

// stateDump runs `sipedge state-dump -config FILE` (sipedge must not be
// running: the state file is locked while it is) and returns the bindings
// it printed, one JSON object per line (those with an "aor": the others
// are bans).
func (e *nlSipedge) stateDump(t *testing.T) []nlBinding {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, "state-dump", "-config", e.cfgPath)
	cmd.Dir = e.dir
	cmd.WaitDelay = time.Second
	// The race detector's binary sleeps a second at exit by default.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("sipedge state-dump ran %s", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("sipedge state-dump -config %s: %v\nstdout:\n%s\nstderr:\n%s", e.cfgPath, err, tail(stdout.String(), 20), tail(stderr.String(), 20))
	}
	var bs []nlBinding
	for _, line := range strings.Split(stdout.String(), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Errorf("state-dump printed a line that is not a JSON object (%v): %s", err, line)
			continue
		}
		if _, ok := obj["aor"]; !ok {
			continue // not a binding (a ban)
		}
		field := func(k string) string {
			v, ok := obj[k]
			if !ok {
				t.Errorf("state-dump line without %q: %s", k, line)
				return ""
			}
			var b bytes.Buffer
			if err := json.Compact(&b, v); err != nil {
				return string(v)
			}
			return b.String()
		}
		bs = append(bs, nlBinding{field("aor"), field("contact"), field("flow")})
	}
	slices.SortFunc(bs, func(a, b nlBinding) int { return strings.Compare(a.String(), b.String()) })
	return bs
}

// waitNewPath polls Kamailio's location table until aor has a contact
// whose Path is not oldPath; fails after within.
func waitNewPath(t *testing.T, k *kamailio, phone *proc, aor, oldPath string, within time.Duration) (ulContact, time.Time) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		for _, c := range k.ulDump(t) {
			if c.AOR == aor && c.Path != oldPath {
				return c, time.Now()
			}
		}
		if phone.exited() {
			t.Fatalf("%s exited (status %d) before %s re-registered\n%s", phone.name, phone.exitCode(), aor, tail(phone.log(), 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not re-register (with a new Path) within %s; location table: %+v\nKamailio:\n%s",
				aor, within, k.ulDump(t), strings.Join(k.lines("NL-REGISTER"), "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitLog polls p's log until it has a line containing s; returns it.
func waitLog(p *proc, s string, within time.Duration) (string, bool) {
	deadline := time.Now().Add(within)
	for {
		for _, line := range strings.Split(p.log(), "\n") {
			if strings.Contains(line, s) {
				return line, true
			}
		}
		if p.exited() || time.Now().After(deadline) {
			return "", false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nlRestartResult is what one subtest measured.
type nlRestartResult struct {
	name            string
	ready           time.Duration // restart → "sipedge starting"
	firstOK         time.Duration // restart → the first 200 MESSAGE (at sipedge's access side for UDP; at the core for TCP)
	status          int           // the first MESSAGE's final status after the restart
	reregistrations int           // REGISTERs from the phone after the kill
}

// TestNATLabRestart ("restarts lose nobody"): sipedge is killed with
// SIGKILL and restarted at once with the same config, key file and state
// dir, with registered phones behind the NAT.
//
//   - UDP phones (plain, and RFC 5626 outbound), with [state] and with
//     memory only ([state] dir = "": the flow token alone must bring the
//     flow back): the core's MESSAGE reaches the phone with 200 within
//     2 s of the restart, and the phone sent no REGISTER since the kill
//     (none on its link, none at Kamailio). sipedge keeps the flow open
//     again: its CRLF keepalives reach the phone's NAT mapping after the
//     restart. With [state]: the restarted sipedge logs "state loaded"
//     with the phone's binding, and `sipedge state-dump` lists the same (aor, contact, flow) set
//     after the kill -9 as after the restarted sipedge stopped gracefully,
//     the phone's binding among them.
//   - A TCP phone (RFC 5626 outbound, so that it notices the closed
//     connection), with [state]: the flow died with the process, so the
//     core's MESSAGE right after the restart gets 430 at once; the phone
//     reconnects and re-registers (new connection, new Path) and then the
//     core's MESSAGE gets 200.
func TestNATLabRestart(t *testing.T) {
	nlNeed(t, "sipp", "baresip")
	var results []nlRestartResult
	for _, c := range []struct {
		name            string
		outbound, state bool
	}{
		{"udp-plain-memory", false, false},
		{"udp-plain-state", false, true},
		{"udp-outbound-memory", true, false},
		{"udp-outbound-state", true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runRestartUDP(t, c.outbound, c.state)
			r.name = c.name
			results = append(results, r)
		})
	}
	t.Run("tcp-outbound-state", func(t *testing.T) {
		r := runRestartTCP(t)
		r.name = "tcp-outbound-state"
		results = append(results, r)
	})
	for _, r := range results {
		ok := "none"
		if r.firstOK > 0 {
			ok = r.firstOK.Round(time.Millisecond).String()
		}
		t.Logf("measured: %-20s restart → listening %6s, restart → first MESSAGE 200 %8s (first status after restart %d, REGISTERs from the phone since the kill %d)",
			r.name, r.ready.Round(time.Millisecond), ok, r.status, r.reregistrations)
	}
}

func runRestartUDP(t *testing.T, outbound, withState bool) (res nlRestartResult) {
	l := newNATLab(t, natLabOpts{udpTimeout: nlRestartNATTimeout})
	k := l.startKamailio()
	var stateDir string
	if withState {
		stateDir = t.TempDir()
	}
	e := l.startSipedgeRun(nlEdgeOpts{keepalive: "crlf", interval: "2s", extra: nlStateConfig(stateDir)})
	capPub := l.capture(l.pub, "pub0")
	capCli := l.capture(l.cli, "cli0")

	phone := l.startRestartPhone("1000", "udp", outbound)
	ct, regAt := l.waitRegistered(k, capCli, phone, "1000", "", 1)
	m0, ok := l.phoneFlow(nlSIPPort)
	if !ok {
		t.Fatalf("no conntrack entry for baresip after it registered:\n%v", l.conntrack())
	}
	t.Logf("baresip (outbound %v) registered: contact %s, Path %s; NAT mapping public %s", outbound, ct.Address, ct.Path, m0.replyDst)

	uac := l.sendMessage("1000")
	if uac.status != 200 {
		t.Fatalf("before the restart the core's MESSAGE got %d (sipp exit %d), want 200\n%s\n%s", uac.status, uac.exit, uac.errors, tail(uac.messages, 30))
	}
	t.Logf("before the restart: core → baresip MESSAGE 200 after %s", uac.elapsed.Round(time.Millisecond))
	if withState {
		waitStateFlushed(t, e.p, stateDir, regAt)
	}

	regsBefore := len(k.lines("NL-REGISTER"))
	killAt := time.Now()
	e.p.kill9(t)
	t.Logf("sipedge (pid %d) killed with SIGKILL", e.p.cmd.Process.Pid)
	var dumpKilled []nlBinding
	if withState {
		dumpKilled = e.stateDump(t)
		t.Logf("state-dump after kill -9: %d bindings: %v", len(dumpKilled), dumpKilled)
	}

	restartAt := time.Now()
	p2 := l.runEdge(e)
	res.ready = time.Since(restartAt)
	uac2 := l.sendMessage("1000")
	res.status = uac2.status
	t.Logf("restarted sipedge (pid %d) %s after the kill, listening %s later; core → baresip MESSAGE: status %d (sipp exit %d) after %s",
		p2.cmd.Process.Pid, restartAt.Sub(killAt).Round(time.Millisecond), res.ready.Round(time.Millisecond),
		uac2.status, uac2.exit, uac2.elapsed.Round(time.Millisecond))
	if withState {
		if line, ok := waitLog(p2, "state loaded", 2*time.Second); ok {
			t.Logf("restarted sipedge: %s", line)
			if m := nlBindingsLoadedRE.FindStringSubmatch(line); m == nil || m[1] == "0" {
				t.Errorf("the restarted sipedge loaded no bindings from its state (want the phone's): %s", line)
			}
		} else {
			t.Errorf("the restarted sipedge did not log \"state loaded\" with [state] dir set\n%s", tail(p2.log(), 30))
		}
	} else if line, ok := waitLog(p2, "state loaded", 0); ok {
		t.Errorf("with [state] dir = \"\" (memory only) the restarted sipedge loaded state: %s", line)
	} else if line, ok := waitLog(p2, "memory only", 0); ok {
		t.Logf("restarted sipedge: %s", line)
	}
	t.Logf("Kamailio: %s", strings.Join(append(k.lines("NL-LOOKUP"), append(k.lines("NL-REPLY"), k.lines("NL-FAILURE")...)...), " | "))

	// sipedge keeps the flow open again: a CRLF keepalive to the phone's
	// NAT mapping after the restart (with state at once, from memory once
	// the MESSAGE recreated the flow).
	ka, kaOK := capPub.waitFor(1, nlAnd(nlIsKind("crlf"), nlFrom(nlEdgeIP), func(p nlPacket) bool {
		return p.dst == m0.replyDst && p.at.After(restartAt)
	}), 3*2*time.Second)

	// The phone's link, from the kill on: no REGISTER may leave it.
	if p2.exited() {
		t.Errorf("the restarted sipedge exited: %v\n%s", p2.err, tail(p2.log(), 40))
	}
	pub := capPub.packets(t)
	cli := capCli.packets(t)
	regs := nlFilter(cli, nlAnd(nlIsKind("SIP REGISTER"), nlFrom(nlPhoneIP), nlBetween(killAt, time.Now().Add(time.Hour))))
	res.reregistrations = len(regs)
	regsKam := k.lines("NL-REGISTER")[regsBefore:]
	msgAtPhone := nlFilter(cli, nlAnd(nlIsKind("SIP MESSAGE"), nlTo(nlPhoneIP), nlBetween(restartAt, time.Now().Add(time.Hour))))
	okAtEdge := nlFilter(pub, nlAnd(nlIsKind("SIP 200 MESSAGE"), nlTo(nlEdgeIP), nlBetween(restartAt, time.Now().Add(time.Hour))))
	if len(okAtEdge) > 0 {
		res.firstOK = okAtEdge[0].at.Sub(restartAt)
		t.Logf("measured: restart → the phone's 200 MESSAGE at sipedge %s", res.firstOK.Round(time.Millisecond))
	} else if uac2.status == 200 {
		res.firstOK = uac2.start.Add(uac2.elapsed).Sub(restartAt)
	}
	if len(msgAtPhone) > 0 {
		t.Logf("measured: restart → the MESSAGE at the phone %s", msgAtPhone[0].at.Sub(restartAt).Round(time.Millisecond))
	}
	if kaOK {
		t.Logf("measured: first CRLF keepalive to %s %s after the restart", m0.replyDst, ka.at.Sub(restartAt).Round(time.Millisecond))
	}
	t.Logf("pub0 around the restart (0 = restart):\n%s", nlTimeline(nlFilter(pub, nlBetween(killAt.Add(-3*time.Second), time.Now())), restartAt, 40))

	if uac2.status != 200 || uac2.exit != 0 {
		t.Errorf("after kill -9 and restart the core's MESSAGE got %d (sipp exit %d), want 200 (state dir set: %v): the restarted sipedge did not route it over the phone's flow\n%s\n%s",
			uac2.status, uac2.exit, withState, uac2.errors, tail(uac2.messages, 30))
	} else if res.firstOK > nlRestartWithin {
		t.Errorf("the MESSAGE's 200 came %s after the restart, want within %s", res.firstOK.Round(time.Millisecond), nlRestartWithin)
	}
	if len(msgAtPhone) == 0 {
		t.Errorf("the core's MESSAGE did not reach the phone after the restart (%d MESSAGEs left sipedge toward the NAT)",
			len(nlFilter(pub, nlAnd(nlIsKind("SIP MESSAGE"), nlFrom(nlEdgeIP), nlBetween(restartAt, time.Now().Add(time.Hour))))))
	}
	if len(regs) > 0 || len(regsKam) > 0 {
		t.Errorf("the phone re-registered after the kill (%d REGISTERs on its link: %v; %d at Kamailio: %v): the test needs it silent",
			len(regs), regs, len(regsKam), regsKam)
	}
	if !kaOK {
		t.Errorf("no CRLF keepalive from the restarted sipedge reached pub0 toward the phone's mapping %s within 6s (state dir set: %v)", m0.replyDst, withState)
	}
	if !withState {
		phone.stop(t) // its un-REGISTER goes through the restarted sipedge
		return res
	}

	// Stopped gracefully, the restarted sipedge leaves the same bindings
	// as the one killed had.
	p2.stop(t)
	if code := p2.exitCode(); code != 0 {
		t.Errorf("the restarted sipedge exited %d on SIGTERM, want 0\n%s", code, tail(p2.log(), 30))
	}
	dumpStopped := e.stateDump(t)
	t.Logf("state-dump after the graceful stop: %d bindings: %v", len(dumpStopped), dumpStopped)
	var mine []nlBinding
	for _, b := range dumpKilled {
		if strings.Contains(b.aor, "1000") {
			mine = append(mine, b)
		}
	}
	if len(mine) != 1 || mine[0].contact == "" || mine[0].flow == "" || mine[0].flow == "null" {
		t.Errorf("state-dump after kill -9 has %d bindings for 1000 (%v), want 1 with a contact and a flow; all: %v", len(mine), mine, dumpKilled)
	}
	if !slices.Equal(dumpKilled, dumpStopped) {
		t.Errorf("state-dump differs:\n after kill -9:         %v\n after the graceful stop: %v", dumpKilled, dumpStopped)
	}
	// Done with the phone; stopped gently it would wait 5 s for an answer
	// to its un-REGISTER from the stopped sipedge.
	phone.kill9(t)
	return res
}

func runRestartTCP(t *testing.T) (res nlRestartResult) {
	l := newNATLab(t, natLabOpts{udpTimeout: nlRestartNATTimeout})
	k := l.startKamailio()
	stateDir := t.TempDir()
	e := l.startSipedgeRun(nlEdgeOpts{keepalive: "crlf", interval: "2s", extra: nlStateConfig(stateDir)})

	phone := l.startRestartPhone("1000", "tcp", true)
	ct, _ := k.waitRegistered(t, phone, "1000", "")
	t.Logf("baresip (TCP, outbound) registered: contact %s, Path %s", ct.Address, ct.Path)
	uac := l.sendMessage("1000")
	if uac.status != 200 {
		t.Fatalf("before the restart the core's MESSAGE got %d (sipp exit %d), want 200\n%s\n%s", uac.status, uac.exit, uac.errors, tail(uac.messages, 30))
	}
	t.Logf("before the restart: core → baresip MESSAGE 200 after %s", uac.elapsed.Round(time.Millisecond))
	// The 200 REGISTER passed sipedge before Kamailio's MESSAGE did.
	waitStateFlushed(t, e.p, stateDir, uac.start)

	regsBefore := len(k.lines("NL-REGISTER"))
	killAt := time.Now()
	e.p.kill9(t)
	dump := e.stateDump(t)
	t.Logf("state-dump after kill -9: %d bindings: %v", len(dump), dump)

	restartAt := time.Now()
	p2 := l.runEdge(e)
	res.ready = time.Since(restartAt)
	// The phone's connection died with the process: 430 at once, well
	// before Kamailio's 5 s fr_timer would answer 408.
	uac2 := l.sendMessage("1000")
	res.status = uac2.status
	t.Logf("restarted sipedge %s after the kill, listening %s later; core → baresip MESSAGE: status %d after %s",
		restartAt.Sub(killAt).Round(time.Millisecond), res.ready.Round(time.Millisecond), uac2.status, uac2.elapsed.Round(time.Millisecond))
	if line, ok := waitLog(p2, "state loaded", 2*time.Second); ok {
		t.Logf("restarted sipedge: %s", line)
	} else {
		t.Errorf("the restarted sipedge did not log \"state loaded\" with [state] dir set\n%s", tail(p2.log(), 30))
	}
	if uac2.status != 430 {
		t.Errorf("the core's MESSAGE for the dead TCP flow got %d after %s, want 430 at once\n%s", uac2.status, uac2.elapsed.Round(time.Millisecond), tail(uac2.messages, 30))
	} else if uac2.elapsed > 2*time.Second {
		t.Errorf("the 430 took %s, want it at once", uac2.elapsed.Round(time.Millisecond))
	}

	ct2, reregAt := waitNewPath(t, k, phone, "1000", ct.Path, nlRestartTCPWithin)
	regs := k.lines("NL-REGISTER")[regsBefore:]
	res.reregistrations = len(regs)
	t.Logf("measured: baresip re-registered %s after the kill: contact %s, Path %s (Kamailio: %s)",
		reregAt.Sub(killAt).Round(time.Millisecond), ct2.Address, ct2.Path, strings.Join(regs, " | "))
	uac3 := l.sendMessage("1000")
	if uac3.status == 200 {
		res.firstOK = uac3.start.Add(uac3.elapsed).Sub(restartAt)
		t.Logf("measured: restart → first MESSAGE 200 at the core %s (the phone's reconnect and re-REGISTER included)", res.firstOK.Round(time.Millisecond))
	} else {
		t.Errorf("after the TCP phone re-registered the core's MESSAGE got %d (sipp exit %d), want 200\n%s\n%s", uac3.status, uac3.exit, uac3.errors, tail(uac3.messages, 30))
	}
	if p2.exited() {
		t.Errorf("the restarted sipedge exited: %v\n%s", p2.err, tail(p2.log(), 40))
	}
	phone.stop(t) // its un-REGISTER goes through the restarted sipedge
	return res
}
