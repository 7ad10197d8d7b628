package edge_test

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"golang.org/x/net/ipv4"

	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// src returns 127.a.b.c as a source address for a simulated host.
func src(a, b, c byte) netip.Addr { return netip.AddrFrom4([4]byte{127, a, b, c}) }

// registerRetrying sends msg and, like a real UDP phone (RFC 3261 Timer
// E), sends it again when no final answer comes; it returns the final
// response or nil.
func registerRetrying(p *edgetest.Phone, msg string, tries int, every time.Duration) *sip.Response {
	for range tries {
		p.Send(msg)
		deadline := time.Now().Add(every)
		for time.Now().Before(deadline) {
			m, err := p.Recv(time.Until(deadline))
			if err != nil {
				break
			}
			if res, ok := m.(*sip.Response); ok && res.StatusCode >= 200 {
				return res
			}
		}
	}
	return nil
}

// registerWithAuth registers user the way a phone does: REGISTER, 401,
// REGISTER with credentials, 200; retransmitting on silence.
func registerWithAuth(p *edgetest.Phone, user, pw string, cseq int) bool {
	res := registerRetrying(p, p.Register(edgetest.Reg{User: user, CSeq: cseq}), 4, time.Second)
	if res == nil || res.StatusCode != 401 {
		return false
	}
	chal, err := digest.ParseChallenge(res.GetHeader("WWW-Authenticate").Value())
	if err != nil {
		return false
	}
	cred, err := digest.Digest(chal, digest.Options{Method: "REGISTER", URI: "sip:example.com", Username: user, Password: pw})
	if err != nil {
		return false
	}
	res = registerRetrying(p, p.Register(edgetest.Reg{User: user, CSeq: cseq + 1, Extra: "Authorization: " + cred.String()}), 4, time.Second)
	return res != nil && res.StatusCode == 200
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// One source floods REGISTERs at 20,000/s for 5 s while 200 phones on
// other addresses register and refresh: the phones get through and the
// core sees little of the flood. The flooder never showed it receives
// what is sent to it (it never answers a challenge), so over UDP it may
// be anyone's spoofed address: it is dropped datagram by datagram, never
// banned.
func TestFloodDoesNotHurtLegitimatePhones(t *testing.T) {
	const phones = 200
	users := map[string]string{}
	for i := range phones {
		users["phone"+strconv.Itoa(i)] = "pw" + strconv.Itoa(i)
	}
	// The core authenticates, as any real one does: the flooder's
	// REGISTERs only ever earn a 401.
	core := upstreamtest.Start(t, upstreamtest.Options{Users: users})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		c.RateLimit.FloodWindow = 2 * time.Second
	})
	heapBefore := heapInUse()

	flooder := edgetest.DialFrom(t, "udp", src(0, 0, 2), e.UDP)
	rate, dur := 20_000, 5*time.Second
	if raceEnabled {
		rate = 5_000 // the detector's cost, not the edge's
	}
	var sent atomic.Int64
	stop := make(chan struct{})
	floodDone := make(chan struct{})
	go func() {
		defer close(floodDone)
		tmpl := flooder.Register(edgetest.Reg{User: "flood", CallID: "flood-XXXXXXXX"})
		tmpl = strings.ReplaceAll(tmpl, "\n", "\r\n")
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		start := time.Now()
		for i := 0; time.Since(start) < dur; {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			// Catch up to rate × elapsed, in whatever ticks we got.
			for want := int(time.Since(start).Seconds() * float64(rate)); i < want; i++ {
				id := fmt.Sprintf("%08d", i)
				flooder.SendRaw(strings.ReplaceAll(tmpl, "XXXXXXXX", id))
				sent.Add(1)
			}
		}
	}()

	var ok atomic.Int64
	var wg sync.WaitGroup
	for i := range phones {
		wg.Go(func() {
			p := edgetest.DialFrom(t, "udp", src(0, 1, byte(i+1)), e.UDP)
			for cseq := 1; cseq <= 3; cseq += 2 { // register, then refresh
				if registerWithAuth(p, "phone"+strconv.Itoa(i), "pw"+strconv.Itoa(i), cseq) {
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	<-floodDone
	close(stop)

	fromFlood := 0
	for _, r := range core.Requests() {
		if strings.HasPrefix(r.CallID().Value(), "flood-") {
			fromFlood++
		}
	}
	success := float64(ok.Load()) / (2 * phones) * 100
	heapAfter := heapInUse()
	cfg := ratelimit.DefaultConfig()
	maxAtCore := cfg.RequestBurst + int(cfg.RequestRate*dur.Seconds())
	t.Logf("flood: %d REGISTERs sent in %v; core saw %d of them (limit %d); legit success %.2f%% (%d/%d); heap %+.1f MiB",
		sent.Load(), dur, fromFlood, maxAtCore, success, ok.Load(), 2*phones, float64(int64(heapAfter)-int64(heapBefore))/(1<<20))
	if success < 99 {
		t.Errorf("legitimate success %.2f%% < 99%%", success)
	}
	if fromFlood > maxAtCore {
		t.Errorf("core saw %d flood REGISTERs, more than the configured %d", fromFlood, maxAtCore)
	}
	if e.Limiter().Banned(src(0, 0, 2)) {
		t.Error("an unproven UDP source was banned")
	}
	if grow := int64(heapAfter) - int64(heapBefore); grow > 128<<20 {
		t.Errorf("heap grew %d MiB", grow>>20)
	}
}

// A million distinct source addresses, one datagram each, sent from one
// socket with the source set per packet (IP_PKTINFO; all of 127/8 is
// local): the limiter's state and the heap stay within their bounds.
func TestSpoofedSourcesStayBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("1M datagrams; not in -short")
	}
	core := upstreamtest.Start(t, upstreamtest.Options{})
	const maxSources = 10_000
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		c.RateLimit.MaxSources = maxSources
	})
	heapBefore := heapInUse()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c)
	dst := net.UDPAddrFromAddrPort(e.UDP)
	payload := []byte("OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKspoof\r\n\r\n")
	const n = 1_000_000
	cm := &ipv4.ControlMessage{}
	for i := range n {
		cm.Src = net.IPv4(127, byte(1+i>>16), byte(i>>8), byte(i))
		if _, err := pc.WriteTo(payload, cm, dst); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
	}
	// Every datagram has been read once the edge answers a probe sent
	// after them (loopback keeps order into one socket).
	probe := edgetest.Dial(t, "udp", e.UDP)
	if res := registerRetrying(probe, probe.Register(edgetest.Reg{User: "probe"}), 10, 3*time.Second); res == nil {
		t.Fatal("edge stopped answering after the spoofed flood")
	}
	st := e.Limiter().Stats()
	heapAfter := heapInUse()
	grow := int64(heapAfter) - int64(heapBefore)
	t.Logf("1M spoofed sources: limiter tracks %d (cap %d), overflow hits %d; heap %+.1f MiB",
		st.Sources, maxSources, st.OverflowHits, float64(grow)/(1<<20))
	if st.Sources > maxSources+1 {
		t.Errorf("limiter tracks %d sources, cap %d", st.Sources, maxSources)
	}
	if grow > 64<<20 {
		t.Errorf("heap grew %d MiB for 1M spoofed sources", grow>>20)
	}
}

// Repeated REGISTERs with wrong credentials get the source banned; a
// phone on another address with the right password is unaffected.
func TestPasswordGuesserIsBanned(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{Users: map[string]string{"alice": "right", "bob": "bobpw"}})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		c.RateLimit.AuthFailures = 5
	})
	guesser := edgetest.DialFrom(t, "udp", src(0, 0, 3), e.UDP)
	chal := challenge(t, guesser, "alice")
	start := time.Now()
	banned := -1
	for i := range 20 {
		cred, _ := digest.Digest(chal, digest.Options{Method: "REGISTER", URI: "sip:example.com", Username: "alice", Password: "guess" + strconv.Itoa(i)})
		guesser.Send(guesser.Register(edgetest.Reg{User: "alice", CSeq: 10 + i, Extra: "Authorization: " + cred.String()}))
		if _, err := guesser.Recv(2 * time.Second); err != nil {
			banned = i
			break
		}
	}
	if banned < 0 || !e.Limiter().Banned(src(0, 0, 3)) {
		t.Fatal("the guesser was never banned")
	}
	t.Logf("banned after %d wrong passwords, %v", banned, time.Since(start).Round(time.Millisecond))
	if banned > 5 {
		t.Errorf("banned after %d failures, configured 5", banned)
	}
	// Bob, elsewhere, registers with his password.
	bob := edgetest.DialFrom(t, "udp", src(0, 0, 4), e.UDP)
	bc := challenge(t, bob, "bob")
	cred, _ := digest.Digest(bc, digest.Options{Method: "REGISTER", URI: "sip:example.com", Username: "bob", Password: "bobpw"})
	bob.Send(bob.Register(edgetest.Reg{User: "bob", CSeq: 2, Extra: "Authorization: " + cred.String()}))
	if res := bob.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("bob got %d", res.StatusCode)
	}
}

func challenge(t *testing.T, p *edgetest.Phone, user string) *digest.Challenge {
	t.Helper()
	p.Send(p.Register(edgetest.Reg{User: user, CSeq: 1}))
	res := p.MustRecvResponse(wait)
	if res.StatusCode != 401 {
		t.Fatalf("got %d, want 401", res.StatusCode)
	}
	chal, err := digest.ParseChallenge(res.GetHeader("WWW-Authenticate").Value())
	if err != nil {
		t.Fatal(err)
	}
	return chal
}

// 300 phones behind one office address (different ports), registered,
// all re-register with digest auth within 2 s after an outage: all pass.
func TestOfficeReRegistersAfterOutage(t *testing.T) {
	const phones = 300
	users := map[string]string{}
	for i := range phones {
		users["ext"+strconv.Itoa(i)] = "pw" + strconv.Itoa(i)
	}
	core := upstreamtest.Start(t, upstreamtest.Options{Users: users})
	e := edgetest.Start(t, core.URI("udp"), nil)
	office := src(0, 0, 5)
	ps := make([]*edgetest.Phone, phones)
	register := func(i, cseq int) bool {
		return registerWithAuth(ps[i], "ext"+strconv.Itoa(i), "pw"+strconv.Itoa(i), cseq)
	}
	for i := range phones {
		ps[i] = edgetest.DialFrom(t, "udp", office, e.UDP)
	}
	// Before the outage the phones registered over the morning, a few
	// at a time.
	for i := range phones {
		if !register(i, 1) {
			t.Fatalf("phone %d could not register before the outage", i)
		}
	}
	// The link comes back: every phone re-registers at once.
	start := time.Now()
	var ok atomic.Int64
	var wg sync.WaitGroup
	for i := range phones {
		wg.Go(func() {
			if register(i, 10) {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	t.Logf("%d/%d office phones re-registered in %v", ok.Load(), phones, time.Since(start).Round(time.Millisecond))
	if ok.Load() != phones {
		t.Fatalf("only %d of %d office phones re-registered", ok.Load(), phones)
	}
	if e.Limiter().Banned(office) {
		t.Fatal("the office got banned")
	}
}

// Someone hammering a victim's AOR with REGISTERs (no credentials needed
// to be counted) must not lock the victim's own refreshes out.
func TestAORBudgetCannotLockOutTheOwner(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{Users: map[string]string{"victim": "pw"}})
	e := edgetest.Start(t, core.URI("udp"), nil)
	victim := edgetest.DialFrom(t, "udp", src(0, 3, 1), e.UDP)
	if !registerWithAuth(victim, "victim", "pw", 1) {
		t.Fatal("victim could not register")
	}
	attacker := edgetest.DialFrom(t, "udp", src(0, 3, 2), e.UDP)
	for i := range 40 { // well past register_burst (20) for the AOR
		attacker.Send(attacker.Register(edgetest.Reg{User: "victim", CSeq: 100 + i, CallID: "atk-" + strconv.Itoa(i)}))
	}
	for cseq := 10; cseq < 20; cseq += 2 {
		if !registerWithAuth(victim, "victim", "pw", cseq) {
			t.Fatalf("victim's refresh %d was refused", cseq)
		}
	}
}

// Spoofed sources spraying REGISTERs for an AOR, with no credentials or
// with made-up ones, never spend its budget: the owner's very first
// registration with the right password goes through at once.
func TestSprayCannotLockOutANewOwner(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{Users: map[string]string{"victim": "pw"}})
	e := edgetest.Start(t, core.URI("udp"), nil)
	forged := `Authorization: Digest username="victim", realm="sipedge.test", nonce="forged", uri="sip:example.com", response="0123456789abcdef0123456789abcdef"`
	for i := range 30 { // 60 REGISTERs for the AOR, three times its burst
		spray := edgetest.DialFrom(t, "udp", src(0, 4, byte(i+1)), e.UDP)
		spray.Send(spray.Register(edgetest.Reg{User: "victim", CallID: "spray-" + strconv.Itoa(i)}))
		spray.MustRecvResponse(wait)
		spray.Send(spray.Register(edgetest.Reg{User: "victim", CSeq: 2, CallID: "spray-" + strconv.Itoa(i), Extra: forged}))
		spray.MustRecvResponse(wait)
	}
	victim := edgetest.DialFrom(t, "udp", src(0, 4, 200), e.UDP)
	if !registerWithAuth(victim, "victim", "pw", 1) {
		t.Fatal("the owner was locked out by the spray")
	}
	// The forged credentials came from sources never challenged with that
	// nonce: none of them was scored, let alone banned.
	for i := range 30 {
		if e.Limiter().Banned(src(0, 4, byte(i+1))) {
			t.Fatalf("spraying source %d banned on spoofable evidence", i)
		}
	}
}
