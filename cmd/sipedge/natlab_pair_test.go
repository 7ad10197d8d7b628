//go:build natlab

// NAT lab: a pair of edges sharing their state in Redis. A real
// redis-server and two sipedge processes, A active and B standby, with
// [state] backend = "redis"; A is killed with SIGKILL and its floating
// addresses move to B inside the lab. The core's next MESSAGE must reach
// the UDP phone behind the NAT through B without the phone registering
// again, and a source A banned must be dropped by B.
//
//	go test -count=1 -tags natlab -v -timeout 15m -run NATLabRedisPair ./cmd/sipedge/
//
//	 cli (phone)      rtr (NAT)                    pub (core + router)                  ea / eb (the edges)
//	 baresip          masquerade                   Kamailio  10.88.0.1:5070 (lo)        sipedge A in ea, B in eb:
//	 10.77.0.2 ═══ 10.77.0.1 │ 198.18.0.2 ═══ pub0  Redis     10.88.0.1:6379 (lo)          access 198.18.0.1:5060
//	                route 198.18.0.1/32         198.18.0.254/24, .253/24                 core   10.88.9.1:5062
//	                  via 198.18.0.254          pea0 10.88.1.1/30 ═══ ea0 10.88.1.2/30   (bound in advance:
//	                                            peb0 10.88.2.1/30 ═══ eb0 10.88.2.2/30    ip_nonlocal_bind=1)
//	                                            routes 198.18.0.1/32, 10.88.9.1/32
//	                                              via the edge holding them
//
// The floating /32s sit on the active edge's loopback; moving them is
// deleting them there, adding them on the other edge's loopback and
// pointing pub's two routes at it. The NAT router never notices: its
// route to 198.18.0.1 goes via pub either way, so the phone's mapping
// stays the one it registered through.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	nlPairCore      = "10.88.0.1"    // pub's core net address (lo): Kamailio, Redis, the core-side sipp
	nlPairCoreSide  = "10.88.9.1"    // the edges' floating core-side address
	nlPairRouter    = "198.18.0.254" // pub0: the NAT router's next hop to 198.18.0.1; also the scanner's source
	nlPairClean     = "198.18.0.253" // pub0: a source never banned
	nlPairRedisPort = 6379
	nlPairCorePort  = 5062
	// nlPairNATTimeout is the router's conntrack UDP timeout: above the
	// gap in keepalives between A's death and B taking over.
	nlPairNATTimeout = 10
	// nlPairWithin bounds kill → the core's MESSAGE answered 200 through B.
	nlPairWithin = 5 * time.Second
	// Local ports of the sipp runs in pub: one each, so that no TCP
	// connection's TIME_WAIT is in the next one's way.
	nlPairScanPort   = 5091
	nlPairOptUDPPort = 5092
	nlPairOptTCPPort = 5093
)

var nlPairCoreListen = fmt.Sprintf("%s:%d", nlPairCoreSide, nlPairCorePort)

// nlPairEdge is one edge of the pair: its namespace, its link to pub and
// its sipedge.
type nlPairEdge struct {
	name          string // "a", "b": also its edge_id
	ns            string
	pubIf, edgeIf string // the veth's ends: in pub, in ns
	pubIP, edgeIP string // their addresses (/30)
	e             *nlSipedge
}

// nlPairOptions is a sipp scenario: one OPTIONS to the edge itself,
// waiting 3 s for its 200. No answer fails the call.
const nlPairOptions = `<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="natlab_pair_options">
  <send retrans="500">
    <![CDATA[

      OPTIONS sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:probe@[local_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      User-Agent: natlab-probe
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" timeout="3000"/>
</scenario>
`

// TestNATLabRedisPair: a real redis-server and two sipedge processes
// sharing bindings and bans through it; kill the active one, move the
// addresses to the other; the core's MESSAGE reaches a UDP phone through
// the survivor without re-registration; a source banned on one is
// dropped by the other.
//
// Before the kill: A holds the addresses ("active, keepalives on"), B
// does not ("standby") and sends nothing toward the NAT; the phone
// registers through A, the core's MESSAGE reaches it (200); B merges the
// phone's binding from the change feed (its log, and state-dump against
// Redis). A sipp scanner over TCP from 198.18.0.254 gets that source
// banned by A; B merges the ban.
//
// After kill -9 of A and the move: the core's MESSAGE reaches the phone
// through B (seen on B's link) and is answered 200 within nlPairWithin of
// the kill; the phone sent no REGISTER since the kill (its link, and
// Kamailio); B logs "active, keepalives on" and its CRLF keepalive
// reaches the phone's NAT mapping; an OPTIONS from 198.18.0.254 reaches
// B and gets no answer (UDP), a TCP connection from it is closed unanswered,
// while an OPTIONS from 198.18.0.253 (never banned) gets 200.
func TestNATLabRedisPair(t *testing.T) {
	nlNeed(t, "sipp", "baresip", "redis-server")
	l := newNATLab(t, natLabOpts{udpTimeout: nlPairNATTimeout})
	l.coreHost = nlPairCore
	a := &nlPairEdge{name: "a", pubIf: "pea0", edgeIf: "ea0", pubIP: "10.88.1.1", edgeIP: "10.88.1.2"}
	b := &nlPairEdge{name: "b", pubIf: "peb0", edgeIf: "eb0", pubIP: "10.88.2.1", edgeIP: "10.88.2.2"}
	l.pairTopology(a, b)

	redis := l.startRedis()
	k := l.startKamailio()
	bin := buildSipedge(t, true)
	l.startPairEdge(a, bin, "")
	l.startPairEdge(b, bin, filepath.Join(a.e.dir, "flow.key"))
	t.Logf("redis-server %s:%d (pid %d); Kamailio %s:%d; sipedge A pid %d in %s, B pid %d in %s",
		nlPairCore, nlPairRedisPort, redis.cmd.Process.Pid, nlPairCore, nlKamPort, a.e.p.cmd.Process.Pid, a.ns, b.e.p.cmd.Process.Pid, b.ns)

	// Roles: A holds the addresses, B binds them in advance and waits.
	if line, ok := waitLog(a.e.p, "active, keepalives on", 5*time.Second); ok {
		t.Logf("A: %s", nlLogMsg(line))
	} else {
		t.Fatalf("A (holding %s) did not log \"active, keepalives on\"\n%s", nlEdge, tail(a.e.p.log(), 30))
	}
	if line, ok := waitLog(b.e.p, "standby", 5*time.Second); ok {
		t.Logf("B: %s", nlLogMsg(line))
	} else {
		t.Fatalf("B (not holding %s) did not log \"standby\"\n%s", nlEdge, tail(b.e.p.log(), 30))
	}
	for _, x := range []*nlPairEdge{a, b} {
		if _, ok := waitLog(x.e.p, "state merged from the shared store", 5*time.Second); !ok {
			t.Fatalf("%s did not follow the change feed (no \"state merged from the shared store\" after its subscription)\n%s",
				strings.ToUpper(x.name), tail(x.e.p.log(), 30))
		}
	}

	capPub := l.capture(l.pub, "pub0")
	capCli := l.capture(l.cli, "cli0")
	capA := l.capture(a.ns, a.edgeIf)
	capB := l.capture(b.ns, b.edgeIf)
	bStart := time.Now()

	// The phone registers through A.
	bMark := nlLogMark(b.e.p)
	phone := l.startRestartPhone("1000", "udp", false)
	ct, regAt := l.waitRegistered(k, capCli, phone, "1000", "", 1)
	m0, ok := l.phoneFlow(nlSIPPort)
	if !ok {
		t.Fatalf("no conntrack entry for baresip after it registered:\n%v", l.conntrack())
	}
	t.Logf("baresip registered through A: contact %s, Path %s; NAT mapping public %s", ct.Address, ct.Path, m0.replyDst)
	if !strings.Contains(ct.Path, "@"+nlPairCoreListen) {
		t.Errorf("the Path %q does not name the edges' floating core side %s", ct.Path, nlPairCoreListen)
	}
	uac := l.sendMessage("1000")
	if uac.status != 200 {
		t.Fatalf("through A the core's MESSAGE got %d (sipp exit %d), want 200\n%s\n%s", uac.status, uac.exit, uac.errors, tail(uac.messages, 30))
	}
	t.Logf("through A: core → baresip MESSAGE 200 after %s", uac.elapsed.Round(time.Millisecond))

	// B learns the binding from the change feed.
	merged, ok := waitLogFrom(b.e.p, bMark, func(s string) bool {
		return strings.Contains(s, "state merged from the shared store") && nlLogInt(s, "put") >= 1
	}, 10*time.Second)
	if !ok {
		t.Fatalf("B did not merge the phone's binding within 10s of the registration; B's merges: %v\n%s",
			nlLogGrep(b.e.p, "state merged"), tail(b.e.p.log(), 30))
	}
	t.Logf("B: %s (%s after the phone got its 200 REGISTER)", nlLogMsg(merged), nlLogTime(merged).Sub(regAt).Round(time.Millisecond))
	bindings, bans := l.pairDump(b)
	t.Logf("state-dump (B's config, against Redis): %d bindings %v, %d bans %v", len(bindings), bindings, len(bans), bans)
	if n := nlCount(bindings, "1000@"); n != 1 {
		t.Errorf("Redis holds %d bindings for 1000, want 1: %v", n, bindings)
	}

	// A bans a scanner; B learns the ban.
	aMark, bMark := nlLogMark(a.e.p), nlLogMark(b.e.p)
	scan := l.pairScanner()
	t.Logf("sipp scanner over TCP %s → %s: exit %d after %s", nlPairRouter, nlEdge, scan.exit, scan.elapsed.Round(time.Millisecond))
	banned, ok := waitLogFrom(a.e.p, aMark, func(s string) bool {
		return strings.Contains(s, "source banned") && strings.Contains(s, nlPairRouter)
	}, 5*time.Second)
	if !ok {
		t.Fatalf("A did not ban the scanner %s\nscanner: %s\n%s\nA:\n%s", nlPairRouter, scan.errors, tail(scan.messages, 20), tail(a.e.p.log(), 30))
	}
	t.Logf("A: %s", nlLogMsg(banned))
	bMerged, ok := waitLogFrom(b.e.p, bMark, func(s string) bool {
		return strings.Contains(s, "state merged from the shared store") && nlLogInt(s, "bans") >= 1
	}, 10*time.Second)
	if !ok {
		t.Fatalf("B did not merge A's ban within 10s; B's merges: %v", nlLogGrep(b.e.p, "state merged"))
	}
	t.Logf("B: %s (%s after A banned)", nlLogMsg(bMerged), nlLogTime(bMerged).Sub(nlLogTime(banned)).Round(time.Millisecond))
	_, bans = l.pairDump(b)
	t.Logf("state-dump: bans %v", bans)
	if nlCount(bans, nlPairRouter) != 1 {
		t.Errorf("Redis holds no ban of %s: %v", nlPairRouter, bans)
	}

	// Failover: kill A, move the addresses to B.
	regsBefore := len(k.lines("NL-REGISTER"))
	killAt := time.Now()
	a.e.p.kill9(t)
	l.pairMove(a, b)
	movedAt := time.Now()
	t.Logf("A (pid %d) killed with SIGKILL; %s and %s moved to B %s later", a.e.p.cmd.Process.Pid, nlEdge.Addr(), nlPairCoreSide,
		movedAt.Sub(killAt).Round(time.Millisecond))
	uac2 := l.sendMessage("1000")
	doneAt := uac2.start.Add(uac2.elapsed)
	t.Logf("through B: core → baresip MESSAGE: status %d (sipp exit %d) after %s, %s after the kill",
		uac2.status, uac2.exit, uac2.elapsed.Round(time.Millisecond), doneAt.Sub(killAt).Round(time.Millisecond))
	activeLine, active := waitLog(b.e.p, "active, keepalives on", 5*time.Second)
	if active {
		t.Logf("B: %s (%s after the move)", nlLogMsg(activeLine), nlLogTime(activeLine).Sub(movedAt).Round(time.Millisecond))
	}
	t.Logf("Kamailio: %s", strings.Join(append(k.lines("NL-LOOKUP"), append(k.lines("NL-REPLY"), k.lines("NL-FAILURE")...)...), " | "))
	// B keeps the phone's flow open now: a CRLF keepalive from the
	// floating address to the phone's mapping, on B's link.
	ka, kaOK := capB.waitFor(1, nlAnd(nlIsKind("crlf"), nlFrom(nlEdge.Addr().String()), func(p nlPacket) bool {
		return p.dst == m0.replyDst && p.at.After(movedAt)
	}), 3*2*time.Second)
	m1, alive := l.phoneFlow(nlSIPPort)

	// The ban through B: the banned source is dropped, a clean one answered.
	dropped := l.pairOptions(nlPairRouter, "u1")
	droppedTCP := l.pairOptions(nlPairRouter, "t1")
	clean := l.pairOptions(nlPairClean, "u1")
	cleanTCP := l.pairOptions(nlPairClean, "t1")
	for _, o := range []struct {
		what string
		r    nlUAC
	}{
		{"from " + nlPairRouter + " (banned by A) over UDP", dropped}, {"from " + nlPairRouter + " (banned by A) over TCP", droppedTCP},
		{"from " + nlPairClean + " over UDP", clean}, {"from " + nlPairClean + " over TCP", cleanTCP},
	} {
		t.Logf("OPTIONS to %s through B %s: status %d, sipp exit %d after %s%s", nlEdge, o.what, o.r.status, o.r.exit,
			o.r.elapsed.Round(time.Millisecond), nlSippReason(o.r))
	}
	recovered, _ := waitLog(b.e.p, "flow recovered from its token", 0)
	roleLines := len(nlLogGrep(a.e.p, "active, keepalives on"))
	t.Logf("A logged \"active, keepalives on\" %d times (it logs when its role changes)", roleLines)

	if b.e.p.exited() {
		t.Errorf("B exited: %v\n%s", b.e.p.err, tail(b.e.p.log(), 40))
	}
	pub := capPub.packets(t)
	cli := capCli.packets(t)
	onA := capA.packets(t)
	onB := capB.packets(t)
	later := time.Now().Add(time.Hour)
	edgeIP := nlEdge.Addr().String()
	regs := nlFilter(cli, nlAnd(nlIsKind("SIP REGISTER"), nlFrom(nlPhoneIP), nlBetween(killAt, later)))
	regsKam := k.lines("NL-REGISTER")[regsBefore:]
	msgAtPhone := nlFilter(cli, nlAnd(nlIsKind("SIP MESSAGE"), nlTo(nlPhoneIP), nlBetween(killAt, later)))
	msgFromB := nlFilter(onB, nlAnd(nlIsKind("SIP MESSAGE"), nlFrom(edgeIP), func(p nlPacket) bool { return p.dst == m0.replyDst }))
	okAtB := nlFilter(onB, nlAnd(nlIsKind("SIP 200 MESSAGE"), nlTo(edgeIP)))
	msgFromA := nlFilter(onA, nlAnd(nlIsKind("SIP MESSAGE"), nlFrom(edgeIP)))
	kaStandby := nlFilter(onB, nlAnd(nlFrom(edgeIP), nlBetween(bStart, movedAt)))
	kaB := nlFilter(onB, nlAnd(nlIsKind("crlf"), nlFrom(edgeIP), nlBetween(movedAt, later)))
	kaGot := nlFilter(cli, nlAnd(nlIsKind("crlf"), nlTo(nlPhoneIP), nlBetween(movedAt, later)))
	optsAtB := nlFilter(onB, nlAnd(nlIsKind("SIP OPTIONS"), nlFrom(nlPairRouter)))
	answersToBanned := nlFilter(onB, nlAnd(nlFrom(edgeIP), nlTo(nlPairRouter)))
	kaGap := nlMaxGap(nlFilter(pub, nlAnd(nlIsKind("crlf"), nlFrom(edgeIP), func(p nlPacket) bool { return p.dst == m0.replyDst })),
		regAt, movedAt.Add(6*time.Second))

	t.Logf("measured: kill → addresses moved %s; moved → B active %s; kill → MESSAGE at the phone %s; kill → its 200 at B %s; kill → 200 at the core %s",
		movedAt.Sub(killAt).Round(time.Millisecond), nlSince(activeLine, movedAt, active),
		nlFirst(msgAtPhone, killAt), nlFirst(okAtB, killAt), doneAt.Sub(killAt).Round(time.Millisecond))
	if kaOK {
		t.Logf("measured: first CRLF keepalive from B to %s %s after the move; longest gap in keepalives to it (pub0, registration → move + 6s) %s",
			m0.replyDst, ka.at.Sub(movedAt).Round(time.Millisecond), kaGap.Round(time.Millisecond))
	}
	t.Logf("measured: REGISTERs from the phone since the kill: %d on its link, %d at Kamailio; NAT mapping %s → %s (alive %v)",
		len(regs), len(regsKam), m0.replyDst, m1.replyDst, alive)
	t.Logf("B's link (%s) from the kill on (0 = addresses moved):\n%s", b.edgeIf, nlTimeline(nlFilter(onB, nlBetween(killAt, later)), movedAt, 40))

	// Before the kill: A carried the phone, B stayed silent.
	if len(msgFromA) == 0 {
		t.Errorf("the first MESSAGE did not pass A's link (%s)", a.edgeIf)
	}
	if len(kaStandby) > 0 {
		t.Errorf("B sent %d packets from %s while standby (it must hold back its keepalives): %v", len(kaStandby), edgeIP, kaStandby)
	}
	// After: B carries it, without a new registration.
	if uac2.status != 200 || uac2.exit != 0 {
		t.Errorf("after the failover the core's MESSAGE got %d (sipp exit %d), want 200: B did not route it over the phone's flow\n%s\n%s\nB:\n%s",
			uac2.status, uac2.exit, uac2.errors, tail(uac2.messages, 30), tail(b.e.p.log(), 40))
	} else if d := doneAt.Sub(killAt); d > nlPairWithin {
		t.Errorf("the MESSAGE's 200 came %s after the kill, want within %s", d.Round(time.Millisecond), nlPairWithin)
	}
	if len(msgAtPhone) == 0 || len(msgFromB) == 0 || len(okAtB) == 0 {
		t.Errorf("after the failover: MESSAGE at the phone %d, sent by B to the mapping %s %d, its 200 back at B %d; want each",
			len(msgAtPhone), m0.replyDst, len(msgFromB), len(okAtB))
	}
	if len(regs) > 0 || len(regsKam) > 0 {
		t.Errorf("the phone re-registered after the kill (%d REGISTERs on its link: %v; %d at Kamailio: %v)", len(regs), regs, len(regsKam), regsKam)
	}
	if !active {
		t.Errorf("B did not log \"active, keepalives on\" within 5s of holding %s\n%s", nlEdge.Addr(), tail(b.e.p.log(), 30))
	}
	if !kaOK || len(kaB) == 0 || len(kaGot) == 0 {
		t.Errorf("B's CRLF keepalives after the move: first on B's link %v, %d sent to %s, %d reached the phone; want them", kaOK, len(kaB), m0.replyDst, len(kaGot))
	}
	if !alive || m1.replyDst != m0.replyDst {
		t.Errorf("the phone's NAT mapping %s did not survive the failover (now: alive %v, %s)", m0.replyDst, alive, m1.replyDst)
	}
	// The ban, on the edge that did not make it.
	if len(optsAtB) == 0 {
		t.Errorf("no OPTIONS from %s reached B's link: the lab did not deliver it, the drop proves nothing", nlPairRouter)
	}
	if dropped.status != 0 || len(answersToBanned) > 0 {
		t.Errorf("B answered the source %s that A banned: status %d, %d packets to it on B's link: %v", nlPairRouter, dropped.status, len(answersToBanned), answersToBanned)
	}
	if droppedTCP.status != 0 {
		t.Errorf("B answered the source %s that A banned over TCP: status %d", nlPairRouter, droppedTCP.status)
	}
	for _, c := range []nlUAC{clean, cleanTCP} {
		if c.status != 200 {
			t.Errorf("B did not answer an OPTIONS from %s (never banned) with 200: status %d, sipp exit %d\n%s\n%s",
				nlPairClean, c.status, c.exit, tail(c.errors, 20), tail(c.messages, 20))
		}
	}
	// The token was minted after B started, so B cannot have recovered
	// the flow from it: it routed by the binding it merged.
	if recovered != "" {
		t.Errorf("B recovered the phone's flow from its token instead of knowing it from the shared store: %s", nlLogMsg(recovered))
	}
	phone.stop(t) // its un-REGISTER goes through B
}

// pairTopology moves pub's access address aside (pub routes it now),
// gives pub the core net address, makes the edges' namespaces with their
// links and puts the floating addresses on a.
func (l *natLab) pairTopology(a, b *nlPairEdge) {
	t := l.t
	t.Helper()
	edge := nlEdge.Addr().String()
	noRPF := []string{"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"}
	l.in(l.pub, append([]string{"sysctl", "-qw", "net.ipv4.ip_forward=1"}, noRPF...)...)
	l.in(l.pub, "ip", "addr", "del", edge+"/24", "dev", "pub0")
	l.in(l.pub, "ip", "addr", "add", nlPairRouter+"/24", "dev", "pub0")
	l.in(l.pub, "ip", "addr", "add", nlPairClean+"/24", "dev", "pub0")
	l.in(l.pub, "ip", "addr", "add", nlPairCore+"/32", "dev", "lo")
	l.in(l.rtr, "ip", "route", "add", edge+"/32", "via", nlPairRouter)
	for _, x := range []*nlPairEdge{a, b} {
		x.ns = l.addNamespace("e" + x.name)
		l.in(x.ns, append([]string{"sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"}, noRPF...)...)
		l.host("ip", "-n", l.pub, "link", "add", x.pubIf, "type", "veth", "peer", "name", x.edgeIf, "netns", x.ns)
		l.in(l.pub, "ip", "addr", "add", x.pubIP+"/30", "dev", x.pubIf)
		l.in(l.pub, "ip", "link", "set", x.pubIf, "up")
		l.in(x.ns, "ip", "addr", "add", x.edgeIP+"/30", "dev", x.edgeIf)
		l.in(x.ns, "ip", "link", "set", x.edgeIf, "up")
		l.in(x.ns, "ip", "route", "add", "default", "via", x.pubIP)
		if got := strings.TrimSpace(l.in(x.ns, "sysctl", "-n", "net.ipv4.ip_nonlocal_bind")); got != "1" {
			t.Fatalf("%s: net.ipv4.ip_nonlocal_bind = %s, want 1", x.ns, got)
		}
	}
	for _, ip := range []string{edge, nlPairCoreSide} {
		l.in(a.ns, "ip", "addr", "add", ip+"/32", "dev", "lo")
		l.in(l.pub, "ip", "route", "add", ip+"/32", "via", a.edgeIP)
	}
	t.Logf("pair lab: pub %s (Kamailio and Redis on %s, pub0 %s and %s), A in %s (%s ↔ pub %s), B in %s (%s ↔ pub %s); %s and %s on A's loopback",
		l.pub, nlPairCore, nlPairRouter, nlPairClean, a.ns, a.edgeIP, a.pubIP, b.ns, b.edgeIP, b.pubIP, edge, nlPairCoreSide)
	t.Logf("pub routes:\n%s", l.in(l.pub, "ip", "route"))
}

// pairMove moves the floating addresses from's loopback to to's and
// points pub's routes at to.
func (l *natLab) pairMove(from, to *nlPairEdge) {
	for _, ip := range []string{nlEdge.Addr().String(), nlPairCoreSide} {
		l.in(from.ns, "ip", "addr", "del", ip+"/32", "dev", "lo")
		l.in(to.ns, "ip", "addr", "add", ip+"/32", "dev", "lo")
		l.in(l.pub, "ip", "route", "replace", ip+"/32", "via", to.edgeIP)
	}
}

// startRedis runs redis-server in pub on the core net address, nothing
// saved; it returns once Redis accepts connections.
func (l *natLab) startRedis() *proc {
	t := l.t
	t.Helper()
	dir := t.TempDir()
	p := l.start(l.pub, "redis-server", dir, "redis-server", "--port", strconv.Itoa(nlPairRedisPort), "--bind", nlPairCore,
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", dir)
	if _, ok := waitLog(p, "Ready to accept connections", 10*time.Second); !ok {
		t.Fatalf("redis-server did not get ready (exited %v: %v)\n%s", p.exited(), p.err, tail(p.log(), 30))
	}
	return p
}

// startPairEdge writes x's config (access 198.18.0.1, core 10.88.9.1,
// upstream Kamailio, CRLF keepalives every 2 s, state in Redis as edge
// x.name) and starts it in x's namespace. key, if set, is the flow key
// file to use (copied to x's key_file): both edges must open each
// other's tokens.
func (l *natLab) startPairEdge(x *nlPairEdge, bin, key string) {
	t := l.t
	t.Helper()
	dir := t.TempDir()
	extra := fmt.Sprintf(`
[nat]
keepalive = "crlf"
keepalive_interval = "2s"
keepalive_failures = 3
keepalive_rate = 2000
flow_timer = "25s"
flow_timer_stream = "120s"

[state]
backend = "redis"
edge_id = %q
flush_interval = "1s"

[state.redis]
addr = "%s:%d"
`, x.name, nlPairCore, nlPairRedisPort)
	cfg := sipedgeConfig(nlEdge.String(), nlPairCoreListen, dir, edgeOpts{
		mode: "path", upstream: fmt.Sprintf("sip:%s:%d;transport=udp", nlPairCore, nlKamPort), extra: extra,
	})
	cfgPath, out, err := writeSipedgeConfig(t, bin, dir, cfg)
	if err != nil {
		t.Fatalf("sipedge check-config (%s): %v\n%s\nconfig:\n%s", x.name, err, out, cfg)
	}
	if key != "" {
		b, err := os.ReadFile(key)
		must(t, err)
		must(t, os.WriteFile(filepath.Join(dir, "flow.key"), b, 0o600))
	}
	t.Logf("sipedge %s config (after [log]):%s", strings.ToUpper(x.name), extra)
	x.e = &nlSipedge{bin: bin, dir: dir, cfgPath: cfgPath, ns: x.ns}
	l.runEdge(x.e)
}

// pairDump runs `sipedge state-dump` with x's config in x's namespace:
// what Redis holds. It returns the binding lines and the ban lines.
func (l *natLab) pairDump(x *nlPairEdge) (bindings, bans []string) {
	t := l.t
	t.Helper()
	out, err := runBounded(20*time.Second, x.e.dir, inNetns(x.ns, "env", "GORACE=atexit_sleep_ms=0", x.e.bin, "state-dump", "-config", x.e.cfgPath)...)
	if err != nil {
		t.Fatalf("sipedge state-dump -config %s (in %s): %v\n%s", x.e.cfgPath, x.ns, err, tail(out, 20))
	}
	for _, line := range strings.Split(out, "\n") {
		switch line = strings.TrimSpace(line); {
		case strings.HasPrefix(line, `{"ban":`):
			bans = append(bans, line)
		case strings.HasPrefix(line, "{"):
			bindings = append(bindings, line)
		}
	}
	return bindings, bans
}

// pairScanner runs the interop scanner scenario (OPTIONS, then REGISTER,
// User-Agent: friendly-scanner) once over TCP from pub's 198.18.0.254 to
// the access address: a connection proves its source, so the edge bans
// it.
func (l *natLab) pairScanner() nlUAC {
	sf, err := filepath.Abs("../../testdata/interop/scanner.xml")
	must(l.t, err)
	return l.pairSipp(sf, nlPairRouter, "t1", nlPairScanPort)
}

// pairOptions sends one OPTIONS from src (an address of pub) to the
// access address over transport (sipp's u1, t1); status 0: no answer.
func (l *natLab) pairOptions(src, transport string) nlUAC {
	sf := filepath.Join(l.t.TempDir(), "options.xml")
	must(l.t, os.WriteFile(sf, []byte(nlPairOptions), 0o644))
	port := nlPairOptUDPPort
	if transport != "u1" {
		port = nlPairOptTCPPort
	}
	return l.pairSipp(sf, src, transport, port)
}

// pairSipp runs scenario sf once with sipp in pub from src:port to the
// access address over transport until it ends.
func (l *natLab) pairSipp(sf, src, transport string, port int) nlUAC {
	l.t.Helper()
	dir := l.t.TempDir()
	r := nlUAC{start: time.Now()}
	out, err := runBounded(30*time.Second, dir, inNetns(l.pub, "sipp", nlEdge.String(),
		"-sf", sf, "-i", src, "-p", strconv.Itoa(port), "-t", transport, "-m", "1",
		"-timeout", "10", "-timeout_error", "-nostdin",
		"-trace_msg", "-message_file", filepath.Join(dir, "messages.log"),
		"-trace_err", "-error_file", filepath.Join(dir, "errors.log"))...)
	r.elapsed = time.Since(r.start)
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.exit = ee.ExitCode()
	case err != nil:
		l.t.Fatalf("sipp in pub from %s: %v\n%s", src, err, out)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "messages.log"))
	r.messages = string(b)
	b, _ = os.ReadFile(filepath.Join(dir, "errors.log"))
	r.errors = string(b) + "\nsipp output:\n" + out
	for _, m := range nlStatusRE.FindAllStringSubmatch(r.messages, -1) {
		if c, _ := strconv.Atoi(m[1]); c >= 200 {
			r.status = c
		}
	}
	return r
}

// nlSippReason says why a sipp run failed (", sipp: Broken pipe on TCP
// connection, ..."), from its error log; "" if it did not, or did not say.
func nlSippReason(r nlUAC) string {
	if r.exit == 0 {
		return ""
	}
	for _, why := range []string{"Broken pipe", "closed the socket", "Connection refused", "reset", "receive timeout"} {
		for _, line := range strings.Split(r.errors, "\n") {
			if i := strings.Index(line, why); i >= 0 {
				return ", sipp: " + strings.TrimSpace(line[i:])
			}
		}
	}
	return ""
}

// ------------------------------------------------------------- log lines

func nlLogLines(p *proc) []string { return strings.Split(p.log(), "\n") }

// nlLogMark is how many whole lines p logged so far: waitLogFrom's from
// for lines logged after now.
func nlLogMark(p *proc) int { return strings.Count(p.log(), "\n") }

// waitLogFrom polls p's log until a line after the first from lines
// matches; returns it.
func waitLogFrom(p *proc, from int, match func(string) bool, within time.Duration) (string, bool) {
	deadline := time.Now().Add(within)
	for {
		lines := nlLogLines(p)
		for _, line := range lines[min(from, len(lines)):] {
			if match(line) {
				return line, true
			}
		}
		if p.exited() || time.Now().After(deadline) {
			return "", false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nlLogGrep returns p's log lines containing s, their messages only.
func nlLogGrep(p *proc, s string) []string {
	var out []string
	for _, line := range nlLogLines(p) {
		if strings.Contains(line, s) {
			out = append(out, nlLogMsg(line))
		}
	}
	return out
}

var (
	nlLogTimeRE = regexp.MustCompile(`^time=(\S+)`)
	nlLogMsgRE  = regexp.MustCompile(`\bmsg=.*`)
)

// nlLogTime is when sipedge logged line (its time= field); zero if none.
func nlLogTime(line string) time.Time {
	m := nlLogTimeRE.FindStringSubmatch(line)
	if m == nil {
		return time.Time{}
	}
	at, _ := time.Parse(time.RFC3339Nano, m[1])
	return at
}

// nlLogMsg is a log line from its msg= field on.
func nlLogMsg(line string) string {
	if m := nlLogMsgRE.FindString(line); m != "" {
		return m
	}
	return line
}

// nlLogInt is the integer value of key=N in a log line; -1 if absent.
func nlLogInt(line, key string) int {
	m := regexp.MustCompile(`\b` + regexp.QuoteMeta(key) + `=(-?\d+)\b`).FindStringSubmatch(line)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func nlCount(lines []string, s string) int {
	n := 0
	for _, line := range lines {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// nlFirst is how long after t0 the first packet came ("none": none).
func nlFirst(pkts []nlPacket, t0 time.Time) string {
	if len(pkts) == 0 {
		return "none"
	}
	return pkts[0].at.Sub(t0).Round(time.Millisecond).String()
}

// nlSince is how long after t0 sipedge logged line ("none" unless ok).
func nlSince(line string, t0 time.Time, ok bool) string {
	if !ok {
		return "none"
	}
	return nlLogTime(line).Sub(t0).Round(time.Millisecond).String()
}
