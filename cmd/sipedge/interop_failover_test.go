//go:build interop

package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Two real Kamailio cores behind one sipedge (A the primary, B its
// backup, one nonce secret as in a cluster). sipp registers at 500/s;
// kill -9 A: fewer than 1% of registrations fail and the rest go to B;
// A returns: registrations move back to it once it is up again. Then
// every core stopped: a phone gets 503 with Retry-After at once, and 200
// once a core is back.
func TestInteropCoreFailover(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp")
	a := startKamailio(t, kamOpts{users: 100})
	b := startKamailio(t, kamOpts{users: 100})
	bin := buildSipedge(t, false) // a load test: the race detector would set the pace
	dir := t.TempDir()
	access := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	core := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := sipedgeConfig(access, core, dir, edgeOpts{mode: "path", level: "info",
		upstream: fmt.Sprintf("sip:%s;transport=udp", a.addr())})
	cfg = strings.Replace(cfg, fmt.Sprintf("upstreams = [%q]", fmt.Sprintf("sip:%s;transport=udp", a.addr())),
		fmt.Sprintf("upstreams = [%q, %q]\ntry_timeout = \"1s\"\nhealth_interval = \"1s\"\nhealth_timeout = \"500ms\"\nup_after = 2\ndown_after = 2",
			fmt.Sprintf("sip:%s;transport=udp", a.addr()), fmt.Sprintf("sip:%s;transport=udp", b.addr())), 1)
	cfgPath, out, err := writeSipedgeConfig(t, bin, dir, cfg)
	if err != nil {
		t.Fatalf("check-config: %v\n%s\n%s", err, out, cfg)
	}
	e := runSipedge(t, procOpts{logPath: filepath.Join(dir, "sipedge.log")}, bin, cfgPath)
	waitSIP(t, e, access)

	const calls, rate = 6000, 500 // 12 s of registrations
	done := make(chan sippResult, 1)
	go func() {
		done <- runSipp(t, sippRun{target: access, transport: "u1", csv: filepath.Join(interopDir, "users.csv"),
			calls: calls, rate: rate, limit: 60 * time.Second})
	}()
	// Kill A once it carries the load.
	deadline := time.Now().Add(20 * time.Second)
	for len(a.ulDump(t)) < 50 {
		if time.Now().After(deadline) {
			t.Fatal("registrations did not reach the primary")
		}
		time.Sleep(50 * time.Millisecond)
	}
	killed := time.Now()
	a.p.kill()
	if !a.p.wait(10 * time.Second) {
		t.Fatal("Kamailio A did not die")
	}
	// state is `msg="core down"` or `msg="core up"`; k the core it is about.
	count := func(state string, k *kamailio) int {
		return strings.Count(e.log(), fmt.Sprintf("%s core=\"sip:%s;transport=udp\"", state, k.addr()))
	}
	waitLog := func(what string, k *kamailio, n int, within time.Duration) time.Time {
		t.Helper()
		deadline := time.Now().Add(within)
		for count(what, k) < n {
			if time.Now().After(deadline) {
				t.Fatalf("sipedge did not log %q %d times within %v\n%s", what, n, within, tail(e.log(), 20))
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Now()
	}
	downAt := waitLog(`msg="core down"`, a, 1, 10*time.Second)
	t.Logf("A killed; sipedge marked it down %v later", downAt.Sub(killed).Round(time.Millisecond))

	// The backup takes the registrations.
	for deadline := time.Now().Add(15 * time.Second); len(b.ulDump(t)) < 90; {
		if time.Now().After(deadline) {
			t.Fatalf("the backup holds %d AORs 15 s after the primary died", len(b.ulDump(t)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	bUsers := len(b.ulDump(t))
	// A comes back on its port: once up again, registrations return to it.
	restarted := time.Now()
	a2 := restartKamailio(t, a)
	upAt := waitLog(`msg="core up"`, a, count(`msg="core up"`, a)+1, 15*time.Second)
	t.Logf("A restarted; sipedge marked it up %v later", upAt.Sub(restarted).Round(time.Millisecond))
	res := <-done
	failed, ok := res.stat64("FailedCall(C)"), res.stat64("SuccessfulCall(C)")
	t.Logf("sipp: %d registrations at %d/s, %d successful, %d failed (%.2f%%); B held %d AORs before A returned, A %d after",
		calls, rate, ok, failed, 100*float64(failed)/calls, bUsers, len(a2.ulDump(t)))
	if float64(failed) >= 0.01*calls {
		t.Errorf("%d of %d registrations failed across the failover, want under 1%%\n%s", failed, calls, tail(res.errors, 20))
	}
	if bUsers < 50 {
		t.Errorf("the backup held %d AORs after the primary died, want most of the 100", bUsers)
	}
	if n := len(a2.ulDump(t)); n < 50 {
		t.Errorf("the primary holds %d AORs after it came back, want the registrations back on it", n)
	}
	// One down and one up: late answers and timeouts of requests sent
	// before a change do not flip the state back and forth.
	if d, u := count(`msg="core down"`, a), count(`msg="core up"`, a); d != 1 || u != 1 {
		t.Errorf("A went down %d times and up %d times, want once each:\n%s", d, u, grepLines(e.log(), `msg="core `))
	}

	// Every core stopped: 503 with Retry-After at once.
	downsA, downsB := count(`msg="core down"`, a), count(`msg="core down"`, b)
	a2.p.kill()
	b.p.kill()
	waitLog(`msg="core down"`, a, downsA+1, 10*time.Second)
	waitLog(`msg="core down"`, b, downsB+1, 10*time.Second)
	phone := dialRaw(t, "127.0.0.1", access)
	start := time.Now()
	phone.send(phone.register("1000", "no-core", 1, ""))
	r := phone.recv(5 * time.Second)
	took := time.Since(start)
	if r == nil || r.StatusCode != 503 || r.GetHeader("Retry-After") == nil {
		t.Fatalf("with no core up the phone got %v, want 503 with Retry-After", r)
	}
	ra, _ := strconv.Atoi(r.GetHeader("Retry-After").Value())
	t.Logf("no core up: 503 with Retry-After %d in %v", ra, took.Round(time.Microsecond))
	if took > 50*time.Millisecond {
		t.Errorf("the 503 took %v, want under 50 ms", took)
	}
	ups := count(`msg="core up"`, b)
	b2 := restartKamailio(t, b)
	waitLog(`msg="core up"`, b, ups+1, 15*time.Second)
	if code := phone.registerAuth("1000", "core-back"); code != 200 {
		t.Fatalf("once a core was back the phone got %d, want 200", code)
	}
	_ = b2
}

// restartKamailio starts a Kamailio like k, on k's port, once k is gone.
func restartKamailio(t *testing.T, k *kamailio) *kamailio {
	t.Helper()
	k2 := runKamailio(t, procOpts{}, filepath.Join(interopDir, "kamailio.cfg.tmpl"), k.port, 100, 256,
		map[string]any{"LogRegister": 0, "LogCalls": 0, "Children": 4})
	waitSIP(t, k2.p, k2.addr())
	return k2
}
