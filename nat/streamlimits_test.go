package nat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// registrar stands in for the edge's binding table: its REGISTER handler
// binds the request's flow before it answers, as the edge does once the
// core accepted, and its Bound hook reports every time it is asked.
type registrar struct {
	mu    sync.Mutex
	bound map[netip.AddrPort]bool // by remote
	all   bool                    // every flow is bound
	asked chan FlowKey
	regs  atomic.Int64 // REGISTERs handled
}

func newRegistrar() *registrar {
	return &registrar{bound: make(map[netip.AddrPort]bool), asked: make(chan FlowKey, 64)}
}

// Bound is the StreamHooks.Bound hook; it never blocks.
func (r *registrar) Bound(k FlowKey) bool {
	select {
	case r.asked <- k:
	default:
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.all || r.bound[k.Remote]
}

func (r *registrar) set(remote netip.AddrPort, bound bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bound[remote] = bound
}

// setup adds the REGISTER handler to a server of serveSIP.
func (r *registrar) setup(t *testing.T) func(*sipgo.Server) {
	return func(s *sipgo.Server) {
		s.OnRegister(func(req *sip.Request, tx sip.ServerTransaction) {
			r.regs.Add(1)
			if src, err := netip.ParseAddrPort(req.Source()); err == nil {
				r.set(netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), true)
			}
			if err := tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil)); err != nil {
				t.Errorf("respond: %v", err)
			}
		})
	}
}

// waitAsked waits until Bound has been asked about k n times more: each is
// an idle deadline that passed.
func (r *registrar) waitAsked(t *testing.T, k FlowKey, n int) {
	t.Helper()
	for n > 0 {
		select {
		case got := <-r.asked:
			if got == k {
				n--
			}
		case <-time.After(waitTimeout):
			t.Fatalf("timed out with Bound(%v) to be asked %d times more", k, n)
		}
	}
}

// limitedListener is a TCP Listener on 127.0.0.1:0 with ev's hooks, the
// registrar's Bound (if r is not nil) and lim.
func limitedListener(t *testing.T, tp Transport, ev *streamEvents, r *registrar, lim StreamLimits) (*Listener, *probeListener) {
	t.Helper()
	probe := newProbeListener(t)
	hooks := ev.hooks()
	if r != nil {
		hooks.Bound = r.Bound
	}
	hooks.Limits = lim
	return NewListener(probe, tp, hooks), probe
}

// dialFlow dials l and returns the client and the flow the server sees.
func dialFlow(t *testing.T, l *Listener, tp Transport) (*client, FlowKey) {
	t.Helper()
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, nc), FlowKey{Transport: tp, Local: addrPort(l.Addr()), Remote: addrPort(nc.LocalAddr())}
}

// registerRequest is a REGISTER of the size phones send, from an outbound
// client over transport tp from from, with body.
func registerRequest(tp string, from net.Addr, body string) string {
	n := seq.Add(1)
	ctype := ""
	if body != "" {
		ctype = "Content-Type: text/plain\r\n"
	}
	return fmt.Sprintf("REGISTER sip:127.0.0.1 SIP/2.0\r\n"+
		"Via: SIP/2.0/%s %s;branch=z9hG4bK-reg-%d;rport\r\n"+
		"Max-Forwards: 70\r\n"+
		"From: <sip:alice@127.0.0.1>;tag=r%d\r\n"+
		"To: <sip:alice@127.0.0.1>\r\n"+
		"Call-ID: reg-%d@127.0.0.1\r\n"+
		"CSeq: %d REGISTER\r\n"+
		"Contact: <sip:alice@%s;transport=%s;ob>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>\";reg-id=1\r\n"+
		"Expires: 600\r\n"+
		"Supported: path, outbound, gruu\r\n"+
		"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, NOTIFY, SUBSCRIBE\r\n"+
		"User-Agent: sipedge-nat-test/1.0\r\n"+
		"%sContent-Length: %d\r\n\r\n%s",
		tp, from, n, n, n, n, from, strings.ToLower(tp), ctype, len(body), body)
}

// expectEnd reads until the server's close: an end of stream or a reset,
// and no byte before it.
func (c *client) expectEnd(t *testing.T) {
	t.Helper()
	b, err := io.ReadAll(c.r)
	if len(b) != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("read %q, %v before the end; want nothing", b, err)
	}
}

// closedAfter waits for OnClose(k, why) and checks that it came no sooner
// than min after since.
func closedAfter(t *testing.T, ev *streamEvents, k FlowKey, why string, since time.Time, least time.Duration) {
	t.Helper()
	expectClose(t, ev, closeEvent{k, why})
	if d := time.Since(since); d < least {
		t.Errorf("closed %v after, want at least %v", d, least)
	}
}

func TestStreamIdleUnbound(t *testing.T) {
	ev, r := newStreamEvents(), newRegistrar()
	lim := StreamLimits{IdleTimeout: 300 * time.Millisecond}
	l, probe := limitedListener(t, TCP, ev, r, lim)
	serveSIP(t, l, serveTCP)
	c, k := dialFlow(t, l, TCP)

	// A message, then silence: idle from the server's read of it.
	sent := time.Now()
	c.send(t, optionsRequest("TCP", c.LocalAddr()))
	c.expect200(t)
	closedAfter(t, ev, k, "idle", sent, lim.IdleTimeout)
	probe.waitClosed(t)
	c.expectEnd(t)
	if l.Conns() != 0 {
		t.Errorf("%d conns after the idle close", l.Conns())
	}
}

func TestStreamIdleBound(t *testing.T) {
	ev, r := newStreamEvents(), newRegistrar()
	r.all = true
	l, _ := limitedListener(t, TCP, ev, r, StreamLimits{IdleTimeout: 200 * time.Millisecond})
	serveSIP(t, l, serveTCP)
	c, k := dialFlow(t, l, TCP)

	c.send(t, optionsRequest("TCP", c.LocalAddr()))
	c.expect200(t)
	// Two idle deadlines pass; each time the flow is bound, so kept.
	r.waitAsked(t, k, 2)
	c.send(t, optionsRequest("TCP", c.LocalAddr()))
	c.expect200(t)
	noEvent(t, "OnClose", ev.closes)
	if l.Conns() != 1 {
		t.Errorf("%d conns, want 1", l.Conns())
	}
}

// TestStreamIdleBecomesBound: a connection accepted unbound is bound by
// its REGISTER after the read that put idleness off, so the idle deadline
// finds it bound and keeps it; once unbound it is closed at the next one.
func TestStreamIdleBecomesBound(t *testing.T) {
	ev, r := newStreamEvents(), newRegistrar()
	lim := StreamLimits{IdleTimeout: 300 * time.Millisecond}
	l, _ := limitedListener(t, TCP, ev, r, lim)
	serveSIP(t, l, serveTCP, r.setup(t))
	c, k := dialFlow(t, l, TCP)

	c.send(t, registerRequest("TCP", c.LocalAddr(), ""))
	c.expect200(t)
	r.waitAsked(t, k, 1) // the idle deadline passed: bound, kept
	c.send(t, optionsRequest("TCP", c.LocalAddr()))
	c.expect200(t)
	noEvent(t, "OnClose", ev.closes)

	r.set(k.Remote, false) // the binding expired
	expectClose(t, ev, closeEvent{k, "idle"})
	c.expectEnd(t)
}

// TestStreamSlowloris trickles a REGISTER a byte every 50 ms: the bytes
// keep coming, so it is never idle, but the message is not complete
// within HeaderTimeout of its first byte.
func TestStreamSlowloris(t *testing.T) {
	ev, r := newStreamEvents(), newRegistrar()
	lim := StreamLimits{HeaderTimeout: 250 * time.Millisecond, IdleTimeout: 2 * time.Second}
	l, probe := limitedListener(t, TCP, ev, r, lim)
	serveSIP(t, l, serveTCP, r.setup(t))
	c, k := dialFlow(t, l, TCP)

	msg := registerRequest("TCP", c.LocalAddr(), "")
	start := time.Now()
	stop, done := make(chan struct{}), make(chan int)
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		n := 0
		for ; n < len(msg); n++ {
			if _, err := c.Write([]byte{msg[n]}); err != nil {
				break
			}
			select {
			case <-tick.C:
			case <-stop:
				done <- n + 1
				return
			}
		}
		done <- n
	}()
	closedAfter(t, ev, k, "header timeout", start, lim.HeaderTimeout)
	probe.waitClosed(t)
	close(stop)
	sent := <-done
	if sent < 3 || sent >= len(msg) {
		t.Errorf("%d bytes of %d sent before the close, want a trickle", sent, len(msg))
	}
	if r.regs.Load() != 0 {
		t.Error("the trickled REGISTER reached the handler")
	}
}

// TestStreamHeaderTimeoutSilent: a connection that sends nothing is
// closed after HeaderTimeout even when every flow counts as bound (no
// idle limit). On TLS that bounds the handshake; on WebSocket the
// upgrade, which sipgo does on its accept loop: the next client gets in.
func TestStreamHeaderTimeoutSilent(t *testing.T) {
	lim := StreamLimits{HeaderTimeout: 200 * time.Millisecond}
	for _, tc := range []struct {
		tp    Transport
		serve func(*sipgo.Server, net.Listener) error
	}{{TCP, serveTCP}, {TLS, serveTLS}, {WS, serveWS}} {
		t.Run(tc.tp.String(), func(t *testing.T) {
			ev := newStreamEvents()
			probe := newProbeListener(t)
			var inner net.Listener = probe
			if tc.tp == TLS {
				var tl net.Listener
				probe, tl, _ = newTLSListener(t)
				inner = tl
			}
			hooks := ev.hooks()
			hooks.Limits = lim
			l := NewListener(inner, tc.tp, hooks)
			serveSIP(t, l, tc.serve)
			start := time.Now() // before the accept, which arms the deadline
			c, k := dialFlow(t, l, tc.tp)
			closedAfter(t, ev, k, "header timeout", start, lim.HeaderTimeout)
			probe.waitClosed(t)
			c.expectEnd(t)
			if tc.tp == WS {
				wsRoundTrip(t, l)
			}
		})
	}
}

// wsRoundTrip upgrades a new WebSocket connection to l and gets a 200 to
// an OPTIONS over it.
func wsRoundTrip(t *testing.T, l *Listener) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	nc, _, _, err := ws.Dialer{Protocols: []string{"sip"}}.Dial(ctx, "ws://"+l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	if err := wsutil.WriteClientText(nc, []byte(optionsRequest("WS", nc.LocalAddr()))); err != nil {
		t.Fatal(err)
	}
	got, err := wsutil.ReadServerText(nc)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(got), "SIP/2.0 200 OK\r\n") {
		t.Fatalf("got %q, want a 200", got)
	}
}

// TestStreamKeepalivesNotActivity: CRLF keepalives every 100 ms, each
// answered, do not keep a connection without a binding open past
// IdleTimeout. The first one is what a new connection owes within
// HeaderTimeout, which is shorter here: the close is for idleness.
func TestStreamKeepalivesNotActivity(t *testing.T) {
	ev, r := newStreamEvents(), newRegistrar()
	lim := StreamLimits{HeaderTimeout: 150 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
	l, _ := limitedListener(t, TCP, ev, r, lim)
	serveSIP(t, l, serveTCP)
	start := time.Now() // before the accept, which arms the idle deadline
	c, k := dialFlow(t, l, TCP)

	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	pongs := 0
	for {
		if _, err := io.WriteString(c, "\r\n\r\n"); err != nil {
			break
		}
		b := make([]byte, 2)
		if _, err := io.ReadFull(c.r, b); err != nil {
			break // closed
		}
		if string(b) != "\r\n" {
			t.Fatalf("read %q, want a pong", b)
		}
		pongs++
		<-tick.C
	}
	closedAfter(t, ev, k, "idle", start, lim.IdleTimeout)
	if pongs < 2 {
		t.Errorf("%d keepalives answered before the close, want 2 or more", pongs)
	}
}

// TestStreamTooLarge closes connections whose message is over the
// default caps before sipgo gets it whole.
func TestStreamTooLarge(t *testing.T) {
	def := DefaultStreamLimits()
	for _, tc := range []struct {
		name string
		msg  func(from net.Addr) string
	}{
		{"header block", func(from net.Addr) string {
			pad := "X-Pad: " + strings.Repeat("a", def.MaxHeaderBytes) + "\r\n"
			return strings.Replace(registerRequest("TCP", from, ""), "Expires:", pad+"Expires:", 1)
		}},
		{"Content-Length", func(from net.Addr) string {
			// The header block alone: the connection closes at its end.
			return strings.Replace(registerRequest("TCP", from, ""), "Content-Length: 0", fmt.Sprintf("Content-Length: %d", def.MaxBodyBytes+1), 1)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, r := newStreamEvents(), newRegistrar()
			l, probe := limitedListener(t, TCP, ev, nil, StreamLimits{})
			serveSIP(t, l, serveTCP, r.setup(t))
			c, k := dialFlow(t, l, TCP)
			c.send(t, tc.msg(c.LocalAddr()))
			expectClose(t, ev, closeEvent{k, "too large"})
			probe.waitClosed(t)
			c.expectEnd(t)
			if r.regs.Load() != 0 {
				t.Error("the oversized REGISTER reached the handler")
			}
		})
	}
}

// acceptDirect accepts one connection of l from a new client, without
// sipgo.
func acceptDirect(t *testing.T, l *Listener) (*client, *Conn) {
	t.Helper()
	c, _ := dialFlow(t, l, TCP)
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc := a.(*Conn)
	t.Cleanup(func() { sc.Close() })
	return c, sc
}

// readAll reads want's length from sc and checks that it is want.
func readAll(t *testing.T, sc *Conn, want string) {
	t.Helper()
	got := make([]byte, 0, len(want))
	buf := make([]byte, 1024)
	for len(got) < len(want) {
		n, err := sc.Read(buf)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != want {
		t.Fatalf("Read %q, want %q", got, want)
	}
}

// TestConnMessagesPass: REGISTERs exactly at both caps pass to the reader
// unchanged, one in pieces, then one whole.
func TestConnMessagesPass(t *testing.T) {
	ev := newStreamEvents()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	body := "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
	reg := registerRequest("TCP", inner.Addr(), body)
	head := strings.Index(reg, "\r\n\r\n") + 4
	hooks := ev.hooks()
	hooks.Limits = StreamLimits{HeaderTimeout: waitTimeout, MaxHeaderBytes: head, MaxBodyBytes: len(body)}
	l := NewListener(inner, TCP, hooks)
	defer l.Close()
	c, sc := acceptDirect(t, l)

	for _, p := range []string{reg[:100], reg[100 : head-2], reg[head-2 : head+3], reg[head+3:]} {
		c.send(t, p)
		readAll(t, sc, p)
	}
	// The second has the same sizes (its sequence numbers are as long).
	reg2 := strings.Replace(reg, "alice", "bobby", -1)
	c.send(t, reg2)
	readAll(t, sc, reg2)
	noEvent(t, "OnClose", ev.closes)
}

// TestConnReadDeadlines: the caller's read deadline (sipgo's ReadTimeout
// sets one before every Read) combines with the limits': the earlier
// wins, and only the caller's gives a timeout error.
func TestConnReadDeadlines(t *testing.T) {
	t.Run("limit earlier", func(t *testing.T) {
		ev := newStreamEvents()
		inner, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		hooks := ev.hooks()
		hooks.Limits = StreamLimits{HeaderTimeout: 200 * time.Millisecond}
		l := NewListener(inner, TCP, hooks)
		defer l.Close()
		c, sc := acceptDirect(t, l)
		// As sipgo's read loop with a ReadTimeout: a later deadline
		// before every Read, which must not push the limit's out. The
		// message begins in the first read; in the second and third, the
		// limit's deadline is not moved.
		setDeadline := func() {
			t.Helper()
			if err := sc.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		msg := optionsRequest("TCP", c.LocalAddr())
		for _, p := range []string{msg[:40], msg[40:80]} {
			c.send(t, p)
			setDeadline()
			readAll(t, sc, p)
		}
		setDeadline()
		_, err = sc.Read(make([]byte, 1024))
		if !errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Read: %v, want the connection closed", err)
		}
		if d := time.Since(start); d >= waitTimeout {
			t.Errorf("closed after %v: the caller's deadline won", d)
		}
		expectClose(t, ev, closeEvent{sc.Key(), "header timeout"})
		c.expectEnd(t)
	})
	t.Run("caller earlier", func(t *testing.T) {
		ev := newStreamEvents()
		inner, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l := NewListener(inner, TCP, ev.hooks())
		defer l.Close()
		_, sc := acceptDirect(t, l)
		if err := sc.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if _, err := sc.Read(make([]byte, 16)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Read: %v, want a timeout", err)
		}
		expectClose(t, ev, closeEvent{sc.Key(), "timeout"})
	})
}

// TestStreamIdleMany: thousands of silent connections without a binding
// are all closed for idleness, none sooner than IdleTimeout after its
// accept, and the Listener forgets them.
func TestStreamIdleMany(t *testing.T) {
	n := idleManyConns()
	lim := StreamLimits{IdleTimeout: 300 * time.Millisecond}
	var (
		mu       sync.Mutex
		accepted = make(map[FlowKey]time.Time, n)
		early    []string
		closes   atomic.Int64
		allGone  = make(chan struct{})
	)
	hooks := StreamHooks{
		Accept: func(k FlowKey) bool {
			mu.Lock()
			accepted[k] = time.Now()
			mu.Unlock()
			return true
		},
		Bound: func(FlowKey) bool { return false },
		OnClose: func(k FlowKey, why string) {
			mu.Lock()
			if age := time.Since(accepted[k]); why != "idle" || age < lim.IdleTimeout {
				early = append(early, fmt.Sprintf("%v: %q after %v", k, why, age))
			}
			mu.Unlock()
			if closes.Add(1) == int64(n) {
				close(allGone)
			}
		},
		Limits: lim,
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(inner, TCP, hooks)
	serveSIP(t, l, serveTCP)

	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for range n {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	t.Logf("%d connections dialled in %v", n, time.Since(start))
	select {
	case <-allGone:
	case <-time.After(time.Since(start) + lim.IdleTimeout + 2*waitTimeout):
		t.Fatalf("%d of %d connections closed, %d still listed", closes.Load(), n, l.Conns())
	}
	t.Logf("all closed %v after the first dial", time.Since(start))
	if l.Conns() != 0 {
		t.Errorf("%d conns listed after every close", l.Conns())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(accepted) != n || len(early) > 0 {
		t.Errorf("%d accepted; closed wrongly or early: %d, first %q", len(accepted), len(early), early[:min(len(early), 3)])
	}
	// The clients see the end.
	for i := 0; i < n; i += n / 10 {
		if err := conns[i].SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
			t.Fatal(err)
		}
		if b, err := io.ReadAll(conns[i]); len(b) != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
			t.Errorf("client %d read %q, %v", i, b, err)
		}
	}
}

func TestStreamLimitsValidate(t *testing.T) {
	d := DefaultStreamLimits()
	if d != (StreamLimits{10 * time.Second, time.Minute, 16 << 10, 64 << 10}) {
		t.Errorf("DefaultStreamLimits() = %+v", d)
	}
	if err := d.Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	if err := (StreamLimits{}).Validate(); err != nil {
		t.Errorf("zero: %v", err)
	}
	if got := (StreamLimits{IdleTimeout: time.Second}).withDefaults(); got != (StreamLimits{d.HeaderTimeout, time.Second, d.MaxHeaderBytes, d.MaxBodyBytes}) {
		t.Errorf("withDefaults kept %+v", got)
	}
	err := StreamLimits{HeaderTimeout: -1, IdleTimeout: -1, MaxHeaderBytes: -1, MaxBodyBytes: -1}.Validate()
	for _, key := range []string{"header_timeout", "idle_timeout", "max_header_bytes", "max_body_bytes"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("Validate of negatives: %v, does not name %s", err, key)
		}
	}
}
