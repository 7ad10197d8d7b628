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
	"bufio"
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
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"
)

const (
	interopDir = "../../testdata/interop"
	realm      = "sipedge.test"
	// procLifetime bounds every process a test starts, whatever happens.
	procLifetime = 10 * time.Minute
)

// buildRace builds the sipedge under test with -race (interop);
// bench_test.go turns it off so the race detector does not skew numbers.
var buildRace = true

// buildSipedge builds this package into the test's temp dir. No TestMain:
// main_test.go has one (goleak). After the first build only the link step
// runs (build cache), well under a second.
func buildSipedge(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sipedge")
	args := []string{"build", "-o", bin}
	if buildRace {
		args = append(args, "-race")
	}
	args = append(args, ".")
	if out, err := runBounded(5*time.Minute, ".", append([]string{"go"}, args...)...); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

// needTools skips (or fails under CI) when an external program is missing.
func needTools(t *testing.T, names ...string) {
	t.Helper()
	var missing []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("missing %s (Debian packages: kamailio sip-tester)", strings.Join(missing, ", "))
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
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

// proc is a process a test started; it is stopped (by its PID, its
// process group only as a last resort) when the test ends.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
	killer  *time.Timer
	once    sync.Once
}

func startProc(t *testing.T, name, logPath string, argv ...string) *proc {
	t.Helper()
	return startProcIn(t, name, "", logPath, argv...)
}

// startProcIn is startProc with a working directory (empty: the test's).
func startProcIn(t *testing.T, name, dir, logPath string, argv ...string) *proc {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	p.killer = time.AfterFunc(procLifetime, func() { p.kill() })
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) kill() {
	if !p.exited() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) // its own group only
	}
}

// stop sends SIGTERM and waits; SIGKILL to its group after 5 s.
func (p *proc) stop(t *testing.T) {
	p.once.Do(func() {
		p.killer.Stop()
		if p.exited() {
			return
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			t.Logf("%s (pid %d) ignored SIGTERM for 5s; killing its process group", p.name, p.cmd.Process.Pid)
			p.kill()
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				t.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.cmd.Process.Pid)
			}
		}
	})
}

func (p *proc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// runBounded runs a short command with a timeout and returns its output.
func runBounded(timeout time.Duration, dir string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s: timed out after %s", argv[0], timeout)
	}
	return string(out), err
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
}

type kamailio struct {
	port int
	dir  string
	ctl  string
	p    *proc
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
	dir := t.TempDir()
	k := &kamailio{port: freePort(t), dir: dir, ctl: filepath.Join(dir, "ctl")}

	db := filepath.Join(dir, "db")
	if err := os.Mkdir(db, 0o755); err != nil {
		t.Fatal(err)
	}
	var sub strings.Builder
	sub.WriteString("id(int,auto) username(str) domain(str) password(str) ha1(str,null) ha1b(str,null)\n")
	for i := range o.users {
		u := 1000 + i
		fmt.Fprintf(&sub, "%d:%d:%s:pw%d:::\n", i+1, u, realm, u)
	}
	must(t, os.WriteFile(filepath.Join(db, "subscriber"), []byte(sub.String()), 0o644))
	must(t, os.WriteFile(filepath.Join(db, "version"), []byte("table_name(str) table_version(int)\nsubscriber:7\n"), 0o644))

	tmpl, err := template.ParseFiles(filepath.Join(interopDir, "kamailio.cfg.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	logReg, logCalls := 0, 0
	if o.logRegister {
		logReg = 1
	}
	if o.logCalls {
		logCalls = 1
	}
	var cfg bytes.Buffer
	must(t, tmpl.Execute(&cfg, map[string]any{
		"Port": k.port, "DBDir": db, "CtlSock": k.ctl, "LogRegister": logReg, "LogCalls": logCalls,
		"Children": o.children,
	}))
	cfgPath := filepath.Join(dir, "kamailio.cfg")
	must(t, os.WriteFile(cfgPath, cfg.Bytes(), 0o644))

	if out, err := runBounded(30*time.Second, dir, "kamailio", "-c", "-f", cfgPath, "-Y", dir); err != nil {
		t.Fatalf("kamailio -c: %v\n%s", err, tail(out, 30))
	}
	k.p = startProc(t, "kamailio", filepath.Join(dir, "kamailio.log"),
		"kamailio", "-f", cfgPath, "-P", filepath.Join(dir, "kamailio.pid"), "-Y", dir, "-w", dir,
		"-DD", "-E", "-m", strconv.Itoa(o.shmMB))
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

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// ulContact is one contact of `kamcmd ul.dump`.
type ulContact struct {
	AOR, Address, Path, Received, Socket string
}

func (k *kamailio) ulDump(t *testing.T) []ulContact {
	t.Helper()
	out, err := runBounded(10*time.Second, k.dir, "kamcmd", "-s", "unix:"+k.ctl, "ul.dump")
	if err != nil {
		t.Fatalf("kamcmd ul.dump: %v\n%s", err, out)
	}
	var cs []ulContact
	var aor string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		key, val, ok := strings.Cut(strings.TrimSpace(sc.Text()), ": ")
		if !ok {
			continue
		}
		switch key {
		case "AoR":
			aor = val
		case "Address":
			cs = append(cs, ulContact{AOR: aor, Address: val})
		case "Path", "Received", "Socket":
			if len(cs) == 0 {
				continue
			}
			c := &cs[len(cs)-1]
			switch key {
			case "Path":
				c.Path = val
			case "Received":
				c.Received = val
			case "Socket":
				c.Socket = val
			}
		}
	}
	return cs
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

type edgeOpts struct {
	mode     string // path | rewrite
	upstream string // sip:127.0.0.1:PORT;transport=udp|tcp
	level    string
	extra    string // more TOML, appended to the config (e.g. a [ratelimit] section)
}

type sipedge struct {
	udp, tcp, core string
	p              *proc
}

func startSipedge(t *testing.T, o edgeOpts) *sipedge {
	t.Helper()
	bin := buildSipedge(t)
	if o.level == "" {
		o.level = "debug"
	}
	dir := t.TempDir()
	access := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	e := &sipedge{udp: access, tcp: access, core: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	cfg := fmt.Sprintf(`[access]
udp = [%q]
tcp = [%q]
tls = []
ws  = []
wss = []

[core]
listen = %q
upstreams = [%q]
mode = %q
timeout = "8s"
key_file = %q

[registration]
domains = []
min_expires = "60s"
max_expires = "1h"
max_contacts = 10

[log]
level = %q
format = "text"
`, e.udp, e.tcp, e.core, o.upstream, o.mode, filepath.Join(dir, "flow.key"), o.level) + o.extra
	cfgPath := filepath.Join(dir, "sipedge.toml")
	must(t, os.WriteFile(cfgPath, []byte(cfg), 0o644))
	if out, err := runBounded(30*time.Second, dir, bin, "check-config", cfgPath); err != nil {
		t.Fatalf("sipedge check-config: %v\n%s\nconfig:\n%s", err, out, cfg)
	}
	e.p = startProc(t, "sipedge", filepath.Join(dir, "sipedge.log"), bin, "run", "-config", cfgPath)
	// Registered after startProc's cleanup, so it runs first: stop, then
	// look at what sipedge said (the race detector reports at exit).
	t.Cleanup(func() {
		e.p.stop(t)
		log := e.p.log()
		if strings.Contains(log, "WARNING: DATA RACE") {
			t.Errorf("sipedge reported a data race:\n%s", log)
		} else if t.Failed() {
			t.Logf("sipedge log (tail):\n%s", tail(log, 80))
		}
	})
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
	res := sippResult{dir: dir, port: freePort(t)}
	abs, err := filepath.Abs(filepath.Join(interopDir, "register_auth.xml"))
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
