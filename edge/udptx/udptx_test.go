package udptx

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/emiago/sipgo/sip"
)

// fastTimers keep the tests short; the order of the timers is RFC 3261's.
var fastTimers = Timers{T1: 20 * time.Millisecond, T2: 80 * time.Millisecond, F: 400 * time.Millisecond, K: 300 * time.Millisecond}

func listen(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newClient(t testing.TB, conn Conn, tm Timers) *Client {
	c := NewClient(conn, tm)
	t.Cleanup(c.Close)
	return c
}

func newServer(t testing.TB, conn Conn, timerJ time.Duration) *Server {
	s := NewServer(conn, timerJ)
	t.Cleanup(s.Close)
	return s
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// read waits for the next datagram on c.
func read(t *testing.T, c *net.UDPConn, within time.Duration) ([]byte, netip.AddrPort) {
	t.Helper()
	b := make([]byte, 4096)
	_ = c.SetReadDeadline(time.Now().Add(within))
	n, src, err := c.ReadFromUDPAddrPort(b)
	if err != nil {
		t.Fatalf("no datagram within %v: %v", within, err)
	}
	return b[:n], src
}

// quiet checks nothing arrives on c for d.
func quiet(t *testing.T, c *net.UDPConn, d time.Duration) {
	t.Helper()
	b := make([]byte, 4096)
	_ = c.SetReadDeadline(time.Now().Add(d))
	if n, _, err := c.ReadFromUDPAddrPort(b); err == nil {
		t.Fatalf("unexpected datagram: %q", b[:n])
	}
}

const register = "REGISTER sip:example.com SIP/2.0\r\n" +
	"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK.edge1;rport\r\n" +
	"Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKphone;received=192.0.2.1\r\n" +
	"Max-Forwards: 69\r\n" +
	"From: <sip:alice@example.com>;tag=a\r\n" +
	"To: <sip:alice@example.com>\r\n" +
	"Call-ID: c1\r\n" +
	"CSeq: 1 REGISTER\r\n" +
	"Contact: <sip:alice@10.0.0.2:5060>\r\n" +
	"Content-Length: 0\r\n\r\n"

func parseRequest(t testing.TB, s string) *sip.Request {
	t.Helper()
	m, err := sip.ParseMessage([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return m.(*sip.Request)
}

// answer is the response a core sends to req's bytes.
func answer(t *testing.T, reqBytes []byte, code int, reason string) []byte {
	t.Helper()
	req := parseRequest(t, string(reqBytes))
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	return []byte(res.String())
}

func TestClientRetransmitsUntilAnswered(t *testing.T) {
	edge, core := listen(t), listen(t)
	c := newClient(t, edge, fastTimers)
	tx, err := c.Start(context.Background(), parseRequest(t, register), addrOf(core))
	if err != nil {
		t.Fatal(err)
	}
	first, _ := read(t, core, time.Second)
	again, _ := read(t, core, time.Second) // Timer E
	if !bytes.Equal(first, again) {
		t.Fatalf("retransmission differs:\n%s\n%s", first, again)
	}
	if _, err := core.WriteToUDPAddrPort(answer(t, first, 200, "OK"), addrOf(edge)); err != nil {
		t.Fatal(err)
	}
	// The edge's read loop hands datagrams to Receive.
	b, src := read(t, edge, time.Second)
	if !c.Receive(b, src, false) {
		t.Fatal("the answer was not taken")
	}
	select {
	case res := <-tx.Responses():
		if res.StatusCode != 200 || res.Via().Params.GetOr("branch", "") != "z9hG4bK.edge1" {
			t.Fatalf("got %d with Via %v", res.StatusCode, res.Via())
		}
	case <-time.After(time.Second):
		t.Fatal("no response")
	}
	quiet(t, core, fastTimers.T2+fastTimers.T1) // answered: no more copies
	// A copy of the answer is absorbed (Timer K), then the branch is
	// forgotten and sipgo would get it.
	if !c.Receive(b, src, false) {
		t.Fatal("a copy of the final answer was not absorbed")
	}
	select {
	case res := <-tx.Responses():
		t.Fatalf("a copy was delivered: %d", res.StatusCode)
	default:
	}
	tx.Terminate()
	<-tx.Done()
	if tx.Err() != nil {
		t.Fatal(tx.Err())
	}
	deadline := time.Now().Add(time.Second)
	for c.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the branch stayed past Timer K")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if c.Receive(b, src, true) {
		t.Fatal("a forgotten branch still took a datagram")
	}
}

func TestClientTimesOut(t *testing.T) {
	edge, core := listen(t), listen(t)
	c := newClient(t, edge, fastTimers)
	start := time.Now()
	tx, err := c.Start(context.Background(), parseRequest(t, register), addrOf(core))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-tx.Done():
	case <-time.After(5 * fastTimers.F):
		t.Fatal("Timer F never fired")
	}
	if !errors.Is(tx.Err(), sip.ErrTransactionTimeout) {
		t.Fatalf("err %v", tx.Err())
	}
	if took := time.Since(start); took < fastTimers.F {
		t.Fatalf("gave up after %v, before Timer F", took)
	}
	// T1, then doubling up to T2, until F: 20 40 80 80 80 ... ms.
	n := 0
	for {
		b := make([]byte, 4096)
		_ = core.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, _, err := core.ReadFromUDPAddrPort(b); err != nil {
			break
		}
		n++
	}
	if n < 4 || n > 8 {
		t.Fatalf("%d copies sent within Timer F", n)
	}
	if c.Len() != 0 {
		t.Fatal("a timed-out transaction stayed")
	}
}

func TestClientIgnoresOthers(t *testing.T) {
	edge, core, stranger := listen(t), listen(t), listen(t)
	c := newClient(t, edge, fastTimers)
	tx, err := c.Start(context.Background(), parseRequest(t, register), addrOf(core))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Terminate()
	sent, _ := read(t, core, time.Second)
	res := answer(t, sent, 200, "OK")
	for _, tc := range []struct {
		name string
		b    []byte
		src  netip.AddrPort
	}{
		{"from someone other than the core", res, addrOf(stranger)},
		{"a request", sent, addrOf(core)},
		{"another branch", bytes.Replace(res, []byte("z9hG4bK.edge1"), []byte("z9hG4bK.other"), 1), addrOf(core)},
		{"no Via", []byte("SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\n\r\n"), addrOf(core)},
	} {
		if c.Receive(tc.b, tc.src, false) {
			t.Errorf("%s: taken", tc.name)
		}
	}
	// Another method on the same branch is no answer to this one.
	if !c.Receive(bytes.Replace(res, []byte("1 REGISTER"), []byte("1 OPTIONS"), 1), addrOf(core), false) {
		t.Fatal("a datagram on the branch from the core was left to sipgo")
	}
	select {
	case r := <-tx.Responses():
		t.Fatalf("delivered an answer for another method: %d", r.StatusCode)
	default:
	}
	// Another address of the core (the caller vouches for it) answers.
	if !c.Receive(res, addrOf(stranger), true) {
		t.Fatal("an answer from another address of a core was not taken")
	}
	if r := <-tx.Responses(); r.StatusCode != 200 {
		t.Fatalf("got %d", r.StatusCode)
	}
}

func TestTopBranch(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1;rport=1\r\n\r\n", "z9hG4bK1"},
		{"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP a;rport;BRANCH=z9hG4bK2\r\nVia: SIP/2.0/UDP b;branch=z9hG4bKx\r\n\r\n", "z9hG4bK2"},
		{"SIP/2.0 200 OK\r\nFrom: <sip:a>;branch=no\r\nVIA : SIP/2.0/UDP a ; branch=z9hG4bK3 , SIP/2.0/UDP b;branch=x\r\n\r\n", "z9hG4bK3"},
		{"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a, SIP/2.0/UDP b;branch=z9hG4bKx\r\n\r\n", ""},
		{"SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\n\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK4\r\n", ""},
		{"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=\r\n\r\n", ""},
	} {
		got, ok := topBranch([]byte(tc.msg))
		if string(got) != tc.want || ok != (tc.want != "") {
			t.Errorf("%q: got %q %v, want %q", tc.msg, got, ok, tc.want)
		}
	}
}

func TestServerAnswersCopiesFromTheLastResponse(t *testing.T) {
	edge, phone := listen(t), listen(t)
	s := newServer(t, edge, 200*time.Millisecond)
	req := parseRequest(t, register)
	tx, isNew, ok := s.Receive(req, addrOf(phone))
	if !isNew || !ok {
		t.Fatal("a new request was not new")
	}
	// A copy while the request is handled is absorbed.
	if again, isNew, _ := s.Receive(parseRequest(t, register), addrOf(phone)); isNew || again != tx {
		t.Fatal("a copy made a second transaction")
	}
	quiet(t, phone, 50*time.Millisecond)
	if err := tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil)); err != nil {
		t.Fatal(err)
	}
	tx.Hold()
	first, _ := read(t, phone, time.Second)
	// Another final response is discarded (RFC 3261 §17.2.2).
	if err := tx.Respond(sip.NewResponseFromRequest(req, 500, "Late", nil)); err != nil {
		t.Fatal(err)
	}
	quiet(t, phone, 50*time.Millisecond)
	// A copy is answered with the same bytes, to where the request came
	// from, even when the copy claims another source.
	other := listen(t)
	if _, isNew, _ := s.Receive(parseRequest(t, register), addrOf(other)); isNew {
		t.Fatal("a copy made a second transaction")
	}
	again, _ := read(t, phone, time.Second)
	if !bytes.Equal(first, again) {
		t.Fatalf("copy answered differently:\n%s\n%s", first, again)
	}
	quiet(t, other, 50*time.Millisecond)
	// After Timer J a copy is a new request.
	select {
	case <-tx.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("Timer J never ended the transaction")
	}
	if _, isNew, _ := s.Receive(parseRequest(t, register), addrOf(phone)); !isNew {
		t.Fatal("a request after Timer J matched the old transaction")
	}
}

func TestServerKeys(t *testing.T) {
	edge, phone := listen(t), listen(t)
	s := newServer(t, edge, time.Minute)
	base := parseRequest(t, register)
	if _, isNew, _ := s.Receive(base, addrOf(phone)); !isNew {
		t.Fatal("not new")
	}
	for _, tc := range []struct{ name, from, to string }{
		{"another branch", "z9hG4bK.edge1", "z9hG4bK.edge2"},
		{"another sent-by", "127.0.0.1:5070", "127.0.0.1:5071"},
	} {
		if _, isNew, _ := s.Receive(parseRequest(t, strings.Replace(register, tc.from, tc.to, 1)), addrOf(phone)); !isNew {
			t.Errorf("%s matched the first transaction", tc.name)
		}
	}
	// Without an RFC 3261 branch the request is sipgo's.
	if _, _, ok := s.Receive(parseRequest(t, strings.Replace(register, "z9hG4bK.edge1", "old", 1)), addrOf(phone)); ok {
		t.Fatal("a request without an RFC 3261 branch was taken")
	}
	// Terminate forgets at once: the next copy is new.
	tx, _, _ := s.Receive(base, addrOf(phone))
	tx.Terminate()
	if _, isNew, _ := s.Receive(base, addrOf(phone)); !isNew {
		t.Fatal("a terminated transaction still matched")
	}
	if err := tx.Respond(sip.NewResponseFromRequest(base, 200, "OK", nil)); err == nil {
		t.Fatal("a terminated transaction sent a response")
	}
}

func TestClientClose(t *testing.T) {
	edge, core := listen(t), listen(t)
	c := newClient(t, edge, DefaultTimers())
	tx, err := c.Start(context.Background(), parseRequest(t, register), addrOf(core))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case <-tx.Done():
	case <-time.After(time.Second):
		t.Fatal("a running transaction outlived Close")
	}
	if !errors.Is(tx.Err(), ErrClosed) || c.Len() != 0 {
		t.Fatalf("err %v, %d left", tx.Err(), c.Len())
	}
	if _, err := c.Start(context.Background(), parseRequest(t, register), addrOf(core)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}
}

// FuzzReceive: anything from anyone reaches Client.Receive on the core
// side. It must never panic, never take a datagram that is not an
// answer from the transaction's own destination, and a branch it finds
// holds none of the bytes that end a parameter.
func FuzzReceive(f *testing.F) {
	f.Add([]byte("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK.edge1\r\nCSeq: 1 REGISTER\r\n\r\n"))
	f.Add([]byte("SIP/2.0 401 x\r\nv:SIP/2.0/UDP a;BRANCH=z9hG4bK.edge1,b\r\nCSeq: 1 REGISTER\r\nContent-Length: 5\r\n\r\nabc"))
	f.Add([]byte("SIP/2.0 \r\nVia:;branch=\r\n"))
	edge := listen(f)
	// The transaction must outlive the fuzzing: Timer F of an hour.
	c := newClient(f, edge, Timers{T1: time.Minute, T2: time.Minute, F: time.Hour, K: time.Hour})
	core := netip.MustParseAddrPort("127.0.0.1:9")
	tx, err := c.Start(context.Background(), parseRequest(f, register), core)
	if err != nil {
		f.Fatal(err)
	}
	defer tx.Terminate()
	f.Fuzz(func(t *testing.T, b []byte) {
		if branch, ok := topBranch(b); ok && (len(branch) == 0 || bytes.ContainsAny(branch, "; \t,\r\n")) {
			t.Fatalf("branch %q", branch)
		}
		if c.Receive(b, netip.MustParseAddrPort("127.0.0.2:9"), false) {
			t.Fatal("took a datagram from someone other than the core")
		}
		c.Receive(b, core, false)
	})
}

// Hold keeps an answered transaction for copies; an unanswered one, or
// one ended by Terminate (a source that may be spoofed), leaves nothing
// waiting for Timer J.
func TestServerHold(t *testing.T) {
	edge, phone := listen(t), listen(t)
	s := newServer(t, edge, time.Minute)
	req := parseRequest(t, register)
	tx, _, _ := s.Receive(req, addrOf(phone))
	tx.Hold() // no answer yet: nothing to keep
	if s.Len() != 0 {
		t.Fatal("an unanswered transaction was held")
	}
	tx, _, _ = s.Receive(req, addrOf(phone))
	_ = tx.Respond(sip.NewResponseFromRequest(req, 403, "Forbidden", nil))
	tx.Terminate()
	tx.Hold()
	waiting := s.answered.Len()
	if s.Len() != 0 || waiting != 0 {
		t.Fatalf("a terminated transaction stayed: %d in the table, %d waiting for Timer J", s.Len(), waiting)
	}
	tx, _, _ = s.Receive(req, addrOf(phone))
	_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	tx.Hold()
	if s.Len() != 1 {
		t.Fatal("an answered transaction was not held")
	}
}

// StartNotify hands each response to its callback on the goroutine that
// calls Receive (the read loop), in order; once the final one is handed
// on, the transaction keeps neither callback for Timer K; a request
// unanswered ends through onEnd with Timer F's error.
func TestClientNotify(t *testing.T) {
	edge, core := listen(t), listen(t)
	c := newClient(t, edge, fastTimers)
	var got []int
	ended := make(chan error, 1)
	tx, err := c.StartNotify(context.Background(), parseRequest(t, register), addrOf(core),
		func(res *sip.Response) { got = append(got, res.StatusCode) }, // on this goroutine: no lock needed
		func(_ string, err error) { ended <- err })
	if err != nil {
		t.Fatal(err)
	}
	req, _ := read(t, core, time.Second)
	for _, code := range []int{100, 200} {
		if _, err := core.WriteToUDPAddrPort(answer(t, req, code, "x"), addrOf(edge)); err != nil {
			t.Fatal(err)
		}
		b, src := read(t, edge, time.Second)
		if !c.Receive(b, src, false) {
			t.Fatalf("the %d was not taken", code)
		}
	}
	if len(got) != 2 || got[0] != 100 || got[1] != 200 {
		t.Fatalf("handed on %v, want [100 200]", got)
	}
	ctx := tx.(*ClientTx)
	ctx.mu.Lock()
	kept := ctx.notify != nil || ctx.hooks.first != nil || len(ctx.hooks.more) > 0
	ctx.mu.Unlock()
	if kept {
		t.Error("the callbacks stay with the transaction after its final response")
	}
	select {
	case err := <-ended:
		t.Fatalf("onEnd called after a final response: %v", err)
	default:
	}

	// No answer at all: Timer F, through onEnd.
	_, err = c.StartNotify(context.Background(), parseRequest(t, strings.Replace(register, "edge1", "edge2", 1)), addrOf(core),
		func(res *sip.Response) { t.Errorf("a response from nowhere: %d", res.StatusCode) },
		func(_ string, err error) { ended <- err })
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, sip.ErrTransactionTimeout) {
			t.Fatalf("ended with %v, want Timer F's timeout", err)
		}
	case <-time.After(5 * fastTimers.F):
		t.Fatal("Timer F never ended the transaction")
	}
}

// SetSparse: the answers to the methods it names come with only the
// headers the caller reads parsed, the rest as the core wrote them (to
// be parsed, if asked for, by sipgo's accessors); other methods'
// answers are parsed whole.
func TestClientSparse(t *testing.T) {
	edge, core := listen(t), listen(t)
	c := newClient(t, edge, fastTimers)
	c.SetSparse(sip.REGISTER)
	for _, method := range []string{"REGISTER", "MESSAGE"} {
		var got *sip.Response
		req := strings.NewReplacer("REGISTER", method, "edge1", "edge-"+method).Replace(register)
		if _, err := c.StartNotify(context.Background(), parseRequest(t, req), addrOf(core),
			func(res *sip.Response) { got = res }, nil); err != nil {
			t.Fatal(err)
		}
		b, _ := read(t, core, time.Second)
		ans := strings.Replace(string(answer(t, b, 200, "OK")), "From: <sip:alice@example.com>;tag=a", "from: sip:alice@example.com;tag=a", 1)
		if _, err := core.WriteToUDPAddrPort([]byte(ans), addrOf(edge)); err != nil {
			t.Fatal(err)
		}
		b, src := read(t, edge, time.Second)
		if !c.Receive(b, src, false) || got == nil {
			t.Fatalf("%s: the 200 was not handed on", method)
		}
		if got.CSeq() == nil || got.Via() == nil {
			t.Fatalf("%s: CSeq or Via not parsed", method)
		}
		sparse := true // no typed From among the headers (the accessor would parse one lazily)
		for _, h := range got.Headers() {
			if _, ok := h.(*sip.FromHeader); ok {
				sparse = false
			}
		}
		if sparse != (method == "REGISTER") {
			t.Errorf("%s: From parsed: %v", method, !sparse)
		}
		if sparse && !strings.Contains(got.String(), "\r\nfrom: sip:alice@example.com;tag=a\r\n") {
			t.Errorf("%s: From not as written:\n%s", method, got)
		}
	}
}

// gatedConn holds its first write until release is closed, as a sendto
// that lost the CPU to the process it woke would.
type gatedConn struct {
	*net.UDPConn
	held    atomic.Bool
	sending chan struct{} // closed when the first write is held
	release chan struct{}
	open    func() // closes release, once
}

// gate wraps c; the test's end lets a held write go, so that cleanups
// waiting for it (Close) are not stuck when the test fails.
func gate(c *net.UDPConn) *gatedConn {
	g := &gatedConn{UDPConn: c, sending: make(chan struct{}), release: make(chan struct{})}
	g.open = sync.OnceFunc(func() { close(g.release) })
	return g
}

func (g *gatedConn) WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	if g.held.CompareAndSwap(false, true) {
		close(g.sending)
		<-g.release
	}
	return g.UDPConn.WriteToUDPAddrPort(b, addr)
}

// An answer read while the request is still being sent is taken at once:
// the read loop that reads it does not wait for the send. The request's
// buffer is not handed to another transaction before the send is over.
func TestClientAnswerDuringSend(t *testing.T) {
	edge, core := listen(t), listen(t)
	g := gate(edge)
	c := newClient(t, g, fastTimers)
	t.Cleanup(g.open) // before Close
	got, ended := make(chan int, 2), make(chan error, 1)
	started := make(chan error, 1)
	go func() {
		_, err := c.StartNotify(context.Background(), parseRequest(t, register), addrOf(core),
			func(res *sip.Response) { got <- res.StatusCode },
			func(_ string, err error) { ended <- err })
		started <- err
	}()
	<-g.sending

	taken := make(chan bool, 1)
	go func() { taken <- c.Receive(answer(t, []byte(register), 200, "OK"), addrOf(core), false) }()
	select {
	case ok := <-taken:
		if !ok {
			t.Fatal("the answer was not taken")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the answer waited for the request's send")
	}
	if code := <-got; code != 200 {
		t.Fatalf("handed on %d, want 200", code)
	}
	// Another request now: it must not be written into the first one's
	// buffer, which is still being sent.
	other := strings.Replace(strings.Replace(register, "edge1", "edge2", 1), "alice", "bobby", -1)
	if _, err := c.StartNotify(context.Background(), parseRequest(t, other), addrOf(core), func(*sip.Response) {}, nil); err != nil {
		t.Fatal(err)
	}
	g.open()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	first, _ := read(t, core, time.Second)
	second, _ := read(t, core, time.Second)
	if bytes.Contains(second, []byte("edge1")) {
		first, second = second, first // the two writes may land in either order
	}
	if !bytes.Contains(first, []byte("branch=z9hG4bK.edge1")) || !bytes.Contains(first, []byte("alice")) || bytes.Contains(first, []byte("bobby")) {
		t.Fatalf("the first request went out changed:\n%s", first)
	}
	if !bytes.Contains(second, []byte("edge2")) {
		t.Fatalf("the second request:\n%s", second)
	}
	select {
	case err := <-ended:
		t.Fatalf("onEnd called for a transaction answered during its send: %v", err)
	default:
	}
}

// A client closed while a request is being sent ends it through onEnd
// once the send is over: nobody is left waiting for an answer.
func TestClientCloseDuringSend(t *testing.T) {
	edge, core := listen(t), listen(t)
	g := gate(edge)
	c := newClient(t, g, DefaultTimers())
	t.Cleanup(g.open) // before Close
	ended := make(chan error, 1)
	go func() {
		_, _ = c.StartNotify(context.Background(), parseRequest(t, register), addrOf(core),
			func(res *sip.Response) { t.Errorf("a response from nowhere: %d", res.StatusCode) },
			func(_ string, err error) { ended <- err })
	}()
	<-g.sending
	c.Close()
	g.open()
	select {
	case err := <-ended:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("ended with %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("onEnd never called for a transaction closed during its send")
	}
}

// A server transaction, kept for Timer J, keeps nothing of the request
// it was made for: the edge cuts a request's strings from one copy of
// its datagram (sipwire.Parse), which a kept branch would keep alive.
func TestServerKeyOwnsItsStrings(t *testing.T) {
	edge, phone := listen(t), listen(t)
	s := newServer(t, edge, time.Minute)
	req := parseRequest(t, register)
	via := req.Via()
	branch, _ := via.Params.Get("branch")
	tx, isNew, _ := s.Receive(req, addrOf(phone))
	if !isNew {
		t.Fatal("not new")
	}
	if unsafe.StringData(tx.key.branch) == unsafe.StringData(branch) || unsafe.StringData(tx.key.host) == unsafe.StringData(via.Host) {
		t.Fatal("the transaction's key shares the request's strings")
	}
}
