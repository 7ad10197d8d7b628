//go:build natlab

// NAT lab: a real Linux NAT between a phone and sipedge, built from network
// namespaces, with a real Kamailio core registrar behind sipedge.
//
//	go test -count=1 -tags natlab -v -timeout 15m -run NATLab ./cmd/sipedge/
//
//	 cli (phone)                 rtr (NAT router)                  pub (edge + core)
//	 sipp / baresip              nftables masquerade               sipedge 198.18.0.1:5060
//	 10.77.0.2 ── cli0 ═══ rlan0 10.77.0.1 │ 198.18.0.2 rwan0 ═══ pub0   (access side)
//	 default via 10.77.0.1       conntrack UDP timeout 5 s          sipedge core 127.0.0.1:5062
//	                                                                 Kamailio     127.0.0.1:5070
//
// Every namespace gets a random suffix, has only the lab's links and no
// route out of the lab, and is deleted at the end of its test, after every
// process started in it was stopped (by PID), also on failure. Only the
// phone namespace has a default route, to the lab router, which forwards
// nothing but phone → 198.18.0.0/24.
//
// Needs root and: ip (iproute2), nft (nftables), sysctl (procps),
// conntrack, tcpdump, kamailio + kamcmd (kamailio), sipp (sip-tester),
// baresip, and for the Redis pair (natlab_pair_test.go, which adds the
// namespaces nlea-* and nleb-* for its two edges) redis-server. A
// missing tool skips, except under CI=true where it fails.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	natlabDir = "../../testdata/natlab"

	nlEdgeIP     = "198.18.0.1" // sipedge's access address (pub)
	nlWANIP      = "198.18.0.2" // the NAT router's public address (rtr)
	nlLANGW      = "10.77.0.1"  // the NAT router's private address (rtr)
	nlPhoneIP    = "10.77.0.2"  // the phone (cli)
	nlSIPPort    = 5060         // sipedge's access port; also baresip's local port
	nlCoreListen = "127.0.0.1:5062"
	nlKamPort    = 5070 // Kamailio on pub's loopback
	nlPhonePort  = 5080 // the sipp phone's local port
	nlUACPort    = 5090 // the core-side sipp sender, on pub's loopback

	// nlLifetime bounds every process the lab starts, whatever happens.
	nlLifetime = 3 * time.Minute
)

var nlEdge = netip.AddrPortFrom(netip.MustParseAddr(nlEdgeIP), nlSIPPort)

// nlNeed skips (or, under CI=true, fails) unless the test runs as root
// with every tool it needs.
func nlNeed(t *testing.T, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces)")
	}
	requireTools(t, "NAT lab needs %s (Debian packages: iproute2 nftables procps conntrack tcpdump kamailio sip-tester baresip)",
		missing, append([]string{"ip", "nft", "sysctl", "conntrack", "tcpdump", "kamailio", "kamcmd"}, tools...)...)
}

// ------------------------------------------------------------- processes

// exitCode is the exit status once exited: -1 when it did not exit
// normally.
func (p *proc) exitCode() int {
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		return -1
	}
	return 0
}

// ------------------------------------------------------------------- lab

type natLabOpts struct {
	fullyRandom bool // masquerade fully-random: a symmetric NAT
	udpTimeout  int  // conntrack UDP timeouts in the router, seconds
	// sipALG attaches Linux's SIP helper (nf_conntrack_sip with nf_nat_sip,
	// a SIP ALG) to the phones' SIP to sipedge's port: it rewrites their Via
	// and Contact to the NAT's public address and port.
	sipALG bool
}

type natLab struct {
	t             *testing.T
	id            string // the namespaces' suffix: <PID>-<random>
	pub, rtr, cli string // namespace names
	dir           string
	opts          natLabOpts
	made          []string
	mu            sync.Mutex
	procs         []*proc
	// coreHost is the address in pub that Kamailio listens on and the
	// core-side sipp sends from and to; "" is pub's 127.0.0.1. A lab whose
	// sipedges run in namespaces of their own sets it to an address they
	// can reach (a 127.0.0.1 source cannot leave pub).
	coreHost string
}

// newNATLab builds the three namespaces, their links, routes, the NAT and
// its conntrack timeouts. Everything is torn down by t.Cleanup.
func newNATLab(t *testing.T, o natLabOpts) *natLab {
	t.Helper()
	if o.udpTimeout == 0 {
		o.udpTimeout = 5
	}
	nlSweep(t)
	// The test process's PID in the name tells a later run whether the
	// namespaces' owner is gone (see nlSweep).
	id := fmt.Sprintf("%d-%04x", os.Getpid(), rand.IntN(1<<16))
	l := &natLab{
		t: t, id: id, opts: o, dir: t.TempDir(),
		pub: "nlpub-" + id, rtr: "nlrtr-" + id, cli: "nlcli-" + id,
	}
	// Registered first, so it runs last: after every process's stop.
	t.Cleanup(l.teardown)
	for _, ns := range []string{l.pub, l.rtr, l.cli} {
		l.host("ip", "netns", "add", ns)
		l.made = append(l.made, ns)
		l.in(ns, "ip", "link", "set", "lo", "up")
		// No IPv6 chatter (router solicitations, MLD) in the captures.
		l.in(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	// veth pairs created inside the namespaces: no interface ever appears
	// in the host's namespace.
	l.host("ip", "-n", l.rtr, "link", "add", "rwan0", "type", "veth", "peer", "name", "pub0", "netns", l.pub)
	l.host("ip", "-n", l.rtr, "link", "add", "rlan0", "type", "veth", "peer", "name", "cli0", "netns", l.cli)
	l.in(l.pub, "ip", "addr", "add", nlEdgeIP+"/24", "dev", "pub0")
	l.in(l.pub, "ip", "link", "set", "pub0", "up")
	l.in(l.rtr, "ip", "addr", "add", nlWANIP+"/24", "dev", "rwan0")
	l.in(l.rtr, "ip", "addr", "add", nlLANGW+"/24", "dev", "rlan0")
	l.in(l.rtr, "ip", "link", "set", "rwan0", "up")
	l.in(l.rtr, "ip", "link", "set", "rlan0", "up")
	l.in(l.cli, "ip", "addr", "add", nlPhoneIP+"/24", "dev", "cli0")
	l.in(l.cli, "ip", "link", "set", "cli0", "up")
	l.in(l.cli, "ip", "route", "add", "default", "via", nlLANGW)

	masq := "masquerade"
	if o.fullyRandom {
		masq = "masquerade fully-random"
	}
	// No "ct helper" unless asked: since Linux 6.0 helpers are only
	// attached by explicit rules, so nf_conntrack_sip (a SIP ALG) cannot
	// touch the lab's SIP on port 5060. The tests check the conntrack entry
	// has no helper (or, with sipALG, that it has).
	alg := ""
	if o.sipALG {
		alg = fmt.Sprintf(`	ct helper sip-udp {
		type "sip" protocol udp;
		l3proto ip;
	}
	chain prerouting {
		type filter hook prerouting priority filter; policy accept;
		iifname "rlan0" udp dport %d ct helper set "sip-udp"
	}
`, nlSIPPort)
	}
	ruleset := fmt.Sprintf(`table ip natlab {
%s	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "rwan0" %s
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname "rlan0" oifname "rwan0" ip daddr 198.18.0.0/24 accept
	}
}
`, alg, masq)
	rules := filepath.Join(l.dir, "rtr.nft")
	must(t, os.WriteFile(rules, []byte(ruleset), 0o644))
	l.in(l.rtr, "nft", "-f", rules)
	l.in(l.rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1",
		fmt.Sprintf("net.netfilter.nf_conntrack_udp_timeout=%d", o.udpTimeout),
		fmt.Sprintf("net.netfilter.nf_conntrack_udp_timeout_stream=%d", o.udpTimeout))
	if _, err := os.Stat("/proc/sys/net/netfilter/nf_conntrack_helper"); err == nil {
		l.in(l.rtr, "sysctl", "-qw", "net.netfilter.nf_conntrack_helper=0") // kernels before 6.0
	}
	got := strings.Fields(l.in(l.rtr, "sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout",
		"net.netfilter.nf_conntrack_udp_timeout_stream", "net.ipv4.ip_forward"))
	t.Logf("NAT lab %s: pub %s (sipedge %s, Kamailio 127.0.0.1:%d), rtr %s (%s, conntrack udp_timeout=%s udp_timeout_stream=%s ip_forward=%s), cli %s (phone %s)",
		id, l.pub, nlEdge, nlKamPort, l.rtr, masq, got[0], got[1], got[2], l.cli, nlPhoneIP)
	if got[0] != strconv.Itoa(o.udpTimeout) || got[1] != strconv.Itoa(o.udpTimeout) || got[2] != "1" {
		t.Fatalf("router sysctls did not take: %v", got)
	}
	return l
}

var nlNamespaceRE = regexp.MustCompile(`^nl(pub|rtr|cli|ea|eb)-([0-9]+)-[0-9a-f]{4}$`)

// addNamespace makes one more lab namespace, nl<role>-<the lab's id>
// (role: one nlNamespaceRE knows, so that nlSweep finds it), with its
// loopback up and no IPv6; teardown deletes it with the others, after
// every process was stopped.
func (l *natLab) addNamespace(role string) string {
	l.t.Helper()
	ns := "nl" + role + "-" + l.id
	if !nlNamespaceRE.MatchString(ns) {
		l.t.Fatalf("namespace name %q: nlSweep would not know it (nlNamespaceRE)", ns)
	}
	l.host("ip", "netns", "add", ns)
	l.made = append(l.made, ns)
	l.in(ns, "ip", "link", "set", "lo", "up")
	l.in(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	return ns
}

// nlSweep deletes lab namespaces that an earlier run of these tests left
// behind when its process was killed before its cleanups ran (go test
// -timeout, SIGKILL): those whose owner, the PID in the name, is gone.
// Processes still in them were started by that run (Kamailio's workers
// outlive a SIGKILLed main process); they are killed by PID.
func nlSweep(t *testing.T) {
	t.Helper()
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		m := nlNamespaceRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if st, err := os.ReadFile("/proc/" + m[2] + "/stat"); err == nil {
			if _, after, ok := bytes.Cut(st, []byte(") ")); ok && !bytes.HasPrefix(after, []byte("Z")) {
				continue // its test process still runs (a zombie does not)
			}
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		out, _ := runBounded(10*time.Second, "", "ip", "netns", "pids", e.Name())
		pids := strings.Fields(out)
		for _, f := range pids {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		out, err = runBounded(10*time.Second, "", "ip", "netns", "del", e.Name())
		t.Logf("removed stale lab namespace %s (from %s, processes killed: %v): %v %s",
			e.Name(), info.ModTime().Format(time.RFC3339), pids, err, out)
	}
}

// host runs a command in the host namespace (only `ip netns`/`ip -n`).
func (l *natLab) host(argv ...string) string {
	l.t.Helper()
	out, err := runBounded(20*time.Second, "", argv...)
	if err != nil {
		l.t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return out
}

// in runs a short command inside namespace ns; fails the test on error.
func (l *natLab) in(ns string, argv ...string) string {
	l.t.Helper()
	out, err := l.try(ns, argv...)
	if err != nil {
		l.t.Fatalf("ip netns exec %s %s: %v\n%s", ns, strings.Join(argv, " "), err, out)
	}
	return out
}

func (l *natLab) try(ns string, argv ...string) (string, error) {
	return runBounded(20*time.Second, "", inNetns(ns, argv...)...)
}

// start runs a long-lived process inside namespace ns, logging to
// dir/name.log.
func (l *natLab) start(ns, name, dir string, argv ...string) *proc {
	l.t.Helper()
	return l.track(startProc(l.t, name, procOpts{dir: dir, netns: ns, lifetime: nlLifetime}, argv...))
}

// track has teardown stop p (if still running) before it deletes the
// namespaces.
func (l *natLab) track(p *proc) *proc {
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p
}

// teardown stops what is left and deletes the namespaces. A process still
// in a lab namespace here (a child of one the lab started) is killed by
// its PID and reported.
func (l *natLab) teardown() {
	t := l.t
	l.mu.Lock()
	procs := l.procs
	l.mu.Unlock()
	for _, p := range procs {
		p.stop(t)
	}
	for _, ns := range l.made {
		out, _ := runBounded(10*time.Second, "", "ip", "netns", "pids", ns)
		for _, f := range strings.Fields(out) {
			pid, err := strconv.Atoi(f)
			if err != nil || pid <= 1 {
				continue
			}
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			t.Errorf("process %d (%s) left in namespace %s; killing it", pid, strings.TrimSpace(string(comm)), ns)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if out, err := runBounded(10*time.Second, "", "ip", "netns", "del", ns); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
		}
	}
}

// ------------------------------------------------------------- conntrack

// nlConn is one UDP conntrack entry of the router.
type nlConn struct {
	raw      string
	timeout  int
	origSrc  netip.AddrPort
	origDst  netip.AddrPort
	replySrc netip.AddrPort
	replyDst netip.AddrPort // the NAT's public side: WAN IP and mapped port
	helper   string
	assured  bool
}

func (l *natLab) conntrack() []nlConn {
	l.t.Helper()
	out, err := l.try(l.rtr, "conntrack", "-L", "-p", "udp")
	if err != nil {
		l.t.Fatalf("conntrack -L: %v\n%s", err, out)
	}
	var cs []nlConn
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "udp" {
			continue
		}
		c := nlConn{raw: line}
		c.timeout, _ = strconv.Atoi(f[2])
		var addrs [2][2]string
		var ports [2][2]string
		si, di, spi, dpi := 0, 0, 0, 0
		for _, kv := range f[3:] {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "src":
				if si < 2 {
					addrs[si][0] = v
				}
				si++
			case "dst":
				if di < 2 {
					addrs[di][1] = v
				}
				di++
			case "sport":
				if spi < 2 {
					ports[spi][0] = v
				}
				spi++
			case "dport":
				if dpi < 2 {
					ports[dpi][1] = v
				}
				dpi++
			case "helper":
				c.helper = v
			case "[ASSURED]":
				c.assured = true
			}
		}
		ap := func(a, p string) netip.AddrPort {
			ap, _ := netip.ParseAddrPort(a + ":" + p)
			return ap
		}
		c.origSrc, c.origDst = ap(addrs[0][0], ports[0][0]), ap(addrs[0][1], ports[0][1])
		c.replySrc, c.replyDst = ap(addrs[1][0], ports[1][0]), ap(addrs[1][1], ports[1][1])
		cs = append(cs, c)
	}
	return cs
}

// phoneFlow is the NAT mapping of the phone's socket to sipedge, if any.
func (l *natLab) phoneFlow(localPort int) (nlConn, bool) {
	phone := netip.AddrPortFrom(netip.MustParseAddr(nlPhoneIP), uint16(localPort))
	for _, c := range l.conntrack() {
		if c.origSrc == phone && c.origDst == nlEdge {
			return c, true
		}
	}
	return nlConn{}, false
}

// --------------------------------------------------------------- Kamailio

// core is the address in pub of Kamailio and the core-side sipp.
func (l *natLab) core() string {
	if l.coreHost == "" {
		return "127.0.0.1"
	}
	return l.coreHost
}

func (l *natLab) startKamailio() *kamailio {
	t := l.t
	t.Helper()
	k := runKamailio(t, procOpts{netns: l.pub, lifetime: nlLifetime}, filepath.Join(natlabDir, "kamailio.cfg.tmpl"),
		nlKamPort, 10, 64, map[string]any{"Host": l.core()}, "-M", "8")
	l.track(k.p)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Kamailio log (NL- lines and errors):\n%s", tail(k.interesting(), 60))
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if out, err := runBounded(5*time.Second, "", "kamcmd", "-s", "unix:"+k.ctl, "core.uptime"); err == nil {
			break
		} else if k.p.exited() || time.Now().After(deadline) {
			t.Fatalf("Kamailio not ready (kamcmd core.uptime: %v %s)\n%s", err, out, tail(k.p.log(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return k
}

func (k *kamailio) interesting() string {
	var b strings.Builder
	for _, line := range strings.Split(k.p.log(), "\n") {
		if strings.Contains(line, "NL-") || strings.Contains(line, "ERROR") || strings.Contains(line, "WARNING") {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// lines returns the log lines that carry tag (e.g. "NL-REGISTER").
func (k *kamailio) lines(tag string) []string {
	var out []string
	for _, line := range strings.Split(k.p.log(), "\n") {
		if i := strings.Index(line, tag+" "); i >= 0 {
			out = append(out, line[i:])
		}
	}
	return out
}

// waitRegistered polls the location table until aor has a contact whose
// Path is not notPath; fails after 15 s or when phone exits first.
func (k *kamailio) waitRegistered(t *testing.T, phone *proc, aor, notPath string) (ulContact, time.Time) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, c := range k.ulDump(t) {
			if c.AOR == aor && c.Path != notPath {
				return c, time.Now()
			}
		}
		if phone.exited() {
			t.Fatalf("%s exited (status %d) before %s was registered\n%s", phone.name, phone.exitCode(), aor, tail(phone.log(), 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not registered (with a new Path) within 15s; location table: %+v", aor, k.ulDump(t))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitRegistered waits until Kamailio has a contact for aor with a Path
// other than notPath and the phone got its n-th 200 REGISTER (seen on the
// phone's link: the registration is only over once the 200 came back
// through the NAT). It returns the contact and when the phone got the 200.
func (l *natLab) waitRegistered(k *kamailio, capCli *nlCapture, phone *proc, aor, notPath string, n int) (ulContact, time.Time) {
	t := l.t
	t.Helper()
	ct, _ := k.waitRegistered(t, phone, aor, notPath)
	ok, found := capCli.waitFor(n, nlAnd(nlIsKind("SIP 200 REGISTER"), nlTo(nlPhoneIP)), 15*time.Second)
	if !found {
		pk, _ := nlReadPcap(capCli.file)
		t.Fatalf("the phone did not get its 200 REGISTER #%d within 15s; cli0:\n%s", n, nlTimeline(pk, time.Now(), 60))
	}
	return ct, ok.at
}

// ---------------------------------------------------------------- sipedge

type nlEdgeOpts struct {
	keepalive string // crlf | options | off
	interval  string // keepalive_interval
	flowTimer string // flow_timer (UDP)
	extra     string // more TOML after [nat] (e.g. a [state] section)
}

// nlSipedge is a sipedge the lab runs: its binary, its config (dir holds
// the flow key file), the namespace it runs in ("": pub) and the process
// of its latest run.
type nlSipedge struct {
	bin, dir, cfgPath string
	ns                string
	p                 *proc
	runs              int
}

func (l *natLab) startSipedge(o nlEdgeOpts) *proc { return l.startSipedgeRun(o).p }

// startSipedgeRun writes and checks sipedge's config and starts it, as
// startSipedge; the result can be run again (runEdge) with the same
// binary, config, key file and state.
func (l *natLab) startSipedgeRun(o nlEdgeOpts) *nlSipedge {
	t := l.t
	t.Helper()
	bin := buildSipedge(t, true)
	dir := t.TempDir()
	if o.interval == "" {
		o.interval = "25s"
	}
	if o.flowTimer == "" {
		o.flowTimer = "25s"
	}
	nat := fmt.Sprintf(`[nat]
keepalive = %q
keepalive_interval = %q
keepalive_failures = 3
keepalive_rate = 2000
flow_timer = %q
flow_timer_stream = "120s"
`, o.keepalive, o.interval, o.flowTimer)
	cfgFor := func(nat string) string {
		return sipedgeConfig(nlEdge.String(), nlCoreListen, dir, edgeOpts{
			mode: "path", upstream: fmt.Sprintf("sip:127.0.0.1:%d;transport=udp", nlKamPort), extra: "\n" + nat + o.extra,
		})
	}
	cfg := cfgFor(nat)
	cfgPath, out, err := writeSipedgeConfig(t, bin, dir, cfg)
	if err != nil {
		if o.keepalive == "off" && strings.Contains(out, "unknown key nat") {
			// A sipedge without the [nat] section sends no keepalives at
			// all: the same as keepalive = "off".
			t.Logf("sipedge does not know [nat] yet (%s); running it without the section (no keepalives)", strings.TrimSpace(out))
			cfg = cfgFor("")
			if _, out, err := writeSipedgeConfig(t, bin, dir, cfg); err != nil {
				t.Fatalf("sipedge check-config: %v\n%s\nconfig:\n%s", err, out, cfg)
			}
		} else {
			t.Fatalf("sipedge check-config: %v\n%s\nconfig:\n%s", err, out, cfg)
		}
	}
	t.Logf("sipedge config [nat]:\n%s%s", nat, o.extra)
	e := &nlSipedge{bin: bin, dir: dir, cfgPath: cfgPath}
	l.runEdge(e)
	return e
}

// runEdge starts e's binary with e's config (again: the same key file and
// the same state, if the config keeps any), each run logging to a file of
// its own (sipedge.log, sipedge-2.log, ...). It returns once the run
// logged "sipedge starting": its access and core sockets are bound.
func (l *natLab) runEdge(e *nlSipedge) *proc {
	t := l.t
	t.Helper()
	e.runs++
	ns := e.ns
	if ns == "" {
		ns = l.pub
	}
	o := procOpts{dir: e.dir, netns: ns, lifetime: nlLifetime}
	if e.runs > 1 {
		o.logPath = filepath.Join(e.dir, fmt.Sprintf("sipedge-%d.log", e.runs))
	}
	p := l.track(runSipedge(t, o, e.bin, e.cfgPath))
	e.p = p
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.log(), "sipedge starting") {
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("sipedge did not start: %v\n%s", p.err, tail(p.log(), 40))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

// ------------------------------------------------------------------ sipp

// startPhone starts the sipp phone in cli: it registers user through the
// NAT (and, with rebind, once more 3 s later) and then waits silently
// until its out-of-call scenario ooc (in testdata/natlab) is through:
// phone_ooc.xml takes one MESSAGE, phone_call.xml one call.
func (l *natLab) startPhone(user, ooc string, rebind bool) (*proc, string) {
	l.t.Helper()
	dir := l.t.TempDir()
	sf, err := filepath.Abs(filepath.Join(natlabDir, "phone.xml"))
	must(l.t, err)
	ooc, err = filepath.Abs(filepath.Join(natlabDir, ooc))
	must(l.t, err)
	rb := "0"
	if rebind {
		rb = "1"
	}
	p := l.start(l.cli, "phone", dir, "sipp", nlEdge.String(),
		"-sf", sf, "-oocsf", ooc, "-key", "user", user, "-key", "pass", "pw"+user, "-set", "rebind", rb,
		"-i", nlPhoneIP, "-p", strconv.Itoa(nlPhonePort), "-t", "u1", "-m", "1",
		"-timeout", "90", "-timeout_error", "-nostdin",
		"-trace_msg", "-message_file", filepath.Join(dir, "messages.log"),
		"-trace_err", "-error_file", filepath.Join(dir, "errors.log"),
		"-trace_screen", "-screen_file", filepath.Join(dir, "screen.log"))
	msgs := filepath.Join(dir, "messages.log")
	l.t.Cleanup(func() {
		if l.t.Failed() {
			b, _ := os.ReadFile(msgs)
			e, _ := os.ReadFile(filepath.Join(dir, "errors.log"))
			l.t.Logf("phone (sipp) messages (tail):\n%s\nphone errors:\n%s\nphone output:\n%s",
				tail(string(b), 80), tail(string(e), 20), tail(p.log(), 20))
		}
	})
	return p, msgs
}

type nlUAC struct {
	start    time.Time
	elapsed  time.Duration
	exit     int
	status   int // last final response, 0 if none
	messages string
	errors   string
}

var nlStatusRE = regexp.MustCompile(`(?m)^SIP/2\.0 (\d{3}) `)

// sendMessage runs the core-side sipp in pub: one MESSAGE to the AOR via
// Kamailio, which routes it along the Path through sipedge and the NAT.
func (l *natLab) sendMessage(to string) nlUAC { return l.coreUAC("core_message.xml", to) }

// call runs the core-side sipp in pub: one call to the AOR via Kamailio,
// answered, then hung up (ACK and BYE along the route set).
func (l *natLab) call(to string) nlUAC { return l.coreUAC("core_call.xml", to) }

// coreUAC runs scenario (in testdata/natlab) with sipp in pub, sending to
// Kamailio (both on l.core()), until it ends; status is the last final
// response it got.
func (l *natLab) coreUAC(scenario, to string) nlUAC {
	l.t.Helper()
	dir := l.t.TempDir()
	sf, err := filepath.Abs(filepath.Join(natlabDir, scenario))
	must(l.t, err)
	r := nlUAC{start: time.Now()}
	out, err := runBounded(40*time.Second, "", inNetns(l.pub, "sipp", fmt.Sprintf("%s:%d", l.core(), nlKamPort),
		"-sf", sf, "-key", "to", to, "-i", l.core(), "-p", strconv.Itoa(nlUACPort), "-t", "u1", "-m", "1",
		"-timeout", "20", "-timeout_error", "-recv_timeout", "15000", "-nostdin",
		"-trace_msg", "-message_file", filepath.Join(dir, "messages.log"),
		"-trace_err", "-error_file", filepath.Join(dir, "errors.log"))...)
	r.elapsed = time.Since(r.start)
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.exit = ee.ExitCode()
	case err != nil:
		l.t.Fatalf("core sipp: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "messages.log"))
	r.messages = string(b)
	b, _ = os.ReadFile(filepath.Join(dir, "errors.log"))
	r.errors = string(b)
	for _, m := range nlStatusRE.FindAllStringSubmatch(r.messages, -1) {
		if c, _ := strconv.Atoi(m[1]); c >= 200 {
			r.status = c
		}
	}
	return r
}

// ---------------------------------------------------------------- baresip

func (l *natLab) startBaresip(user string) (*proc, string) {
	t := l.t
	t.Helper()
	dir := t.TempDir()
	render := func(name, out string, data map[string]any) {
		renderTemplate(t, filepath.Join(natlabDir, name), filepath.Join(dir, out), data)
	}
	render("baresip-config.tmpl", "config", map[string]any{"Listen": fmt.Sprintf("%s:%d", nlPhoneIP, nlSIPPort)})
	render("baresip-accounts.tmpl", "accounts", map[string]any{
		"User": user, "Pass": "pw" + user, "Edge": nlEdge.String(), "Regint": 3600,
	})
	must(t, os.WriteFile(filepath.Join(dir, "contacts"), nil, 0o644))
	p := l.start(l.cli, "baresip", dir, "baresip", "-f", dir, "-s", "-v")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("baresip output (tail):\n%s", tail(p.log(), 120))
		}
	})
	return p, dir
}

// ------------------------------------------------------------------ pcap

type nlCapture struct {
	p    *proc
	file string
	pkts []nlPacket
	read bool
}

// capture runs tcpdump on iface in ns (UDP and ICMP, to a pcap file)
// until stopped; returns once tcpdump is listening.
func (l *natLab) capture(ns, iface string) *nlCapture {
	t := l.t
	t.Helper()
	dir := t.TempDir()
	c := &nlCapture{file: filepath.Join(dir, iface+".pcap")}
	c.p = l.start(ns, "tcpdump-"+iface, dir, "tcpdump", "-i", iface, "-n", "-U", "-s", "0",
		"-Z", "root", "--immediate-mode", "-w", c.file, "udp or icmp")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(c.p.log(), "listening on") {
		if c.p.exited() || time.Now().After(deadline) {
			t.Fatalf("tcpdump on %s/%s did not start\n%s", ns, iface, c.p.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return c
}

// waitFor reads the capture as it grows (tcpdump -U writes each packet)
// until it holds n packets that keep matches; returns the n-th.
func (c *nlCapture) waitFor(n int, keep func(nlPacket) bool, within time.Duration) (nlPacket, bool) {
	deadline := time.Now().Add(within)
	for {
		pk, _ := nlReadPcap(c.file)
		if m := nlFilter(pk, keep); len(m) >= n {
			return m[n-1], true
		}
		if c.p.exited() || time.Now().After(deadline) {
			return nlPacket{}, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// packets stops tcpdump (it flushes on SIGTERM) and reads what it saw.
func (c *nlCapture) packets(t *testing.T) []nlPacket {
	t.Helper()
	if !c.read {
		time.Sleep(200 * time.Millisecond) // the last packets in flight
		c.p.stop(t)
		pk, err := nlReadPcap(c.file)
		if err != nil {
			t.Fatalf("read %s: %v\n%s", c.file, err, c.p.log())
		}
		c.pkts, c.read = pk, true
	}
	return c.pkts
}

type nlPacket struct {
	at        time.Time
	proto     byte // 17 UDP, 1 ICMP
	src, dst  netip.AddrPort
	payload   []byte
	icmp      [2]byte // type, code
	icmpInner []byte  // the quoted IP header + 8 bytes of an ICMP error
}

// nlReadPcap reads a classic pcap file of Ethernet frames carrying IPv4.
func nlReadPcap(path string) ([]nlPacket, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 24 {
		return nil, fmt.Errorf("short pcap file (%d bytes)", len(b))
	}
	var bo binary.ByteOrder
	nano := false
	switch {
	case binary.LittleEndian.Uint32(b) == 0xa1b2c3d4:
		bo = binary.LittleEndian
	case binary.LittleEndian.Uint32(b) == 0xa1b23c4d:
		bo, nano = binary.LittleEndian, true
	case binary.BigEndian.Uint32(b) == 0xa1b2c3d4:
		bo = binary.BigEndian
	case binary.BigEndian.Uint32(b) == 0xa1b23c4d:
		bo, nano = binary.BigEndian, true
	default:
		return nil, fmt.Errorf("not a pcap file (magic %x)", b[:4])
	}
	if link := bo.Uint32(b[20:24]); link != 1 {
		return nil, fmt.Errorf("pcap link type %d, want 1 (Ethernet)", link)
	}
	var pkts []nlPacket
	for off := 24; off+16 <= len(b); {
		sec, frac, incl := bo.Uint32(b[off:]), bo.Uint32(b[off+4:]), int(bo.Uint32(b[off+8:]))
		if off+16+incl > len(b) {
			break // a record cut short
		}
		frame := b[off+16 : off+16+incl]
		off += 16 + incl
		if !nano {
			frac *= 1000
		}
		if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:14]) != 0x0800 {
			continue
		}
		ip := frame[14:]
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:4]))
		if ip[0]>>4 != 4 || ihl < 20 || total > len(ip) || total < ihl {
			continue
		}
		p := nlPacket{at: time.Unix(int64(sec), int64(frac)), proto: ip[9]}
		srcIP, _ := netip.AddrFromSlice(ip[12:16])
		dstIP, _ := netip.AddrFromSlice(ip[16:20])
		body := ip[ihl:total]
		switch p.proto {
		case 17:
			if len(body) < 8 {
				continue
			}
			p.src = netip.AddrPortFrom(srcIP, binary.BigEndian.Uint16(body[0:2]))
			p.dst = netip.AddrPortFrom(dstIP, binary.BigEndian.Uint16(body[2:4]))
			p.payload = body[8:]
		case 1:
			if len(body) < 8 {
				continue
			}
			p.src, p.dst = netip.AddrPortFrom(srcIP, 0), netip.AddrPortFrom(dstIP, 0)
			p.icmp = [2]byte{body[0], body[1]}
			p.icmpInner = body[8:]
		default:
			continue
		}
		pkts = append(pkts, p)
	}
	return pkts, nil
}

// kind names a packet: crlf, stun-request, stun-response, "SIP MESSAGE",
// "SIP 200 REGISTER", "icmp 3/3 (udp 198.18.0.1:5060 > 198.18.0.2:40000)".
func (p nlPacket) kind() string {
	if p.proto == 1 {
		s := fmt.Sprintf("icmp %d/%d", p.icmp[0], p.icmp[1])
		if in := p.icmpInner; len(in) >= 28 && in[9] == 17 {
			ihl := int(in[0]&0x0f) * 4
			if len(in) >= ihl+4 {
				a, _ := netip.AddrFromSlice(in[12:16])
				d, _ := netip.AddrFromSlice(in[16:20])
				s += fmt.Sprintf(" (udp %s > %s)",
					netip.AddrPortFrom(a, binary.BigEndian.Uint16(in[ihl:])),
					netip.AddrPortFrom(d, binary.BigEndian.Uint16(in[ihl+2:])))
			}
		}
		return s
	}
	pl := p.payload
	switch {
	case len(pl) > 0 && len(pl) <= 4 && strings.Trim(string(pl), "\r\n") == "":
		return "crlf"
	case len(pl) >= 20 && binary.BigEndian.Uint32(pl[4:8]) == 0x2112a442:
		switch binary.BigEndian.Uint16(pl[0:2]) {
		case 0x0001:
			return "stun-request"
		case 0x0101:
			return "stun-response"
		}
		return fmt.Sprintf("stun-%04x", binary.BigEndian.Uint16(pl[0:2]))
	case bytes.HasPrefix(pl, []byte("SIP/2.0 ")):
		code, _, _ := strings.Cut(string(pl[8:min(len(pl), 12)]), " ")
		_, method, _ := strings.Cut(p.header("CSeq"), " ")
		return "SIP " + code + " " + method
	default:
		if m, _, ok := strings.Cut(string(pl[:min(len(pl), 16)]), " "); ok && m != "" && strings.ToUpper(m) == m {
			return "SIP " + m
		}
	}
	return fmt.Sprintf("udp %d bytes", len(pl))
}

// header returns a SIP header's value (first occurrence; long name only).
func (p nlPacket) header(name string) string {
	head, _, _ := strings.Cut(string(p.payload), "\r\n\r\n")
	for _, line := range strings.Split(head, "\r\n")[1:] {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func (p nlPacket) String() string {
	if p.proto == 1 {
		return fmt.Sprintf("%s > %s %s", p.src.Addr(), p.dst.Addr(), p.kind())
	}
	return fmt.Sprintf("%s > %s %s", p.src, p.dst, p.kind())
}

// nlTimeline renders packets relative to t0, at most n lines.
func nlTimeline(pkts []nlPacket, t0 time.Time, n int) string {
	var b strings.Builder
	for i, p := range pkts {
		if i == n {
			fmt.Fprintf(&b, "  [... %d more]\n", len(pkts)-n)
			break
		}
		fmt.Fprintf(&b, "  %+8.3fs %s\n", p.at.Sub(t0).Seconds(), p)
	}
	return b.String()
}

func nlFilter(pkts []nlPacket, keep func(nlPacket) bool) []nlPacket {
	var out []nlPacket
	for _, p := range pkts {
		if keep(p) {
			out = append(out, p)
		}
	}
	return out
}

func nlBetween(from, to time.Time) func(nlPacket) bool {
	return func(p nlPacket) bool { return !p.at.Before(from) && p.at.Before(to) }
}

// nlMaxGap is the longest time between consecutive packets, counting from
// `from` to the first one and from the last one to `to`.
func nlMaxGap(pkts []nlPacket, from, to time.Time) time.Duration {
	var gap time.Duration
	prev := from
	for _, p := range pkts {
		gap = max(gap, p.at.Sub(prev))
		prev = p.at
	}
	return max(gap, to.Sub(prev))
}

func nlIsKind(kind string) func(nlPacket) bool {
	return func(p nlPacket) bool { return p.kind() == kind }
}

func nlAnd(fs ...func(nlPacket) bool) func(nlPacket) bool {
	return func(p nlPacket) bool {
		for _, f := range fs {
			if !f(p) {
				return false
			}
		}
		return true
	}
}

func nlFrom(addr string) func(nlPacket) bool {
	return func(p nlPacket) bool { return p.src.Addr().String() == addr }
}

func nlTo(addr string) func(nlPacket) bool {
	return func(p nlPacket) bool { return p.dst.Addr().String() == addr }
}

// ------------------------------------------------------------------ tests

// nlIdlePhone is the start of scenarios (a), (b) and (e): a sipp phone in
// cli registered 1000 through the NAT via sipedge and then sent nothing
// for three NAT timeouts and 2 s.
type nlIdlePhone struct {
	l              *natLab
	k              *kamailio
	capPub, capCli *nlCapture    // pub0 (sipedge's side of the NAT), cli0 (the phone's link)
	phone          *proc         // still waiting, for its out-of-call scenario
	phoneMsgs      string        // its sipp message trace
	regAt          time.Time     // when its 200 REGISTER reached it (cli0)
	wait           time.Duration // silent since regAt (at least)
	m0, m1         nlConn        // its NAT mapping after the REGISTER, after the wait
	alive          bool          // m1 exists
}

// startIdlePhone builds the lab with the given NAT timeout, starts
// Kamailio, sipedge (keepalive, every 2 s), the captures and the phone
// (phone.xml with out-of-call scenario ooc), and returns after the wait.
func startIdlePhone(t *testing.T, natTimeout int, keepalive, ooc string) *nlIdlePhone {
	t.Helper()
	nlNeed(t, "sipp")
	l := newNATLab(t, natLabOpts{udpTimeout: natTimeout})
	s := &nlIdlePhone{l: l, k: l.startKamailio()}
	l.startSipedge(nlEdgeOpts{keepalive: keepalive, interval: "2s"})
	s.capPub = l.capture(l.pub, "pub0")
	s.capCli = l.capture(l.cli, "cli0")

	s.phone, s.phoneMsgs = l.startPhone("1000", ooc, false)
	ct, regAt := l.waitRegistered(s.k, s.capCli, s.phone, "1000", "", 1)
	s.regAt = regAt
	t.Logf("registered: contact %s path %s", ct.Address, ct.Path)
	m0, ok := l.phoneFlow(nlPhonePort)
	if !ok {
		t.Fatalf("no conntrack entry for the phone right after it registered:\n%v", l.conntrack())
	}
	s.m0 = m0
	t.Logf("NAT mapping after REGISTER: %s → %s (public %s), timeout left %ds, helper=%q: %s",
		m0.origSrc, m0.origDst, m0.replyDst, m0.timeout, m0.helper, m0.raw)
	if m0.helper != "" || m0.timeout > natTimeout {
		t.Fatalf("a conntrack helper is involved (helper=%q, timeout %ds > %ds): %s", m0.helper, m0.timeout, natTimeout, m0.raw)
	}

	s.wait = 3*time.Duration(natTimeout)*time.Second + 2*time.Second
	t.Logf("phone silent now; waiting %s (3 × NAT UDP timeout %ds + 2s)", s.wait, natTimeout)
	if s.phone.wait(s.wait - time.Since(regAt)) {
		t.Fatalf("phone sipp exited during the wait (status %d)\n%s", s.phone.exitCode(), tail(s.phone.log(), 30))
	}
	s.m1, s.alive = l.phoneFlow(nlPhonePort)
	if s.alive {
		t.Logf("NAT mapping after the wait: public %s, timeout left %ds: %s", s.m1.replyDst, s.m1.timeout, s.m1.raw)
	} else {
		t.Logf("NAT mapping after the wait: gone (conntrack has %d UDP entries)", len(l.conntrack()))
	}
	return s
}

// TestNATLabKeepaliveCRLF (a): with sipedge's CRLF keepalives every 2 s a
// sipp phone that registered through the NAT and then sent nothing for
// three NAT timeouts is still reachable from the core.
func TestNATLabKeepaliveCRLF(t *testing.T) {
	runSilentPhone(t, "crlf", true)
}

// TestNATLabKeepaliveOff (b): the same without keepalives: the NAT forgets
// the mapping and the core's MESSAGE cannot reach the phone. Proves the
// lab can fail.
func TestNATLabKeepaliveOff(t *testing.T) {
	runSilentPhone(t, "off", false)
}

func runSilentPhone(t *testing.T, keepalive string, wantReach bool) {
	const natTimeout = 5
	s := startIdlePhone(t, natTimeout, keepalive, "phone_ooc.xml")

	uac := s.l.sendMessage("1000")
	reached := false
	if wantReach {
		reached = s.phone.wait(5 * time.Second)
	} else {
		s.phone.stop(t)
	}
	phoneTrace, _ := os.ReadFile(s.phoneMsgs)
	phoneGotMessage := regexp.MustCompile(`(?m)^MESSAGE sip:`).Match(phoneTrace)
	t.Logf("core → phone MESSAGE: final status at the core %d (sipp exit %d) after %s; phone saw the MESSAGE: %v",
		uac.status, uac.exit, uac.elapsed.Round(time.Millisecond), phoneGotMessage)
	t.Logf("Kamailio: %s", strings.Join(append(s.k.lines("NL-LOOKUP"), append(s.k.lines("NL-REPLY"), s.k.lines("NL-FAILURE")...)...), " | "))

	pub := s.capPub.packets(t)
	cli := s.capCli.packets(t)
	wan := s.m0.replyDst
	toPhoneWAN := func(p nlPacket) bool { return p.dst == wan }
	// The end of the registration: the last 200 REGISTER the phone got.
	regDone := s.regAt
	if r := nlFilter(cli, nlAnd(nlIsKind("SIP 200 REGISTER"), nlBetween(s.regAt.Add(-15*time.Second), uac.start))); len(r) > 0 {
		regDone = r[len(r)-1].at
	}
	silent := nlBetween(regDone.Add(time.Millisecond), uac.start)
	kaSent := nlFilter(pub, nlAnd(silent, nlIsKind("crlf"), nlFrom(nlEdgeIP), toPhoneWAN))
	kaGot := nlFilter(cli, nlAnd(silent, nlIsKind("crlf"), nlTo(nlPhoneIP)))
	fromPhone := nlFilter(cli, nlAnd(silent, nlFrom(nlPhoneIP)))
	msgAtEdge := nlFilter(pub, nlAnd(nlBetween(uac.start, uac.start.Add(time.Minute)), nlIsKind("SIP MESSAGE"), nlFrom(nlEdgeIP)))
	msgAtPhone := nlFilter(cli, nlAnd(nlBetween(uac.start, uac.start.Add(time.Minute)), nlIsKind("SIP MESSAGE"), nlTo(nlPhoneIP)))
	icmp := nlFilter(pub, func(p nlPacket) bool { return p.proto == 1 && p.at.After(regDone) })

	t.Logf("measured: NAT UDP timeout %ds; phone silent for %s (last 200 REGISTER → MESSAGE sent by the core); keepalive %q",
		natTimeout, uac.start.Sub(regDone).Round(time.Millisecond), keepalive)
	t.Logf("measured: CRLF keepalives sipedge → %s: %d sent (at pub), %d delivered to the phone (at cli); longest gap between deliveries %s",
		wan, len(kaSent), len(kaGot), nlMaxGap(kaGot, regDone, uac.start).Round(time.Millisecond))
	t.Logf("measured: packets from the phone while silent: %d; MESSAGE sent by sipedge toward the NAT: %d; delivered to the phone: %d; ICMP at pub: %d",
		len(fromPhone), len(msgAtEdge), len(msgAtPhone), len(icmp))
	if len(msgAtPhone) > 0 {
		t.Logf("measured: MESSAGE at the phone %s after the core sent it",
			msgAtPhone[0].at.Sub(uac.start).Round(time.Millisecond))
	}
	t.Logf("pub0 (sipedge side of the NAT) after the REGISTER:\n%s",
		nlTimeline(nlFilter(pub, nlBetween(regDone.Add(-2*time.Second), uac.start.Add(time.Minute))), regDone, 60))

	if len(fromPhone) > 0 {
		t.Errorf("the phone sent %d packets during the wait (it must stay silent, they refresh the NAT): %v", len(fromPhone), fromPhone)
	}
	if wantReach {
		if !s.alive {
			t.Errorf("the NAT mapping expired although sipedge sends keepalives")
		} else if s.m1.replyDst != s.m0.replyDst {
			t.Errorf("the NAT mapping changed from %s to %s", s.m0.replyDst, s.m1.replyDst)
		}
		if min := int(s.wait / (2 * time.Second) / 2); len(kaGot) < min {
			t.Errorf("only %d CRLF keepalives reached the phone in %s (interval 2s), want at least %d", len(kaGot), s.wait, min)
		}
		if uac.status != 200 || uac.exit != 0 {
			t.Errorf("core MESSAGE to the phone: status %d, sipp exit %d; want 200\n%s\n%s", uac.status, uac.exit, uac.errors, tail(uac.messages, 40))
		}
		if !phoneGotMessage || !reached || s.phone.exitCode() != 0 {
			t.Errorf("the phone did not take the MESSAGE (saw it %v, exited %v, status %d)", phoneGotMessage, reached, s.phone.exitCode())
		}
	} else {
		if s.alive {
			t.Errorf("the NAT mapping is still there without keepalives: the lab does not expire mappings: %s", s.m1.raw)
		}
		if len(kaSent) > 0 {
			t.Errorf("sipedge sent %d CRLF keepalives with keepalive = off", len(kaSent))
		}
		if uac.status == 200 {
			t.Errorf("core MESSAGE got 200 although the NAT mapping expired")
		}
		if phoneGotMessage || len(msgAtPhone) > 0 {
			t.Errorf("the MESSAGE reached the phone although the NAT mapping expired")
		}
		if len(msgAtEdge) == 0 {
			t.Errorf("sipedge never sent the MESSAGE toward the NAT: the test proves nothing about the NAT")
		}
	}
}

// TestNATLabSymmetricRebind (c): behind a symmetric NAT (masquerade
// fully-random) the phone's mapping is flushed; its re-REGISTER leaves
// from a new public port, and the core's next MESSAGE reaches it there.
func TestNATLabSymmetricRebind(t *testing.T) {
	nlNeed(t, "sipp")
	const natTimeout = 5
	l := newNATLab(t, natLabOpts{fullyRandom: true, udpTimeout: natTimeout})
	k := l.startKamailio()
	l.startSipedge(nlEdgeOpts{keepalive: "crlf", interval: "2s"})
	capPub := l.capture(l.pub, "pub0")
	capCli := l.capture(l.cli, "cli0")

	phone, phoneMsgs := l.startPhone("1000", "phone_ooc.xml", true)
	ct1, reg1 := l.waitRegistered(k, capCli, phone, "1000", "", 1)
	m1, ok := l.phoneFlow(nlPhonePort)
	if !ok {
		t.Fatalf("no conntrack entry for the phone after it registered:\n%v", l.conntrack())
	}
	if out, err := l.try(l.rtr, "conntrack", "-F"); err != nil {
		t.Fatalf("conntrack -F: %v\n%s", err, out)
	}
	flushed := time.Now()
	t.Logf("first registration: NAT %s → public %s, Path %s; conntrack flushed %s later",
		m1.origSrc, m1.replyDst, ct1.Path, flushed.Sub(reg1).Round(time.Millisecond))
	if flushed.Sub(reg1) > 2500*time.Millisecond {
		t.Fatalf("flushed %s after the phone got its 200: too late for its re-REGISTER 3 s after it", flushed.Sub(reg1))
	}
	ct2, reg2 := l.waitRegistered(k, capCli, phone, "1000", ct1.Path, 2)
	m2, ok := l.phoneFlow(nlPhonePort)
	if !ok {
		t.Fatalf("no conntrack entry for the phone after it re-registered:\n%v", l.conntrack())
	}
	t.Logf("re-registration %s after the first: NAT %s → public %s, Path %s",
		reg2.Sub(reg1).Round(time.Millisecond), m2.origSrc, m2.replyDst, ct2.Path)
	if m2.replyDst == m1.replyDst {
		t.Fatalf("the NAT kept public %s after the flush; the test needs a new port", m1.replyDst)
	}
	// Silent again for longer than the NAT timeout: only sipedge's
	// keepalives, now on the new flow, keep the new mapping.
	wait := (natTimeout + 2) * time.Second
	t.Logf("phone silent now; waiting %s (NAT UDP timeout %ds + 2s)", wait, natTimeout)
	if phone.wait(wait - time.Since(reg2)) {
		t.Fatalf("phone sipp exited during the wait (status %d)\n%s", phone.exitCode(), tail(phone.log(), 30))
	}
	m3, alive := l.phoneFlow(nlPhonePort)
	if alive {
		t.Logf("NAT mapping after the wait: public %s, timeout left %ds", m3.replyDst, m3.timeout)
	} else {
		t.Logf("NAT mapping after the wait: gone")
	}

	uac := l.sendMessage("1000")
	reached := phone.wait(5 * time.Second)
	phoneTrace, _ := os.ReadFile(phoneMsgs)
	phoneGotMessage := regexp.MustCompile(`(?m)^MESSAGE sip:`).Match(phoneTrace)
	t.Logf("core → phone MESSAGE: status %d (sipp exit %d) after %s; phone saw it: %v",
		uac.status, uac.exit, uac.elapsed.Round(time.Millisecond), phoneGotMessage)

	pub := capPub.packets(t)
	cli := capCli.packets(t)
	after := nlBetween(uac.start, uac.start.Add(time.Minute))
	msgAtEdge := nlFilter(pub, nlAnd(after, nlIsKind("SIP MESSAGE"), nlFrom(nlEdgeIP)))
	msgAtPhone := nlFilter(cli, nlAnd(after, nlIsKind("SIP MESSAGE"), nlTo(nlPhoneIP)))
	regs := nlFilter(pub, nlAnd(nlIsKind("SIP REGISTER"), nlTo(nlEdgeIP)))
	var reg2Done time.Time
	for _, p := range nlFilter(cli, nlAnd(nlIsKind("SIP 200 REGISTER"), nlTo(nlPhoneIP), nlBetween(reg1.Add(-15*time.Second), uac.start))) {
		reg2Done = p.at
	}
	silent := nlBetween(reg2Done.Add(time.Millisecond), uac.start)
	kaNew := nlFilter(pub, nlAnd(silent, nlIsKind("crlf"), func(p nlPacket) bool { return p.dst == m2.replyDst }))
	kaOld := nlFilter(pub, nlAnd(nlIsKind("crlf"), nlBetween(reg2Done, uac.start.Add(time.Minute)), func(p nlPacket) bool { return p.dst == m1.replyDst }))
	kaGot := nlFilter(cli, nlAnd(silent, nlIsKind("crlf"), nlTo(nlPhoneIP)))
	fromPhone := nlFilter(cli, nlAnd(silent, nlFrom(nlPhoneIP)))
	t.Logf("measured: after the re-REGISTER: phone silent %s, %d packets from it; CRLF keepalives to the new mapping %s: %d sent, %d delivered, longest gap %s; to the old mapping %s: %d",
		uac.start.Sub(reg2Done).Round(time.Millisecond), len(fromPhone), m2.replyDst, len(kaNew), len(kaGot),
		nlMaxGap(kaGot, reg2Done, uac.start).Round(time.Millisecond), m1.replyDst, len(kaOld))
	t.Logf("measured: REGISTERs at sipedge from public ports: %s", func() string {
		var s []string
		for _, r := range regs {
			s = append(s, fmt.Sprintf("%s CSeq %s", r.src, r.header("CSeq")))
		}
		return strings.Join(s, ", ")
	}())
	t.Logf("pub0 from the first REGISTER on:\n%s", nlTimeline(nlFilter(pub, nlBetween(reg1.Add(-3*time.Second), uac.start.Add(time.Minute))), reg1, 60))
	if len(msgAtPhone) > 0 {
		t.Logf("measured: MESSAGE at the phone %s after the core sent it", msgAtPhone[0].at.Sub(uac.start).Round(time.Millisecond))
	}

	if uac.status != 200 || uac.exit != 0 {
		t.Errorf("core MESSAGE: status %d, sipp exit %d; want 200\n%s\n%s", uac.status, uac.exit, uac.errors, tail(uac.messages, 40))
	}
	if !phoneGotMessage || !reached || phone.exitCode() != 0 {
		t.Errorf("the phone did not take the MESSAGE (saw it %v, exited %v, status %d)", phoneGotMessage, reached, phone.exitCode())
	}
	for _, m := range msgAtEdge {
		if m.dst != m2.replyDst {
			t.Errorf("sipedge sent the MESSAGE to %s, want the new mapping %s (old %s)", m.dst, m2.replyDst, m1.replyDst)
		}
	}
	if len(msgAtEdge) == 0 {
		t.Errorf("no MESSAGE from sipedge toward the NAT")
	}
	if !alive || m3.replyDst != m2.replyDst {
		t.Errorf("the new NAT mapping %s did not survive the silent wait (now: alive %v, %s)", m2.replyDst, alive, m3.replyDst)
	}
	if len(fromPhone) > 0 {
		t.Errorf("the phone sent %d packets during the wait (it must stay silent): %v", len(fromPhone), fromPhone)
	}
	if len(kaGot) < 2 {
		t.Errorf("%d CRLF keepalives reached the phone on its new mapping in %s, want at least 2", len(kaGot), wait)
	}
}

// TestNATLabBaresipOutbound (d): baresip registers through sipedge with
// RFC 5626 outbound, gets Require: outbound and Flow-Timer: 5 in the 200,
// and keeps the NAT open with its own STUN keepalives (sipedge answers
// them; its own keepalives are off), without re-registering, past twice
// the flow timer; then the core's MESSAGE still reaches it.
func TestNATLabBaresipOutbound(t *testing.T) {
	nlNeed(t, "sipp", "baresip")
	// baresip sends a keepalive 0.8..1.0 × Flow-Timer after the last, so
	// up to 5 s apart: a 5 s NAT timeout would be a coin toss. 8 s is
	// above that and still well below the 17 s the test waits.
	const natTimeout, flowTimer = 8, 5
	// fully-random: were the mapping ever to expire, the next STUN
	// request would get a new public port, and the test would see it.
	l := newNATLab(t, natLabOpts{fullyRandom: true, udpTimeout: natTimeout})
	k := l.startKamailio()
	l.startSipedge(nlEdgeOpts{keepalive: "off", flowTimer: fmt.Sprintf("%ds", flowTimer)})
	capPub := l.capture(l.pub, "pub0")
	capCli := l.capture(l.cli, "cli0")

	b, _ := l.startBaresip("1000")
	ct, regAt := l.waitRegistered(k, capCli, b, "1000", "", 1)
	t.Logf("baresip registered: contact %s path %s", ct.Address, ct.Path)
	m0, ok := l.phoneFlow(nlSIPPort)
	if !ok {
		t.Fatalf("no conntrack entry for baresip after it registered:\n%v", l.conntrack())
	}
	t.Logf("NAT mapping after REGISTER: public %s, timeout left %ds, helper=%q", m0.replyDst, m0.timeout, m0.helper)
	if m0.helper != "" {
		t.Fatalf("a conntrack helper is involved: %s", m0.raw)
	}
	wait := max(2*flowTimer, 2*natTimeout)*time.Second + time.Second
	t.Logf("waiting %s (> 2 × Flow-Timer %ds and 2 × NAT UDP timeout %ds) with sipedge's keepalives off", wait, flowTimer, natTimeout)
	if b.wait(wait - time.Since(regAt)) {
		t.Fatalf("baresip exited during the wait (status %d)", b.exitCode())
	}
	m1, alive := l.phoneFlow(nlSIPPort)
	if alive {
		t.Logf("NAT mapping after the wait: public %s, timeout left %ds", m1.replyDst, m1.timeout)
	}
	regsSeen := len(k.lines("NL-REGISTER"))

	uac := l.sendMessage("1000")
	// The MESSAGE is in the phone-side capture before baresip goes away.
	capCli.waitFor(1, nlAnd(nlIsKind("SIP MESSAGE"), nlTo(nlPhoneIP)), 5*time.Second)
	t.Logf("core → baresip MESSAGE: status %d (sipp exit %d) after %s", uac.status, uac.exit, uac.elapsed.Round(time.Millisecond))
	b.stop(t) // it un-REGISTERs on its way out: after everything counted
	pub := capPub.packets(t)
	cli := capCli.packets(t)

	var ok200 *nlPacket
	for _, p := range nlFilter(cli, nlAnd(nlIsKind("SIP 200 REGISTER"), nlTo(nlPhoneIP), nlBetween(regAt.Add(-15*time.Second), uac.start))) {
		ok200 = &p
	}
	var regDone time.Time
	if ok200 == nil {
		t.Fatalf("no 200 REGISTER reached baresip; cli0:\n%s", nlTimeline(cli, regAt, 60))
	}
	regDone = ok200.at
	t.Logf("200 REGISTER as baresip got it: Require: %q, Flow-Timer: %q, Supported: %q",
		ok200.header("Require"), ok200.header("Flow-Timer"), ok200.header("Supported"))
	window := nlBetween(regDone.Add(time.Millisecond), uac.start)
	regsPub := nlFilter(pub, nlAnd(nlIsKind("SIP REGISTER"), nlTo(nlEdgeIP), nlBetween(regAt.Add(-15*time.Second), uac.start)))
	stunReq := nlFilter(pub, nlAnd(window, nlIsKind("stun-request"), nlTo(nlEdgeIP)))
	stunResp := nlFilter(pub, nlAnd(window, nlIsKind("stun-response"), nlFrom(nlEdgeIP)))
	stunGot := nlFilter(cli, nlAnd(window, nlIsKind("stun-response"), nlTo(nlPhoneIP)))
	msgAtPhone := nlFilter(cli, nlAnd(nlBetween(uac.start, uac.start.Add(time.Minute)), nlIsKind("SIP MESSAGE"), nlTo(nlPhoneIP)))
	t.Logf("measured: NAT UDP timeout %ds, Flow-Timer %ds, %s from the 200 REGISTER to the core's MESSAGE", natTimeout, flowTimer,
		uac.start.Sub(regDone).Round(time.Millisecond))
	t.Logf("measured: REGISTERs through sipedge before the MESSAGE: %d (Kamailio logged %d); STUN keepalives from baresip %d, answered by sipedge %d, answers delivered %d; longest gap between STUN requests %s",
		len(regsPub), regsSeen, len(stunReq), len(stunResp), len(stunGot), nlMaxGap(stunReq, regDone, uac.start).Round(time.Millisecond))
	if len(msgAtPhone) > 0 {
		t.Logf("measured: MESSAGE at baresip %s after the core sent it", msgAtPhone[0].at.Sub(uac.start).Round(time.Millisecond))
	}
	t.Logf("pub0 after the REGISTER:\n%s", nlTimeline(nlFilter(pub, nlBetween(regAt.Add(-3*time.Second), uac.start.Add(10*time.Second))), regDone, 60))

	if !strings.Contains(strings.ToLower(ok200.header("Require")), "outbound") {
		t.Errorf("the 200 REGISTER lacks Require: outbound:\n%s", ok200.payload)
	}
	if got := ok200.header("Flow-Timer"); got != strconv.Itoa(flowTimer) {
		t.Errorf("the 200 REGISTER has Flow-Timer %q, want %d", got, flowTimer)
	}
	if len(regsPub) != 2 || regsSeen != 2 {
		t.Errorf("baresip sent %d REGISTERs (Kamailio saw %d) by the time of the MESSAGE, want 2 (challenge + authenticated): it re-registered\n%s",
			len(regsPub), regsSeen, strings.Join(k.lines("NL-REGISTER"), "\n"))
	}
	if min := int(wait/(flowTimer*time.Second)) - 1; len(stunReq) < min {
		t.Errorf("baresip sent %d STUN keepalives in %s, want at least %d", len(stunReq), wait, min)
	}
	if len(stunResp) < len(stunReq) || len(stunGot) < len(stunReq) {
		t.Errorf("sipedge answered %d of %d STUN keepalives (%d answers reached baresip)", len(stunResp), len(stunReq), len(stunGot))
	}
	if gap := nlMaxGap(stunReq, regDone, uac.start); gap > natTimeout*time.Second {
		t.Errorf("%s without a STUN keepalive, above the NAT timeout", gap)
	}
	if !alive || m1.replyDst != m0.replyDst {
		t.Errorf("the NAT mapping %s did not survive although baresip sends STUN keepalives (now: alive %v, %s)", m0.replyDst, alive, m1.replyDst)
	}
	if len(msgAtPhone) == 0 {
		t.Errorf("the core's MESSAGE did not reach baresip (status at the core %d)\n%s", uac.status, tail(uac.messages, 30))
	} else if uac.status != 200 {
		t.Errorf("the MESSAGE reached baresip but the core got %d, want 200", uac.status)
	}
}

// TestNATLabIdleCallee (e): the callee behind the NAT receives the INVITE
// after being idle longer than the conntrack timeout. A sipp phone
// registers through sipedge and then sends nothing for three NAT timeouts
// (sipedge's CRLF keepalives every 2 s keep its mapping); a caller in pub
// calls its AOR via Kamailio, whose lookup follows the Path to sipedge,
// which sends the INVITE over the phone's NAT flow. The phone answers
// 180/200, gets the ACK and the BYE (routed by sipedge's Record-Route to
// the flow: its Contact is a private address) and answers 200.
func TestNATLabIdleCallee(t *testing.T) {
	const natTimeout = 5
	s := startIdlePhone(t, natTimeout, "crlf", "phone_call.xml")

	uac := s.l.call("1000")
	answered := s.phone.wait(5 * time.Second)
	t.Logf("core → phone call: caller sipp exit %d after %s (last final status %d); phone sipp ended %v (exit %d)",
		uac.exit, uac.elapsed.Round(time.Millisecond), uac.status, answered, s.phone.exitCode())
	lookups := s.k.lines("NL-LOOKUP")
	t.Logf("Kamailio: %s", strings.Join(append(lookups, append(s.k.lines("NL-REPLY"), s.k.lines("NL-FAILURE")...)...), " | "))

	pub := s.capPub.packets(t)
	cli := s.capCli.packets(t)
	phoneAddr := netip.AddrPortFrom(netip.MustParseAddr(nlPhoneIP), nlPhonePort)
	isSIP := func(p nlPacket) bool { return strings.HasPrefix(p.kind(), "SIP ") }
	during := nlBetween(uac.start, uac.start.Add(time.Minute))
	invAtEdge := nlFilter(pub, nlAnd(during, nlIsKind("SIP INVITE"), nlFrom(nlEdgeIP)))
	dialog := nlFilter(cli, nlAnd(during, isSIP))
	t.Logf("cli0 (the phone's link) from the call on (0 = the caller started):\n%s", nlTimeline(dialog, uac.start, 40))
	invAtPhone := nlFilter(dialog, nlIsKind("SIP INVITE"))
	if len(invAtPhone) == 0 || len(invAtEdge) == 0 {
		t.Fatalf("the INVITE did not reach the phone (%d at it, %d sent by sipedge toward the NAT %s); caller:\n%s\n%s\npub0:\n%s",
			len(invAtPhone), len(invAtEdge), s.m0.replyDst, uac.errors, tail(uac.messages, 40),
			nlTimeline(nlFilter(pub, during), uac.start, 40))
	}
	inv := invAtPhone[0]

	// The phone's silence: nothing from it between its 200 REGISTER and
	// the INVITE; idle counts from the last packet it sent at all.
	fromPhone := nlFilter(cli, nlAnd(nlBetween(s.regAt.Add(time.Millisecond), inv.at), nlFrom(nlPhoneIP)))
	sentBefore := nlFilter(cli, nlAnd(nlBetween(time.Time{}, inv.at), nlFrom(nlPhoneIP)))
	var idle time.Duration
	lastSent := "nothing"
	if len(sentBefore) > 0 {
		last := sentBefore[len(sentBefore)-1]
		idle, lastSent = inv.at.Sub(last.at), last.kind()
	}
	kaGot := nlFilter(cli, nlAnd(nlBetween(s.regAt, inv.at), nlIsKind("crlf"), nlTo(nlPhoneIP)))
	t.Logf("measured: NAT UDP timeout %ds; phone idle %s (its last packet, %s, → the INVITE reaching it; %.1f × the NAT timeout); packets from it after its 200 REGISTER: %d",
		natTimeout, idle.Round(time.Millisecond), lastSent, idle.Seconds()/natTimeout, len(fromPhone))
	t.Logf("measured: CRLF keepalives that reached the phone while idle: %d, longest gap %s; NAT mapping %s after the REGISTER, %s before the call (alive %v)",
		len(kaGot), nlMaxGap(kaGot, s.regAt, inv.at).Round(time.Millisecond), s.m0.replyDst, s.m1.replyDst, s.alive)
	t.Logf("measured: INVITE delivery: caller start → phone %s; sipedge (pub0, %s → %s) → phone (cli0, %s → %s) %s",
		inv.at.Sub(uac.start).Round(time.Microsecond), invAtEdge[0].src, invAtEdge[0].dst, inv.src, inv.dst,
		inv.at.Sub(invAtEdge[0].at).Round(time.Microsecond))
	t.Logf("INVITE as the phone got it: Via %q, Record-Route %q", inv.header("Via"), inv.header("Record-Route"))

	if uac.exit != 0 || !answered || s.phone.exitCode() != 0 {
		t.Errorf("the call failed: caller sipp exit %d (last final status %d), phone sipp ended %v with exit %d; want 0 and 0\n%s\n%s",
			uac.exit, uac.status, answered, s.phone.exitCode(), uac.errors, tail(uac.messages, 60))
	}
	if len(fromPhone) > 0 {
		t.Errorf("the phone sent %d packets while idle (it must stay silent, they refresh the NAT): %v", len(fromPhone), fromPhone)
	}
	if min := 3 * natTimeout * time.Second; idle < min {
		t.Errorf("the phone was idle %s before the INVITE, want at least %s (3 × NAT timeout)", idle, min)
	}
	if !s.alive || s.m1.replyDst != s.m0.replyDst {
		t.Errorf("the NAT mapping %s did not survive the idle time (now: alive %v, %s)", s.m0.replyDst, s.alive, s.m1.replyDst)
	}
	if inv.src != nlEdge || inv.dst != phoneAddr {
		t.Errorf("the INVITE reached the phone as %s → %s, want from sipedge %s to %s", inv.src, inv.dst, nlEdge, phoneAddr)
	}
	if via := inv.header("Via"); !strings.Contains(via, "/UDP "+nlEdge.String()+";") {
		t.Errorf("the INVITE's top Via %q is not sipedge's access side %s", via, nlEdge)
	}
	for _, p := range invAtEdge {
		if p.dst != s.m0.replyDst {
			t.Errorf("sipedge sent the INVITE to %s, want the phone's NAT mapping %s", p.dst, s.m0.replyDst)
		}
	}
	// du is the Path's URI: sipedge's core side (with a flow token).
	pathDU := regexp.MustCompile(` du=sip:([^@; ]+@)?` + regexp.QuoteMeta(nlCoreListen) + `[; ]`)
	var lookup string
	for _, line := range lookups {
		if strings.HasPrefix(line, "NL-LOOKUP INVITE ") {
			lookup = line
		}
	}
	if !pathDU.MatchString(lookup + " ") {
		t.Errorf("Kamailio did not route the INVITE along the Path to sipedge's core side %s: %q", nlCoreListen, lookup)
	}

	// The whole dialog on the phone's link, retransmissions folded: every
	// request from sipedge's address, every response back to it.
	want := []string{"SIP INVITE", "SIP 180 INVITE", "SIP 200 INVITE", "SIP ACK", "SIP BYE", "SIP 200 BYE"}
	var got []string
	for _, p := range dialog {
		if k := p.kind(); len(got) == 0 || got[len(got)-1] != k {
			got = append(got, k)
		}
		resp := bytes.HasPrefix(p.payload, []byte("SIP/2.0 "))
		if !(p.src == nlEdge && p.dst == phoneAddr && !resp) && !(p.src == phoneAddr && p.dst == nlEdge && resp) {
			t.Errorf("%s on the phone's link: requests must come from sipedge %s to %s, responses go back", p, nlEdge, phoneAddr)
		}
	}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("the dialog on the phone's link was %v, want %v", got, want)
	}
}

// A SIP ALG on the phone's router (Linux's nf_nat_sip) rewrites the
// phone's Via and Contact, ports and all, to the NAT's public mapping, so
// they look like a phone on a public address; the Call-ID sipp builds
// from its private address gives it away. The device shows "alg"; the
// same phone without the ALG shows the private addresses instead.
func TestNATLabSIPALG(t *testing.T) {
	nlNeed(t, "sipp")
	for _, alg := range []bool{true, false} {
		t.Run(fmt.Sprintf("alg=%v", alg), func(t *testing.T) {
			l := newNATLab(t, natLabOpts{sipALG: alg})
			k := l.startKamailio()
			edge := l.startSipedge(nlEdgeOpts{keepalive: "auto"})
			phone, _ := l.startPhone("1000", "phone_ooc.xml", false)
			ct, _ := k.waitRegistered(t, phone, "1000", "")
			m, ok := l.phoneFlow(nlPhonePort)
			if !ok {
				t.Fatalf("no conntrack entry for the phone:\n%v", l.conntrack())
			}
			t.Logf("Kamailio holds contact %s; conntrack: %s", ct.Address, m.raw)
			if (m.helper == "sip") != alg {
				t.Fatalf("conntrack helper %q, want the SIP ALG %v", m.helper, alg)
			}
			var reg map[string]any
			deadline := time.Now().Add(10 * time.Second)
			for reg == nil {
				for _, line := range strings.Split(edge.log(), "\n") {
					var ev map[string]any
					if json.Unmarshal([]byte(line), &ev) == nil && ev["event"] == "register" && ev["aor"] == "sip:1000@sipedge.test" {
						reg = ev
					}
				}
				if reg == nil && time.Now().After(deadline) {
					t.Fatalf("no register event in sipedge's audit log:\n%s", tail(edge.log(), 40))
				}
				time.Sleep(50 * time.Millisecond)
			}
			nat, _ := reg["nat"].(string)
			contacts := fmt.Sprint(reg["contacts"])
			t.Logf("audit: register from %v, contacts %s, nat %q", reg["source"], contacts, nat)
			if alg {
				if !strings.Contains(nat, "alg") || strings.Contains(contacts, nlPhoneIP) {
					t.Errorf("behind the ALG: nat %q, contacts %s; want alg detected and the contact rewritten", nat, contacts)
				}
			} else if strings.Contains(nat, "alg") || !strings.Contains(nat, "private-contact") {
				t.Errorf("without an ALG: nat %q, want the private contact and no alg", nat)
			}
		})
	}
}
