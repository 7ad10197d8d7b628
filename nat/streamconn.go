package nat

import (
	"errors"
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
	// OnClose is called exactly once per accepted connection, when it is
	// closed or a read fails. why is "closed" (closed locally), "eof"
	// (closed by the peer), "timeout" (a read deadline passed), "reset",
	// "tls" (a TLS handshake or record error) or "error".
	OnClose func(k FlowKey, why string)
}

// Listener wraps a stream listener handed to sipgo's ServeTCP, ServeTLS,
// ServeWS or ServeWSS, so that the edge sees each connection as a flow.
// For TLS and WSS, wrap the TLS listener (tls.NewListener), so the
// wrapper sees plaintext; sipgo asserts no concrete type on accepted
// connections, so the wrapper stands in for *net.TCPConn or *tls.Conn.
//
// Unlike a bare listener it does not fail on resource exhaustion:
// sipgo's accept loop returns on any error and never accepts again, so
// Accept retries EMFILE, ENFILE, ENOBUFS, ENOMEM and ECONNABORTED, backing
// off up to a second, until Close.
type Listener struct {
	inner net.Listener
	tp    Transport
	hooks StreamHooks

	closeOnce sync.Once
	done      chan struct{}

	mu    sync.Mutex
	conns map[FlowKey]*Conn
}

var _ net.Listener = (*Listener)(nil)

// NewListener wraps inner, whose connections are flows of transport t
// (TCP, TLS, WS or WSS). The Listener owns inner: closing it closes
// inner.
func NewListener(inner net.Listener, t Transport, hooks StreamHooks) *Listener {
	return &Listener{inner: inner, tp: t, hooks: hooks, done: make(chan struct{}), conns: make(map[FlowKey]*Conn)}
}

// Accept waits for the next connection that hooks.Accept allows.
func (l *Listener) Accept() (net.Conn, error) {
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
		c := &Conn{inner: nc, l: l, key: k, crlf: l.tp == TCP || l.tp == TLS}
		l.mu.Lock()
		l.conns[k] = c
		l.mu.Unlock()
		return c, nil
	}
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

// Close closes inner, which ends Accept. Accepted connections stay open.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.inner.Close()
}

// Addr returns inner's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Conns returns the number of accepted connections not yet closed.
func (l *Listener) Conns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
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
type Conn struct {
	inner net.Conn
	l     *Listener
	key   FlowKey
	crlf  bool // handle CRLF keepalives (TCP, TLS)

	rmu sync.Mutex // guards fr
	fr  framer

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

// Read reads from the connection, handling keepalives on the way.
func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.inner.Read(b)
	if n > 0 {
		if c.l.hooks.OnRead != nil {
			c.l.hooks.OnRead(c.key)
		}
		if c.crlf {
			var werr error
			if n, werr = c.keepalive(b[:n]); werr != nil && err == nil {
				err = werr
			}
		}
	}
	if err != nil {
		c.fireClose(closeReason(err))
	}
	return n, err
}

// keepalive handles a keepalive in p, if p is one, and returns how many
// bytes of p are for the caller.
func (c *Conn) keepalive(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.fr.idle() && len(p) <= len(crlfPing) {
		switch string(p) {
		case "\r\n\r\n":
			_, err := c.inner.Write(crlfPong)
			if err == nil && c.l.hooks.OnPing != nil {
				c.l.hooks.OnPing(c.key)
			}
			return 0, err
		case "\r\n":
			if c.l.hooks.OnPong != nil {
				c.l.hooks.OnPong(c.key)
			}
			return 0, nil
		}
	}
	c.fr.feed(p)
	return len(p), nil
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
func (c *Conn) Write(b []byte) (int, error) { return c.inner.Write(b) }

// Close closes the connection; the first Close (or failed Read) fires
// OnClose.
func (c *Conn) Close() error {
	c.fireClose("closed")
	return c.inner.Close()
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

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error { return c.inner.SetDeadline(t) }

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.inner.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.inner.SetWriteDeadline(t) }
