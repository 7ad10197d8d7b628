//go:build interop

// The border review's attacks, replayed against the built binary in front
// of a real Kamailio, from the test's own addresses on 127.0.0.0/8 inside
// a network namespace the test makes (the spoofed ones forged with a raw
// socket there). Each must now fail.
package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/icholy/digest"
)

// rawPhone is a UDP socket that speaks SIP text.
type rawPhone struct {
	t    *testing.T
	c    *net.UDPConn
	addr netip.AddrPort
}

func dialRaw(t *testing.T, from string, to string) *rawPhone {
	t.Helper()
	c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(from+":0")), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(to)))
	must(t, err)
	t.Cleanup(func() { c.Close() })
	return &rawPhone{t: t, c: c, addr: netip.MustParseAddrPort(c.LocalAddr().String())}
}

func (p *rawPhone) send(msg string) {
	p.t.Helper()
	_, err := p.c.Write([]byte(strings.ReplaceAll(strings.ReplaceAll(msg, "\r\n", "\n"), "\n", "\r\n")))
	must(p.t, err)
}

// recv returns the next SIP response within d, or nil.
func (p *rawPhone) recv(d time.Duration) *sip.Response {
	deadline := time.Now().Add(d)
	for {
		m := p.recvAny(time.Until(deadline))
		if m == nil {
			return nil
		}
		if res, ok := m.(*sip.Response); ok {
			return res
		}
	}
}

// recvAny returns the next SIP message, request or response, within d,
// or nil.
func (p *rawPhone) recvAny(d time.Duration) sip.Message {
	buf := make([]byte, 65535)
	deadline := time.Now().Add(d)
	for {
		p.c.SetReadDeadline(deadline)
		n, err := p.c.Read(buf)
		if err != nil {
			return nil
		}
		if m, err := sip.NewParser().ParseSIP(buf[:n]); err == nil {
			return m
		} // else a CRLF keepalive, say
	}
}

func (p *rawPhone) register(user, callID string, cseq int, extra string) string {
	return fmt.Sprintf("REGISTER sip:sipedge.test SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-%s-%d;rport\nMax-Forwards: 70\n"+
		"From: <sip:%s@sipedge.test>;tag=%s\nTo: <sip:%s@sipedge.test>\nCall-ID: %s\nCSeq: %d REGISTER\n"+
		"Contact: <sip:%s@%s>\nExpires: 600\n%sContent-Length: 0\n\n",
		p.addr, callID, cseq, user, callID, user, callID, cseq, user, p.addr, extra)
}

// registerAuth registers user with its password through the edge and
// returns the final status (0 for none).
func (p *rawPhone) registerAuth(user, callID string) int {
	p.send(p.register(user, callID, 1, ""))
	res := p.recv(5 * time.Second)
	if res == nil || res.StatusCode != 401 {
		if res == nil {
			return 0
		}
		return res.StatusCode
	}
	chal, err := digest.ParseChallenge(res.GetHeader("WWW-Authenticate").Value())
	must(p.t, err)
	cred, err := digest.Digest(chal, digest.Options{Method: "REGISTER", URI: "sip:sipedge.test", Username: user, Password: "pw" + user})
	must(p.t, err)
	p.send(p.register(user, callID, 2, "Authorization: "+cred.String()+"\n"))
	if res = p.recv(5 * time.Second); res == nil {
		return 0
	}
	return res.StatusCode
}

func inDialogTo(from netip.AddrPort, method, callID, route string) string {
	return fmt.Sprintf("%s sip:1000@sipedge.test SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-%s;rport\nRoute: %s\n"+
		"Max-Forwards: 70\nFrom: <sip:1009@sipedge.test>;tag=a\nTo: <sip:1000@sipedge.test>;tag=b\nCall-ID: %s\n"+
		"CSeq: 1 %s\nContent-Type: text/plain\nContent-Length: 5\n\nhello",
		method, from, callID, route, callID, method)
}

type attackLab struct {
	k  *kamailio
	e  *sipedge
	ws string // the edge's WebSocket listener
	ns string // the namespace everything runs in
}

// startAttackLab runs Kamailio and sipedge in a namespace of their own
// and moves the calling goroutine into it (subtests call enter).
func startAttackLab(t *testing.T) *attackLab {
	needTools(t, "kamailio", "kamcmd")
	buildSipedge(t, buildRace) // outside the namespace
	ns := newNetns(t, "atk")
	enterNetns(t, ns)
	k := startKamailio(t, kamOpts{users: 10, logCalls: true, netns: ns})
	// Short stream limits, so the idle and slowloris rows take seconds.
	ws := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	e := startSipedge(t, edgeOpts{mode: "path", upstream: "sip:" + k.addr() + ";transport=udp", level: "info", ws: ws, netns: ns,
		extra: "\n[nat]\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\n"})
	return &attackLab{k: k, e: e, ws: ws, ns: ns}
}

// enter moves a subtest's goroutine into the lab's namespace.
func (l *attackLab) enter(t *testing.T) { enterNetns(t, l.ns) }

func TestInteropAttacks(t *testing.T) {
	l := startAttackLab(t)
	victim := dialRaw(t, "127.0.0.1", l.e.udp)
	if code := victim.registerAuth("1000", "victim-reg"); code != 200 {
		t.Fatalf("victim registered with %d", code)
	}
	var path string
	for _, c := range l.k.ulDump(t) {
		if strings.Contains(c.AOR, "1000") {
			path = c.Path
		}
	}
	if path == "" {
		t.Fatal("no Path for the victim at Kamailio")
	}
	token := strings.TrimPrefix(path[:strings.Index(path, "@")], "<sip:")

	// A host anywhere on the Internet to relay to.
	target, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.99:0")))
	must(t, err)
	defer target.Close()
	gotAtTarget := func() bool {
		target.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 4096)
		_, err := target.Read(buf)
		return err == nil
	}
	mallory := dialRaw(t, "127.0.0.2", l.e.udp)

	t.Run("relay through the core", func(t *testing.T) {
		l.enter(t)
		for _, m := range []string{"MESSAGE", "OPTIONS"} {
			mallory.send(inDialogTo(mallory.addr, m, "relay-"+m, fmt.Sprintf("<sip:%s;lr>", target.LocalAddr())))
			if res := mallory.recv(3 * time.Second); res == nil || res.StatusCode != 403 {
				t.Fatalf("%s: answer %v, want 403", m, res)
			}
		}
		mallory.send(inDialogTo(mallory.addr, "ACK", "relay-ack", fmt.Sprintf("<sip:%s;lr>", target.LocalAddr())))
		if gotAtTarget() {
			t.Fatal("something reached the relay target")
		}
	})
	t.Run("relay through the core over TCP", func(t *testing.T) {
		l.enter(t)
		c, err := net.Dial("tcp", l.e.tcp)
		must(t, err)
		defer c.Close()
		from := netip.MustParseAddrPort(c.LocalAddr().String())
		msg := strings.ReplaceAll(inDialogTo(from, "MESSAGE", "relay-tcp", fmt.Sprintf("<sip:%s;transport=tcp;lr>", target.LocalAddr())), "SIP/2.0/UDP", "SIP/2.0/TCP")
		_, err = c.Write([]byte(strings.ReplaceAll(msg, "\n", "\r\n")))
		must(t, err)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 4096)
		if n, err := c.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "SIP/2.0 403") {
			t.Fatalf("answer %q, %v; want 403", buf[:n], err)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		l.enter(t)
		p := dialRaw(t, "127.0.0.4", l.e.udp)
		p.send(strings.Replace(p.register("1004", "v7", 1, ""), "SIP/2.0\n", "SIP/7.0\n", 1))
		if res := p.recv(3 * time.Second); res == nil || res.StatusCode != 505 || res.SipVersion != "SIP/2.0" {
			t.Fatalf("SIP/7.0 answered %v", res)
		}
		for _, name := range []string{"baddate", "escruri", "multi01", "regbadct"} {
			raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "torture", name+".sip"))
			must(t, err)
			p.send(string(raw))
			if res := p.recv(3 * time.Second); res == nil || res.StatusCode != 400 {
				t.Fatalf("RFC 4475 %s answered %v, want 400 from the edge", name, res)
			}
		}
	})
	t.Run("token replay", func(t *testing.T) {
		l.enter(t)
		route := fmt.Sprintf("<sip:%s;lr>, <sip:%s@%s;lr>", l.k.addr(), token, l.e.core)
		mallory.send(inDialogTo(mallory.addr, "MESSAGE", "replay", route))
		if res := mallory.recv(3 * time.Second); res == nil || res.StatusCode != 403 {
			t.Fatalf("answer %v, want 403", res)
		}
		if m := victim.recvAny(time.Second); m != nil {
			t.Fatalf("the victim got something:\n%s", m)
		}
	})
	t.Run("route bounce", func(t *testing.T) {
		l.enter(t)
		hop := fmt.Sprintf("<sip:%s;lr>, <sip:%s;lr>", l.k.addr(), l.e.udp)
		mallory.send(inDialogTo(mallory.addr, "MESSAGE", "bounce", strings.Repeat(hop+", ", 10)+hop))
		if res := mallory.recv(3 * time.Second); res == nil || res.StatusCode != 403 {
			t.Fatalf("answer %v, want 403", res)
		}
	})
	t.Run("lockout by a spoofed spray", func(t *testing.T) {
		l.enter(t)
		forged := `Authorization: Digest username="1001", realm="sipedge.test", nonce="forged", uri="sip:sipedge.test", response="0123456789abcdef0123456789abcdef"` + "\n"
		sp := newSpoofer(t)
		dst := netip.MustParseAddrPort(l.e.udp)
		for i := range 25 {
			s := &rawPhone{addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 5, byte(i + 1)}), 5060)}
			for cseq, auth := range []string{"", forged} {
				msg := strings.ReplaceAll(s.register("1001", fmt.Sprintf("spray-%d", i), cseq+1, auth), "\n", "\r\n")
				must(t, sp.send(s.addr, dst, []byte(msg)))
			}
		}
		owner := dialRaw(t, "127.0.0.1", l.e.udp)
		if code := owner.registerAuth("1001", "owner-reg"); code != 200 {
			t.Fatalf("the owner got %d while others sprayed its AOR", code)
		}
	})
	t.Run("ban a spoofed victim", func(t *testing.T) {
		l.enter(t)
		// From 127.0.6.1, forged: junk, a scanner's OPTIONS and failed
		// passwords. The real 127.0.6.1 then registers as if nothing was.
		sp := newSpoofer(t)
		dst := netip.MustParseAddrPort(l.e.udp)
		from := netip.MustParseAddrPort("127.0.6.1:5060")
		// What the edge sends back to the forged source lands here: proof
		// the forged datagrams reached it.
		back, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(from))
		must(t, err)
		defer back.Close()
		spoof := func(msg string) {
			must(t, sp.send(from, dst, []byte(strings.ReplaceAll(msg, "\n", "\r\n"))))
		}
		for range 12 {
			spoof("\x16\x03\x01 junk that is not SIP at all\n\n")
		}
		spoof(fmt.Sprintf("OPTIONS sip:x@sipedge.test SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-scan\nMax-Forwards: 70\n"+
			"From: <sip:100@x>;tag=1\nTo: <sip:x@sipedge.test>\nCall-ID: scan\nCSeq: 1 OPTIONS\nUser-Agent: friendly-scanner\nContent-Length: 0\n\n", from))
		bad := `Authorization: Digest username="1002", realm="sipedge.test", nonce="x", uri="sip:sipedge.test", response="0123456789abcdef0123456789abcdef"` + "\n"
		fake := &rawPhone{addr: from}
		for i := range 11 {
			spoof(fake.register("1002", fmt.Sprintf("guess-%d", i), 2, bad))
		}
		back.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 65535)
		if n, err := back.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "SIP/2.0 ") {
			t.Fatalf("no answer reached the forged source (%v): the spoofed datagrams did not reach the edge", err)
		}
		real := dialRaw(t, "127.0.6.1", l.e.udp)
		if code := real.registerAuth("1002", "real-reg"); code != 200 {
			t.Fatalf("the spoofed victim got %d", code)
		}
	})
	t.Run("idle connections and slowloris", func(t *testing.T) {
		l.enter(t)
		// From many addresses, each within its connection budget.
		const idle = 300
		conns := make([]net.Conn, 0, idle)
		for i := range idle {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 7+byte(i/250), 1+byte(i%250))}}
			c, err := d.Dial("tcp", l.e.tcp)
			must(t, err)
			defer c.Close()
			conns = append(conns, c)
		}
		slowDialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 9, 1)}}
		slow, err := slowDialer.Dial("tcp", l.e.tcp)
		must(t, err)
		defer slow.Close()
		slowDone := make(chan time.Duration, 1)
		go func() {
			start := time.Now()
			msg := []byte("REGISTER sip:sipedge.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK-slow\r\n")
			for i := 0; ; i = (i + 1) % len(msg) {
				if _, err := slow.Write(msg[i : i+1]); err != nil {
					slowDone <- time.Since(start)
					return
				}
				time.Sleep(100 * time.Millisecond) // the attacker's pace, not synchronisation
				if time.Since(start) > 10*time.Second {
					slowDone <- 0
					return
				}
			}
		}()
		// A real phone is still served meanwhile.
		tcp, err := net.Dial("tcp", l.e.tcp)
		must(t, err)
		defer tcp.Close()
		local := tcp.LocalAddr().String()
		_, err = fmt.Fprintf(tcp, "REGISTER sip:sipedge.test SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bK-tcpreal\r\nMax-Forwards: 70\r\n"+
			"From: <sip:1003@sipedge.test>;tag=t\r\nTo: <sip:1003@sipedge.test>\r\nCall-ID: tcpreal\r\nCSeq: 1 REGISTER\r\n"+
			"Contact: <sip:1003@%s;transport=tcp>\r\nContent-Length: 0\r\n\r\n", local, local)
		must(t, err)
		tcp.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 4096)
		if n, err := tcp.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "SIP/2.0 401") {
			t.Fatalf("a real TCP REGISTER beside %d idle connections: %q, %v", idle, buf[:n], err)
		}
		// Every idle connection is closed by the edge within its idle time
		// (and the header timeout, since none sent a message).
		start := time.Now()
		for i, c := range conns {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(buf); err == nil {
				t.Fatalf("idle connection %d got data", i)
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("idle connection %d still open after %v", i, time.Since(start))
			}
		}
		if d := <-slowDone; d == 0 {
			t.Fatal("the slowloris connection was never closed")
		} else {
			t.Logf("%d idle connections closed by %v; slowloris closed after %v", idle, time.Since(start).Round(100*time.Millisecond), d.Round(100*time.Millisecond))
		}
	})
	t.Run("WebSocket", func(t *testing.T) {
		l.enter(t)
		// An idle connection to the WS port holds up no one's upgrade; no
		// sip subprotocol, no upgrade; a malformed message costs only
		// itself; a REGISTER in a binary frame reaches the core.
		idle, err := net.Dial("tcp", l.ws)
		must(t, err)
		defer idle.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, _, _, err := (ws.Dialer{}).Dial(ctx, "ws://"+l.ws); err == nil {
			t.Fatal("upgraded a client that offered no sip subprotocol")
		}
		conn, _, _, err := (ws.Dialer{Protocols: []string{"sip"}}).Dial(ctx, "ws://"+l.ws)
		if err != nil {
			t.Fatalf("upgrade beside an idle connection: %v", err)
		}
		defer conn.Close()
		must(t, wsutil.WriteClientText(conn, []byte("not SIP at all\r\n\r\n")))
		from := netip.MustParseAddrPort(conn.LocalAddr().String())
		reg := strings.ReplaceAll(strings.ReplaceAll((&rawPhone{addr: from}).register("1006", "ws-reg", 1, ""), "SIP/2.0/UDP", "SIP/2.0/WS"), "\n", "\r\n")
		must(t, wsutil.WriteClientBinary(conn, []byte(reg)))
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		data, err := wsutil.ReadServerText(conn)
		if err != nil || !strings.HasPrefix(string(data), "SIP/2.0 401") {
			t.Fatalf("REGISTER over WS: %q, %v; want Kamailio's 401", data, err)
		}
	})
	t.Run("reflection", func(t *testing.T) {
		l.enter(t)
		// An INVITE "from" a victim who never ACKs gets one answer.
		refl := dialRaw(t, "127.0.0.3", l.e.udp)
		inv := fmt.Sprintf("INVITE sip:1000@sipedge.test SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-refl;rport\nMax-Forwards: 70\n"+
			"From: <sip:x@sipedge.test>;tag=r\nTo: <sip:1000@sipedge.test>\nCall-ID: refl\nCSeq: 1 INVITE\nContent-Length: 0\n\n", refl.addr)
		refl.send(inv)
		answers, bytes := 0, 0
		for {
			res := refl.recv(4 * time.Second)
			if res == nil {
				break
			}
			answers++
			bytes += len(res.String())
		}
		if answers != 1 || bytes > 3*len(inv) {
			t.Fatalf("%d answers, %d bytes, to one INVITE of %d bytes", answers, bytes, len(inv))
		}
		t.Logf("one INVITE of %d B: %d answer of %d B", len(inv), answers, bytes)
	})
}

// The spoofed-source flood of the review, against the built binary (no
// race detector, so its figures are the binary's): complete OPTIONS from
// a different forged address each at the access side and at the
// core-side listener. Resident memory peaks at most 64 MiB above idle,
// and the edge keeps registering phones (one that retransmits, as phones
// do: a backlog of the flood may still be read when it starts).
func TestInteropAttackFloodRSS(t *testing.T) {
	needTools(t, "kamailio", "kamcmd")
	bin := buildSipedge(t, false)
	ns := newNetns(t, "flood")
	enterNetns(t, ns)
	k := startKamailio(t, kamOpts{users: 10, netns: ns})
	dir := t.TempDir()
	access := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	core := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfgPath, out, err := writeSipedgeConfig(t, bin, dir, sipedgeConfig(access, core, dir,
		edgeOpts{mode: "path", upstream: "sip:" + k.addr() + ";transport=udp", level: "info"}))
	if err != nil {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	p := runSipedge(t, procOpts{logPath: filepath.Join(dir, "sipedge.log"), netns: ns}, bin, cfgPath)
	waitSIP(t, p, access)
	rss := func() int64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
		must(t, err)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				var kb int64
				fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
				return kb << 10
			}
		}
		t.Fatal("no VmRSS")
		return 0
	}
	idle := rss()
	var peak int64
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			peak = max(peak, rss())
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	sp := newSpoofer(t)
	const n = 500_000
	start := time.Now()
	for _, side := range []struct {
		dst  string
		net8 byte
	}{{access, 20}, {core, 60}} {
		dst := netip.MustParseAddrPort(side.dst)
		for i := range n {
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, side.net8 + byte(i>>16), byte(i >> 8), byte(i)}), 5060)
			msg := fmt.Sprintf("OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-f%d;rport\r\n"+
				"Max-Forwards: 70\r\nFrom: <sip:x@sipedge.test>;tag=%d\r\nTo: <sip:edge@127.0.0.1>\r\nCall-ID: flood-%d\r\n"+
				"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", src, i, i, i)
			if err := sp.send(src, dst, []byte(msg)); err != nil {
				t.Fatal(err)
			}
		}
	}
	sent := time.Since(start)
	phone := dialRaw(t, "127.0.0.1", access)
	code := 0
	for try := 0; try < 5 && code != 200; try++ { // RFC 3261 Timer E, roughly
		code = phone.registerAuth("1005", fmt.Sprintf("after-flood-%d", try))
	}
	if code != 200 {
		t.Fatalf("a phone registered with %d right after the flood", code)
	}
	close(stop)
	<-sampled
	after := rss()
	t.Logf("%d spoofed OPTIONS per side in %v: RSS idle %d MiB, peak %+d MiB, right after %+d MiB",
		n, sent.Round(time.Millisecond), idle>>20, (peak-idle)>>20, (after-idle)>>20)
	if peak-idle > 64<<20 {
		t.Errorf("RSS peaked %d MiB above idle", (peak-idle)>>20)
	}
	// What the process keeps is the Go runtime's: freed pages it returns
	// to the system only slowly. The live heap going back to idle is
	// checked in-process (edge: TestSpoofedOptionsFloodMemory).
	t.Logf("RSS %+d MiB above idle once the phone registered", (rss()-idle)>>20)
}
