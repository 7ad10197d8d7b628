package nat

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"strconv"
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

var quietSIPOnce sync.Once

// quietSIP silences sipgo's process-wide logger, which it reads when a
// user agent is made.
func quietSIP() {
	quietSIPOnce.Do(func() { sip.SetDefaultLogger(slog.New(slog.DiscardHandler)) })
}

type closeEvent struct {
	k   FlowKey
	why string
}

// streamEvents records a Listener's hooks on channels.
type streamEvents struct {
	accepts chan netip.AddrPort
	pings   chan FlowKey
	pongs   chan FlowKey
	closes  chan closeEvent
	reads   atomic.Int64
	accept  func(netip.AddrPort) bool
}

func newStreamEvents() *streamEvents {
	return &streamEvents{
		accepts: make(chan netip.AddrPort, 16),
		pings:   make(chan FlowKey, 16),
		pongs:   make(chan FlowKey, 16),
		closes:  make(chan closeEvent, 16),
	}
}

func (ev *streamEvents) hooks() StreamHooks {
	return StreamHooks{
		Accept: func(k FlowKey) bool {
			ev.accepts <- k.Remote
			return ev.accept == nil || ev.accept(k.Remote)
		},
		OnRead:  func(FlowKey) { ev.reads.Add(1) },
		OnPing:  func(k FlowKey) { ev.pings <- k },
		OnPong:  func(k FlowKey) { ev.pongs <- k },
		OnClose: func(k FlowKey, why string) { ev.closes <- closeEvent{k, why} },
	}
}

func expectKey(t *testing.T, name string, ch chan FlowKey, want FlowKey) {
	t.Helper()
	select {
	case got := <-ch:
		if got != want {
			t.Errorf("%s for %v, want %v", name, got, want)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", name)
	}
}

func noEvent[T any](t *testing.T, name string, ch chan T) {
	t.Helper()
	select {
	case e := <-ch:
		t.Errorf("unexpected %s: %v", name, e)
	default:
	}
}

func expectAccept(t *testing.T, ev *streamEvents, want netip.AddrPort) {
	t.Helper()
	select {
	case got := <-ev.accepts:
		if got != want {
			t.Errorf("Accept saw %v, want %v", got, want)
		}
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for Accept")
	}
}

func expectClose(t *testing.T, ev *streamEvents, want closeEvent) {
	t.Helper()
	select {
	case got := <-ev.closes:
		if got != want {
			t.Errorf("OnClose(%v, %q), want OnClose(%v, %q)", got.k, got.why, want.k, want.why)
		}
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for OnClose")
	}
}

// probeListener reports, for the test, how many bytes each accepted
// connection's reads returned and when it was closed: the points to
// synchronise on instead of sleeping.
type probeListener struct {
	net.Listener
	read   chan int
	closed chan struct{}
}

func newProbeListener(t *testing.T) *probeListener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &probeListener{Listener: l, read: make(chan int, 256), closed: make(chan struct{}, 16)}
}

func (l *probeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &probeConn{Conn: c, l: l}, nil
}

type probeConn struct {
	net.Conn
	l    *probeListener
	once sync.Once
}

func (c *probeConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.l.read <- n
	}
	return n, err
}

func (c *probeConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.closed <- struct{}{} })
	return err
}

// waitRead waits until the server has read n bytes more.
func (l *probeListener) waitRead(t *testing.T, n int) {
	t.Helper()
	for n > 0 {
		select {
		case got := <-l.read:
			n -= got
		case <-time.After(waitTimeout):
			t.Fatalf("timed out with %d bytes unread by the server", n)
		}
	}
	if n < 0 {
		t.Fatalf("the server read %d bytes more than sent", -n)
	}
}

func (l *probeListener) waitClosed(t *testing.T) {
	t.Helper()
	select {
	case <-l.closed:
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for the server to close the connection")
	}
}

// serveSIP runs a sipgo server on l that answers OPTIONS with 200, and
// whatever else the setups add, and stops it when the test ends (or when
// stop is called).
func serveSIP(t *testing.T, l net.Listener, serve func(*sipgo.Server, net.Listener) error, setups ...func(*sipgo.Server)) (stop func()) {
	t.Helper()
	quietSIP()
	ua, err := sipgo.NewUA()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua)
	if err != nil {
		t.Fatal(err)
	}
	srv.OnOptions(func(req *sip.Request, tx sip.ServerTransaction) {
		if err := tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil)); err != nil {
			t.Errorf("respond: %v", err)
		}
	})
	for _, setup := range setups {
		setup(srv)
	}
	done := make(chan error, 1)
	go func() { done <- serve(srv, l) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			l.Close()
			select {
			case err := <-done:
				if err != nil && !errors.Is(err, net.ErrClosed) {
					t.Errorf("serve: %v", err)
				}
			case <-time.After(waitTimeout):
				t.Error("serve did not return after Close")
			}
			ua.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

func serveTCP(s *sipgo.Server, l net.Listener) error { return s.ServeTCP(l) }
func serveTLS(s *sipgo.Server, l net.Listener) error { return s.ServeTLS(l) }
func serveWS(s *sipgo.Server, l net.Listener) error  { return s.ServeWS(l) }

var seq atomic.Int64

// optionsRequest is an OPTIONS over transport tp from c.
func optionsRequest(tp string, from net.Addr) string {
	n := seq.Add(1)
	return fmt.Sprintf("OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\n"+
		"Via: SIP/2.0/%s %s;branch=z9hG4bK-nat-%d\r\n"+
		"Max-Forwards: 70\r\n"+
		"From: <sip:test@127.0.0.1>;tag=t%d\r\n"+
		"To: <sip:edge@127.0.0.1>\r\n"+
		"Call-ID: nat-test-%d\r\n"+
		"CSeq: 1 OPTIONS\r\n"+
		"Content-Length: 0\r\n\r\n", tp, from, n, n, n)
}

// client is a raw SIP client on a stream.
type client struct {
	net.Conn
	r *bufio.Reader
}

func newClient(t *testing.T, c net.Conn) *client {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{Conn: c, r: bufio.NewReader(c)}
}

func (c *client) send(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
}

// expectBytes reads exactly want.
func (c *client) expectBytes(t *testing.T, want string) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c.r, got); err != nil {
		t.Fatalf("reading %q: %v", want, err)
	}
	if string(got) != want {
		t.Fatalf("read %q, want %q", got, want)
	}
}

// expect200 reads one response and checks that it is the next thing on
// the stream: a stray CRLF before it (a second pong) fails.
func (c *client) expect200(t *testing.T) {
	t.Helper()
	status, err := c.r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	if status != "SIP/2.0 200 OK\r\n" {
		t.Fatalf("next on the stream is %q, want a 200 status line", status)
	}
	clen := -1
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the response: %v", err)
		}
		if line == "\r\n" {
			break
		}
		if name, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(strings.TrimSpace(name), "Content-Length") {
			clen, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if clen != 0 {
		t.Fatalf("response Content-Length %d", clen)
	}
}

func addrPort(a net.Addr) netip.AddrPort { return addrPortOfConn(a) }

func TestStreamKeepaliveTCP(t *testing.T) {
	ev := newStreamEvents()
	probe := newProbeListener(t)
	l := NewListener(probe, TCP, ev.hooks())
	stop := serveSIP(t, l, serveTCP)

	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, nc)
	k := FlowKey{Transport: TCP, Local: addrPort(l.Addr()), Remote: addrPort(nc.LocalAddr())}
	expectAccept(t, ev, k.Remote)

	// The client's ping gets exactly one pong, then the OPTIONS' 200.
	c.send(t, "\r\n\r\n")
	c.expectBytes(t, "\r\n")
	expectKey(t, "OnPing", ev.pings, k)
	c.send(t, optionsRequest("TCP", nc.LocalAddr()))
	c.expect200(t)

	// The client's pong gets no answer.
	c.send(t, "\r\n")
	expectKey(t, "OnPong", ev.pongs, k)
	c.send(t, optionsRequest("TCP", nc.LocalAddr()))
	c.expect200(t)

	// Our ping, by flow.
	sc, ok := l.Conn(k)
	if !ok {
		t.Fatalf("no Conn for %v", k)
	}
	if sc.Key() != k || l.Conns() != 1 {
		t.Fatalf("Conn key %v, %d conns", sc.Key(), l.Conns())
	}
	if _, ok := sc.NetConn().(*probeConn); !ok {
		t.Errorf("NetConn is %T", sc.NetConn())
	}
	if err := sc.Ping(); err != nil {
		t.Fatal(err)
	}
	c.expectBytes(t, "\r\n\r\n")
	c.send(t, "\r\n")
	expectKey(t, "OnPong", ev.pongs, k)
	c.send(t, optionsRequest("TCP", nc.LocalAddr()))
	c.expect200(t)
	if ev.reads.Load() < 6 {
		t.Errorf("OnRead fired %d times for 6 reads", ev.reads.Load())
	}

	// The client hangs up: one OnClose, "eof", and sipgo's own Close
	// afterwards adds none.
	nc.Close()
	expectClose(t, ev, closeEvent{k, "eof"})
	probe.waitClosed(t)
	noEvent(t, "OnClose", ev.closes)
	if _, ok := l.Conn(k); ok || l.Conns() != 0 {
		t.Errorf("closed conn still listed (%d conns)", l.Conns())
	}
	stop()
	noEvent(t, "OnClose", ev.closes)
	noEvent(t, "OnPing", ev.pings)
	noEvent(t, "OnPong", ev.pongs)
}

// TestStreamCRLFInsideMessage sends a message whose pieces look like
// keepalives, each in its own read: they are the message's, not pings.
func TestStreamCRLFInsideMessage(t *testing.T) {
	ev := newStreamEvents()
	probe := newProbeListener(t)
	l := NewListener(probe, TCP, ev.hooks())
	serveSIP(t, l, serveTCP)
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, nc)

	for _, tc := range []struct {
		name   string
		pieces func(opts string) []string
	}{
		{"header block ends alone", func(opts string) []string {
			return []string{strings.TrimSuffix(opts, "\r\n\r\n"), "\r\n\r\n"}
		}},
		{"line end alone", func(opts string) []string {
			head := strings.TrimSuffix(opts, "\r\nContent-Length: 0\r\n\r\n")
			return []string{head, "\r\n", "Content-Length: 0\r\n\r\n"}
		}},
		{"body of CRLFs", func(opts string) []string {
			head := strings.TrimSuffix(opts, "Content-Length: 0\r\n\r\n")
			return []string{head + "Content-Type: text/plain\r\nContent-Length: 6\r\n\r\n", "\r\n\r\n", "\r\n"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, p := range tc.pieces(optionsRequest("TCP", nc.LocalAddr())) {
				c.send(t, p)
				probe.waitRead(t, len(p)) // each piece is one read
			}
			c.expect200(t) // and no pong before it
			noEvent(t, "OnPing", ev.pings)
			noEvent(t, "OnPong", ev.pongs)
		})
	}
	// And a keepalive right after a message is one.
	c.send(t, "\r\n\r\n")
	c.expectBytes(t, "\r\n")
	expectKey(t, "OnPing", ev.pings, FlowKey{TCP, addrPort(l.Addr()), addrPort(nc.LocalAddr())})
}

// testCert makes a self-signed certificate for 127.0.0.1 and a pool
// that trusts it.
func testCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sipedge nat test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

func newTLSListener(t *testing.T) (*probeListener, net.Listener, *x509.CertPool) {
	t.Helper()
	cert, pool := testCert(t)
	probe := newProbeListener(t)
	return probe, tls.NewListener(probe, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}), pool
}

func TestStreamKeepaliveTLS(t *testing.T) {
	ev := newStreamEvents()
	probe, tl, pool := newTLSListener(t)
	l := NewListener(tl, TLS, ev.hooks())
	serveSIP(t, l, serveTLS)

	nc, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, nc)
	k := FlowKey{Transport: TLS, Local: addrPort(l.Addr()), Remote: addrPort(nc.LocalAddr())}

	c.send(t, "\r\n\r\n")
	c.expectBytes(t, "\r\n")
	expectKey(t, "OnPing", ev.pings, k)
	c.send(t, optionsRequest("TLS", nc.LocalAddr()))
	c.expect200(t)

	sc, ok := l.Conn(k)
	if !ok {
		t.Fatalf("no Conn for %v", k)
	}
	if _, ok := sc.NetConn().(*tls.Conn); !ok {
		t.Errorf("NetConn is %T, want *tls.Conn", sc.NetConn())
	}
	if err := sc.Ping(); err != nil {
		t.Fatal(err)
	}
	c.expectBytes(t, "\r\n\r\n")
	c.send(t, "\r\n")
	expectKey(t, "OnPong", ev.pongs, k)
	c.send(t, optionsRequest("TLS", nc.LocalAddr()))
	c.expect200(t)

	nc.Close() // sends close_notify: a clean end
	expectClose(t, ev, closeEvent{k, "eof"})
	probe.waitClosed(t)
	noEvent(t, "OnClose", ev.closes)
}

func TestStreamTLSHandshakeFailure(t *testing.T) {
	ev := newStreamEvents()
	probe, tl, _ := newTLSListener(t)
	l := NewListener(tl, TLS, ev.hooks())
	serveSIP(t, l, serveTLS)
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, nc)
	c.send(t, optionsRequest("TLS", nc.LocalAddr())) // plaintext to a TLS port
	expectClose(t, ev, closeEvent{FlowKey{TLS, addrPort(l.Addr()), addrPort(nc.LocalAddr())}, "tls"})
	probe.waitClosed(t)
	noEvent(t, "OnClose", ev.closes)
}

func TestStreamWS(t *testing.T) {
	ev := newStreamEvents()
	probe := newProbeListener(t)
	l := NewListener(probe, WS, ev.hooks())
	serveSIP(t, l, serveWS)

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	nc, _, _, err := ws.Dialer{Protocols: []string{"sip"}}.Dial(ctx, "ws://"+l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	k := FlowKey{Transport: WS, Local: addrPort(l.Addr()), Remote: addrPort(nc.LocalAddr())}

	roundTrip := func(req, wantPrefix string) {
		t.Helper()
		if err := wsutil.WriteClientText(nc, []byte(req)); err != nil {
			t.Fatal(err)
		}
		got, err := wsutil.ReadServerText(nc)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(got), wantPrefix) {
			t.Fatalf("got %q, want %q...", got, wantPrefix)
		}
	}
	roundTrip(optionsRequest("WS", nc.LocalAddr()), "SIP/2.0 200 OK\r\n")
	// A framed keepalive passes through to sipgo, which answers it.
	roundTrip("\r\n\r\n", "\r\n")
	noEvent(t, "OnPing", ev.pings)
	roundTrip(optionsRequest("WS", nc.LocalAddr()), "SIP/2.0 200 OK\r\n")

	sc, ok := l.Conn(k)
	if !ok {
		t.Fatalf("no Conn for %v", k)
	}
	if err := sc.Ping(); !errors.Is(err, ErrPingUnsupported) {
		t.Errorf("Ping on WS: %v, want ErrPingUnsupported", err)
	}
	if ev.reads.Load() == 0 {
		t.Error("OnRead never fired")
	}
	nc.Close()
	expectClose(t, ev, closeEvent{k, "eof"})
	probe.waitClosed(t)
}

func TestStreamAcceptRejects(t *testing.T) {
	ev := newStreamEvents()
	ev.accept = func(r netip.AddrPort) bool { return false }
	probe := newProbeListener(t)
	l := NewListener(probe, TCP, ev.hooks())
	serveSIP(t, l, serveTCP)

	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, nc)
	expectAccept(t, ev, addrPort(nc.LocalAddr()))
	probe.waitClosed(t)
	// Whatever the client sends, nothing comes back but the end.
	_, _ = io.WriteString(c, optionsRequest("TCP", nc.LocalAddr()))
	if b, err := io.ReadAll(c.r); len(b) != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
		t.Errorf("rejected client read %q, %v", b, err)
	}
	if l.Conns() != 0 {
		t.Errorf("%d conns after a rejection", l.Conns())
	}
	noEvent(t, "OnClose", ev.closes)
}

// TestConnDirect drives the wrapper without sipgo: the empty reads it
// returns for keepalives, the messages it passes on, and one OnClose.
func TestConnDirect(t *testing.T) {
	ev := newStreamEvents()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(inner, TCP, ev.hooks())
	defer l.Close()
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, nc)
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc := a.(*Conn)
	if err := sc.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	read := func(want string) {
		t.Helper()
		got := ""
		for len(got) < len(want) {
			n, err := sc.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			got += string(buf[:n])
		}
		if got != want {
			t.Fatalf("Read %q, want %q", got, want)
		}
	}

	c.send(t, "\r\n\r\n")
	if n, err := sc.Read(buf); n != 0 || err != nil {
		t.Fatalf("Read of a ping = %d, %v; want 0, nil", n, err)
	}
	c.expectBytes(t, "\r\n")
	expectKey(t, "OnPing", ev.pings, sc.Key())

	opts := optionsRequest("TCP", nc.LocalAddr())
	part := strings.TrimSuffix(opts, "\r\n\r\n")
	c.send(t, part)
	read(part)
	c.send(t, "\r\n\r\n")
	read("\r\n\r\n") // the end of the message, not a ping
	noEvent(t, "OnPing", ev.pings)

	c.send(t, "\r\n")
	if n, err := sc.Read(buf); n != 0 || err != nil {
		t.Fatalf("Read of a pong = %d, %v; want 0, nil", n, err)
	}
	expectKey(t, "OnPong", ev.pongs, sc.Key())

	if err := sc.Close(); err != nil {
		t.Fatal(err)
	}
	sc.Close()
	if _, err := sc.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
	expectClose(t, ev, closeEvent{sc.Key(), "closed"})
	noEvent(t, "OnClose", ev.closes)
	if l.Conns() != 0 {
		t.Errorf("%d conns after Close", l.Conns())
	}
}

// fakeListener returns its errors in turn, then connections.
type fakeListener struct {
	mu     sync.Mutex
	errs   []error
	calls  int
	closed chan struct{}
	once   sync.Once
}

func (f *fakeListener) Accept() (net.Conn, error) {
	f.mu.Lock()
	f.calls++
	var err error
	if len(f.errs) > 0 {
		err, f.errs = f.errs[0], f.errs[1:]
	}
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	select {
	case <-f.closed:
		return nil, net.ErrClosed
	default:
	}
	c1, c2 := net.Pipe()
	c2.Close()
	return c1, nil
}

func (f *fakeListener) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

func (f *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5060} }

func acceptErr(errno syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
}

func TestListenerAcceptRetries(t *testing.T) {
	f := &fakeListener{errs: []error{acceptErr(syscall.EMFILE), acceptErr(syscall.ECONNABORTED)}, closed: make(chan struct{})}
	l := NewListener(f, TCP, StreamHooks{})
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept after passing errors: %v", err)
	}
	c.Close()
	if f.calls != 3 {
		t.Errorf("%d inner accepts, want 3", f.calls)
	}

	// Other errors end the listener at once.
	f = &fakeListener{errs: []error{acceptErr(syscall.EINVAL)}, closed: make(chan struct{})}
	if _, err := NewListener(f, TCP, StreamHooks{}).Accept(); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("Accept: %v, want EINVAL", err)
	}

	// Close ends the wait between retries.
	errs := make([]error, 1000)
	for i := range errs {
		errs[i] = acceptErr(syscall.EMFILE)
	}
	f = &fakeListener{errs: errs, closed: make(chan struct{})}
	l = NewListener(f, TCP, StreamHooks{})
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EMFILE) {
			t.Errorf("Accept after Close: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Close did not end Accept's retries")
	}
}

func TestCloseReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{io.EOF, "eof"},
		{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), "eof"},
		{&net.OpError{Op: "read", Err: net.ErrClosed}, "closed"},
		{&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, "timeout"},
		{&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, "reset"},
		{&net.OpError{Op: "write", Err: os.NewSyscallError("write", syscall.EPIPE)}, "reset"},
		{tls.RecordHeaderError{Msg: "tls: first record does not look like a TLS handshake"}, "tls"},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}, "tls"},
		{errors.New("something else"), "error"},
	} {
		if got := closeReason(tc.err); got != tc.want {
			t.Errorf("closeReason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestAddrPortOfConn(t *testing.T) {
	for _, tc := range []struct {
		a    net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 5060}, "192.0.2.1:5060"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5061}, "[2001:db8::1]:5061"},
		{&net.UnixAddr{Name: "[2001:db8::2]:1", Net: "unix"}, "[2001:db8::2]:1"},
		{&net.UnixAddr{Name: "/tmp/sock", Net: "unix"}, "invalid AddrPort"},
		{nil, "invalid AddrPort"},
	} {
		if got := addrPortOfConn(tc.a).String(); got != tc.want {
			t.Errorf("addrPortOfConn(%v) = %s, want %s", tc.a, got, tc.want)
		}
	}
}

func BenchmarkConnRead(b *testing.B) {
	msg := []byte(optionsRequest("TCP", &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 5060}))
	c := &Conn{inner: &replayConn{msg: msg}, l: &Listener{hooks: StreamHooks{OnRead: func(FlowKey) {}}}, crlf: true}
	buf := make([]byte, 4096)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if n, err := c.Read(buf); n != len(msg) || err != nil {
			b.Fatal(n, err)
		}
	}
}

// replayConn returns msg on every read.
type replayConn struct {
	net.Conn
	msg []byte
}

func (r *replayConn) Read(b []byte) (int, error) { return copy(b, r.msg), nil }

// A connection closed gently ends with a FIN the peer reads as EOF, even
// when the peer is still sending: its data is read, not left to turn the
// close into a reset.
func TestCloseGentlyEndsWithEOF(t *testing.T) {
	probe := newProbeListener(t)
	l := NewListener(probe, TCP, StreamHooks{})
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c
		}
	}()
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := (<-accepted).(*Conn)
	read := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, c); close(read) }() // the server reads, as sipgo does
	if err := c.CloseGently(200 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write([]byte("OPTIONS sip:x SIP/2.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	if _, err := nc.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("the peer read %v, want EOF", err)
	}
	<-read // closed after the linger
}
