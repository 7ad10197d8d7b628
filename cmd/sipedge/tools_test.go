//go:build interop || bench || natlab

// Helpers shared by the tests that drive external programs: the interop
// tests (interop_test.go, tag interop or bench), the benchmarks
// (bench_test.go, tag bench) and the NAT lab (natlab_test.go, tag natlab).
// They look for the programs, run them bounded in time (optionally inside a
// network namespace), build the sipedge under test, write its config and
// start it, and render, start and query Kamailio.
package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
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

const realm = "sipedge.test"

// procLifetime bounds every process a test starts, whatever happens,
// unless its procOpts set a shorter lifetime. The benchmarks, whose
// Kamailio and sipedge serve run after run, raise it (compare_test.go).
var procLifetime = 10 * time.Minute

// requireTools skips the test (or, under CI=true, fails it) when a program
// in names is not on PATH or missing, what the caller found missing
// besides, is not empty. msg is a format with one %s: the list of what is
// missing.
func requireTools(t *testing.T, msg string, missing []string, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg = fmt.Sprintf(msg, strings.Join(missing, ", "))
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// renderTemplate executes the text/template file tmplPath with data into
// outPath.
func renderTemplate(t *testing.T, tmplPath, outPath string, data any) {
	t.Helper()
	tmpl, err := template.ParseFiles(tmplPath)
	must(t, err)
	var b bytes.Buffer
	must(t, tmpl.Execute(&b, data))
	must(t, os.WriteFile(outPath, b.Bytes(), 0o644))
}

// inNetns returns argv run inside network namespace ns (empty: as it is).
// `ip netns exec` execs the command itself, so the PID is the program's.
func inNetns(ns string, argv ...string) []string {
	if ns == "" {
		return argv
	}
	return append([]string{"ip", "netns", "exec", ns}, argv...)
}

// runBounded runs a short command with a timeout in dir (empty: the
// test's) and returns its output.
func runBounded(timeout time.Duration, dir string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s: timed out after %s", strings.Join(argv, " "), timeout)
	}
	return string(out), err
}

// buildSipedge builds this package into the test's temp dir, with the race
// detector when race is set. No TestMain: main_test.go has one (goleak).
// After the first build only the link step runs (build cache), well under
// a second.
func buildSipedge(t *testing.T, race bool) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sipedge")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	args = append(args, ".")
	if out, err := runBounded(5*time.Minute, ".", append([]string{"go"}, args...)...); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

// --------------------------------------------------------------- processes

// procOpts say where and how startProc runs a program.
type procOpts struct {
	dir      string        // working directory; empty: the test's
	logPath  string        // its stdout and stderr; empty: dir/<name>.log
	netns    string        // network namespace to run it in; empty: the test's
	lifetime time.Duration // killed after this long, whatever happens; 0: procLifetime
	env      []string      // more environment, "NAME=value", over the test's
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

func startProc(t *testing.T, name string, o procOpts, argv ...string) *proc {
	t.Helper()
	if o.logPath == "" {
		o.logPath = filepath.Join(o.dir, name+".log")
	}
	if o.lifetime == 0 {
		o.lifetime = procLifetime
	}
	argv = inNetns(o.netns, argv...)
	f, err := os.Create(o.logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = o.dir
	if len(o.env) > 0 {
		cmd.Env = append(os.Environ(), o.env...)
	}
	cmd.Stdout, cmd.Stderr = f, f
	// Pdeathsig: should the test binary die without its cleanups (go test
	// -timeout panics), the programs it started die with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: o.logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	p.killer = time.AfterFunc(o.lifetime, p.kill)
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

// wait waits up to d for the process to exit by itself.
func (p *proc) wait(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

func (p *proc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// ----------------------------------------------------------------- sipedge

type edgeOpts struct {
	mode     string // path | rewrite
	upstream string // sip:127.0.0.1:PORT;transport=udp|tcp
	level    string // default debug
	extra    string // more TOML, appended to the config (e.g. a [ratelimit] section)
	// registration is more TOML for the [registration] section.
	registration string
	ws           string // a WebSocket listener's IP:port, if any
	netns        string // run it there ("": the test's own)
	// runArgs are more arguments for `sipedge run` (-cpuprofile FILE).
	runArgs []string
	bin     string   // a sipedge binary to run; empty: this tree's, built
	env     []string // more environment for it, "NAME=value"
}

// sipedgeConfig is sipedge's config with access address access (UDP and
// TCP), core address core and its flow key in dir.
func sipedgeConfig(access, core, dir string, o edgeOpts) string {
	if o.level == "" {
		o.level = "debug"
	}
	ws := "[]"
	if o.ws != "" {
		ws = fmt.Sprintf("[%q]", o.ws)
	}
	return fmt.Sprintf(`[access]
udp = [%q]
tcp = [%q]
tls = []
ws  = %s
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
%s
[log]
level = %q
format = "text"
`, access, access, ws, core, o.upstream, o.mode, filepath.Join(dir, "flow.key"), o.registration, o.level) + stateSection(dir, o.extra) + drainSection(o.extra) + adminSection(dir, o.extra) + o.extra
}

// adminSection puts the admin API on a port of the kernel's choice (the
// default, 8060, would be shared by every sipedge a test starts), its
// token in dir, unless extra has an [admin] section of its own.
func adminSection(dir, extra string) string {
	if strings.Contains(extra, "[admin]") {
		return ""
	}
	return fmt.Sprintf("\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = %q\n", filepath.Join(dir, "admin.token"))
}

// drainSection makes stops quick (2 s) unless extra has its own.
func drainSection(extra string) string {
	if strings.Contains(extra, "[drain]") {
		return ""
	}
	return "\n[drain]\ngrace = \"2s\"\n"
}

// stateSection keeps sipedge's state in dir unless extra has a [state]
// section of its own (the default, var/ in the working directory, would
// be shared by every sipedge a test starts).
func stateSection(dir, extra string) string {
	if strings.Contains(extra, "[state]") {
		return ""
	}
	return fmt.Sprintf("\n[state]\ndir = %q\n", filepath.Join(dir, "state"))
}

// writeSipedgeConfig writes cfg to dir/sipedge.toml and has bin check it;
// it returns the file and check-config's output and error.
func writeSipedgeConfig(t *testing.T, bin, dir, cfg string) (string, string, error) {
	t.Helper()
	cfgPath := filepath.Join(dir, "sipedge.toml")
	must(t, os.WriteFile(cfgPath, []byte(cfg), 0o644))
	out, err := runBounded(30*time.Second, dir, bin, "check-config", cfgPath)
	return cfgPath, out, err
}

// runSipedge starts `bin run -config cfgPath [args]`. When the test ends
// it is stopped, and the test fails if the race detector reported in its
// output.
func runSipedge(t *testing.T, o procOpts, bin, cfgPath string, args ...string) *proc {
	t.Helper()
	p := startProc(t, "sipedge", o, append([]string{bin, "run", "-config", cfgPath}, args...)...)
	// Registered after startProc's cleanup, so it runs first: stop, then
	// look at what sipedge said (the race detector reports at exit).
	t.Cleanup(func() {
		p.stop(t)
		log := p.log()
		if strings.Contains(log, "WARNING: DATA RACE") {
			t.Errorf("sipedge reported a data race:\n%s", log)
		} else if t.Failed() {
			t.Logf("sipedge log (tail):\n%s", tail(log, 100))
		}
	})
	return p
}

// ---------------------------------------------------------------- Kamailio

type kamailio struct {
	port int
	dir  string
	ctl  string
	p    *proc
}

// runKamailio renders the Kamailio config template tmplPath in a new temp
// dir with a db_text database of subscribers 1000..1000+users-1 (password
// pw<user>), checks it (kamailio -c) and starts Kamailio in the foreground
// with shmMB MiB shared memory and args, as o says (its dir and log are
// the temp dir's). data are the template's values besides Port, DBDir and
// CtlSock. The caller waits until it is ready.
func runKamailio(t *testing.T, o procOpts, tmplPath string, port, users, shmMB int, data map[string]any, args ...string) *kamailio {
	t.Helper()
	dir := t.TempDir()
	k := &kamailio{port: port, dir: dir, ctl: filepath.Join(dir, "ctl")}

	db := filepath.Join(dir, "db")
	must(t, os.Mkdir(db, 0o755))
	var sub strings.Builder
	sub.WriteString("id(int,auto) username(str) domain(str) password(str) ha1(str,null) ha1b(str,null)\n")
	for i := range users {
		u := 1000 + i
		fmt.Fprintf(&sub, "%d:%d:%s:pw%d:::\n", i+1, u, realm, u)
	}
	must(t, os.WriteFile(filepath.Join(db, "subscriber"), []byte(sub.String()), 0o644))
	must(t, os.WriteFile(filepath.Join(db, "version"), []byte("table_name(str) table_version(int)\nsubscriber:7\n"), 0o644))

	values := map[string]any{"Port": port, "DBDir": db, "CtlSock": k.ctl}
	for key, v := range data {
		values[key] = v
	}
	cfgPath := filepath.Join(dir, "kamailio.cfg")
	renderTemplate(t, tmplPath, cfgPath, values)

	if out, err := runBounded(30*time.Second, dir, inNetns(o.netns, "kamailio", "-c", "-f", cfgPath, "-Y", dir)...); err != nil {
		t.Fatalf("kamailio -c: %v\n%s", err, tail(out, 30))
	}
	o.dir, o.logPath = dir, filepath.Join(dir, "kamailio.log")
	k.p = startProc(t, "kamailio", o, append([]string{
		"kamailio", "-f", cfgPath, "-P", filepath.Join(dir, "kamailio.pid"), "-Y", dir, "-w", dir,
		"-DD", "-E", "-m", strconv.Itoa(shmMB)}, args...)...)
	return k
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
