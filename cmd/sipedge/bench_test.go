//go:build bench

// Throughput benchmarks, straight to Kamailio and through sipedge (path
// mode, UDP) in the same run, at increasing rates.
//
// TestThroughput: sipp registrations with digest auth (REGISTER → 401 →
// REGISTER → 200). SIPEDGE_BENCH_RATES (e.g. "250,500,1000") and
// SIPEDGE_BENCH_CALLS (default 2000) override the steps.
//
// TestCallThroughput: sipp calls (INVITE → 180 → 200 → ACK, BYE → 200)
// between two registered phones. SIPEDGE_BENCH_CALL_RATES and
// SIPEDGE_BENCH_CALL_COUNT override the steps.
//
//	go test -tags bench -count=1 -v -timeout 30m ./cmd/sipedge/ -run Throughput
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

func init() {
	buildRace = false // the race detector would dominate the numbers
}

const benchUsers = 2000

type benchStep struct {
	rate      int
	ok        bool
	success   int64
	failed    int64
	achieved  float64 // completed registrations per second of the run
	retrans   int64   // sipp's UDP retransmissions
	callLen   string  // mean REGISTER…200 time (sipp CallLength(C))
	exit      int
	firstErrs string
}

func TestThroughput(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp")

	rates := []int{250, 500, 1000, 2000, 4000, 8000}
	if s := os.Getenv("SIPEDGE_BENCH_RATES"); s != "" {
		rates = nil
		for _, f := range strings.Split(s, ",") {
			r, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || r <= 0 {
				t.Fatalf("SIPEDGE_BENCH_RATES: bad rate %q", f)
			}
			rates = append(rates, r)
		}
	}
	calls := benchUsers
	if s := os.Getenv("SIPEDGE_BENCH_CALLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("SIPEDGE_BENCH_CALLS: bad count %q", s)
		}
		calls = n
	}
	csv := filepath.Join(t.TempDir(), "users.csv")
	writeUsers(t, csv, 1000, benchUsers)

	loadavg := func() string {
		b, _ := os.ReadFile("/proc/loadavg")
		return strings.TrimSpace(string(b))
	}
	// The numbers mean little on a busy machine: say how busy it was.
	t.Logf("load average before: %s (%d CPUs)", loadavg(), runtime.NumCPU())
	defer func() { t.Logf("load average after: %s", loadavg()) }()

	results := map[string][]benchStep{}
	for _, target := range []string{"kamailio", "sipedge"} {
		t.Run(target, func(t *testing.T) {
			// A fresh core per target: same starting state for both.
			k := startKamailio(t, kamOpts{users: benchUsers, shmMB: 512, children: 4})
			addr := k.addr()
			if target == "sipedge" {
				e := startSipedge(t, edgeOpts{
					mode: "path", upstream: fmt.Sprintf("sip:%s;transport=udp", addr), level: "warn",
				})
				addr = e.udp
			}
			for _, rate := range rates {
				// Bounded: the run itself plus 20 s for stragglers.
				limit := time.Duration(calls/rate)*time.Second + 20*time.Second
				res := runSippQuiet(t, sippRun{
					target: addr, transport: "u1", csv: csv,
					calls: calls, rate: rate, limit: limit,
				})
				st := benchStep{
					rate:    rate,
					exit:    res.exit,
					success: res.stat64("SuccessfulCall(C)"),
					failed:  res.stat64("FailedCall(C)"),
					retrans: res.stat64("Retransmissions(C)"),
					callLen: res.stat["CallLength(C)"],
				}
				if d := statSeconds(res.stat["CurrentTime"]) - statSeconds(res.stat["StartTime"]); d > 0 {
					st.achieved = float64(st.success) / d
				}
				st.ok = res.exit == 0 && st.failed == 0 && st.success == int64(calls)
				if !st.ok {
					st.firstErrs = tail(res.errors, 5)
				}
				results[target] = append(results[target], st)
				t.Logf("%-8s offered %5d/s: exit %d, %d ok, %d failed, completed %.0f/s, %d retransmissions, mean %s",
					target, rate, st.exit, st.success, st.failed, st.achieved, st.retrans, st.callLen)
				if !st.ok {
					t.Logf("first sipp errors:\n%s", st.firstErrs)
					break // higher rates would fail too
				}
			}
		})
	}

	var b strings.Builder
	fmt.Fprintf(&b, "registrations with digest auth, %d per step, UDP, 127.0.0.1\n", calls)
	fmt.Fprintf(&b, "ok = zero failed calls; (completed/s, retransmissions)\n")
	fmt.Fprintf(&b, "%-9s | %-31s | %s\n", "offered/s", "sipp → Kamailio", "sipp → sipedge → Kamailio")
	for _, rate := range rates {
		cell := func(target string) string {
			for _, st := range results[target] {
				if st.rate == rate {
					if st.ok {
						return fmt.Sprintf("ok (%.0f/s, %d rtx)", st.achieved, st.retrans)
					}
					return fmt.Sprintf("FAIL (%d ok, %d failed, exit %d)", st.success, st.failed, st.exit)
				}
			}
			return "-"
		}
		fmt.Fprintf(&b, "%-9d | %-31s | %s\n", rate, cell("kamailio"), cell("sipedge"))
	}
	for _, target := range []string{"kamailio", "sipedge"} {
		best, kept, peak := 0, 0, 0.0
		for _, st := range results[target] {
			if !st.ok {
				continue
			}
			best = max(best, st.rate)
			if st.achieved >= 0.9*float64(st.rate) {
				kept = max(kept, st.rate)
			}
			peak = max(peak, st.achieved)
		}
		fmt.Fprintf(&b, "%-8s: zero failed calls up to %d/s offered; kept pace (>=90%%) up to %d/s; best completed %.0f/s\n",
			target, best, kept, peak)
	}
	t.Log("\n" + b.String())
}

// statSeconds reads the epoch seconds of a sipp time stamp
// ("2026-01-02\t15:04:05.000000\t1767366245.000000").
func statSeconds(v string) float64 {
	f := strings.Fields(v)
	if len(f) == 0 {
		return 0
	}
	s, _ := strconv.ParseFloat(f[len(f)-1], 64)
	return s
}

// head returns the first n lines of s.
func head(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append(lines[:n], fmt.Sprintf("[... %d lines after]", len(lines)-n))
	}
	return strings.Join(lines, "\n")
}

// runSippQuiet is runSipp for load: no message trace.
func runSippQuiet(t *testing.T, s sippRun) sippResult {
	t.Helper()
	s.traceMsg = false
	return runSipp(t, s)
}

// benchNoLimits exempts 127.0.0.0/8 from sipedge's rate limiter: all the
// load comes from one address, which the limiter would rightly call a
// flood; the benchmark measures the proxy path, not the limiter.
const benchNoLimits = `
[ratelimit]
allow = ["127.0.0.0/8"]
`

// TestCallThroughput: sipp calls (INVITE → 180 → 200 → ACK, BYE → 200; no
// media; the callee rings 20 ms) from one registered caller to one
// registered callee at increasing rates, UDP, in the same run:
//
//	kamailio        both phones registered straight at Kamailio
//	sipedge         both registered through sipedge: every call crosses
//	                it twice (phone → edge → core → edge → phone)
//	sipedge-callee  only the callee behind sipedge (core → edge → phone)
//
// SIPEDGE_BENCH_CALL_RATES (e.g. "100,200") and SIPEDGE_BENCH_CALL_COUNT
// (default 2000 per step) override the steps.
func TestCallThroughput(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp")

	rates := []int{100, 200, 400, 600, 800, 1200, 1600, 2400, 3200}
	if s := os.Getenv("SIPEDGE_BENCH_CALL_RATES"); s != "" {
		rates = nil
		for _, f := range strings.Split(s, ",") {
			r, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || r <= 0 {
				t.Fatalf("SIPEDGE_BENCH_CALL_RATES: bad rate %q", f)
			}
			rates = append(rates, r)
		}
	}
	calls := 2000
	if s := os.Getenv("SIPEDGE_BENCH_CALL_COUNT"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("SIPEDGE_BENCH_CALL_COUNT: bad count %q", s)
		}
		calls = n
	}
	stepLimit := func(rate int) time.Duration { return time.Duration(calls/rate)*time.Second + 20*time.Second }
	var total time.Duration
	for _, r := range rates {
		total += stepLimit(r)
	}

	loadavg := func() string {
		b, _ := os.ReadFile("/proc/loadavg")
		return strings.TrimSpace(string(b))
	}
	t.Logf("load average before: %s (%d CPUs)", loadavg(), runtime.NumCPU())
	defer func() { t.Logf("load average after: %s", loadavg()) }()

	targets := []placement{
		{name: "kamailio"},
		{name: "sipedge", callerEdge: true, calleeEdge: true},
		{name: "sipedge-callee", calleeEdge: true},
	}
	results := map[string][]benchStep{}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			// A fresh core (and edge) per target: same starting state.
			k := startKamailio(t, kamOpts{users: 10, shmMB: 512, children: 4})
			var e *sipedge
			if tg.callerEdge || tg.calleeEdge {
				e = startSipedge(t, edgeOpts{
					mode: "path", upstream: fmt.Sprintf("sip:%s;transport=udp", k.addr()), level: "warn",
					extra: benchNoLimits,
				})
			}
			via := func(edge bool) string {
				if edge {
					return e.udp
				}
				return k.addr()
			}
			// Register both phones (digest auth) from the ports their load
			// scenarios then use: UDP flows outlive the registering sipp.
			register := func(user int, edge bool) int {
				csv := filepath.Join(t.TempDir(), "user.csv")
				writeUsers(t, csv, user, 1)
				res := runSippQuiet(t, sippRun{
					target: via(edge), transport: "u1", csv: csv, calls: 1, rate: 1, limit: 10 * time.Second,
				})
				if res.exit != 0 {
					t.Fatalf("registering %d: sipp exit %d\n%s", user, res.exit, tail(res.errors, 20))
				}
				return res.port
			}
			calleePort := register(1001, tg.calleeEdge)
			callerPort := register(1000, tg.callerEdge)
			startPhone(t, phoneOpts{
				name: "uas", target: via(tg.calleeEdge), transport: "u1", scenario: "uas_bench.xml",
				port: calleePort, calls: calls * len(rates), limit: total, load: true,
			})
			for _, rate := range rates {
				uac := startPhone(t, phoneOpts{
					name: "uac", target: via(tg.callerEdge), transport: "u1", scenario: "uac_bench.xml",
					port: callerPort, calls: calls, rate: rate, limit: stepLimit(rate), load: true,
					keys: map[string]string{"user": "1000", "callee": "1001"},
				})
				exit := uac.wait(t)
				res := uac.stat()
				st := benchStep{
					rate:    rate,
					exit:    exit,
					success: res.stat64("SuccessfulCall(C)"),
					failed:  res.stat64("FailedCall(C)"),
					retrans: res.stat64("Retransmissions(C)"),
					callLen: res.stat["CallLength(C)"],
				}
				if d := statSeconds(res.stat["CurrentTime"]) - statSeconds(res.stat["StartTime"]); d > 0 {
					st.achieved = float64(st.success) / d
				}
				st.ok = exit == 0 && st.failed == 0 && st.success == int64(calls)
				if !st.ok {
					st.firstErrs = head(res.errors, 16)
					if strings.TrimSpace(st.firstErrs) == "" {
						st.firstErrs = "(no sipp errors logged) sipp screen:\n" + tail(uac.file("screen.log"), 30)
					}
					if e != nil {
						var warns []string
						for _, line := range strings.Split(e.p.log(), "\n") {
							if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
								warns = append(warns, line)
							}
						}
						st.firstErrs += fmt.Sprintf("\nsipedge warnings and errors (%d, first 8):\n%s",
							len(warns), head(strings.Join(warns, "\n"), 8))
					}
				}
				results[tg.name] = append(results[tg.name], st)
				t.Logf("%-14s offered %5d/s: exit %d, %d ok, %d failed, completed %.0f calls/s, %d retransmissions, mean %s",
					tg.name, rate, st.exit, st.success, st.failed, st.achieved, st.retrans, st.callLen)
				if !st.ok {
					t.Logf("first sipp errors:\n%s", st.firstErrs)
					break // higher rates would fail too
				}
			}
		})
	}

	var b strings.Builder
	fmt.Fprintf(&b, "calls INVITE-180-200-ACK-BYE-200 (no media), %d per step, UDP, 127.0.0.1\n", calls)
	fmt.Fprintf(&b, "ok = zero failed calls; (completed calls/s, retransmissions)\n")
	fmt.Fprintf(&b, "%-9s | %-26s | %-34s | %s\n", "offered/s", "UAC → Kamailio → UAS",
		"UAC → sipedge → Kam → sipedge → UAS", "UAC → Kamailio → sipedge → UAS")
	for _, rate := range rates {
		cell := func(target string) string {
			for _, st := range results[target] {
				if st.rate == rate {
					if st.ok {
						return fmt.Sprintf("ok (%.0f/s, %d rtx)", st.achieved, st.retrans)
					}
					return fmt.Sprintf("FAIL (%d ok, %d failed, exit %d)", st.success, st.failed, st.exit)
				}
			}
			return "-"
		}
		fmt.Fprintf(&b, "%-9d | %-26s | %-34s | %s\n", rate, cell("kamailio"), cell("sipedge"), cell("sipedge-callee"))
	}
	for _, tg := range targets {
		best, kept, peak := 0, 0, 0.0
		for _, st := range results[tg.name] {
			if !st.ok {
				continue
			}
			best = max(best, st.rate)
			if st.achieved >= 0.9*float64(st.rate) {
				kept = max(kept, st.rate)
			}
			peak = max(peak, st.achieved)
		}
		fmt.Fprintf(&b, "%-14s: zero failed calls up to %d/s offered; kept pace (>=90%%) up to %d/s; best completed %.0f calls/s\n",
			tg.name, best, kept, peak)
	}
	t.Log("\n" + b.String())
}
