package edge_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// Bounded holding: 10,000 INVITEs for dead push bindings cost bounded
// memory and one push per phone.
//
// 101 phones register over TCP with RFC 8599 parameters and their
// connections close (apps suspended); the push service never wakes
// them; the hold (30 s) outlasts the test. The core (a raw UDP socket)
// sends INVITEs, paced and retransmitted as a UDP core would:
//
//   - 105 to phone 0 while the total has room: 100 held, 5 get 480 at
//     once (max_held_per_aor 100);
//   - 100 to each of phones 1..99: all held, 10,000 in all (max_held);
//   - 10 to phone 100, never called before, and 5 more to phone 99:
//     480 at once, and no push for phone 100.
//
// Then: one push per phone called while there was room, 100 in all; the
// heap and the stacks grew by a bounded amount per held INVITE. Stopping
// the edge ends every hold: no goroutine stays behind.
func TestWakeLoadBoundedHolding(t *testing.T) {
	const (
		phones  = 100
		perAOR  = 100
		maxHeld = phones * perAOR
		hold    = 30 * time.Second
		window  = 1000 // INVITEs in flight
	)
	start := time.Now()
	pusher := &fakePusher{} // never wakes anyone
	var sent, unanswered atomic.Int64
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.StartWith(t, core.URI("udp"), func(c *edgetest.Config) {
		c.Wake = edge.WakeConfig{Hold: hold, MaxPerAOR: perAOR, Max: maxHeld}
		c.RateLimit.Allow = []string{"127.0.0.0/8"} // 101 phones from one address
	}, edgetest.Hooks{Pusher: pusher, Events: func(ev audit.Event) {
		if ev.Kind == audit.Push && ev.Detail == "sent" {
			sent.Add(1)
		}
		if ev.Kind == audit.Push && ev.Detail == "unanswered" {
			unanswered.Add(1)
		}
	}})

	// 101 phones: the last is only called once 10,000 INVITEs wait.
	paths := make([]string, phones+1)
	conns := make([]*edgetest.Phone, phones+1)
	for i := range conns {
		p := edgetest.Dial(t, "tcp", e.TCP)
		p.Send(p.Register(edgetest.Reg{User: loadUser(i), CallID: "reg-" + loadUser(i),
			Contact: fmt.Sprintf("<sip:%s@%s;transport=tcp;pn-provider=apns;pn-prid=%s;pn-param=TEAM1.com.example.phone.voip>;+sip.instance=\"<urn:uuid:00000000-0000-4000-8000-%012d>\";reg-id=1",
				loadUser(i), p.Local, loadPRID(i), i)}))
		if res := p.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("phone %d: REGISTER got %d", i, res.StatusCode)
		}
		bs := core.Bindings("sip:" + loadUser(i) + "@example.com")
		if len(bs) != 1 || len(bs[0].Path) != 1 {
			t.Fatalf("phone %d: core bindings %+v", i, bs)
		}
		paths[i], conns[i] = bs[0].Path[0], p
	}
	for _, p := range conns {
		p.Close() // the apps are suspended
	}
	for deadline := time.Now().Add(wait); e.Flows().Len() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d flows still there after their connections closed", e.Flows().Len())
		}
	}
	if n := e.Bindings().Len(); n != phones+1 {
		t.Fatalf("%d bindings after the connections closed, want %d asleep", n, phones+1)
	}

	calls := newLoadCalls(t, e.CoreAddr(), paths, maxHeld+50)
	stopReading := calls.read()
	defer stopReading()
	before := memNow()
	setupTook := time.Since(start)

	// The per-AOR bound alone: 105 INVITEs for phone 0 while few wait in
	// all. Exactly 5 get 480, at once.
	var ids []int
	for range perAOR + 5 {
		ids = append(ids, calls.add(0))
	}
	firstHeld := time.Now()
	if got := calls.deliver(t, ids, window, 10*time.Second); got[480] != 5 || got[100] != perAOR {
		t.Fatalf("105 INVITEs for one phone, %d allowed to wait: %v, want 100 held (100 Trying) and 5 × 480", perAOR, got)
	}
	// Then 100 for each of the 99 others: 10,000 wait, no 480.
	ids = ids[:0]
	for i := 1; i < phones; i++ {
		for range perAOR {
			ids = append(ids, calls.add(i))
		}
	}
	sendStart := time.Now()
	if got := calls.deliver(t, ids, window, 20*time.Second); got[100] != len(ids) {
		t.Fatalf("%d INVITEs for 99 phones: %v, want every one held (100 Trying, no final)", len(ids), got)
	}
	// A 100 Trying says the edge has the INVITE, not that it holds it
	// yet (sipgo sends one after 200 ms wherever the handler is): the
	// bounds are full only once every one is held.
	for deadline := time.Now().Add(20 * time.Second); heldGoroutines() < maxHeld; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d INVITEs held 20 s after every one had its 100 Trying, want %d", heldGoroutines(), maxHeld)
		}
	}
	sendTook := time.Since(sendStart)
	during := memNow()

	// Both bounds full: more get 480 at once, and the 101st phone,
	// never pushed before, is not pushed now.
	ids = ids[:0]
	for range 10 {
		ids = append(ids, calls.add(phones))
	}
	for range 5 {
		ids = append(ids, calls.add(phones-1))
	}
	if got := calls.deliver(t, ids, window, 10*time.Second); got[480] != len(ids) {
		t.Errorf("INVITEs beyond max_held: %v, want %d × 480", got, len(ids))
	}
	var slowest time.Duration
	for _, id := range ids {
		slowest = max(slowest, calls.took(id))
	}
	if slowest > 2*time.Second {
		t.Errorf("a 480 beyond the bounds took %v, want it at once", slowest)
	}

	pushed := map[string]int{}
	pusher.mu.Lock()
	for _, p := range pusher.pushes {
		pushed[p.PRID]++
	}
	total := len(pusher.pushes)
	pusher.mu.Unlock()
	if total != phones || len(pushed) != phones || pushed[loadPRID(phones)] != 0 {
		t.Errorf("%d pushes to %d phones (the 101st: %d); want one to each of the %d called while there was room", total, len(pushed), pushed[loadPRID(phones)], phones)
	}
	if n := sent.Load(); n != phones {
		t.Errorf("%d push events \"sent\", want %d", n, phones)
	}

	held := int64(phones * perAOR)
	perHeld := func(f func(memStats) uint64) float64 {
		return (float64(f(during)) - float64(f(before))) / float64(held)
	}
	heap := perHeld(func(m memStats) uint64 { return m.heapInuse })
	stack := perHeld(func(m memStats) uint64 { return m.stackInuse })
	alloc := perHeld(func(m memStats) uint64 { return m.heapAlloc })
	gor := perHeld(func(m memStats) uint64 { return uint64(m.goroutines) })
	t.Logf("setup (101 phones registered and asleep) %v; 9,900 INVITEs held in %v (%.0f/s, %d retransmitted); %d pushes; per held INVITE: heap in use %.0f B (allocated %.0f B), stacks %.0f B, %.1f goroutines (race detector: %v)",
		setupTook.Round(time.Millisecond), sendTook.Round(time.Millisecond), 9900/sendTook.Seconds(), calls.resent.Load(), total, heap, alloc, stack, gor, raceEnabled)
	bound := float64(64 << 10)
	if raceEnabled {
		bound *= 4 // the race detector's bigger stacks and shadow bookkeeping
	}
	if heap+stack > bound {
		t.Errorf("a held INVITE costs %.0f B of heap and stack, want under %.0f B", heap+stack, bound)
	}

	// Stopping the edge ends every hold: nothing waits out its 30 s.
	stopStart := time.Now()
	e.Stop()
	stopTook := time.Since(stopStart)
	left := heldGoroutines()
	for deadline := time.Now().Add(5 * time.Second); left > 0 && time.Now().Before(deadline); left = heldGoroutines() {
		time.Sleep(50 * time.Millisecond)
	}
	finals := calls.tally()
	t.Logf("the edge stopped in %v; the core's INVITEs by what they got last: %v; push events \"unanswered\": %d; whole test %v",
		stopTook.Round(time.Millisecond), finals, unanswered.Load(), time.Since(start).Round(time.Millisecond))
	if left > 0 {
		t.Errorf("%d goroutines still hold an INVITE (edge.(*waker).hold) 5 s after the edge stopped: held requests outlive the edge until their hold (%v) ends", left, hold)
		// Let them end here rather than in the next test's goroutine
		// count or TestMain's leak check.
		for deadline := firstHeld.Add(hold + 5*time.Second); left > 0 && time.Now().Before(deadline); left = heldGoroutines() {
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("%d still holding %v after the first INVITE was held", left, time.Since(firstHeld).Round(time.Millisecond))
	}
}

func loadUser(i int) string { return fmt.Sprintf("mob%03d", i) }

func loadPRID(i int) string { return fmt.Sprintf("%064x", i+1) }

// loadCalls are the core's INVITEs, sent from a UDP socket of the
// test's, and what came back for each, indexed by number (its Call-ID is
// "wl-<number>"): no map keyed by strings to weigh on the heap being
// measured, and responses read as bytes, not parsed, so that the reader
// keeps up.
type loadCalls struct {
	conn    *net.UDPConn
	paths   []string
	mu      sync.Mutex
	who     []int // number → phone
	final   []atomic.Int32
	trying  []atomic.Bool
	sentAt  []atomic.Int64 // unix ns of the first send
	finalAt []atomic.Int64
	resent  atomic.Int64 // retransmissions
}

func newLoadCalls(t *testing.T, core netip.AddrPort, paths []string, n int) *loadCalls {
	t.Helper()
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetReadBuffer(4 << 20) // best effort: the kernel caps it
	return &loadCalls{conn: conn, paths: paths, final: make([]atomic.Int32, n), trying: make([]atomic.Bool, n),
		sentAt: make([]atomic.Int64, n), finalAt: make([]atomic.Int64, n)}
}

func (l *loadCalls) add(phone int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.who = append(l.who, phone)
	return len(l.who) - 1
}

// send transmits INVITE number id (again, for a retransmission: the same
// branch).
func (l *loadCalls) send(t *testing.T, id int) {
	l.mu.Lock()
	phone := l.who[id]
	l.mu.Unlock()
	callID := "wl-" + strconv.Itoa(id)
	local := l.conn.LocalAddr().String()
	msg := "INVITE sip:" + loadUser(phone) + "@example.com SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP " + local + ";branch=z9hG4bK-" + callID + ";rport\r\n" +
		"Route: " + l.paths[phone] + "\r\n" +
		"Max-Forwards: 70\r\n" +
		"From: <sip:alice@example.com>;tag=caller\r\n" +
		"To: <sip:" + loadUser(phone) + "@example.com>\r\n" +
		"Call-ID: " + callID + "\r\n" +
		"CSeq: 1 INVITE\r\n" +
		"Contact: <sip:alice@" + local + ">\r\n" +
		"Content-Length: 0\r\n\r\n"
	l.sentAt[id].CompareAndSwap(0, time.Now().UnixNano())
	if _, err := l.conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
}

// read records, until stopped, the responses the core socket receives.
func (l *loadCalls) read() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			select {
			case <-done:
				return
			default:
			}
			l.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			n, err := l.conn.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			l.note(buf[:n])
		}
	}()
	return sync.OnceFunc(func() { close(done); wg.Wait() })
}

// note records one response: "SIP/2.0 <code> ..." with "Call-ID: wl-<n>".
func (l *loadCalls) note(b []byte) {
	if !bytes.HasPrefix(b, []byte("SIP/2.0 ")) || len(b) < 11 {
		return
	}
	code, err := strconv.Atoi(string(b[8:11]))
	i := bytes.Index(b, []byte("\r\nCall-ID: wl-"))
	if err != nil || i < 0 {
		return
	}
	rest := b[i+len("\r\nCall-ID: wl-"):]
	end := bytes.IndexByte(rest, '\r')
	if end < 0 {
		return
	}
	id, err := strconv.Atoi(string(rest[:end]))
	if err != nil || id < 0 || id >= len(l.final) {
		return
	}
	if code < 200 {
		l.trying[id].Store(true)
	} else if l.final[id].Swap(int32(code)) == 0 {
		l.finalAt[id].Store(time.Now().UnixNano())
	}
}

func (l *loadCalls) answered(id int) bool { return l.trying[id].Load() || l.final[id].Load() != 0 }

// deliver sends ids with at most window of them waiting for a first
// answer (the edge's 100 Trying comes 200 ms after an INVITE it holds; a
// burst of 10,000 datagrams would overflow the sockets' buffers), and
// retransmits, as a UDP core does, every INVITE unanswered for a second:
// a lost datagram is sent again, and the edge's transaction absorbs a
// retransmission of one it has. It returns, by status, how many got each
// final answer, or 100 (held), or 0 (nothing within).
func (l *loadCalls) deliver(t *testing.T, ids []int, window int, within time.Duration) map[int]int {
	t.Helper()
	deadline := time.Now().Add(within)
	last := make([]time.Time, len(ids))
	next, first := 0, 0 // next to send; first not yet answered
	for ; ; time.Sleep(5 * time.Millisecond) {
		now := time.Now()
		for first < next && l.answered(ids[first]) {
			first++
		}
		waiting := 0
		for j := first; j < next; j++ {
			if l.answered(ids[j]) {
				continue
			}
			waiting++
			if now.Sub(last[j]) > time.Second {
				l.resent.Add(1)
				l.send(t, ids[j])
				last[j] = now
			}
		}
		for ; next < len(ids) && waiting < window; next, waiting = next+1, waiting+1 {
			l.send(t, ids[next])
			last[next] = now
		}
		if next == len(ids) && waiting == 0 {
			break
		}
		if now.After(deadline) {
			t.Errorf("%d of %d INVITEs sent, %d of them unanswered after %v", next, len(ids), waiting, within)
			break
		}
	}
	got := map[int]int{}
	for _, id := range ids {
		got[l.status(id)]++
	}
	return got
}

// status is INVITE id's final status, 100 if it has none but a 100
// Trying (held), 0 if nothing came.
func (l *loadCalls) status(id int) int {
	if s := int(l.final[id].Load()); s != 0 {
		return s
	}
	if l.trying[id].Load() {
		return 100
	}
	return 0
}

// took is how long INVITE id waited for its final answer.
func (l *loadCalls) took(id int) time.Duration {
	f := l.finalAt[id].Load()
	if f == 0 {
		return time.Hour
	}
	return time.Duration(f - l.sentAt[id].Load())
}

// tally counts every INVITE sent by its status.
func (l *loadCalls) tally() map[int]int {
	l.mu.Lock()
	n := len(l.who)
	l.mu.Unlock()
	out := map[int]int{}
	for id := range n {
		out[l.status(id)]++
	}
	return out
}

type memStats struct {
	heapInuse, heapAlloc, stackInuse uint64
	goroutines                       int
}

// memNow is the memory in use once the garbage is collected.
func memNow() memStats {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memStats{heapInuse: m.HeapInuse, heapAlloc: m.HeapAlloc, stackInuse: m.StackInuse, goroutines: runtime.NumGoroutine()}
}

// heldGoroutines counts the goroutines inside the edge's hold.
func heldGoroutines() int {
	var b bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&b, 1); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return -1
	}
	n := 0
	for _, block := range strings.Split(b.String(), "\n\n") {
		if !strings.Contains(block, "edge.(*waker).hold") {
			continue
		}
		count, _, _ := strings.Cut(block, " @ ")
		c, _ := strconv.Atoi(strings.TrimSpace(count[strings.LastIndex(count, "\n")+1:]))
		n += c
	}
	return n
}
