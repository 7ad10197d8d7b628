// Package upstreamtest is a fake core registrar for sipedge's tests.
//
// Start binds UDP and TCP on the same 127.0.0.1 port and answers like a
// small RFC 3261 §10.3 registrar: bindings per address-of-record, digest
// authentication when users are configured, Path (RFC 3327) stored and
// echoed. Every other method gets 200 OK, so tests can use it as a generic
// core. Every request received is recorded; tests read them with Requests
// or wait for them with NextRequest.
package upstreamtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// ErrClosed is returned by NextRequest and Send once the registrar is closed.
var ErrClosed = errors.New("upstreamtest: registrar closed")

// Options configures a Registrar. The zero value is a registrar without
// authentication in realm "sipedge.test".
type Options struct {
	// Realm is the digest realm. Default "sipedge.test".
	Realm string
	// Users maps user name to password. When non-empty every REGISTER must
	// carry valid digest credentials (MD5, qop=auth or no qop): none gets
	// 401 with a challenge, wrong ones get 403.
	Users map[string]string
	// RequirePath rejects a REGISTER that carries Path but does not list
	// "path" in Supported with 420 Bad Extension and Unsupported: path.
	RequirePath bool
	// Silent makes the registrar record requests but never answer them.
	Silent bool
	// TLS, if set, serves TLS instead of TCP on the stream port (URI("tls")).
	TLS *tls.Config
	// Refuse, if set, answers every request but OPTIONS with this status
	// (an overloaded core's 503, say); OPTIONS still gets 200.
	Refuse int
	// InviteAnswers, if set, are the statuses an INVITE gets, in order
	// (180 then 503, say: a core that rings and then fails).
	InviteAnswers []int
	// InviteGate, if set, holds the answers after the first until it is
	// closed: the test decides when the core goes on.
	InviteGate <-chan struct{}
	// DefaultExpires is the binding lifetime in seconds when the REGISTER
	// gives none. Default 3600.
	DefaultExpires int

	// DigestNoQOP sends challenges without qop (RFC 2069 style). Responses
	// with qop=auth are still accepted.
	DigestNoQOP bool
	// Server, if set, is put in every response as a Server header, as
	// real cores name their software.
	Server string
	// Host is the loopback address to listen on. Default 127.0.0.1; others
	// of 127.0.0.0/8 tell cores apart by address, as trust does.
	Host string
	// Now is the clock for binding expiry and nonce lifetime. Default time.Now.
	Now func() time.Time
	// Logger receives sipgo's logs. Default: Warn and above to t.Log.
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Realm == "" {
		o.Realm = "sipedge.test"
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.DefaultExpires <= 0 {
		o.DefaultExpires = 3600
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.Users = maps.Clone(o.Users) // the caller may keep writing to its map
}

// Registrar is a running fake core. It is safe for concurrent use.
type Registrar struct {
	opts   Options
	addr   netip.AddrPort
	ua     *sipgo.UserAgent
	client *sipgo.Client
	udp    net.PacketConn
	tcp    net.Listener
	nonces *nonceSigner
	silent atomic.Bool
	table  bindingTable
	log    requestLog

	// done is canceled on Close; it stops waiters and in-flight Sends.
	done      context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once
	serving   sync.WaitGroup // ServeUDP and ServeTCP
	gateMu    sync.Mutex     // guards closing and the Add side of handlers
	closing   bool
	handlers  sync.WaitGroup // handlers in flight
	logSink   *testWriter
}

// Start starts a registrar on 127.0.0.1 with UDP and TCP on the same port.
// It is closed by t.Cleanup; Close may also be called earlier.
func Start(t testing.TB, opts Options) *Registrar {
	t.Helper()
	var sink *testWriter
	if opts.Logger == nil {
		sink = &testWriter{t: t}
		opts.Logger = slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	r, err := start(opts)
	if err != nil {
		t.Fatalf("upstreamtest: %v", err)
	}
	r.logSink = sink
	t.Cleanup(func() { r.Close() })
	return r
}

func start(opts Options) (*Registrar, error) {
	opts.setDefaults()
	nonces, err := newNonceSigner()
	if err != nil {
		return nil, err
	}
	pc, ln, err := listenPair(opts.Host)
	if err != nil {
		return nil, err
	}
	addr, err := netip.ParseAddrPort(pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		ln.Close()
		return nil, err
	}

	ua, srv, client, err := newUA(addr, opts.Logger)
	if err != nil {
		pc.Close()
		ln.Close()
		return nil, err
	}

	r := &Registrar{
		opts:   opts,
		addr:   addr,
		ua:     ua,
		client: client,
		udp:    pc,
		tcp:    ln,
		nonces: nonces,
	}
	r.silent.Store(opts.Silent)
	r.table.aors = make(map[string][]*binding)
	r.log.arrived = make(chan struct{})
	r.done, r.cancel = context.WithCancel(context.Background())

	// No handler is registered per method, so every request, REGISTER
	// included, reaches the no-route handler.
	srv.OnNoRoute(r.handle)

	// sipgo puts the UDP socket into its connection pool inside ServeUDP,
	// just before the first read. Until then Send could not find it by
	// Laddr and would try to bind the port again, so wait for that read.
	udp := &readyPacketConn{PacketConn: pc, ready: make(chan struct{})}
	r.serving.Add(2)
	go func() {
		defer r.serving.Done()
		srv.ServeUDP(udp)
	}()
	go func() {
		defer r.serving.Done()
		if opts.TLS != nil {
			srv.ServeTLS(tls.NewListener(ln, opts.TLS))
			return
		}
		srv.ServeTCP(ln)
	}()
	<-udp.ready
	return r, nil
}

// newUA makes the registrar's user agent with its server and client.
func newUA(addr netip.AddrPort, log *slog.Logger) (*sipgo.UserAgent, *sipgo.Server, *sipgo.Client, error) {
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgent("upstreamtest"),
		sipgo.WithUserAgentHostname(addr.Addr().String()),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(log)),
		sipgo.WithUserAgentTransactionLayerOptions(
			sip.WithTransactionLayerLogger(log),
			sip.WithTransactionLayerUnhandledResponseHandler(func(res *sip.Response) {
				log.Debug("unmatched response", "status", res.StatusCode)
			}),
		),
	)
	if err != nil {
		return nil, nil, nil, err
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(log))
	if err != nil {
		ua.Close()
		return nil, nil, nil, err
	}
	client, err := sipgo.NewClient(ua, sipgo.WithClientLogger(log))
	if err != nil {
		ua.Close()
		return nil, nil, nil, err
	}
	return ua, srv, client, nil
}

// readyPacketConn closes ready when sipgo first reads from the socket.
type readyPacketConn struct {
	net.PacketConn
	once  sync.Once
	ready chan struct{}
}

func (c *readyPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	c.once.Do(func() { close(c.ready) })
	return c.PacketConn.ReadFrom(p)
}

// listenPair binds UDP on an ephemeral loopback port, then TCP on the same
// port number, retrying when another process holds the TCP side.
func listenPair(host string) (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp4", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, nil, fmt.Errorf("listen udp: %w", err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp4", net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("no port free for both udp and tcp: %w", lastErr)
}

// Close stops the listeners, waits for the serve loops and the handlers,
// and terminates every transaction. It is idempotent.
func (r *Registrar) Close() error {
	r.closeOnce.Do(func() {
		r.gateMu.Lock()
		r.closing = true
		r.gateMu.Unlock()
		r.cancel()
		r.udp.Close()
		r.tcp.Close()
		r.serving.Wait()
		r.handlers.Wait()
		r.ua.Close()
		sweepUDP(r.ua, straggleFor)
		if r.logSink != nil {
			r.logSink.close()
		}
	})
	return nil
}

// straggleFor is how long Close keeps closing sockets sipgo binds after
// the UA closed.
const straggleFor = 300 * time.Millisecond

// sweepUDP closes, for d, whatever appears in ua's UDP pool. sipgo hands
// each request it read to a goroutine of its own, which then looks up
// the connection to answer on; one that gets there after the read loop
// ended and the pool was cleared (a core closed while the edge still
// retransmits to it) binds a socket of its own with a reader, which
// nothing else would close. Bounded, like any cleanup wait.
func sweepUDP(ua *sipgo.UserAgent, d time.Duration) {
	p := ua.TransportLayer().Pool("udp")
	if p == nil {
		return
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for end := time.After(d); ; {
		if p.Size() > 0 {
			_ = p.Clear()
		}
		select {
		case <-end:
			return
		case <-tick.C:
		}
	}
}

// Addr is the address both the UDP and the TCP listener are bound to.
func (r *Registrar) Addr() netip.AddrPort { return r.addr }

// URI returns the registrar's SIP URI for a transport ("udp" or "tcp"),
// for example "sip:127.0.0.1:40123;transport=udp".
func (r *Registrar) URI(transport string) string {
	return "sip:" + r.addr.String() + ";transport=" + strings.ToLower(transport)
}

// SetSilent switches answering off (true) or back on (false). A silent
// registrar still records requests. In silent mode the server transaction
// is dropped at once (so no automatic 100 Trying goes out for INVITE), and
// UDP retransmissions are therefore recorded as separate requests.
func (r *Registrar) SetSilent(silent bool) { r.silent.Store(silent) }

// Forget drops every binding: a core restarted without persistence.
func (r *Registrar) Forget() {
	r.table.mu.Lock()
	r.table.aors = make(map[string][]*binding)
	r.table.mu.Unlock()
}

// Requests returns clones of every request received so far, in order.
func (r *Registrar) Requests() []*sip.Request { return r.log.all() }

// NextRequest waits for the next request after the one the previous
// NextRequest call returned (the first one received, on the first call).
// Requests already received are returned without waiting. It fails with
// ctx's error, or ErrClosed once the registrar is closed and no recorded
// request is left.
func (r *Registrar) NextRequest(ctx context.Context) (*sip.Request, error) {
	return r.log.next(ctx, r.done.Done())
}

// Bindings returns the current (unexpired) bindings of an address-of-record
// such as "sip:alice@example.com", in registration order. Binding.Expires
// is the lifetime granted at the last registration of that contact.
func (r *Registrar) Bindings(aor string) []Binding {
	var u sip.Uri
	key := aor
	if err := sip.ParseUri(aor, &u); err == nil {
		key = aorKey(u)
	}
	return r.table.list(key, r.opts.Now())
}

// Send sends req from the registrar's listening socket as a stateful client
// transaction and returns the final response. The transport and the
// destination come from the top Route if there is one, else from the
// Request-URI (so a request built from a Binding's Path reaches the edge).
// Missing To, From, Call-ID, CSeq, Max-Forwards and Via are filled in; req
// itself is not modified. Over UDP the request leaves from the listening
// port; over TCP an existing connection to the destination is reused, or a
// new one is dialed.
func (r *Registrar) Send(ctx context.Context, req *sip.Request) (*sip.Response, error) {
	if r.done.Err() != nil {
		return nil, ErrClosed
	}
	out := req.Clone()
	tp := strings.ToUpper(out.Transport())
	switch tp {
	case "UDP":
		out.Laddr = sip.Addr{IP: net.IP(r.addr.Addr().AsSlice()), Port: int(r.addr.Port())}
	case "TCP":
	default:
		return nil, fmt.Errorf("upstreamtest: send over %q: only UDP and TCP are served", tp)
	}
	out.SetTransport(tp)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(r.done, cancel)
	defer stop()
	res, err := r.client.Do(ctx, out)
	if err != nil && r.done.Err() != nil {
		return nil, fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return res, err
}

// RequestTo builds a request toward binding b of aor the way a core routes
// it (RFC 3327 §5.3): the Request-URI is the Contact, every Path entry
// becomes a Route in order, To is the AOR. Pass it to Send.
func RequestTo(method sip.RequestMethod, aor string, b Binding) (*sip.Request, error) {
	var ruri, to sip.Uri
	if err := sip.ParseUri(b.Contact, &ruri); err != nil {
		return nil, fmt.Errorf("upstreamtest: contact %q: %w", b.Contact, err)
	}
	if err := sip.ParseUri(aor, &to); err != nil {
		return nil, fmt.Errorf("upstreamtest: aor %q: %w", aor, err)
	}
	req := sip.NewRequest(method, ruri)
	for _, p := range b.Path {
		var u sip.Uri
		params := sip.NewParams()
		if _, err := sip.ParseAddressValue(p, &u, &params); err != nil {
			return nil, fmt.Errorf("upstreamtest: path %q: %w", p, err)
		}
		req.AppendHeader(&sip.RouteHeader{Address: u})
	}
	req.AppendHeader(&sip.ToHeader{Address: to})
	return req, nil
}

// enter admits a handler unless the registrar is closing.
func (r *Registrar) enter() bool {
	r.gateMu.Lock()
	defer r.gateMu.Unlock()
	if r.closing {
		return false
	}
	r.handlers.Add(1)
	return true
}

// handle is the one handler for every method. It records the request and
// is the only place that sends a response.
func (r *Registrar) handle(req *sip.Request, tx sip.ServerTransaction) {
	if !r.enter() {
		return
	}
	defer r.handlers.Done()

	// Silence is read before the request is recorded: a test that sees
	// the request and then switches answering back on must not get this
	// one answered.
	silent := r.silent.Load()
	r.log.add(req.Clone())
	if silent {
		tx.Terminate()
		return
	}

	var res *sip.Response
	if r.opts.Refuse != 0 && req.Method != sip.OPTIONS {
		res = sip.NewResponseFromRequest(req, r.opts.Refuse, "Refused", nil)
		if err := tx.Respond(res); err != nil {
			r.opts.Logger.Warn("respond failed", "method", req.Method.String(), "status", res.StatusCode, "error", err)
		}
		return
	}
	if req.IsInvite() && len(r.opts.InviteAnswers) > 0 {
		for i, code := range r.opts.InviteAnswers {
			if i == 1 && r.opts.InviteGate != nil {
				<-r.opts.InviteGate
			}
			if err := tx.Respond(sip.NewResponseFromRequest(req, code, "Answer", nil)); err != nil {
				r.opts.Logger.Warn("respond failed", "method", req.Method.String(), "status", code, "error", err)
			}
		}
		return
	}
	switch req.Method {
	case sip.ACK:
		return
	case sip.REGISTER:
		res = r.register(req)
	default:
		res = sip.NewResponseFromRequest(req, sip.StatusOK, "OK", nil)
		if req.IsInvite() {
			res.AppendHeader(&sip.ContactHeader{Address: r.contactURI(req.Transport())})
		}
	}
	if r.opts.Server != "" {
		res.AppendHeader(sip.NewHeader("Server", r.opts.Server))
	}
	if err := tx.Respond(res); err != nil {
		r.opts.Logger.Warn("respond failed", "method", req.Method.String(), "status", res.StatusCode, "error", err)
	}
}

func (r *Registrar) contactURI(transport string) sip.Uri {
	return sip.Uri{
		Scheme:    "sip",
		Host:      r.addr.Addr().String(),
		Port:      int(r.addr.Port()),
		UriParams: sip.HeaderParams{{K: "transport", V: strings.ToLower(transport)}},
	}
}

// requestLog records received requests and hands them out in order.
type requestLog struct {
	mu      sync.Mutex
	reqs    []*sip.Request
	cursor  int
	arrived chan struct{} // closed and replaced on every add
}

func (l *requestLog) add(req *sip.Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reqs = append(l.reqs, req)
	close(l.arrived)
	l.arrived = make(chan struct{})
}

func (l *requestLog) all() []*sip.Request {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*sip.Request, len(l.reqs))
	for i, req := range l.reqs {
		out[i] = req.Clone()
	}
	return out
}

func (l *requestLog) next(ctx context.Context, closed <-chan struct{}) (*sip.Request, error) {
	for {
		l.mu.Lock()
		if l.cursor < len(l.reqs) {
			req := l.reqs[l.cursor]
			l.cursor++
			l.mu.Unlock()
			return req.Clone(), nil
		}
		arrived := l.arrived
		l.mu.Unlock()

		select {
		case <-arrived:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-closed:
			return nil, ErrClosed
		}
	}
}

// testWriter forwards log lines to t.Log until the registrar is closed;
// after that, late lines from sipgo's timers are dropped rather than
// logged after the test has finished.
type testWriter struct {
	mu     sync.Mutex
	t      testing.TB
	closed bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.t.Log("upstreamtest: " + strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}
