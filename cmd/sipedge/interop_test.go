//go:build interop || bench

// Interop tests: real sipp phones register through a real sipedge binary
// to a real Kamailio 5.6 registrar with digest auth, on 127.0.0.1.
//
//	go test -race -tags interop -count=1 -v ./cmd/sipedge/ -run Interop
//
// Needs kamailio, kamcmd (Debian kamailio) and sipp (Debian sip-tester).
// Missing tools skip the tests, except under CI=true where they fail.
// The helpers here are shared with bench_test.go (tag bench).
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const interopDir = "../../testdata/interop"

// buildRace builds the sipedge under test with -race (interop);
// bench_test.go turns it off so the race detector does not skew numbers.
var buildRace = true

// needTools skips (or fails under CI) when an external program is missing.
func needTools(t *testing.T, names ...string) {
	t.Helper()
	requireTools(t, "missing %s (Debian packages: kamailio sip-tester)", nil, names...)
}

// freePort returns a port free on 127.0.0.1 for both UDP and TCP at the
// time of the call (external processes need a number, not a socket).
func freePort(t *testing.T) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return port
	}
	t.Fatal("no free port on 127.0.0.1")
	return 0
}

// waitSIP polls addr (UDP) with OPTIONS every 50 ms until anything answers
// with a SIP response; fails when p exits first or after 10 s.
func waitSIP(t *testing.T, p *proc, addr string) {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().String()
	callID := fmt.Sprintf("probe-%d@127.0.0.1", rand.Int64())
	buf := make([]byte, 65535)
	deadline := time.Now().Add(10 * time.Second)
	for seq := 1; time.Now().Before(deadline); seq++ {
		if p.exited() {
			t.Fatalf("%s exited before it answered OPTIONS on %s: %v\n%s", p.name, addr, p.err, tail(p.log(), 40))
		}
		msg := fmt.Sprintf("OPTIONS sip:%s SIP/2.0\r\n"+
			"Via: SIP/2.0/UDP %s;branch=z9hG4bK-probe-%d;rport\r\n"+
			"Max-Forwards: 70\r\n"+
			"From: <sip:probe@127.0.0.1>;tag=probe\r\n"+
			"To: <sip:%s>\r\n"+
			"Call-ID: %s\r\n"+
			"CSeq: %d OPTIONS\r\n"+
			"Content-Length: 0\r\n\r\n", addr, local, seq, addr, callID, seq)
		if _, err := c.WriteTo([]byte(msg), dst); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, _, err := c.ReadFrom(buf)
		if err == nil && bytes.HasPrefix(buf[:n], []byte("SIP/2.0 ")) {
			return
		}
	}
	t.Fatalf("%s did not answer OPTIONS on udp:%s within 10s\n%s", p.name, addr, tail(p.log(), 40))
}

// ---------------------------------------------------------------- Kamailio

type kamOpts struct {
	users       int  // subscribers 1000..1000+users-1, password pw<user>
	logRegister bool // xlog each authenticated REGISTER
	logCalls    bool // xlog where INVITE, MESSAGE, CANCEL, in-dialog requests go
	shmMB       int
	children    int
	netns       string // run it there ("": the test's own)
}

func (k *kamailio) addr() string { return fmt.Sprintf("127.0.0.1:%d", k.port) }

// writeUsers writes the sipp injection file (field0 user, field1 password).
func writeUsers(t *testing.T, path string, first, count int) {
	t.Helper()
	var b strings.Builder
	b.WriteString("SEQUENTIAL\n")
	for u := first; u < first+count; u++ {
		fmt.Fprintf(&b, "%d;pw%d\n", u, u)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func startKamailio(t *testing.T, o kamOpts) *kamailio {
	t.Helper()
	if o.shmMB == 0 {
		o.shmMB = 256
	}
	if o.children == 0 {
		o.children = 4
	}
	logReg, logCalls := 0, 0
	if o.logRegister {
		logReg = 1
	}
	if o.logCalls {
		logCalls = 1
	}
	k := runKamailio(t, procOpts{netns: o.netns}, filepath.Join(interopDir, "kamailio.cfg.tmpl"), freePort(t), o.users, o.shmMB,
		map[string]any{"LogRegister": logReg, "LogCalls": logCalls, "Children": o.children})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kamailio log (tail):\n%s", tail(k.p.log(), 60))
		}
	})
	waitSIP(t, k.p, k.addr())
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(k.ctl); err == nil {
			break
		}
		if time.Now().After(deadline) || k.p.exited() {
			t.Fatalf("kamailio ctl socket %s did not appear\n%s", k.ctl, tail(k.p.log(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return k
}

// coreRegisters returns the authenticated REGISTERs as Kamailio received
// them (xlog blocks of the template's REGISTRAR route).
func (k *kamailio) coreRegisters() []string {
	var msgs []string
	var cur []string
	in := false
	for _, line := range strings.Split(k.p.log(), "\n") {
		switch {
		case strings.Contains(line, "CORE-REGISTER-BEGIN"):
			in, cur = true, []string{strings.TrimSpace(line[strings.Index(line, "CORE-REGISTER-BEGIN"):])}
		case in && strings.HasPrefix(line, "CORE-REGISTER-END"):
			in = false
			msgs = append(msgs, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, strings.TrimRight(line, "\r"))
		}
	}
	return msgs
}

// ----------------------------------------------------------------- sipedge

type sipedge struct {
	udp, tcp, core string
	p              *proc
	bin, cfg, dir  string // the binary, its config file and directory
}

func startSipedge(t *testing.T, o edgeOpts) *sipedge {
	t.Helper()
	bin := o.bin
	if bin == "" {
		bin = buildSipedge(t, buildRace)
	}
	dir := t.TempDir()
	access := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	e := &sipedge{udp: access, tcp: access, core: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	cfg := sipedgeConfig(access, e.core, dir, o)
	cfgPath, out, err := writeSipedgeConfig(t, bin, dir, cfg)
	if err != nil {
		t.Fatalf("sipedge check-config: %v\n%s\nconfig:\n%s", err, out, cfg)
	}
	e.bin, e.cfg, e.dir = bin, cfgPath, dir
	e.p = runSipedge(t, procOpts{logPath: filepath.Join(dir, "sipedge.log"), netns: o.netns, env: o.env}, bin, cfgPath, o.runArgs...)
	waitSIP(t, e.p, e.udp)
	return e
}

// -------------------------------------------------------------------- sipp

type sippRun struct {
	target    string // host:port
	transport string // u1 | t1
	csv       string
	calls     int
	rate      int
	limit     time.Duration // sipp -timeout (then it fails)
	traceMsg  bool
	scenario  string   // in testdata/interop ("": register_auth.xml)
	args      []string // more sipp arguments (-set ...)
	port      int      // sipp's local port; 0 picks a free one
}

type sippResult struct {
	exit     int
	dir      string
	port     int // sipp's local port (its Contact)
	stat     map[string]string
	errors   string
	messages string
}

func (r sippResult) stat64(col string) int64 {
	v, _ := strconv.ParseInt(strings.TrimSpace(r.stat[col]), 10, 64)
	return v
}

func runSipp(t *testing.T, s sippRun) sippResult {
	t.Helper()
	dir := t.TempDir()
	res := sippResult{dir: dir, port: s.port}
	if res.port == 0 {
		res.port = freePort(t)
	}
	if s.scenario == "" {
		s.scenario = "register_auth.xml"
	}
	abs, err := filepath.Abs(filepath.Join(interopDir, s.scenario))
	must(t, err)
	csv, err := filepath.Abs(s.csv)
	must(t, err)
	limit := int((s.limit + time.Second - 1) / time.Second)
	args := []string{
		"sipp", s.target,
		"-sf", abs, "-inf", csv,
		"-i", "127.0.0.1", "-p", strconv.Itoa(res.port), "-t", s.transport,
		"-m", strconv.Itoa(s.calls), "-r", strconv.Itoa(s.rate), "-rp", "1000",
		"-timeout", strconv.Itoa(limit), "-timeout_error",
		"-recv_timeout", "5000",
		"-nostdin",
		"-trace_err", "-error_file", filepath.Join(dir, "errors.log"),
		"-trace_stat", "-stf", filepath.Join(dir, "stat.csv"),
		"-trace_screen", "-screen_file", filepath.Join(dir, "screen.log"),
	}
	if s.traceMsg {
		args = append(args, "-trace_msg", "-message_file", filepath.Join(dir, "messages.log"))
	}
	args = append(args, s.args...)
	ctx, cancel := context.WithTimeout(context.Background(), s.limit+20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = dir
	cmd.WaitDelay = 2 * time.Second
	out, err := os.Create(filepath.Join(dir, "sipp.out"))
	must(t, err)
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		res.exit = -1
		t.Errorf("sipp killed after %s", s.limit+20*time.Second)
	case errors.As(err, &ee):
		res.exit = ee.ExitCode()
	case err != nil:
		t.Fatalf("sipp: %v", err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "errors.log"))
	res.errors = string(b)
	b, _ = os.ReadFile(filepath.Join(dir, "messages.log"))
	res.messages = string(b)
	res.stat = lastStat(filepath.Join(dir, "stat.csv"))
	return res
}

// lastStat reads the last row of sipp's -trace_stat CSV by column name.
func lastStat(path string) map[string]string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) < 2 {
		return nil
	}
	head := strings.Split(lines[0], ";")
	row := strings.Split(lines[len(lines)-1], ";")
	m := make(map[string]string, len(head))
	for i, h := range head {
		if i < len(row) {
			m[h] = row[i]
		}
	}
	return m
}

// ------------------------------------------------------------------- tests

type interopCase struct {
	sippTransport string // u1 | t1
	upTransport   string // udp | tcp
	mode          string
}

// TestInteropKamailioDirect checks the rig without sipedge: sipp registers
// straight to Kamailio. When it fails, the other tests say nothing about
// sipedge.
func TestInteropKamailioDirect(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp")
	k := startKamailio(t, kamOpts{users: 100, logRegister: true})
	for _, tr := range []string{"u1", "t1"} {
		res := runSipp(t, sippRun{
			target: k.addr(), transport: tr, csv: filepath.Join(interopDir, "users.csv"),
			calls: 3, rate: 10, limit: 30 * time.Second, traceMsg: true,
		})
		if res.exit != 0 {
			t.Fatalf("sipp -t %s → Kamailio: exit status %d\nerrors:\n%s\nmessages:\n%s",
				tr, res.exit, tail(res.errors, 40), tail(res.messages, 80))
		}
	}
	got := map[string]bool{}
	for _, ct := range k.ulDump(t) {
		got[ct.AOR+" "+ct.Socket[:3]] = true
	}
	for _, want := range []string{"1000 udp", "1002 udp", "1000 tcp", "1002 tcp"} {
		if !got[want] {
			t.Errorf("ul.dump lacks %s; has %v", want, got)
		}
	}
	if regs := k.coreRegisters(); len(regs) != 6 {
		t.Errorf("Kamailio logged %d authenticated REGISTERs, want 6", len(regs))
	} else {
		t.Logf("REGISTER as Kamailio saw it straight from sipp:\n%s", regs[0])
	}
}

func TestInteropRegisterUDP(t *testing.T) {
	runRegisterInterop(t, interopCase{sippTransport: "u1", upTransport: "udp", mode: "path"})
}

func TestInteropRegisterTCP(t *testing.T) {
	runRegisterInterop(t, interopCase{sippTransport: "t1", upTransport: "tcp", mode: "path"})
}

func TestInteropRewriteMode(t *testing.T) {
	runRegisterInterop(t, interopCase{sippTransport: "u1", upTransport: "udp", mode: "rewrite"})
}

func runRegisterInterop(t *testing.T, c interopCase) {
	needTools(t, "kamailio", "kamcmd", "sipp")
	k := startKamailio(t, kamOpts{users: 100, logRegister: true})
	e := startSipedge(t, edgeOpts{
		mode:     c.mode,
		upstream: fmt.Sprintf("sip:%s;transport=%s", k.addr(), c.upTransport),
	})
	target := e.udp
	if c.sippTransport == "t1" {
		target = e.tcp
	}
	const calls = 5
	res := runSipp(t, sippRun{
		target: target, transport: c.sippTransport, csv: filepath.Join(interopDir, "users.csv"),
		calls: calls, rate: 10, limit: 30 * time.Second, traceMsg: true,
	})

	regs := k.coreRegisters()
	if len(regs) > 0 {
		t.Logf("REGISTER as the core (Kamailio) saw it, 1 of %d:\n%s", len(regs), regs[0])
	} else {
		t.Errorf("Kamailio logged no authenticated REGISTER")
	}
	if res.exit != 0 {
		t.Fatalf("sipp exit status %d (successful %d, failed %d)\nerrors:\n%s\nsipp messages (tail):\n%s",
			res.exit, res.stat64("SuccessfulCall(C)"), res.stat64("FailedCall(C)"),
			tail(res.errors, 40), tail(res.messages, 120))
	}
	if got := res.stat64("SuccessfulCall(C)"); got != calls {
		t.Errorf("sipp: %d successful registrations, want %d", got, calls)
	}

	contacts := k.ulDump(t)
	byAOR := map[string]ulContact{}
	for _, ct := range contacts {
		byAOR[ct.AOR] = ct
	}
	wantSocket := c.upTransport + ":" + k.addr()
	for i := range calls {
		user := strconv.Itoa(1000 + i)
		ct, ok := byAOR[user]
		if !ok {
			t.Errorf("AoR %s: not in Kamailio's location table", user)
			continue
		}
		t.Logf("ul.dump AoR %s: Address=%s Path=%s Socket=%s", user, ct.Address, ct.Path, ct.Socket)
		if ct.Socket != wantSocket {
			t.Errorf("AoR %s: registered via %s, want %s (sipedge → core transport)", user, ct.Socket, wantSocket)
		}
		switch c.mode {
		case "path":
			want := fmt.Sprintf("sip:%s@127.0.0.1:%d", user, res.port)
			if !strings.HasPrefix(ct.Address, want) {
				t.Errorf("AoR %s: contact %q, want the phone's %s... (path mode keeps the Contact)", user, ct.Address, want)
			}
			if !strings.Contains(ct.Path, "@"+e.core) && !strings.Contains(ct.Path, ":"+e.core) {
				t.Errorf("AoR %s: Path %q does not point at sipedge's core address %s", user, ct.Path, e.core)
			}
			if !strings.Contains(ct.Path, ";lr") {
				t.Errorf("AoR %s: Path %q is not a loose route (;lr)", user, ct.Path)
			}
		case "rewrite":
			if hp := uriHostPort(ct.Address); hp != e.core {
				t.Errorf("AoR %s: contact %q has host:port %q, want sipedge's core address %s", user, ct.Address, hp, e.core)
			}
		}
	}
	if t.Failed() {
		t.Logf("sipp messages (tail):\n%s", tail(res.messages, 120))
	}
}

// uriHostPort returns host:port of a SIP URI (user part, params dropped).
func uriHostPort(u string) string {
	u = strings.Trim(u, "<>")
	if _, rest, ok := strings.Cut(u, ":"); ok { // scheme
		u = rest
	}
	if i := strings.LastIndex(u, "@"); i >= 0 {
		u = u[i+1:]
	}
	if i := strings.IndexAny(u, ";?>"); i >= 0 {
		u = u[:i]
	}
	return u
}
