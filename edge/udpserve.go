package edge

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/sipwire"
	"github.com/sipedge/sipedge/edge/udptx"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/nat/rawudp"
	"github.com/sipedge/sipedge/ratelimit"
)

// recycleAfter is how many datagrams from sources without a flow sipgo
// may see before its UDP read loop is restarted. sipgo remembers every
// source address a listener ever read from (its connection pool and a
// map local to the read loop) and forgets them only when the loop ends;
// restarting it bounds that memory under a spoofed-source flood at
// roughly recycleAfter × 150 B.
const recycleAfter = 20_000

var errRecycle = errors.New("recycling sipgo's UDP read loop")

// recycleDrain is how long the read loop pauses before a restart (once
// per recycleAfter datagrams from unknown sources, so only in a flood).
const recycleDrain = 100 * time.Millisecond

// udpSocket is a UDP socket as sipgo sees it: on the access side
// keepalives and limits handled below it (a nat.PacketConn), and a read
// loop that can be restarted. Its first read means sipgo has taken it
// into service: sipgo puts the socket into its connection pool and only
// then starts reading, so requests can now leave from it (sending
// earlier makes sipgo bind a second socket to the same port and fail).
type udpSocket struct {
	net.PacketConn                // the nat.PacketConn over io, or raw itself
	raw            net.PacketConn // the socket the edge bound
	io             net.PacketConn // raw, or raw with raw system calls (rawudp)
	local          netip.AddrPort
	unknown        atomic.Int64 // datagrams from flowless sources since the last restart
	quiet          struct {     // maintenance's view of unknown, to recycle once a flood is over
		last  int64
		ticks int
	}
	recycle   atomic.Bool // the next read ends sipgo's read loop
	recycled  atomic.Bool // the last read loop ended for a recycle
	stopping  atomic.Bool
	readyOnce sync.Once
	ready     chan struct{}
}

func newUDPSocket(raw net.PacketConn) *udpSocket {
	u := &udpSocket{PacketConn: raw, raw: raw, io: raw, local: addrPortOf(raw.LocalAddr()), ready: make(chan struct{})}
	if c, ok := raw.(*net.UDPConn); ok {
		if fast := rawudp.New(c); fast != nil {
			u.io = fast
		}
	}
	return u
}

// udpConn is u's socket for the edge's own reads and writes (udptx):
// with raw system calls where it can be. ok is false when u's socket is
// not a UDP one.
func (u *udpSocket) udpConn() (udptx.Conn, bool) {
	switch c := u.io.(type) {
	case *rawudp.Conn:
		return c, true
	case *net.UDPConn:
		return c, true
	}
	return nil, false
}

func (u *udpSocket) ReadFrom(b []byte) (int, net.Addr, error) {
	u.readyOnce.Do(func() { close(u.ready) })
	if u.recycle.CompareAndSwap(true, false) {
		return u.restart()
	}
	n, a, err := u.PacketConn.ReadFrom(b)
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() && u.recycle.CompareAndSwap(true, false) {
		return u.restart() // woken by recycleIfQuiet
	}
	return n, a, err
}

// restart ends sipgo's read loop so that serveUDP starts a new one.
func (u *udpSocket) restart() (int, net.Addr, error) {
	_ = u.raw.SetReadDeadline(time.Time{})
	// sipgo forgets the sources of this read loop when it ends, and a
	// request still being handled from one of them then makes it open a
	// new socket toward the Via (and keep it). Reading nothing for a
	// moment first lets those requests get past that point.
	time.Sleep(recycleDrain)
	u.recycled.Store(true)
	return 0, nil, errRecycle
}

// Quiet recycling: once at least quietMin unknown sources came through
// since the last restart and none for quietTicks maintenance ticks, the
// read loop restarts, so what sipgo remembers of a flood goes when the
// flood does, not at the next flood.
const (
	quietMin   = 1000
	quietTicks = 10
)

// recycleIfQuiet is called by the maintenance loop once a tick: it wakes
// the read loop (a read deadline in the past) to restart it.
func (u *udpSocket) recycleIfQuiet() {
	n := u.unknown.Load()
	if n != u.quiet.last {
		u.quiet.last, u.quiet.ticks = n, 0
		return
	}
	if u.quiet.ticks++; n >= quietMin && u.quiet.ticks >= quietTicks {
		u.unknown.Store(0)
		u.quiet.last, u.quiet.ticks = 0, 0
		u.recycle.Store(true)
		_ = u.raw.SetReadDeadline(time.Now())
	}
}

// Close is what sipgo calls when its read loop ends; the socket itself
// stays open for a restart until the server stops.
func (u *udpSocket) Close() error {
	if u.stopping.Load() {
		return u.raw.Close()
	}
	return nil
}

// guardAccess puts the access side's checks below sipgo: per datagram
// one flow-table lookup and one limiter check, before sipgo sees
// anything; STUN and CRLF keepalives answered; garbage dropped. lean, if
// set, may take a SIP datagram for the edge's own transactions (true:
// taken, sipgo never sees it).
func (u *udpSocket) guardAccess(limiter *ratelimit.Limiter, flows *nat.FlowTable, lean func(netip.AddrPort, []byte) bool) *nat.PacketConn {
	pc := nat.NewPacketConn(u.io, nat.PacketHooks{
		Accept: func(src netip.AddrPort, n int) bool {
			// Traffic refreshes a known flow, in the same lookup that
			// tells whether the source proved it receives what is sent to
			// it (a registered flow); anyone else may be spoofed, is never
			// banned, and, once sipgo sees it, brings the next read-loop
			// restart closer.
			known := flows.Touch(nat.FlowKey{Transport: nat.UDP, Local: u.local, Remote: src})
			if limiter.Packet(src.Addr(), n, known) != ratelimit.Allow {
				return false // before sipgo parses, pools or logs anything
			}
			if !known {
				u.unknownSource()
			}
			return true
		},
		Inspect: func(src netip.AddrPort, b []byte) bool {
			if !looksLikeSIP(b) {
				limiter.Malformed(src.Addr(), flows.Alive(nat.FlowKey{Transport: nat.UDP, Local: u.local, Remote: src}))
				return false // garbage never reaches sipgo's parser, pool or log
			}
			return lean == nil || !lean(src, b)
		},
	})
	u.PacketConn = pc
	return pc
}

// guardCore puts the same triage below sipgo on the core side for
// anyone but the cores: the limiter and the SIP-shape check, before
// sipgo parses, pools or logs anything. The cores pass untouched, but
// for the answers to the edge's own transactions (txs, if set), which
// are taken before sipgo sees them.
func (u *udpSocket) guardCore(limiter *ratelimit.Limiter, trusted func(netip.Addr) bool, txs *udptx.Client) {
	u.PacketConn = nat.NewPacketConn(u.io, nat.PacketHooks{
		Accept: func(src netip.AddrPort, n int) bool {
			if trusted(src.Addr()) {
				return true
			}
			if limiter.Packet(src.Addr(), n, false) != ratelimit.Allow {
				return false
			}
			u.unknownSource() // sipgo remembers strangers here too
			return true
		},
		Inspect: func(src netip.AddrPort, b []byte) bool {
			core := trusted(src.Addr())
			if txs != nil && txs.Receive(b, src, core) {
				return false
			}
			return core || looksLikeSIP(b)
		},
	})
}

// unknownSource counts a datagram from a source without a flow that
// sipgo will see (STUN and CRLF included, a slight overcount) toward the
// next restart of sipgo's read loop.
func (u *udpSocket) unknownSource() {
	if u.unknown.Add(1) >= recycleAfter {
		u.unknown.Store(0)
		u.recycle.Store(true)
	}
}

// serveUDP runs sipgo's read loop on u until the server stops,
// restarting it when u asks to be recycled.
// A read loop that fails again and again (a socket error, not a
// recycle) backs off, so it cannot spin.
func serveUDP(srv *sipgo.Server, u *udpSocket) error {
	var delay time.Duration
	for {
		err := srv.ServeUDP(u) // sipgo logs why its loop ended and returns nil
		if u.stopping.Load() {
			return err
		}
		if u.recycled.Swap(false) {
			delay = 0
			continue
		}
		delay = min(max(2*delay, 5*time.Millisecond), time.Second)
		time.Sleep(delay)
	}
}

// addrPortOf is a socket address as a netip.AddrPort, unmapped.
func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		return unmap(a.AddrPort())
	case *net.TCPAddr:
		return unmap(a.AddrPort())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return unmap(ap)
}

// looksLikeSIP is a cheap check that a datagram can be a SIP message: a
// request line ending in SIP/x.y or a status line starting with it, and a
// header block that ends. Anything else is dropped before sipgo parses
// it (and logs its payload).
func looksLikeSIP(b []byte) bool {
	line, _, ok := bytes.Cut(b, []byte("\r\n"))
	if !ok || len(line) < 12 {
		return false
	}
	// Any SIP version passes: a wrong one deserves its 505.
	if !bytes.HasPrefix(line, []byte("SIP/")) && bytes.LastIndex(line, []byte(" SIP/")) < 0 {
		return false
	}
	return bytes.Contains(b, []byte("\r\n\r\n"))
}

// leanAccess takes the non-INVITE requests (REGISTERs above all) off u
// before sipgo does: parsed once here, matched to the edge's own UDP
// server transactions (udptx), and handled: a REGISTER right here, up to
// whatever may wait (Request.detach); the others on a worker, since the
// proxy may wait for another phone. sipgo's transaction layer cost as much
// CPU as the registrar itself. INVITE, ACK and CANCEL (which must find
// their INVITE) and responses stay sipgo's, as does anything it cannot
// take (no RFC 3261 branch, unparsable). nil when u is not a
// *net.UDPConn.
func (s *Server) leanAccess(u *udpSocket) func(netip.AddrPort, []byte) bool {
	raw, ok := u.udpConn()
	if !ok {
		return nil
	}
	txs := udptx.NewServer(raw, sip.Timer_J)
	s.accessTx = append(s.accessTx, txs) // s.lmu is held (serveAccess)
	parser := sip.NewParser()            // used by u's read loop only
	return func(src netip.AddrPort, b []byte) bool {
		if !leanMethod(b) {
			return false
		}
		msg, err := sipwire.Parse(parser, b)
		if err != nil {
			s.leanFallbacks.Add(1)
			return false // sipgo refuses it, as it always did
		}
		req, ok := msg.(*sip.Request)
		if !ok || !leanMethod([]byte(req.Method)) {
			s.leanFallbacks.Add(1)
			return false
		}
		tx, isNew, ok := txs.Receive(req, src)
		if !ok {
			s.leanFallbacks.Add(1) // no RFC 3261 branch: sipgo matches it the old way
			return false
		}
		if isNew {
			req.SetTransport("UDP")
			req.SetSource(src.String())
			flow := nat.FlowKey{Transport: nat.UDP, Local: u.local, Remote: src}
			r := &Request{Request: req, Tx: tx, Flow: flow, headClean: cleanHead(b)}
			run := s.workers.submit
			if req.Method == sip.REGISTER {
				// Handled here, on the read loop, up to what may wait
				// (r.detach): over UDP both ways nothing does, and no
				// goroutine is woken for the REGISTER at all.
				r.detach, run = s.detach(r), inline
			}
			s.dispatch(s.accessHandler, "access", r, false, run)
		}
		return true
	}
}

// inline runs f at once, on the caller's goroutine.
func inline(f func()) { f() }

// leanMethod reports whether the request line (or method) in b names a
// method the edge's own transactions take: any but INVITE, ACK and
// CANCEL; a response ("SIP/2.0 ...") is never one.
func leanMethod(b []byte) bool {
	method, _, _ := bytes.Cut(b, []byte(" "))
	switch string(method) { // compared without allocating
	case "", "INVITE", "ACK", "CANCEL", "SIP/2.0":
		return false
	}
	return true
}
