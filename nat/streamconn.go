package nat

import (
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
	"time"
)

// ErrPingUnsupported is returned by Conn.Ping on WebSocket connections,
// whose bytes are framed: a raw CRLF would corrupt the stream.
var ErrPingUnsupported = errors.New("nat: CRLF keepalive not supported on WebSocket")

// StreamHooks observes a Listener's connections. Every field is
// optional. Hooks run synchronously on the accepting or reading
// goroutine, so they must be quick and must not block.
type StreamHooks struct {
	// Accept is called with the flow of each new connection (its peer
	// and its own local address); false closes it at once, before any
	// byte is read (bans, per-IP limits). Nil accepts everything.
	Accept func(k FlowKey) bool
	// OnRead is called for every read that returned data, keepalives
	// included: the flow carried traffic.
	OnRead func(k FlowKey)
	// OnPing is called for a CRLF keepalive ping ("\r\n\r\n") from the
	// peer, after the wrapper has answered it. TCP and TLS only.
	OnPing func(k FlowKey)
	// OnPong is called for the peer's "\r\n" answer to our ping. TCP and
	// TLS only.
	OnPong func(k FlowKey)
	// Bound reports whether flow k holds a binding. A connection whose
	// flow holds none is closed when idle (see StreamLimits.IdleTimeout);
	// it is asked each time the idle deadline passes, so a connection
	// that became bound since it was accepted is kept. Nil counts every
	// connection as bound: none is closed for idleness.
	Bound func(k FlowKey) bool
	// OnClose is called exactly once per accepted connection, when it is
	// closed or a read fails. why is "closed" (closed locally), "eof"
	// (closed by the peer), "timeout" (a read deadline set by the caller
	// passed), "reset", "tls" (a TLS handshake or record error), "error",
	// or one of the Limits': "header timeout", "idle" or "too large"; behind
	// NewWSListener also "handshake" or "protocol" (a WebSocket error).
	OnClose func(k FlowKey, why string)

	// Limits bounds what each connection may hold and for how long. A
	// zero field takes its default (DefaultStreamLimits).
	Limits StreamLimits
}

// StreamLimits bounds the time and memory a connection costs before it
// proves useful. The time limits are read deadlines on the connection,
// not timers or goroutines of its own.
type StreamLimits struct {
	// HeaderTimeout is how long a new connection has to deliver a whole
	// message or a CRLF keepalive, and each later message to complete
	// (body included) from its first byte: a slowloris trickling bytes
	// is closed. It bounds a TLS handshake, done inside the first read,
	// and a WebSocket upgrade request. Between messages it does not
	// apply.
	HeaderTimeout time.Duration `toml:"header_timeout"`
	// IdleTimeout is how long a connection whose flow holds no binding
	// (StreamHooks.Bound) may go without message bytes. CRLF keepalives
	// on TCP and TLS do not count: they keep a registered flow alive
	// (RFC 5626), not a connection that never registered. On WebSocket,
	// whose keepalives are framed, any byte counts.
	IdleTimeout time.Duration `toml:"idle_timeout"`
	// MaxHeaderBytes caps a message's header block, from the start-line
	// to the empty line included; MaxBodyBytes caps its Content-Length.
	// A message over either closes the connection before sipgo has
	// buffered more than MaxHeaderBytes of it. On WebSocket only the
	// upgrade request is sized (sipgo caps frames itself), unless behind
	// NewWSListener, which caps each message at their sum.
	MaxHeaderBytes int `toml:"max_header_bytes"`
	MaxBodyBytes   int `toml:"max_body_bytes"`
}

// DefaultStreamLimits gives 10 s for a message, closes unbound
// connections idle for a minute, and caps headers at 16 KiB and bodies at
// 64 KiB.
func DefaultStreamLimits() StreamLimits {
	return StreamLimits{HeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10, MaxBodyBytes: 64 << 10}
}

// Validate names every invalid field and why. Zero fields are valid:
// they take their defaults.
func (s StreamLimits) Validate() error {
	var errs []error
	negative := func(key string, v any) { errs = append(errs, fmt.Errorf("%s: %v is negative", key, v)) }
	if s.HeaderTimeout < 0 {
		negative("header_timeout", s.HeaderTimeout)
	}
	if s.IdleTimeout < 0 {
		negative("idle_timeout", s.IdleTimeout)
	}
	if s.MaxHeaderBytes < 0 {
		negative("max_header_bytes", s.MaxHeaderBytes)
	}
	if s.MaxBodyBytes < 0 {
		negative("max_body_bytes", s.MaxBodyBytes)
	}
	return errors.Join(errs...)
}

// withDefaults replaces every field that is not positive by its default.
func (s StreamLimits) withDefaults() StreamLimits {
	d := DefaultStreamLimits()
	if s.HeaderTimeout <= 0 {
		s.HeaderTimeout = d.HeaderTimeout
	}
	if s.IdleTimeout <= 0 {
		s.IdleTimeout = d.IdleTimeout
	}
	if s.MaxHeaderBytes <= 0 {
		s.MaxHeaderBytes = d.MaxHeaderBytes
	}
	if s.MaxBodyBytes <= 0 {
		s.MaxBodyBytes = d.MaxBodyBytes
	}
	return s
}

// limitError is what Read returns when it closed the connection for one
// of the StreamLimits (or a WebSocket error or Close). It is
// net.ErrClosed, as the connection now is, so sipgo's read loop ends
// without logging an error per attacker.
type limitError struct{ why string }

func (e *limitError) Error() string        { return "nat: connection closed: " + e.why }
func (e *limitError) Is(target error) bool { return target == net.ErrClosed }

var (
	errHeaderTimeout = &limitError{"header timeout"}
	errIdle          = &limitError{"idle"}
)

// Listener wraps a stream listener handed to sipgo's ServeTCP, ServeTLS,
// ServeWS or ServeWSS, so that the edge sees each connection as a flow.
// For TLS and WSS, wrap the TLS listener (tls.NewListener), so the
// wrapper sees plaintext; sipgo asserts no concrete type on accepted
// connections, so the wrapper stands in for *net.TCPConn or *tls.Conn.
//
// Each connection is held to the hooks' Limits: it is closed when a
// message takes too long or is too large, or when it idles without a
// binding.
//
// Unlike a bare listener it does not fail on resource exhaustion:
// sipgo's accept loop returns on any error and never accepts again, so
// Accept retries EMFILE, ENFILE, ENOBUFS, ENOMEM and ECONNABORTED, backing
// off up to a second, until Close.
type Listener struct {
	inner  net.Listener
	tp     Transport
	hooks  StreamHooks
	limits StreamLimits // hooks.Limits with defaults

	closeOnce sync.Once
	done      chan struct{}

	mu    sync.Mutex
	conns map[FlowKey]*Conn

	ws *wsShim // NewWSListener's; nil otherwise
}

var _ net.Listener = (*Listener)(nil)

// NewListener wraps inner, whose connections are flows of transport t
// (TCP, TLS, WS or WSS). The Listener owns inner: closing it closes
// inner. A field of hooks.Limits that is zero, or invalid, takes its
// default.
func NewListener(inner net.Listener, t Transport, hooks StreamHooks) *Listener {
	return &Listener{inner: inner, tp: t, hooks: hooks, limits: hooks.Limits.withDefaults(), done: make(chan struct{}), conns: make(map[FlowKey]*Conn)}
}

// Accept waits for the next connection that hooks.Accept allows (behind
// NewWSListener, the next one upgraded).
func (l *Listener) Accept() (net.Conn, error) {
	if l.ws != nil {
		return l.ws.accept()
	}
	c, err := l.accept()
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (l *Listener) accept() (*Conn, error) {
	var delay time.Duration
	for {
		nc, err := l.inner.Accept()
		if err != nil {
			if !retryAccept(err) {
				return nil, err
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
				continue
			case <-l.done:
				t.Stop()
				return nil, err
			}
		}
		delay = 0
		k := FlowKey{Transport: l.tp, Local: addrPortOfConn(nc.LocalAddr()), Remote: addrPortOfConn(nc.RemoteAddr())}
		if l.hooks.Accept != nil && !l.hooks.Accept(k) {
			nc.Close()
			continue
		}
		c := l.newConn(nc, k)
		l.mu.Lock()
		l.conns[k] = c
		l.mu.Unlock()
		return c, nil
	}
}

// newConn wraps nc with its deadlines armed: the first message (or
// keepalive) is due within HeaderTimeout, and an unbound connection is
// idle after IdleTimeout.
func (l *Listener) newConn(nc net.Conn, k FlowKey) *Conn {
	c := &Conn{inner: nc, l: l, key: k, crlf: l.tp == TCP || l.tp == TLS}
	c.fr.lim = frameLimits{head: int64(l.limits.MaxHeaderBytes), body: int64(l.limits.MaxBodyBytes), one: !c.crlf}
	now := time.Now()
	c.headerDL = now.Add(l.limits.HeaderTimeout)
	if l.hooks.Bound != nil {
		c.idleDL = now.Add(l.limits.IdleTimeout)
	}
	_ = c.armRead() // a connection that fails it fails its first Read
	return c
}

// retryAccept reports whether an Accept error is a passing shortage
// rather than the end of the listener.
func retryAccept(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// addrPortOfConn converts a stream address, unmapped like the keys the
// edge derives from sipgo's requests; anything else is invalid.
func addrPortOfConn(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case interface{ AddrPort() netip.AddrPort }:
		ap = a.AddrPort()
	default:
		if a != nil {
			ap, _ = netip.ParseAddrPort(a.String())
		}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Close closes inner, which ends Accept. Accepted connections stay open;
// behind NewWSListener those in their handshake are closed, and Close
// waits for the goroutines of the handshakes.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	err := l.inner.Close()
	if l.ws != nil {
		l.ws.close()
	}
	return err
}

// Addr returns inner's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Transport is what the listener's connections carry.
func (l *Listener) Transport() Transport { return l.tp }

// Conns returns the number of accepted connections not yet closed.
func (l *Listener) Conns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// Open returns the accepted connections not yet closed.
func (l *Listener) Open() []*Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*Conn, 0, len(l.conns))
	for _, c := range l.conns {
		out = append(out, c)
	}
	return out
}

// Conn returns the open connection of flow k.
func (l *Listener) Conn(k FlowKey) (*Conn, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.conns[k]
	return c, ok
}

func (l *Listener) forget(c *Conn) {
	l.mu.Lock()
	if l.conns[c.key] == c {
		delete(l.conns, c.key)
	}
	l.mu.Unlock()
}

// Conn is an accepted connection. On TCP and TLS its Read answers a CRLF
// keepalive ping between messages with "\r\n" itself and swallows it,
// and swallows the peer's "\r\n" pong, so sipgo never sees either.
//
// A swallowed keepalive makes Read return 0, nil. That is deliberate:
// sipgo's read loop skips empty reads and calls Read again, which re-arms
// its read timeout, so a keepalive keeps the connection from timing out
// exactly as when sipgo answers it itself.
//
// Read enforces the Listener's StreamLimits with the inner connection's
// read deadline, which is the earliest of the caller's (SetReadDeadline,
// SetDeadline: sipgo's ReadTimeout sets one before each Read), the
// current message's and the idle one. Callers must therefore set read
// deadlines on the Conn, never on NetConn.
type Conn struct {
	inner net.Conn
	l     *Listener
	key   FlowKey
	crlf  bool    // handle CRLF keepalives (TCP, TLS)
	ws    *wsConn // behind NewWSListener, set before Accept returns it

	rmu sync.Mutex // guards fr
	fr  framer

	dmu      sync.Mutex // guards the read deadlines; zero is none
	userRD   time.Time  // the caller's
	headerDL time.Time  // the current (or first) message's; none between messages
	idleDL   time.Time  // when an unbound flow is idle; none if Bound is nil
	applied  time.Time  // set on inner: the earliest of the three

	closed atomic.Bool // OnClose has fired
}

var _ net.Conn = (*Conn)(nil)

var (
	crlfPing = []byte("\r\n\r\n")
	crlfPong = []byte("\r\n")
)

// Key returns the connection's flow: the listener's transport, the
// connection's local address and its peer, both unmapped.
func (c *Conn) Key() FlowKey { return c.key }

// NetConn returns the wrapped connection (for TLS, the *tls.Conn).
func (c *Conn) NetConn() net.Conn { return c.inner }

// Read reads from the connection, handling keepalives on the way. When
// it closes the connection for one of the StreamLimits, it returns an
// error that is net.ErrClosed.
func (c *Conn) Read(b []byte) (int, error) {
	for {
		if err := c.armRead(); err != nil {
			c.fireClose(closeReason(err))
			return 0, err
		}
		n, err := c.readInner(b)
		if le, ok := err.(*limitError); ok {
			return 0, c.abort(le)
		}
		if n > 0 {
			if c.l.hooks.OnRead != nil && c.ws == nil { // the wsConn calls it
				c.l.hooks.OnRead(c.key)
			}
			var ferr error
			if n, ferr = c.frame(b[:n]); ferr != nil {
				if le, ok := ferr.(*limitError); ok {
					return 0, c.abort(le)
				}
				if err == nil {
					err = ferr
				}
			}
		} else if errors.Is(err, os.ErrDeadlineExceeded) {
			le, again := c.expired()
			if le != nil {
				return 0, c.abort(le)
			}
			if again {
				continue
			}
		}
		if err != nil {
			c.fireClose(closeReason(err))
		}
		return n, err
	}
}

func (c *Conn) readInner(b []byte) (int, error) {
	if c.ws != nil {
		return c.ws.read(b)
	}
	return c.inner.Read(b)
}

// frame handles what a read returned: a keepalive, or bytes of messages
// whose boundaries move the deadlines. It returns how many bytes of p are
// for the caller.
func (c *Conn) frame(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	wasIdle, msgs := c.fr.idle(), c.fr.msgs
	if c.crlf && wasIdle && len(p) <= len(crlfPing) {
		switch string(p) {
		case "\r\n\r\n":
			c.advance(false, true, false)
			_, err := c.inner.Write(crlfPong)
			if err == nil && c.l.hooks.OnPing != nil {
				c.l.hooks.OnPing(c.key)
			}
			return 0, err
		case "\r\n":
			c.advance(false, true, false)
			if c.l.hooks.OnPong != nil {
				c.l.hooks.OnPong(c.key)
			}
			return 0, nil
		}
	}
	if err := c.fr.feed(p); err != nil {
		return 0, err
	}
	started := c.fr.msgs != msgs
	// Bytes of a message are activity; CRLFs between messages are not,
	// but on WebSocket every byte is.
	c.advance(started, c.fr.idle(), !c.crlf || !wasIdle || started)
	return len(p), nil
}

// advance moves the deadlines after a read: a message begun in it is due
// within HeaderTimeout, none is due between messages, and activity puts
// idleness off. They take effect at the next Read.
func (c *Conn) advance(started, idle, active bool) {
	lim := &c.l.limits
	c.dmu.Lock()
	defer c.dmu.Unlock()
	var now time.Time
	if started && !idle && lim.HeaderTimeout > 0 || active && !c.idleDL.IsZero() {
		now = time.Now()
	}
	switch {
	case idle:
		c.headerDL = time.Time{}
	case started && lim.HeaderTimeout > 0:
		c.headerDL = now.Add(lim.HeaderTimeout)
	}
	if active && !c.idleDL.IsZero() {
		c.idleDL = now.Add(lim.IdleTimeout)
	}
}

// armRead sets the earliest read deadline on inner, if it changed.
func (c *Conn) armRead() error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	return c.armReadLocked()
}

func (c *Conn) armReadLocked() error {
	d := c.userRD
	for _, t := range [...]time.Time{c.headerDL, c.idleDL} {
		if !t.IsZero() && (d.IsZero() || t.Before(d)) {
			d = t
		}
	}
	if d.Equal(c.applied) {
		return nil
	}
	if err := c.inner.SetReadDeadline(d); err != nil {
		return err
	}
	c.applied = d
	return nil
}

// expired tells whose deadline a read that timed out hit: the caller's
// (nil, false: the timeout is the caller's to see), a limit's (the limit,
// which closes the connection), or none any more (nil, true: read
// again). An idle deadline of a flow that is bound by now is put off.
func (c *Conn) expired() (le *limitError, again bool) {
	now := time.Now()
	passed := func(t time.Time) bool { return !t.IsZero() && !now.Before(t) }
	c.dmu.Lock()
	user, header, idle := passed(c.userRD), passed(c.headerDL), passed(c.idleDL)
	c.dmu.Unlock()
	switch {
	case user:
		return nil, false
	case header:
		return errHeaderTimeout, false
	case idle:
		if !c.l.hooks.Bound(c.key) {
			return errIdle, false
		}
		c.dmu.Lock()
		c.idleDL = now.Add(c.l.limits.IdleTimeout)
		c.dmu.Unlock()
	}
	return nil, true
}

// abort closes the connection for le, which OnClose reports, and returns
// le for Read to return.
func (c *Conn) abort(le *limitError) error {
	c.fireClose(le.why)
	c.inner.Close()
	return le
}

// Ping sends a CRLF keepalive ping ("\r\n\r\n", RFC 5626 §3.5.1) to the
// peer, whose "\r\n" answer fires OnPong. It is safe to call while sipgo
// writes: a single Write reaches a TCP or TLS stream whole. It fails
// with ErrPingUnsupported on WebSocket.
func (c *Conn) Ping() error {
	if !c.crlf {
		return ErrPingUnsupported
	}
	_, err := c.inner.Write(crlfPing)
	return err
}

// Write writes to the connection.
func (c *Conn) Write(b []byte) (int, error) {
	if c.ws != nil {
		return c.ws.write(b)
	}
	return c.inner.Write(b)
}

// Close closes the connection; the first Close (or failed Read) fires
// OnClose.
func (c *Conn) Close() error {
	c.fireClose("closed")
	return c.inner.Close()
}

// CloseGently half-closes c, so the peer reads the end of the stream
// (FIN), and closes it after linger. What the peer sends meanwhile is
// still read: closing with unread data would make the kernel answer with
// a reset instead. Connections that cannot half-close (WebSocket) close
// at once.
func (c *Conn) CloseGently(linger time.Duration) error {
	cw, ok := c.inner.(interface{ CloseWrite() error })
	if !ok || c.ws != nil || cw.CloseWrite() != nil {
		return c.Close()
	}
	time.AfterFunc(linger, func() { _ = c.Close() })
	return nil
}

func (c *Conn) fireClose(why string) {
	if !c.closed.CompareAndSwap(false, true) {
		return
	}
	c.l.forget(c)
	if c.l.hooks.OnClose != nil {
		c.l.hooks.OnClose(c.key, why)
	}
}

// closeReason classifies a read error for OnClose, in few enough classes
// to serve as a metric label.
func closeReason(err error) string {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE):
		return "reset"
	case strings.Contains(err.Error(), "tls: "):
		return "tls"
	}
	return "error"
}

// LocalAddr returns the local address.
func (c *Conn) LocalAddr() net.Addr { return c.inner.LocalAddr() }

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.inner.RemoteAddr() }

// SetDeadline sets the read and write deadlines, as SetReadDeadline and
// SetWriteDeadline do.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the caller's read deadline. It does not replace
// the limits' deadlines: a Read times out at the earliest of them, and
// returns a timeout error only for the caller's.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.userRD = t
	return c.armReadLocked()
}

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if c.ws != nil {
		return c.ws.setWriteDeadline(t)
	}
	return c.inner.SetWriteDeadline(t)
}
