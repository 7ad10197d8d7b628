package edge_test

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// Complete, well-formed OPTIONS from a different spoofed source each, as
// fast as one socket sends them, at the access side and at the core-side
// listener: the heap must peak at most 64 MiB above idle, nothing of it
// stay afterwards, and a phone register right after. Bounded: n
// datagrams per side. What keeps it bounded: unproven_rate caps what
// spoofed sources together hand sipgo, their transactions end once
// answered, and sipgo's read loop pauses before each restart so no
// request in flight makes it open a socket of its own.
func TestSpoofedOptionsFloodMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("hundreds of thousands of datagrams; not in -short")
	}
	if raceEnabled {
		t.Skip("heap figures mean nothing under -race; make unit runs this without it")
	}
	n := 300_000
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	idle := heapInUse()

	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()

	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c)
	cm := &ipv4.ControlMessage{}
	start := time.Now()
	for _, side := range []struct {
		name string
		dst  *net.UDPAddr
		net  byte // second octet of the spoofed 127/8 sources
	}{{"access", net.UDPAddrFromAddrPort(e.UDP), 20}, {"core side", net.UDPAddrFromAddrPort(e.CoreAddr()), 60}} {
		for i := range n {
			cm.Src = net.IPv4(127, side.net+byte(i>>16), byte(i>>8), byte(i))
			msg := fmt.Sprintf("OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP %s:5060;branch=z9hG4bK-f%d;rport\r\n"+
				"Max-Forwards: 70\r\nFrom: <sip:x@example.com>;tag=%d\r\nTo: <sip:edge@127.0.0.1>\r\nCall-ID: flood-%d\r\n"+
				"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", cm.Src, i, i, i)
			if _, err := pc.WriteTo([]byte(msg), cm, side.dst); err != nil {
				t.Fatalf("%s datagram %d: %v", side.name, i, err)
			}
		}
	}
	sent := time.Since(start)
	// Every datagram has been read once the edge answers a registration
	// sent after them (loopback keeps order into one socket).
	probe := edgetest.Dial(t, "udp", e.UDP)
	if res := registerRetrying(probe, probe.Register(edgetest.Reg{User: "probe"}), 10, 3*time.Second); res == nil || res.StatusCode != 200 {
		t.Fatal("a phone could not register after the flood")
	}
	close(stop)
	<-sampled
	after := heapInUse()
	peakGrow := int64(peak.Load()) - int64(idle)
	// What the flood left goes: the limiter's idle entries with its 5 s
	// sweep (which also compacts its maps), and sipgo's memory of the
	// flood's sources when its read loop restarts once the flood has been
	// quiet for quietTicks. What stays is the room sipgo's connection-pool
	// map grew to (Go maps do not shrink; at most recycleAfter sources'
	// worth): a MiB or two, however long the flood. Sampled with a
	// deadline.
	settled := time.Now()
	kept := int64(after) - int64(idle)
	for deadline := time.Now().Add(30 * time.Second); kept > 3<<20 && time.Now().Before(deadline); {
		time.Sleep(250 * time.Millisecond) // sampling the heap while the sweep runs on its own clock
		kept = int64(heapInUse()) - int64(idle)
	}
	t.Logf("%d spoofed OPTIONS per side in %v: heap idle %.1f MiB, peak %+.1f MiB, right after %+.1f MiB, %+.1f MiB %v later",
		n, sent.Round(time.Millisecond), float64(idle)/(1<<20), float64(peakGrow)/(1<<20),
		float64(int64(after)-int64(idle))/(1<<20), float64(kept)/(1<<20), time.Since(settled).Round(100*time.Millisecond))
	if peakGrow > 64<<20 {
		t.Errorf("heap peaked %d MiB above idle", peakGrow>>20)
	}
	if kept > 6<<20 {
		t.Errorf("heap kept %d MiB after the flood", kept>>20)
	}
}

// Complete REGISTERs from a different spoofed source each reach the
// edge's own UDP transactions (edge/udptx) and, past the limiter, the
// core, which challenges them all. Nothing may stay: no binding, and no
// transaction once the core's answers are absorbed (Timer K); a phone is
// answered right after. (The heap is not measured here: the core in this
// process keeps every request it got. TestSpoofedOptionsFloodMemory
// measures the edge's own.)
func TestSpoofedRegisterFloodLeavesNoTransactions(t *testing.T) {
	if testing.Short() {
		t.Skip("a hundred thousand datagrams; not in -short")
	}
	n := 100_000
	if raceEnabled {
		n = 20_000
	}
	core := upstreamtest.Start(t, upstreamtest.Options{Users: map[string]string{"alice": "secret"}})
	e := edgetest.Start(t, core.URI("udp"), nil)
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c)
	cm := &ipv4.ControlMessage{}
	dst := net.UDPAddrFromAddrPort(e.UDP)
	for i := range n {
		cm.Src = net.IPv4(127, 30+byte(i>>16), byte(i>>8), byte(i))
		msg := fmt.Sprintf("REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP %s:5060;branch=z9hG4bK-r%d;rport\r\n"+
			"Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=%d\r\nTo: <sip:alice@example.com>\r\nCall-ID: reg-flood-%d\r\n"+
			"CSeq: 1 REGISTER\r\nContact: <sip:alice@%s:5060>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n", cm.Src, i, i, i, cm.Src)
		if _, err := pc.WriteTo([]byte(msg), cm, dst); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
	}
	// Every datagram has been read once the edge answers a REGISTER sent
	// after them (loopback keeps order into one socket).
	probe := edgetest.Dial(t, "udp", e.UDP)
	// Challenged, or told to come back while the flood's forwards still
	// hold the in-flight slots (under -race).
	res := registerRetrying(probe, probe.Register(edgetest.Reg{User: "alice"}), 10, 3*time.Second)
	if res == nil || res.StatusCode != 401 && (res.StatusCode != 503 || res.GetHeader("Retry-After") == nil) {
		t.Fatalf("a phone was not answered after the flood: %v", res)
	}
	// The core's health probes (OPTIONS, a transaction each) go on: one
	// running and one absorbing at most.
	access, toCore := e.Transactions()
	for deadline := time.Now().Add(20 * time.Second); access > 0 || toCore > 2; access, toCore = e.Transactions() {
		if time.Now().After(deadline) {
			t.Fatalf("%d access and %d core-side transactions stayed after the flood", access, toCore)
		}
		time.Sleep(50 * time.Millisecond) // polling a count with a deadline
	}
	if b := e.Bindings().Len(); b != 0 {
		t.Fatalf("%d bindings from unanswered challenges", b)
	}
	t.Logf("%d spoofed REGISTERs: %d requests reached the core; no transaction left", n, len(core.Requests()))
}

// A registered phone, a proven source, sending REGISTER refreshes with a
// new branch each, as fast as one socket sends them. Each one the edge
// takes holds a transaction of its own until Timer J (the answer kept for
// copies): what bounds that memory is the per-source packet limit,
// applied before anything is parsed. Bounded: n datagrams.
func TestProvenPhoneUniqueBranchFlood(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	var lim ratelimit.Config
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) { lim = c.RateLimit })
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "alice"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER: %d", res.StatusCode)
	}
	bound := func(since time.Time) int { // what the packet limit lets through, and the registration's
		return lim.PacketBurst + int(lim.PacketRate*time.Since(since).Seconds()) + 2
	}
	start := time.Now()
	const n = 5000
	for i := range n {
		phone.Send(phone.Register(edgetest.Reg{User: "alice", CSeq: i + 2}))
	}
	// Sampled while the edge works through what it took, and after.
	peak := 0
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		access, _ := e.Transactions()
		peak = max(peak, access)
		if access > bound(start) {
			t.Fatalf("%d transactions held %v after the flood began; the packet limit lets through %d", access, time.Since(start), bound(start))
		}
		phone.Silent(10 * time.Millisecond) // the answers, read and dropped
	}
	got := len(registerRequests(core))
	if got > bound(start) {
		t.Errorf("the core got %d REGISTERs of %d sent; the packet limit lets through %d", got, n+1, bound(start))
	}
	t.Logf("%d sent: at most %d transactions held, %d reached the core", n+1, peak, got)
}

// A REGISTER without an RFC 3261 branch (an RFC 2543 phone) goes to
// sipgo's transactions, is served all the same, and is counted.
func TestRFC2543RegisterFallsBackToSipgo(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(strings.Replace(phone.Register(edgetest.Reg{User: "old"}), "branch=z9hG4bK", "branch=", 1))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER: %d", res.StatusCode)
	}
	if n := e.LeanFallbacks(); n != 1 {
		t.Errorf("%d fallbacks counted, want 1", n)
	}
}
