package nat

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v2"
)

// PacketHooks observes what a PacketConn does with each datagram. Every
// field is optional. Hooks run synchronously on the reading goroutine,
// ahead of SIP processing, so they must be quick and must not block.
type PacketHooks struct {
	// Accept is called first, for every datagram, with its source and
	// size; false drops the datagram silently. Nil accepts everything.
	Accept func(src netip.AddrPort, n int) bool
	// OnSTUN is called for each valid STUN Binding request, after the
	// reply has been sent (a failure to send it is not reported).
	OnSTUN func(src netip.AddrPort)
	// OnCRLF is called for a CRLF keepalive (a datagram of only CR and
	// LF bytes), which is dropped without a reply (RFC 5626 §4.4.1).
	OnCRLF func(src netip.AddrPort)
	// Inspect sees every other datagram just before it is returned to the
	// caller; false drops it (say, it cannot be SIP). b must not be kept.
	Inspect func(src netip.AddrPort, b []byte) bool
}

// PacketConn wraps a UDP socket for sipgo's ServeUDP. Its ReadFrom
// answers STUN Binding requests itself and swallows CRLF keepalives and
// any other STUN traffic, returning only the remaining datagrams (SIP) to
// its caller. Writes and everything else go straight to the inner socket.
//
// Source addresses given to the hooks are unmapped (an IPv4 peer on a
// dual-stack socket appears as IPv4); the net.Addr returned by ReadFrom is
// the inner socket's own.
//
// Like any net.PacketConn it is safe for concurrent use. sipgo reads from
// a single goroutine; the STUN scratch state is guarded by a mutex that is
// therefore never contended in practice.
type PacketConn struct {
	inner net.PacketConn
	udp   udpAddrPortConn // inner's allocation-free API, if it has one
	hooks PacketHooks

	mu  sync.Mutex // guards req, res and ip
	req stun.Message
	res stun.Message
	ip  [16]byte
}

// udpAddrPortConn is the netip API of *net.UDPConn, which does not
// allocate a net.Addr per datagram.
type udpAddrPortConn interface {
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
}

var _ net.PacketConn = (*PacketConn)(nil)

// NewPacketConn wraps inner. The PacketConn owns inner from then on:
// closing it closes inner.
func NewPacketConn(inner net.PacketConn, hooks PacketHooks) *PacketConn {
	c := &PacketConn{inner: inner, hooks: hooks}
	c.udp, _ = inner.(udpAddrPortConn)
	c.req.Raw = make([]byte, 0, 512)
	c.res.Raw = make([]byte, 0, 64)
	return c
}

// ReadFrom reads the next datagram that is neither a keepalive nor other
// STUN traffic, handling those it skips on the way.
func (c *PacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		var (
			n    int
			addr net.Addr
			raw  netip.AddrPort
			err  error
		)
		if c.udp != nil {
			n, raw, err = c.udp.ReadFromUDPAddrPort(p)
		} else {
			n, addr, err = c.inner.ReadFrom(p)
			raw = addrPortOf(addr)
		}
		if err != nil {
			if addr == nil && raw.IsValid() {
				addr = udpAddrOf(raw)
			}
			return n, addr, err
		}
		src := netip.AddrPortFrom(raw.Addr().Unmap(), raw.Port())
		if c.hooks.Accept != nil && !c.hooks.Accept(src, n) {
			continue
		}
		b := p[:n]
		switch {
		case isSTUN(b):
			if c.answerSTUN(b, raw, addr) && c.hooks.OnSTUN != nil {
				c.hooks.OnSTUN(src)
			}
			continue
		case isCRLF(b):
			if c.hooks.OnCRLF != nil {
				c.hooks.OnCRLF(src)
			}
			continue
		}
		if c.hooks.Inspect != nil && !c.hooks.Inspect(src, b) {
			continue
		}
		if addr == nil {
			addr = udpAddrOf(raw)
		}
		return n, addr, nil
	}
}

// isSTUN reports whether b looks like STUN (RFC 5389 §6, RFC 7983): the
// top two bits zero and the magic cookie. No SIP message can match.
func isSTUN(b []byte) bool {
	return len(b) >= 20 && b[0]&0xC0 == 0 && stun.IsMessage(b)
}

// isCRLF reports whether b is a non-empty run of CR and LF bytes.
func isCRLF(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}

// answerSTUN replies to a well-formed Binding request in b from src with
// its mapped address and reports whether b was one. Anything else is
// ignored.
// addr is src as a net.Addr when the inner socket has no netip API.
func (c *PacketConn) answerSTUN(b []byte, src netip.AddrPort, addr net.Addr) bool {
	if size := int(binary.BigEndian.Uint16(b[2:4])); size != len(b)-20 || size%4 != 0 || !src.IsValid() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	req, res := &c.req, &c.res
	if err := stun.Decode(b, req); err != nil || req.Type != stun.BindingRequest {
		return false
	}
	if req.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(req) != nil {
		return false
	}

	res.Reset()
	res.Type = stun.BindingSuccess
	res.TransactionID = req.TransactionID
	res.WriteHeader()
	mapped := stun.XORMappedAddress{Port: int(src.Port())}
	if a := src.Addr().Unmap(); a.Is4() {
		v := a.As4()
		mapped.IP = c.ip[:copy(c.ip[:], v[:])]
	} else {
		v := a.As16()
		mapped.IP = c.ip[:copy(c.ip[:], v[:])]
	}
	if err := mapped.AddTo(res); err != nil {
		return false
	}
	_ = stun.Fingerprint.AddTo(res) // last, as RFC 5389 §15.5 requires; never fails

	// A failed send is the peer's loss: it retransmits, and the next read
	// reports a broken socket.
	if c.udp != nil {
		_, _ = c.udp.WriteToUDPAddrPort(res.Raw, src)
	} else {
		_, _ = c.inner.WriteTo(res.Raw, addr)
	}
	return true
}

// udpAddrOf is net.UDPAddrFromAddrPort in one allocation instead of two.
func udpAddrOf(ap netip.AddrPort) *net.UDPAddr {
	b := new(struct {
		addr net.UDPAddr
		ip   [16]byte
	})
	a := ap.Addr()
	if a.Is4() {
		v := a.As4()
		b.addr.IP = b.ip[:copy(b.ip[:], v[:])]
	} else if a.Is6() {
		b.ip = a.As16()
		b.addr.IP = b.ip[:]
	}
	b.addr.Port = int(ap.Port())
	b.addr.Zone = a.Zone()
	return &b.addr
}

// addrPortOf converts a UDP source address; anything else is invalid.
func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case interface{ AddrPort() netip.AddrPort }:
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

// WriteTo writes to the inner socket.
func (c *PacketConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	return c.inner.WriteTo(p, addr)
}

// Ping sends a CRLF keepalive ("\r\n\r\n", RFC 5626 §4.4.1) from this
// socket to to, which nothing answers. It does not allocate when the
// inner socket is a *net.UDPConn.
func (c *PacketConn) Ping(to netip.AddrPort) error {
	var err error
	if c.udp != nil {
		_, err = c.udp.WriteToUDPAddrPort(crlfPing, to)
	} else {
		_, err = c.inner.WriteTo(crlfPing, udpAddrOf(to))
	}
	return err
}

// Close closes the inner socket, which unblocks ReadFrom.
func (c *PacketConn) Close() error { return c.inner.Close() }

// LocalAddr returns the inner socket's address.
func (c *PacketConn) LocalAddr() net.Addr { return c.inner.LocalAddr() }

// SetDeadline sets the inner socket's deadlines. A read deadline bounds a
// whole ReadFrom, including any keepalives it skips.
func (c *PacketConn) SetDeadline(t time.Time) error { return c.inner.SetDeadline(t) }

// SetReadDeadline sets the inner socket's read deadline.
func (c *PacketConn) SetReadDeadline(t time.Time) error { return c.inner.SetReadDeadline(t) }

// SetWriteDeadline sets the inner socket's write deadline.
func (c *PacketConn) SetWriteDeadline(t time.Time) error { return c.inner.SetWriteDeadline(t) }
