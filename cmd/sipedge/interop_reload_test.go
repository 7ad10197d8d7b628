//go:build interop

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Reload under load: sipp registers at a steady rate while SIGHUP moves
// sipedge to another core, raises a limit and turns the log level to
// debug, then hands it a broken file. No registration fails, no binding
// is lost, the second core takes the registrations after the reload, and
// the broken file is refused while the edge carries on.
func TestInteropReloadUnderLoad(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp")
	a := startKamailio(t, kamOpts{users: 100})
	b := startKamailio(t, kamOpts{users: 100})
	bin := buildSipedge(t, buildRace)
	dir := t.TempDir()
	access := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	core := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	config := func(k *kamailio, level, burst string) string {
		return sipedgeConfig(access, core, dir, edgeOpts{mode: "path", level: level,
			upstream: fmt.Sprintf("sip:%s;transport=udp", k.addr()),
			extra:    "\n[ratelimit]\nregister_burst = " + burst + "\n"})
	}
	cfgPath, out, err := writeSipedgeConfig(t, bin, dir, config(a, "info", "20"))
	if err != nil {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	e := runSipedge(t, procOpts{logPath: filepath.Join(dir, "sipedge.log")}, bin, cfgPath)
	waitSIP(t, e, access)

	const calls, rate = 600, 40 // 15 s of registrations
	done := make(chan sippResult, 1)
	go func() {
		done <- runSipp(t, sippRun{target: access, transport: "u1", csv: filepath.Join(interopDir, "users.csv"),
			calls: calls, rate: rate, limit: 60 * time.Second})
	}()
	waitLog := func(what string, n int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for strings.Count(e.log(), what) < n {
			if time.Now().After(deadline) {
				t.Fatalf("sipedge did not log %q (%d times) within 20s\n%s", what, n, tail(e.log(), 30))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	hup := func(cfg string) {
		t.Helper()
		must(t, os.WriteFile(cfgPath, []byte(cfg), 0o644))
		must(t, syscall.Kill(e.cmd.Process.Pid, syscall.SIGHUP))
	}
	// Once the first core holds some registrations, move to the second.
	deadline := time.Now().Add(20 * time.Second)
	for len(a.ulDump(t)) < 20 {
		if time.Now().After(deadline) {
			t.Fatal("no registrations reached the first core")
		}
		time.Sleep(100 * time.Millisecond)
	}
	hup(config(b, "debug", "40"))
	waitLog("config reloaded", 1)
	hup("[core\nbroken")
	waitLog("reload refused", 1)
	hup(config(b, "debug", "40")) // the file as it should be, for the stop below

	res := <-done
	if res.exit != 0 || res.stat64("FailedCall(C)") != 0 || res.stat64("SuccessfulCall(C)") != calls {
		t.Fatalf("sipp: exit %d, %d successful, %d failed (want %d, 0)\nerrors:\n%s", res.exit,
			res.stat64("SuccessfulCall(C)"), res.stat64("FailedCall(C)"), calls, tail(res.errors, 30))
	}
	if n := len(b.ulDump(t)); n < 90 {
		t.Errorf("the second core holds %d registrations after the reload, want the 100 users (nearly)", n)
	}
	log := e.log()
	if i := strings.Index(log, "config reloaded"); i < 0 || !strings.Contains(log[i:], "level=DEBUG") {
		t.Error("no debug lines after the reload turned the level to debug")
	}
	if !strings.Contains(log, `changed="[core ratelimit log]"`) {
		t.Errorf("the reload line does not name the changed sections:\n%s", grepLines(log, "config reloaded"))
	}

	// No binding lost: every user registered is in the state sipedge saves.
	e.stop(t)
	dump, err := runBounded(30*time.Second, dir, bin, "state-dump", "-config", cfgPath)
	if err != nil {
		t.Fatalf("state-dump: %v\n%s", err, dump)
	}
	aors := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(dump))
	for sc.Scan() {
		var rec struct{ AOR string }
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.AOR != "" {
			aors[rec.AOR] = true
		}
	}
	if len(aors) != 100 {
		t.Errorf("sipedge saved %d AORs, want the 100 users registered", len(aors))
	}
	t.Logf("%d registrations, 0 failed; reloads: one applied, one refused; %d AORs held by sipedge, %d by the new core",
		calls, len(aors), len(b.ulDump(t)))
}

func grepLines(s, what string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, what) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
