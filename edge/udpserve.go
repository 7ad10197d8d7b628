package edge

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/emiago/sipgo"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// recycleAfter is how many datagrams from sources without a flow sipgo
// may see before its UDP read loop is restarted. sipgo remembers every
// source address a listener ever read from (its connection pool and a
// map local to the read loop) and forgets them only when the loop ends;
// restarting it bounds that memory under a spoofed-source flood at
// roughly recycleAfter × 150 B.
const recycleAfter = 50_000

var errRecycle = errors.New("recycling sipgo's UDP read loop")

// udpSocket is an access UDP socket as sipgo sees it: keepalives and
// limits handled below it, and a read loop that can be restarted.
type udpSocket struct {
	net.PacketConn // the nat.PacketConn over the raw socket
	raw            net.PacketConn
	unknown        atomic.Int64 // datagrams from flowless sources since the last restart
	recycle        atomic.Bool
	stopping       atomic.Bool
}

func (u *udpSocket) ReadFrom(b []byte) (int, net.Addr, error) {
	if u.recycle.CompareAndSwap(true, false) {
		return 0, nil, errRecycle
	}
	return u.PacketConn.ReadFrom(b)
}

// Close is what sipgo calls when its read loop ends; the socket itself
// stays open for a restart until the server stops.
func (u *udpSocket) Close() error {
	if u.stopping.Load() {
		return u.raw.Close()
	}
	return nil
}

// newUDPSocket wraps one access UDP socket bound to local. Per datagram
// it costs one limiter check and one flow-table lookup, both before sipgo
// sees anything.
func (s *Server) newUDPSocket(raw net.PacketConn, local netip.AddrPort) *udpSocket {
	u := &udpSocket{raw: raw}
	u.PacketConn = nat.NewPacketConn(raw, nat.PacketHooks{
		Accept: func(src netip.AddrPort, n int) bool {
			if s.limiter.Packet(src.Addr(), n) != ratelimit.Allow {
				return false // before sipgo parses, pools or logs anything
			}
			// Traffic refreshes a known flow; datagrams from flowless
			// sources (STUN and CRLF included, a slight overcount) bring
			// the next read-loop restart closer.
			if !s.flows.Touch(nat.FlowKey{Transport: nat.UDP, Local: local, Remote: src}) && u.unknown.Add(1) >= recycleAfter {
				u.unknown.Store(0)
				u.recycle.Store(true)
			}
			return true
		},
		Inspect: func(src netip.AddrPort, b []byte) bool {
			if !looksLikeSIP(b) {
				s.limiter.Malformed(src.Addr())
				return false // garbage never reaches sipgo's parser, pool or log
			}
			return true
		},
	})
	return u
}

// serveUDP runs sipgo's read loop on u until the server stops,
// restarting it when u asks to be recycled.
func serveUDP(srv *sipgo.Server, u *udpSocket, ready *readyConn) error {
	for {
		err := srv.ServeUDP(ready)
		if u.stopping.Load() {
			return err
		}
	}
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
