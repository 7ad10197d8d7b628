//go:build bench

// Same-run comparison of sipedge with Kamailio as an edge (issue 14):
// Kamailio's edge (testdata/bench/kamailio-edge.cfg) and sipedge (path
// mode, UDP) in front of one Kamailio core, sipp at fixed rising rates,
// each rate run alternately through each edge (A B, then B A, after an
// uncounted warm-up run each), with the edge's CPU, what completed, what
// failed and the response times. Absolute figures vary between machines
// and with what else runs on them; the ratio between the two edges is
// the result.
//
// TestEdgeCompare: registrations with digest auth (REGISTER → 401 →
// REGISTER → 200), then CPU and allocation profiles of sipedge under the
// same load. TestEdgeCompareCalls: calls (INVITE → 180 → 200 → ACK, BYE
// → 200; no media) with both phones behind the edge, so every call
// crosses it twice.
//
//	SIPEDGE_BENCH_RATES         registrations/s, default 1000,2000,3000,4000,5000,6000
//	SIPEDGE_BENCH_CALL_RATES    calls/s, default 250,500,1000,1500,2000
//	SIPEDGE_BENCH_SECONDS       length of each run, default 10
//	SIPEDGE_BENCH_ROUNDS        rounds per rate (A B, then B A), default 2
//	SIPEDGE_BENCH_PROFILE_RATE  registrations/s of the profiled run, default 3000 (0: none)
//	SIPEDGE_BENCH_LATENCY_RATE  registrations/s of the captured runs (tcpdump), default 3000 (0: none)
//	SIPEDGE_BENCH_LATENCY_ROUNDS captured rounds (A B A B), default 2
//	SIPEDGE_BENCH_TRACE         set: the profiled run writes an execution trace too (go tool trace)
//	SIPEDGE_BENCH_FLOOR         set: a third edge, "floor" (internal/floor), Go's least UDP relay:
//	                            what sipedge costs above it is its SIP work
//	SIPEDGE_ARTIFACTS           a directory to keep the profiles in
//
//	go test -tags bench -count=1 -v -timeout 60m -run EdgeCompare ./cmd/sipedge/
//
// These are shared with TestThroughput and TestCallThroughput
// (bench_test.go), which use SIPEDGE_BENCH_RATES and
// SIPEDGE_BENCH_CALL_RATES too.
package main

import (
	"bufio"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func init() {
	// The Kamailios and sipedges of a comparison serve every run of it:
	// 6 rates, 2 rounds, 2 edges, up to ~40 s each, is ~16 min.
	procLifetime = 50 * time.Minute
}

// cmpBorder keeps sipedge's border checks on for the comparison, as
// permissive as the Kamailio edge's pike, which the harness starts with
// PIKE_DENSITY=65000 (pike's ceiling, 16 bits) per sampling_time_unit 2 s:
// a source is a flooder past 65,000 requests in 2 s. All the load comes
// from 127.0.0.1, one source for both. So here, for one source:
//
//   - requests of any method, and each method: 32,500/s with a burst of
//     65,000, pike's density as a token bucket;
//   - datagrams: twice that, since sipedge counts them before parsing,
//     replies included (in a call the callee sends as many as the
//     caller), where pike sees only requests; bytes: 1 KiB a datagram;
//   - unproven_rate (datagrams from sources with no registered flow yet,
//     all together): as one source's datagrams, so the first
//     registrations of a run are not held back by a budget pike lacks;
//   - binding_weight 0: budgets do not grow with the bindings behind
//     127.0.0.1 (thousands of them here), as pike's do not.
//
// Everything else keeps its default and stays on: bans after a
// flood_window over a limit, scanner User-Agents, auth-failure and
// malformed-message scores, max_inflight toward the core, and the
// per-AOR REGISTER budget (charged only when a source answers a
// challenge for an AOR it does not hold yet, so once per AOR here: it
// never binds). Nothing is allowlisted, unlike benchNoLimits.
const cmpBorder = `
[ratelimit]
binding_weight = 0.0
request_rate = 32500.0
request_burst = 65000
method_rate = 32500.0
method_burst = 65000
packet_rate = 65000.0
packet_burst = 130000
byte_rate = 66560000.0
byte_burst = 133120000
unproven_rate = 65000.0
unproven_burst = 130000

[ratelimit.methods]
INVITE = { rate = 32500.0, burst = 65000 }
OPTIONS = { rate = 32500.0, burst = 65000 }
`

// cmpPikeDensity is the Kamailio edge's PIKE_DENSITY (see cmpBorder).
const cmpPikeDensity = 65000

// ------------------------------------------------------ Kamailio as edge

const kamEdgeCfg = "../../testdata/bench/kamailio-edge.cfg"

// kamEdge is a Kamailio edge (kamailio-edge.cfg) in front of a core.
type kamEdge struct {
	addr string // its UDP and TCP address
	dir  string
	p    *proc
}

// startKamailioEdge starts the Kamailio edge config in front of core, in
// its own directory, on a port of its own on 127.0.0.1, as the shared
// research notes run it (-m 1024 -M 8, 4 UDP children, pike at
// cmpPikeDensity). It is stopped when the test ends: SIGTERM to the PID
// it started, its own process group only as a last resort (startProc).
func startKamailioEdge(t *testing.T, core *kamailio) *kamEdge {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	e := &kamEdge{addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir}

	b, err := os.ReadFile(kamEdgeCfg)
	must(t, err)
	cfg := string(b)
	// The config names its addresses in these lines only: change each,
	// and fail if one is not there (the copy changed under us).
	for old, repl := range map[string]string{
		"listen=udp:127.0.0.1:5060\n":                fmt.Sprintf("listen=udp:%s\n", e.addr),
		"listen=tcp:127.0.0.1:5060\n":                fmt.Sprintf("listen=tcp:%s\n", e.addr),
		"#!define CORE_PORT 5070\n":                  fmt.Sprintf("#!define CORE_PORT %d\n", core.port),
		"#!define CORE_URI \"sip:127.0.0.1:5070\"\n": fmt.Sprintf("#!define CORE_URI \"sip:%s\"\n", core.addr()),
	} {
		if strings.Count(cfg, old) != 1 {
			t.Fatalf("%s: expected the line %q once", kamEdgeCfg, strings.TrimSpace(old))
		}
		cfg = strings.Replace(cfg, old, repl, 1)
	}
	cfgPath := filepath.Join(dir, "edge.cfg")
	must(t, os.WriteFile(cfgPath, []byte(cfg), 0o644))
	defines := []string{
		"-A", `CTLSOCK="unix:` + filepath.Join(dir, "edge_ctl") + `"`,
		"-A", "CHILDREN=4", "-A", "TCP_CHILDREN=2",
		"-A", "PIKE_DENSITY=" + strconv.Itoa(cmpPikeDensity),
		"-A", `IPBAN_HTABLE="ipban=>size=8;autoexpire=30;"`,
		"-A", "DBGLEVEL=2",
	}
	if out, err := runBounded(30*time.Second, dir, append([]string{"kamailio", "-c", "-f", cfgPath, "-Y", dir}, defines...)...); err != nil {
		t.Fatalf("kamailio -c (edge): %v\n%s", err, tail(out, 30))
	}
	e.p = startProc(t, "kamailio-edge", procOpts{dir: dir, logPath: filepath.Join(dir, "edge.log")}, append([]string{
		"kamailio", "-f", cfgPath, "-P", filepath.Join(dir, "edge.pid"), "-Y", dir, "-w", dir,
		"-m", "1024", "-M", "8", "-DD", "-E"}, defines...)...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kamailio edge log (tail):\n%s", tail(e.p.log(), 40))
		}
	})
	waitSIP(t, e.p, e.addr)
	return e
}

// ------------------------------------------------- CPU of a process tree

// userHZ is the unit of the times in /proc/PID/stat (USER_HZ, 100 on
// every Linux ABI Go runs on): the CPU figures' resolution is 10 ms.
const userHZ = 100

// treeCPU returns the CPU time (user + system, and the system part
// alone) used so far by the process root and all its descendants, from
// /proc: each process's utime and
// stime (all its threads) plus cutime and cstime (its children already
// reaped, which are no longer in /proc). Kamailio forks a process per
// worker, timer and listener; sipedge is one process of many threads.
func treeCPU(root int) (cpu, sys time.Duration, pids []int, err error) {
	type stat struct {
		ppid       int
		ticks, sys int64
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, nil, err
	}
	stats := make(map[int]stat, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// "pid (comm) state ppid ... utime stime cutime cstime ...": comm
		// may hold spaces and parentheses, so count from the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 15 {
			continue
		}
		st := stat{}
		st.ppid, _ = strconv.Atoi(f[1])
		for j, v := range f[11:15] { // fields 14-17: utime stime cutime cstime
			n, _ := strconv.ParseInt(v, 10, 64)
			st.ticks += n
			if j%2 == 1 {
				st.sys += n
			}
		}
		stats[pid] = st
	}
	if _, ok := stats[root]; !ok {
		return 0, 0, nil, fmt.Errorf("process %d is gone", root)
	}
	children := map[int][]int{}
	for pid, st := range stats {
		children[st.ppid] = append(children[st.ppid], pid)
	}
	var ticks, sysTicks int64
	for todo := []int{root}; len(todo) > 0; {
		pid := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		ticks += stats[pid].ticks
		sysTicks += stats[pid].sys
		pids = append(pids, pid)
		todo = append(todo, children[pid]...)
	}
	return time.Duration(ticks) * time.Second / userHZ, time.Duration(sysTicks) * time.Second / userHZ, pids, nil
}

// treeMiB is the memory of the process tree of root, in MiB: the sum of
// each process's proportional set size (Pss, /proc/PID/smaps_rollup),
// which shares each page among the processes mapping it, so Kamailio's
// shared memory counts once, as far as it is touched.
func treeMiB(root int) float64 {
	_, _, pids, err := treeCPU(root)
	if err != nil {
		return math.NaN()
	}
	var kB int64
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "Pss:" {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				kB += n
			}
		}
	}
	return float64(kB) / 1024
}

// ------------------------------------------------------------ one edge

// cmpEdge is one of the edges compared, and its results.
type cmpEdge struct {
	name string
	addr string // where sipp sends
	p    *proc
	// port is sipp's local port for this edge in every run: the core
	// then refreshes one contact per AOR and edge instead of gathering
	// one per run.
	port   int
	runs   []cmpRun
	gaveUp int // the rate at which it was dropped (most calls failed); 0: never
	// direct marks the baseline: sipp straight to the core, no edge (p is
	// the core's). What an edge adds to response times is its figures
	// less these. It registers users of its own (csv), so the edges'
	// AORs and the core's answers to them stay as they were without it.
	direct bool
	csv    string // the users it registers, if not the edges' ones
	// refusals, when set, reads the edge's own count of what it refused,
	// by why (sipedge: its limiter's decisions, from its metrics).
	refusals func() map[string]float64
}

// sipedgeRefusals reads e's sipedge_limiter_decisions_total from its
// admin API (its address from the log, the token from its directory),
// by "decision reason": what sipedge answered 503 (reject) or dropped,
// max_inflight toward the core ("reject inflight") included.
func sipedgeRefusals(t *testing.T, e *sipedge) func() map[string]float64 {
	return func() map[string]float64 {
		m := regexp.MustCompile(`admin API listening"? addr=(\S+)`).FindStringSubmatch(e.p.log())
		token, err := os.ReadFile(filepath.Join(e.dir, "admin.token"))
		if m == nil || err != nil {
			t.Logf("sipedge metrics: no admin address in the log or no token (%v)", err)
			return nil
		}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
		defer c.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "http://"+m[1]+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		res, err := c.Do(req)
		if err != nil {
			t.Logf("sipedge metrics: %v", err)
			return nil
		}
		defer res.Body.Close()
		// sipedge_limiter_decisions_total{decision="reject",reason="inflight"} 12
		line := regexp.MustCompile(`^sipedge_limiter_decisions_total\{decision="(\w+)",reason="(\w+)"\} (\S+)$`)
		out := map[string]float64{}
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			if f := line.FindStringSubmatch(sc.Text()); f != nil {
				v, _ := strconv.ParseFloat(f[3], 64)
				out[f[1]+" "+f[2]] += v
			}
		}
		return out
	}
}

// cmpRun is one sipp run through one edge.
type cmpRun struct {
	rate, round int
	planned     int
	success     int64
	failed      int64
	why         string  // sipp's non-zero Failed* counters, 503s seen, the edge's own refusals
	achieved    float64 // completed per second of the run
	cpu         time.Duration
	sys         time.Duration // the kernel's part of cpu
	wait        time.Duration // the edge's threads runnable, waiting for a CPU
	coreCPU     time.Duration
	mib         float64   // the edge's memory after the run (treeMiB)
	box, steal  float64   // per cent of the box's CPUs busy, and stolen, while sipp ran
	rtts        []float64 // ms, each response time measured (sipp -trace_rtt)
	exit        int
	bans        int // bans the edge reported during the run
}

func (r cmpRun) held() bool {
	return r.exit == 0 && r.failed == 0 && r.success == int64(r.planned) && r.achieved >= 0.9*float64(r.rate)
}

// cpuPer1000 is CPU seconds per 1,000 completed.
func cpuPer1000(cpu time.Duration, n int64) float64 {
	if n == 0 {
		return math.NaN()
	}
	return cpu.Seconds() * 1000 / float64(n)
}

// cmpEnv reads the knobs above.
type cmpEnv struct {
	rates   []int
	seconds int
	rounds  int
}

func readCmpEnv(t *testing.T, ratesVar string, defRates []int) cmpEnv {
	t.Helper()
	c := cmpEnv{rates: defRates, seconds: 10, rounds: 2}
	if s := os.Getenv(ratesVar); s != "" {
		c.rates = nil
		for _, f := range strings.Split(s, ",") {
			r, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || r <= 0 || r > 50000 {
				t.Fatalf("%s: bad rate %q (1..50000)", ratesVar, f)
			}
			c.rates = append(c.rates, r)
		}
	}
	c.seconds = envCount(t, "SIPEDGE_BENCH_SECONDS", c.seconds, 1, 120)
	c.rounds = envCount(t, "SIPEDGE_BENCH_ROUNDS", c.rounds, 1, 10)
	return c
}

// envCount reads an integer in [lo, hi] from name, def when unset.
func envCount(t *testing.T, name string, def, lo, hi int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		t.Fatalf("%s: bad value %q (%d..%d)", name, s, lo, hi)
	}
	return n
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

// How long measure waits after a run: at least settleMin, at most
// settleMax.
const (
	settleMin = 6 * time.Second
	settleMax = 21 * time.Second
)

// runUsage is what measure reads of a run: the edge's CPU and the kernel's
// part of it, how long the edge's threads waited for a CPU while
// runnable (the run-queue delay of /proc/PID/task/TID/schedstat), and
// the core's CPU; and how busy the whole box was while the load ran
// (per cent of all CPUs, and the hypervisor's steal apart).
type runUsage struct {
	cpu, sys, wait, core time.Duration
	boxBusy, boxSteal    float64
}

// measure runs load (a sipp run through e, which returns when sipp has
// ended) and returns what e's process tree and the core used from just
// before it until both are quiet again: at least settleMin after sipp
// ends (Kamailio's tm frees a transaction 5 s after its final reply;
// timers are part of the cost), then until neither used more than 2 % of
// a CPU over a second, at most settleMax. Both edges get the same window,
// and their idle cost in it is a few ticks.
func measure(t *testing.T, e *cmpEdge, core *kamailio, load func()) runUsage {
	t.Helper()
	read := func() runUsage {
		var u runUsage
		var pids []int
		var err error
		if u.cpu, u.sys, pids, err = treeCPU(e.p.cmd.Process.Pid); err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
		u.wait = runQueueWait(pids)
		if u.core, _, _, err = treeCPU(core.p.cmd.Process.Pid); err != nil {
			t.Fatalf("core: %v", err)
		}
		return u
	}
	u0 := read()
	box0, err := readBoxTicks()
	if err != nil {
		t.Fatal(err)
	}
	load()
	box1, err := readBoxTicks()
	if err != nil {
		t.Fatal(err)
	}
	busy, steal := box1.since(box0)
	time.Sleep(settleMin)
	u1 := read()
	for deadline := time.Now().Add(settleMax - settleMin); time.Now().Before(deadline); {
		time.Sleep(time.Second)
		u2 := read()
		quiet := u2.cpu-u1.cpu <= 20*time.Millisecond && u2.core-u1.core <= 20*time.Millisecond
		u1 = u2
		if quiet {
			break
		}
	}
	return runUsage{cpu: u1.cpu - u0.cpu, sys: u1.sys - u0.sys, wait: u1.wait - u0.wait, core: u1.core - u0.core,
		boxBusy: busy, boxSteal: steal}
}

// runQueueWait sums, over every thread of pids, the time it spent
// runnable but waiting for a CPU (schedstat's second field, in ns).
// Threads that ended took theirs with them: Go's and Kamailio's live on.
func runQueueWait(pids []int) time.Duration {
	var ns int64
	for _, pid := range pids {
		tasks, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
		for _, task := range tasks {
			b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "task", task.Name(), "schedstat"))
			if err != nil {
				continue
			}
			if f := strings.Fields(string(b)); len(f) >= 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				ns += n
			}
		}
	}
	return time.Duration(ns)
}

// logIdle logs what the edges and the core cost doing nothing, which
// measure's windows include: it should be a few ticks.
func logIdle(t *testing.T, edges []*cmpEdge, core *kamailio) {
	t.Helper()
	const d = 5 * time.Second
	pids := []int{core.p.cmd.Process.Pid}
	names := []string{"core"}
	for _, e := range edges {
		if !e.direct {
			pids, names = append(pids, e.p.cmd.Process.Pid), append(names, e.name)
		}
	}
	before := make([]time.Duration, len(pids))
	for i, pid := range pids {
		before[i], _, _, _ = treeCPU(pid)
	}
	time.Sleep(d)
	var b strings.Builder
	for i, pid := range pids {
		after, _, tree, err := treeCPU(pid)
		if err != nil {
			t.Fatalf("idle: %v", err)
		}
		fmt.Fprintf(&b, "%s %d ms in %s (%d processes, %.0f MiB); ", names[i], (after - before[i]).Milliseconds(), d, len(tree), treeMiB(pid))
	}
	t.Logf("idle CPU: %s", strings.TrimSuffix(b.String(), "; "))
}

// sippOutcome fills r's counts from sipp's statistics and files in dir.
func (r *cmpRun) sippOutcome(stat map[string]string, errorsLog, dir string) {
	res := sippResult{stat: stat}
	r.success = res.stat64("SuccessfulCall(C)")
	r.failed = res.stat64("FailedCall(C)")
	if d := statSeconds(stat["CurrentTime"]) - statSeconds(stat["StartTime"]); d > 0 {
		r.achieved = float64(r.success) / d
	}
	var why []string
	for col := range stat {
		if strings.HasPrefix(col, "Failed") && strings.HasSuffix(col, "(C)") && col != "FailedCall(C)" {
			if n := res.stat64(col); n > 0 {
				why = append(why, fmt.Sprintf("%s %d", strings.TrimSuffix(strings.TrimPrefix(col, "Failed"), "(C)"), n))
			}
		}
	}
	slices.Sort(why)
	if n := strings.Count(errorsLog, "SIP/2.0 503"); n > 0 {
		why = append(why, fmt.Sprintf("503 seen %d", n))
	}
	r.why = strings.Join(why, ", ")
	r.rtts = readRTTs(dir)
}

// rttFreq is sipp's -rtt_freq: it writes response times in batches of
// this many and drops the last, incomplete batch when it exits, so a run
// loses fewer than rttFreq of its thousands. (It writes, and flushes,
// each line on its own whatever the batch.)
const rttFreq = "100"

// readRTTs reads the response times of sipp's -trace_rtt files in dir
// ("Date_ms;response_time_ms;rtd_no" rows), in ms. sipp measures them
// on its clock tick, which advances in steps (4 ms on the 2-vCPU VM here:
// every figure is a multiple of 4), so 0 is "under one step";
// logResidence times the edges themselves.
func readRTTs(dir string) []float64 {
	files, _ := filepath.Glob(filepath.Join(dir, "*_rtt.csv"))
	var v []float64
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Split(sc.Text(), ";")
			if len(fs) < 2 {
				continue
			}
			if ms, err := strconv.ParseFloat(strings.TrimSpace(fs[1]), 64); err == nil {
				v = append(v, ms)
			}
		}
		f.Close()
	}
	return v
}

// percentile is the p-th percentile (nearest rank) of v, NaN when empty.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// countLines counts the lines of p's log that contain s.
func countLines(p *proc, s string) int { return strings.Count(p.log(), s) }

// refused is e.refusals(), or nothing.
func (e *cmpEdge) refused() map[string]float64 {
	if e.refusals == nil {
		return nil
	}
	return e.refusals()
}

// addRefusals adds to r.why what the edge counted itself refusing
// between before and after.
func (r *cmpRun) addRefusals(before, after map[string]float64) {
	var why []string
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			why = append(why, fmt.Sprintf("edge %s %.0f", k, d))
		}
	}
	slices.Sort(why)
	if len(why) > 0 {
		r.why = strings.Join(append([]string{r.why}, why...), ", ")
		r.why = strings.TrimPrefix(r.why, ", ")
	}
}

// bansSeen counts what e's log says about bans: pike's alerts for the
// Kamailio edge, "source banned" for sipedge (at level info).
func (e *cmpEdge) bansSeen() int {
	if e.name == "kamailio" {
		return countLines(e.p, "ALERT: pike blocking")
	}
	return countLines(e.p, "source banned")
}

// ------------------------------------------------------ registrations

// baseVar names a sipedge binary to measure beside the current code, in
// the same runs (say, one built from main before a change); baseEnvVar
// gives it (or, alone, this tree's build) more environment, such as
// GOGC=200.
const baseVar, baseEnvVar = "SIPEDGE_BENCH_BASE", "SIPEDGE_BENCH_BASE_ENV"

func TestEdgeCompare(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp", "go")
	env := readCmpEnv(t, "SIPEDGE_BENCH_RATES", []int{1000, 2000, 3000, 4000, 5000, 6000})
	profRate := envCount(t, "SIPEDGE_BENCH_PROFILE_RATE", 3000, 0, 50000)
	latRate := envCount(t, "SIPEDGE_BENCH_LATENCY_RATE", 3000, 0, 50000)
	if latRate > 0 {
		needTools(t, "tcpdump")
	}

	t.Logf("load average before: %s (%d CPUs)", loadavg(), runtime.NumCPU())
	defer func() { t.Logf("load average after: %s", loadavg()) }()

	csv, directCSV := filepath.Join(t.TempDir(), "users.csv"), filepath.Join(t.TempDir(), "direct.csv")
	writeUsers(t, csv, 1000, benchUsers)
	writeUsers(t, directCSV, 1000+benchUsers, benchUsers)
	// -m 1024: tm keeps each transaction 5 s after its final reply.
	core := startKamailio(t, kamOpts{users: 2 * benchUsers, shmMB: 1024, children: 4})
	ke := startKamailioEdge(t, core)
	se := startSipedge(t, edgeOpts{
		mode: "path", upstream: fmt.Sprintf("sip:%s;transport=udp", core.addr()), level: "info", extra: cmpBorder,
	})
	edges := []*cmpEdge{
		{name: "kamailio", addr: ke.addr, p: ke.p, port: freePort(t)},
		{name: "sipedge", addr: se.udp, p: se.p, port: freePort(t), refusals: sipedgeRefusals(t, se)},
	}
	if be := startBase(t, core); be != nil {
		// sipp's port as for sipedge: the same Contacts, so each AOR keeps
		// two bindings at the core, not three (longer answers, a slower core).
		be.port = edges[1].port
		edges = append(edges, be)
	}
	if os.Getenv(floorVar) != "" {
		edges = append(edges, startFloor(t, core))
	}
	edges = append(edges, &cmpEdge{name: "none", addr: core.addr(), p: core.p, port: freePort(t), direct: true, csv: directCSV})
	logIdle(t, edges, core)
	warmUp(t, edges, core, csv, env.rates[0])

	for _, rate := range env.rates {
		for round := 1; round <= env.rounds; round++ {
			for _, e := range inTurn(edges, round) {
				if e.gaveUp != 0 {
					continue
				}
				r := registerRun(t, e, core, csv, rate, round, env.seconds)
				e.runs = append(e.runs, r)
				t.Logf("%-8s %5d/s round %d: exit %d, %d ok, %d failed%s, %.0f/s, CPU %.2fs (core %.2fs), p50/p99 %s ms, %.0f MiB, load %s",
					e.name, rate, round, r.exit, r.success, r.failed, paren(r.why), r.achieved,
					r.cpu.Seconds(), r.coreCPU.Seconds(), p50p99(r.rtts), r.mib, loadavg())
				if r.bans > 0 {
					t.Logf("%s reported %d ban(s) during the run", e.name, r.bans)
				}
				if r.failed*2 > int64(r.planned) || r.success*2 < int64(r.planned) {
					e.gaveUp = rate // higher rates would fail more
					t.Logf("%s: most registrations failed at %d/s; no higher rates for it", e.name, rate)
				}
			}
		}
	}
	t.Log("\n" + cmpTable(fmt.Sprintf(
		"registrations with digest auth (REGISTER 401 REGISTER 200), UDP, 127.0.0.1, %d users, %d s a run, %d round(s) A B then B A after a warm-up run each, one Kamailio core behind both edges",
		benchUsers, env.seconds, env.rounds), "registrations", env.rates, edges))

	if latRate > 0 {
		logResidence(t, edges, core, csv, latRate, env.seconds, envCount(t, "SIPEDGE_BENCH_LATENCY_ROUNDS", 2, 1, 10))
	}
	if profRate > 0 {
		profileRegister(t, core, csv, profRate, env.seconds)
	}
}

func (l *legs) add(o legs) {
	l.total, l.request, l.answer = append(l.total, o.total...), append(l.request, o.request...), append(l.answer, o.answer...)
}

// logResidence runs each edge rounds times more at rate (A B A B) with the
// loopback captured, and logs how long it held each transaction
// (residence_test.go), all rounds together. These runs are apart from
// the measured ones: capturing costs each sender a copy of every packet,
// in its own system time.
func logResidence(t *testing.T, edges []*cmpEdge, core *kamailio, csv string, rate, seconds, rounds int) {
	t.Helper()
	times := map[string]*legs{}
	unpaired, drops := map[string]int{}, map[string][]string{}
	for range rounds {
		for _, e := range edges {
			if e.direct {
				continue
			}
			v, u, d := captureRun(t, e, core, csv, rate, seconds)
			if times[e.name] == nil {
				times[e.name] = &legs{}
			}
			times[e.name].add(v)
			unpaired[e.name] += u
			drops[e.name] = append(drops[e.name], d)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "time in the edge at %d registrations/s, %d round(s), µs, from tcpdump on lo (kernel stamps): a request's arrival to its copy to the core, plus the core's final answer's arrival to its copy to the phone, per transaction\n", rate, rounds)
	fmt.Fprintf(&b, "%-8s %-12s %-7s %-7s %-7s %-7s %-7s %s\n", "edge", "transactions", "p50", "p90", "p99", "p99.9", "max", "unpaired, capture drops per round")
	row := func(name string, v []float64, tail string) {
		us := func(p float64) string { return fmt.Sprintf("%.0f", percentile(v, p)) }
		fmt.Fprintf(&b, "%-8s %-12d %-7s %-7s %-7s %-7s %-7s %s\n", name, len(v), us(50), us(90), us(99), us(99.9), us(100), tail)
	}
	for _, e := range edges {
		if v := times[e.name]; !e.direct && v != nil && len(v.total) > 0 {
			row(e.name, v.total, fmt.Sprintf("%d, %s", unpaired[e.name], strings.Join(drops[e.name], " ")))
		}
	}
	fmt.Fprintf(&b, "each leg apart: the request's (arrival to its copy to the core) and the final answer's (arrival to its copy to the phone)\n")
	for _, e := range edges {
		if v := times[e.name]; !e.direct && v != nil && len(v.total) > 0 {
			row(e.name+" req", v.request, "")
			row(e.name+" ans", v.answer, "")
		}
	}
	t.Log("\n" + b.String())
}

// captureRun is registerRun with tcpdump writing the loopback's traffic
// between sipp, the edge and the core to a file, read afterwards.
func captureRun(t *testing.T, e *cmpEdge, core *kamailio, csv string, rate, seconds int) (us legs, unpaired int, drops string) {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "lo.pcap")
	tp := startProc(t, "tcpdump", procOpts{dir: dir}, "tcpdump", "-i", "lo", "-n", "-w", file, "-B", "262144",
		"--time-stamp-precision=nano", "-s", "0", fmt.Sprintf("udp and (port %d or port %d)", e.port, core.port))
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(tp.log(), "listening on"); {
		if tp.exited() || time.Now().After(deadline) {
			t.Fatalf("tcpdump did not start:\n%s", tp.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := registerRun(t, e, core, csv, rate, 0, seconds)
	tp.cmd.Process.Signal(os.Interrupt)
	if !tp.wait(30 * time.Second) {
		t.Fatalf("tcpdump did not stop")
	}
	drops = "?"
	if m := regexp.MustCompile(`(\d+) packets dropped by kernel`).FindStringSubmatch(tp.log()); m != nil {
		drops = m[1]
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res := newResidence(uint16(e.port), uint16(core.port))
	if err := readPcap(bufio.NewReaderSize(f, 1<<20), res.add); err != nil {
		t.Fatal(err)
	}
	us, unpaired = res.times()
	t.Logf("%s captured at %d/s: %d ok, %d failed%s; %d transactions paired; box %s%% busy/stolen", e.name, rate, r.success, r.failed, paren(r.why), len(us.total), boxLoad(r.box, r.steal))
	return us, unpaired, drops
}

// startBase starts the edge named by baseVar and baseEnvVar, if any:
// another build of sipedge, run in the same rounds, so that a change's
// effect is measured in one run, not across runs of a noisy box.
func startBase(t *testing.T, core *kamailio) *cmpEdge {
	bin, env := os.Getenv(baseVar), os.Getenv(baseEnvVar)
	if bin == "" && env == "" {
		return nil
	}
	be := startSipedge(t, edgeOpts{
		mode: "path", upstream: fmt.Sprintf("sip:%s;transport=udp", core.addr()), level: "info", extra: cmpBorder,
		bin: bin, env: strings.Fields(env),
	})
	return &cmpEdge{name: "base", addr: be.udp, p: be.p, refusals: sipedgeRefusals(t, be)}
}

// floorVar, set, adds the floor to a comparison: internal/floor, which
// relays REGISTERs and their answers with one Via line added and taken
// off and nothing else. It costs what any Go edge pays to the runtime and
// the kernel for the same datagrams; sipedge less the floor is its SIP
// work (parsing, checks, tokens, transactions, bindings, state, events).
const floorVar = "SIPEDGE_BENCH_FLOOR"

func startFloor(t *testing.T, core *kamailio) *cmpEdge {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "floor")
	if out, err := runBounded(5*time.Minute, ".", "go", "build", "-o", bin, "./internal/floor"); err != nil {
		t.Fatalf("go build ./internal/floor: %v\n%s", err, out)
	}
	fe := startSipedge(t, edgeOpts{mode: "path", upstream: fmt.Sprintf("sip:%s;transport=udp", core.addr()), level: "info", extra: cmpBorder, bin: bin})
	return &cmpEdge{name: "floor", addr: fe.udp, p: fe.p, port: freePort(t)}
}

// warmUp runs each edge once at rate, uncounted. The first traffic a
// process gets costs more than what follows (Kamailio's edge's first
// round at 3,000/s cost 1.6 times its next three, most likely its shared
// memory's first touch: it grew from 11 to some 300 MiB in that round),
// and would otherwise be charged to the first rate's first round.
func warmUp(t *testing.T, edges []*cmpEdge, core *kamailio, csv string, rate int) {
	t.Helper()
	for _, e := range edges {
		r := registerRun(t, e, core, csv, rate, 0, warmUpSeconds)
		t.Logf("%-8s %5d/s warm-up, not counted: %d ok, %d failed, CPU %.2fs", e.name, rate, r.success, r.failed, r.cpu.Seconds())
	}
}

// warmUpSeconds is how long a warm-up run lasts.
const warmUpSeconds = 5

// inTurn is the order the edges run in in round: as listed, then the
// other way round (A B, B A), so that neither gains from its place.
func inTurn(edges []*cmpEdge, round int) []*cmpEdge {
	if round%2 == 1 {
		return edges
	}
	rev := slices.Clone(edges)
	slices.Reverse(rev)
	return rev
}

// measure fills r from one sipp run through e (sipp runs it, inside
// the CPU measure): the edge's CPU, sipp's outcome, and what the edge
// says it did meanwhile (bans, refusals) and holds after (memory).
func (r *cmpRun) measure(t *testing.T, e *cmpEdge, core *kamailio, sipp func() sippResult) {
	t.Helper()
	bans, refused := e.bansSeen(), e.refused()
	var res sippResult
	u := measure(t, e, core, func() { res = sipp() })
	r.cpu, r.sys, r.wait, r.coreCPU = u.cpu, u.sys, u.wait, u.core
	r.box, r.steal = u.boxBusy, u.boxSteal
	r.exit = res.exit
	r.sippOutcome(res.stat, res.errors, res.dir)
	r.bans = e.bansSeen() - bans
	r.addRefusals(refused, e.refused())
	r.mib = treeMiB(e.p.cmd.Process.Pid)
}

// registerRun runs sipp registrations through e at rate for seconds.
func registerRun(t *testing.T, e *cmpEdge, core *kamailio, csv string, rate, round, seconds int) cmpRun {
	t.Helper()
	if e.csv != "" {
		csv = e.csv
	}
	r := cmpRun{rate: rate, round: round, planned: rate * seconds}
	var res sippResult
	r.measure(t, e, core, func() sippResult {
		res = runSippQuiet(t, sippRun{
			target: e.addr, transport: "u1", csv: csv, scenario: "register_bench.xml",
			calls: r.planned, rate: rate, limit: time.Duration(seconds)*time.Second + 20*time.Second,
			port: e.port,
			args: []string{"-trace_rtt", "-rtt_freq", rttFreq, "-buff_size", strconv.Itoa(4 << 20)},
		})
		return res
	})
	if r.failed > 0 || r.exit != 0 {
		t.Logf("%s %d/s round %d: first sipp errors:\n%s%s", e.name, rate, round, head(res.errors, 12), sippFatal(r.exit, res.dir))
	}
	return r
}

// sippFatal is the end of sipp's own output in dir when it ended with an
// error of its own (exit status 0 is all calls done, 1 some failed).
func sippFatal(exit int, dir string) string {
	if exit == 0 || exit == 1 {
		return ""
	}
	b, _ := os.ReadFile(filepath.Join(dir, "sipp.out"))
	return fmt.Sprintf("\nsipp exit %d, its output (tail):\n%s", exit, tail(string(b), 10))
}

func paren(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

func p50p99(v []float64) string {
	if len(v) == 0 {
		return "-"
	}
	return fmt.Sprintf("%s/%s", fmtMS(percentile(v, 50)), fmtMS(percentile(v, 99)))
}

// fmtMS rounds to whole ms, sipp's resolution.
func fmtMS(ms float64) string { return strconv.FormatFloat(ms, 'f', 0, 64) }

// cmpTable renders the runs of both edges per rate, with the CPU ratio.
func cmpTable(title, what string, rates []int, edges []*cmpEdge) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", title)
	fmt.Fprintf(&b, "CPU: utime+stime of the edge's whole process tree (/proc, 10 ms ticks) from the run's start until it is quiet again (>= 6 s after sipp ends), per 1,000 completed; the core's apart\n")
	fmt.Fprintf(&b, "p50/p99: response time of each request at sipp (-trace_rtt, ms, in sipp's clock ticks: 4 ms on a 2-vCPU VM; the capture after the table times the edges to the µs), all rounds together; held: no failure, all done, >= 90%% of the offered rate\n")
	fmt.Fprintf(&b, "load average at the end: %s\n", loadavg())
	fmt.Fprintf(&b, "MiB: the edge's memory after the rate's last run (Pss summed over its processes)\n")
	fmt.Fprintf(&b, "sys%%: the kernel's share (stime) of the edge's CPU; wait/1000: how long its threads were runnable but waiting for a CPU (schedstat), ms per 1,000\n")
	fmt.Fprintf(&b, "box%%: how busy the whole machine's CPUs were while sipp ran (sipp, the core, the edge and the rest; /proc/stat), rounds averaged, and the hypervisor's steal after the slash\n")
	fmt.Fprintf(&b, "none: sipp straight to the core, no edge (its CPU is the core's); added: an edge's p50/p99 less these\n\n")
	fmt.Fprintf(&b, "%-9s %-8s %-6s %-13s %-7s %-11s %-5s %-10s %-9s %-10s %-6s %-7s %s\n",
		"offered/s", "edge", "held", "completed/s", "failed", "CPU-s/1000", "sys%", "wait/1000", "p50/p99", "core/1000", "MiB", "box%", "CPU-s per round")
	type sum struct {
		cpu time.Duration
		n   int64
	}
	best := map[string]int{}
	both := map[string]sum{} // over the rates both edges ran
	for _, rate := range rates {
		per := map[string]float64{}
		at := map[string]sum{}
		rttsOf := map[string][]float64{}
		for _, e := range edges {
			var runs []cmpRun
			for _, r := range e.runs {
				if r.rate == rate {
					runs = append(runs, r)
				}
			}
			if len(runs) == 0 {
				fmt.Fprintf(&b, "%-9d %-8s %s\n", rate, e.name, fmt.Sprintf("- (given up at %d/s)", e.gaveUp))
				continue
			}
			var cpu, sys, wait, core time.Duration
			var box, steal float64
			var n, failed int64
			var rtts []float64
			var achieved, cpus []string
			held := true
			for _, r := range runs {
				cpu += r.cpu
				sys += r.sys
				wait += r.wait
				core += r.coreCPU
				box += r.box / float64(len(runs))
				steal += r.steal / float64(len(runs))
				n += r.success
				failed += r.failed
				rtts = append(rtts, r.rtts...)
				achieved = append(achieved, fmt.Sprintf("%.0f", r.achieved))
				cpus = append(cpus, fmt.Sprintf("%.2f", r.cpu.Seconds()))
				held = held && r.held()
			}
			if held {
				best[e.name] = rate
			}
			rttsOf[e.name] = rtts
			if e.direct {
				fmt.Fprintf(&b, "%-9d %-8s %-6s %-13s %-7d %-11s %-5s %-10s %-9s %-10.3f %-6s %s\n",
					rate, e.name, yesNo(held), strings.Join(achieved, ", "), failed, "-", "-", "-", p50p99(rtts), cpuPer1000(core, n), "-", boxLoad(box, steal))
				continue
			}
			at[e.name] = sum{cpu, n}
			per[e.name] = cpuPer1000(cpu, n)
			fmt.Fprintf(&b, "%-9d %-8s %-6s %-13s %-7d %-11.3f %-5.0f %-10.0f %-9s %-10.3f %-6.0f %-7s %s\n",
				rate, e.name, yesNo(held), strings.Join(achieved, ", "), failed,
				per[e.name], 100*sys.Seconds()/cpu.Seconds(), 1000*cpuPer1000(wait, n), p50p99(rtts), cpuPer1000(core, n), runs[len(runs)-1].mib,
				boxLoad(box, steal), strings.Join(cpus, ", "))
		}
		if k, s := per["kamailio"], per["sipedge"]; k > 0 && s > 0 {
			fmt.Fprintf(&b, "%-9s sipedge/kamailio CPU per %s: %.2fx", "", strings.TrimSuffix(what, "s"), s/k)
			if base := per["base"]; base > 0 {
				fmt.Fprintf(&b, "; sipedge/base: %.2fx", s/base)
			}
			if f := per["floor"]; f > 0 {
				fmt.Fprintf(&b, "; floor/kamailio: %.2fx; sipedge's SIP work (less the floor): %.3f CPU-s per 1,000", f/k, s-f)
			}
			fmt.Fprintln(&b)
			for name, v := range at {
				both[name] = sum{both[name].cpu + v.cpu, both[name].n + v.n}
			}
		}
		if none := rttsOf["none"]; len(none) > 0 {
			var added []string
			for _, name := range []string{"kamailio", "sipedge", "base", "floor"} {
				if v := rttsOf[name]; len(v) > 0 {
					added = append(added, fmt.Sprintf("%s %s/%s", name,
						fmtMS(percentile(v, 50)-percentile(none, 50)), fmtMS(percentile(v, 99)-percentile(none, 99))))
				}
			}
			fmt.Fprintf(&b, "%-9s p50/p99 added by the edge, ms: %s\n", "", strings.Join(added, ", "))
		}
	}
	fmt.Fprintln(&b)
	for _, e := range edges {
		for _, r := range e.runs {
			if r.why != "" {
				fmt.Fprintf(&b, "%-8s %d/s round %d: %d failed: %s\n", e.name, r.rate, r.round, r.failed, r.why)
			}
		}
	}
	for _, e := range edges {
		if e.direct {
			fmt.Fprintf(&b, "%-8s highest rate held: %d/s (the core alone)\n", e.name, best[e.name])
			continue
		}
		fmt.Fprintf(&b, "%-8s highest rate held: %d/s; %.3f CPU-s per 1,000 %s over the rates both edges ran\n",
			e.name, best[e.name], cpuPer1000(both[e.name].cpu, both[e.name].n), what)
	}
	if k, s := cpuPer1000(both["kamailio"].cpu, both["kamailio"].n), cpuPer1000(both["sipedge"].cpu, both["sipedge"].n); k > 0 && s > 0 {
		fmt.Fprintf(&b, "ratio sipedge/kamailio, CPU per %s over the rates both edges ran: %.2fx\n", strings.TrimSuffix(what, "s"), s/k)
	}
	if f, k := cpuPer1000(both["floor"].cpu, both["floor"].n), cpuPer1000(both["kamailio"].cpu, both["kamailio"].n); f > 0 && k > 0 {
		fmt.Fprintf(&b, "ratio floor/kamailio (Go's least UDP relay: the runtime's and the kernel's share of any Go edge): %.2fx\n", f/k)
	}
	if base, s := cpuPer1000(both["base"].cpu, both["base"].n), cpuPer1000(both["sipedge"].cpu, both["sipedge"].n); base > 0 && s > 0 {
		fmt.Fprintf(&b, "ratio sipedge/base (%s %s), CPU per %s over the same rates: %.2fx\n", os.Getenv(baseEnvVar), os.Getenv(baseVar), strings.TrimSuffix(what, "s"), s/base)
	}
	return b.String()
}

// boxLoad is the box% column: busy/steal, in whole per cent.
func boxLoad(busy, steal float64) string { return fmt.Sprintf("%.0f/%.0f", busy, steal) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

// ------------------------------------------------------------ profiles

// profileRegister runs registrations at rate through a sipedge of its
// own started with -cpuprofile and -memprofile (not one of the compared
// runs: profiling costs CPU), stops it, and logs the top of both
// profiles. With SIPEDGE_ARTIFACTS set the profiles (and the binary, for
// pprof) are kept there.
func profileRegister(t *testing.T, core *kamailio, csv string, rate, seconds int) {
	t.Helper()
	dir := t.TempDir()
	if a := os.Getenv("SIPEDGE_ARTIFACTS"); a != "" {
		dir = filepath.Join(a, "profile-register")
		must(t, os.MkdirAll(dir, 0o755))
	}
	cpuFile, memFile := filepath.Join(dir, "sipedge.cpu.pprof"), filepath.Join(dir, "sipedge.allocs.pprof")
	args := []string{"-cpuprofile", cpuFile, "-memprofile", memFile}
	if os.Getenv("SIPEDGE_BENCH_TRACE") != "" {
		args = append(args, "-trace", filepath.Join(dir, "sipedge.trace"))
	}
	pe := startSipedge(t, edgeOpts{
		mode: "path", upstream: fmt.Sprintf("sip:%s;transport=udp", core.addr()), level: "info", extra: cmpBorder,
		runArgs: args,
	})
	e := &cmpEdge{name: "sipedge-profiled", addr: pe.udp, p: pe.p, port: freePort(t), refusals: sipedgeRefusals(t, pe)}
	r := registerRun(t, e, core, csv, rate, 1, seconds)
	t.Logf("profiled sipedge %d/s: %d ok, %d failed%s, %.0f/s, CPU %.2fs (%.3f per 1,000, with the profiler on)",
		rate, r.success, r.failed, paren(r.why), r.achieved, r.cpu.Seconds(), cpuPer1000(r.cpu, r.success))
	pe.p.stop(t) // writes the profiles
	if !pe.p.exited() {
		t.Fatal("profiled sipedge did not stop")
	}
	bin := pe.bin
	if os.Getenv("SIPEDGE_ARTIFACTS") != "" {
		b, err := os.ReadFile(pe.bin)
		must(t, err)
		bin = filepath.Join(dir, "sipedge")
		must(t, os.WriteFile(bin, b, 0o755))
	}
	for _, q := range []struct {
		title, file string
		args        []string
	}{
		{"CPU, by flat", cpuFile, nil},
		{"CPU, by cum", cpuFile, []string{"-cum"}},
		{"allocated bytes, by flat", memFile, []string{"-sample_index=alloc_space"}},
		{"allocated bytes, by cum", memFile, []string{"-sample_index=alloc_space", "-cum"}},
		{"allocated objects, by flat", memFile, []string{"-sample_index=alloc_objects"}},
	} {
		args := append([]string{"go", "tool", "pprof", "-top", "-nodecount=25"}, q.args...)
		out, err := runBounded(2*time.Minute, "", append(args, bin, q.file)...)
		if err != nil {
			t.Errorf("pprof %s: %v\n%s", q.title, err, out)
			continue
		}
		t.Logf("sipedge at %d registrations/s, %s (%s):\n%s", rate, q.title, q.file, out)
	}
}

// -------------------------------------------------------------- calls

func TestEdgeCompareCalls(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp")
	env := readCmpEnv(t, "SIPEDGE_BENCH_CALL_RATES", []int{250, 500, 1000, 1500, 2000})

	t.Logf("load average before: %s (%d CPUs)", loadavg(), runtime.NumCPU())
	defer func() { t.Logf("load average after: %s", loadavg()) }()

	core := startKamailio(t, kamOpts{users: 10, shmMB: 1024, children: 4})
	ke := startKamailioEdge(t, core)
	se := startSipedge(t, edgeOpts{
		mode: "path", upstream: fmt.Sprintf("sip:%s;transport=udp", core.addr()), level: "info", extra: cmpBorder,
	})
	edges := []*cmpEdge{
		{name: "kamailio", addr: ke.addr, p: ke.p},
		{name: "sipedge", addr: se.udp, p: se.p, refusals: sipedgeRefusals(t, se)},
	}
	if be := startBase(t, core); be != nil {
		edges = append(edges, be) // its own caller and callee, as each edge has
	}
	logIdle(t, edges, core)
	// Bounds: a run's sipp, and the callees, which answer every run of
	// their edge and wait through the other edge's (each run is followed
	// by at most settleMax of measure).
	runLimit := time.Duration(env.seconds)*time.Second + 20*time.Second
	total := time.Duration((len(env.rates)*env.rounds+1)*len(edges)) * (runLimit + settleMax)
	calls := env.rates[0] * warmUpSeconds
	for _, r := range env.rates {
		calls += env.rounds * r * env.seconds
	}

	// Each edge has its own caller and callee (1000/1001 behind the
	// Kamailio edge, 1002/1003 behind sipedge, 1004/1005 behind base), registered with digest
	// auth from the ports their load scenarios then use.
	for i, e := range edges {
		caller, callee := 1000+2*i, 1001+2*i
		register := func(user int) int {
			csv := filepath.Join(t.TempDir(), "user.csv")
			writeUsers(t, csv, user, 1)
			res := runSippQuiet(t, sippRun{target: e.addr, transport: "u1", csv: csv, calls: 1, rate: 1, limit: 10 * time.Second})
			if res.exit != 0 {
				t.Fatalf("registering %d through %s: sipp exit %d\n%s", user, e.name, res.exit, tail(res.errors, 20))
			}
			return res.port
		}
		calleePort := register(callee)
		e.port = register(caller)
		startPhone(t, phoneOpts{
			name: "uas " + e.name, target: e.addr, transport: "u1", scenario: "uas_bench.xml",
			// Room past the calls planned: a late retransmission counts
			// as a call too, and a callee that reached -m left the last
			// run's last calls unanswered. It is stopped at the end.
			port: calleePort, calls: calls + calls/10, limit: total, load: true,
			args: []string{"-aa"}, // OPTIONS keepalives answered, as a phone does
		})
	}

	// run is one run of edges[i] at rate for seconds.
	run := func(i, rate, round, seconds int) cmpRun {
		e := edges[i]
		r := cmpRun{rate: rate, round: round, planned: rate * seconds}
		var res sippResult
		r.measure(t, e, core, func() sippResult {
			uac := startPhone(t, phoneOpts{
				name: "uac " + e.name, target: e.addr, transport: "u1", scenario: "uac_bench.xml",
				port: e.port, calls: r.planned, rate: rate, limit: runLimit, load: true,
				keys: map[string]string{"user": strconv.Itoa(1000 + 2*i), "callee": strconv.Itoa(1001 + 2*i)},
				args: []string{"-trace_rtt", "-rtt_freq", rttFreq, "-aa"},
			})
			res.exit = uac.wait(t)
			st := uac.stat()
			res.stat, res.errors, res.dir = st.stat, st.errors, uac.dir
			return res
		})
		if r.failed > 0 || r.exit != 0 {
			t.Logf("%s %d calls/s round %d: first sipp errors:\n%s%s", e.name, rate, round, head(res.errors, 12), sippFatal(r.exit, res.dir))
		}
		if r.bans > 0 {
			t.Logf("%s reported %d ban(s) during the run", e.name, r.bans)
		}
		return r
	}
	for i, e := range edges { // uncounted, as warmUp does for registrations
		r := run(i, env.rates[0], 0, warmUpSeconds)
		t.Logf("%-8s %5d calls/s warm-up, not counted: %d ok, %d failed, CPU %.2fs", e.name, env.rates[0], r.success, r.failed, r.cpu.Seconds())
	}
	// Calls keep one order (A B A B): a phone's flow lives only while
	// its sipp runs, and with B A after A B an edge waits through twice
	// as many runs of the others, long enough for its keepalives to find
	// the caller's flow dead and refuse its calls (403).
	for _, rate := range env.rates {
		for round := 1; round <= env.rounds; round++ {
			for i, e := range edges {
				if e.gaveUp != 0 {
					continue
				}
				r := run(i, rate, round, env.seconds)
				e.runs = append(e.runs, r)
				t.Logf("%-8s %5d calls/s round %d: exit %d, %d ok, %d failed%s, %.0f/s, CPU %.2fs (core %.2fs), INVITE→200 p50/p99 %s ms, %.0f MiB, load %s",
					e.name, rate, round, r.exit, r.success, r.failed, paren(r.why), r.achieved,
					r.cpu.Seconds(), r.coreCPU.Seconds(), p50p99(r.rtts), r.mib, loadavg())
				if r.failed*2 > int64(r.planned) || r.success*2 < int64(r.planned) {
					e.gaveUp = rate
					t.Logf("%s: most calls failed at %d/s; no higher rates for it", e.name, rate)
				}
			}
		}
	}
	t.Log("\n" + cmpTable(fmt.Sprintf(
		"calls INVITE 180 200 ACK BYE 200 (no media, callee rings 20 ms), both phones behind the edge (each call crosses it twice), UDP, 127.0.0.1, %d s a run, %d round(s) A B A B after a warm-up run each, one Kamailio core; p50/p99 is INVITE→200, ring included",
		env.seconds, env.rounds), "calls", env.rates, edges))
}
