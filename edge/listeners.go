package edge

import (
	"context"
	"errors"
	"github.com/sipedge/sipedge/edge/audit"
	"net"
	"net/netip"

	"github.com/sipedge/sipedge/nat"
)

// serve runs a listener's loop among the server's goroutines.
func (s *Server) serve(f func() error) {
	s.serving.Go(func() {
		if err := f(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Error("listener stopped", "err", err) // it will not come back
		}
	})
}

// serveAccess serves the access sockets of socks: at start, and those a
// reload adds. s.lmu must be held.
func (s *Server) serveAccess(socks *Sockets) {
	udp := make(map[netip.AddrPort]*nat.PacketConn, len(s.udp)+len(socks.UDP))
	for k, v := range *s.pinger.udp.Load() {
		udp[k] = v
	}
	for _, c := range socks.UDP {
		u := newUDPSocket(c)
		udp[u.local] = u.guardAccess(s.d.Limiter, s.d.Flows, s.leanAccess(u))
		s.udp = append(s.udp, u)
		s.serve(func() error { return serveUDP(s.accessSrv, u) })
	}
	s.pinger.udp.Store(&udp)
	if socks != s.socks {
		for _, c := range socks.UDP {
			s.log.Info("listener opened", "transport", "UDP", "addr", addrPortOf(c.LocalAddr()))
		}
	}
	streams := []struct {
		ls    []net.Listener
		tp    nat.Transport
		serve func(net.Listener) error
	}{
		{socks.TCP, nat.TCP, s.accessSrv.ServeTCP}, {socks.TLS, nat.TLS, s.accessSrv.ServeTLS},
		{socks.WS, nat.WS, s.accessSrv.ServeWS}, {socks.WSS, nat.WSS, s.accessSrv.ServeWSS},
	}
	for _, st := range streams {
		for _, l := range st.ls {
			// Stream listeners are wrapped so every connection is a flow:
			// CRLF pings answered, close noticed at once. WS and WSS get
			// nat's WebSocket shim: RFC 6455/7118 done right under sipgo,
			// handshakes off its accept loop.
			nl := nat.NewWSListener(l, st.tp, s.hooks)
			if socks != s.socks {
				s.log.Info("listener opened", "transport", st.tp.String(), "addr", addrPortOf(l.Addr()))
			}
			s.streams = append(s.streams, nl)
			s.serve(func() error { return st.serve(nl) })
		}
	}
	if socks != s.socks {
		s.socks.UDP = append(s.socks.UDP, socks.UDP...)
		s.socks.TCP = append(s.socks.TCP, socks.TCP...)
		s.socks.TLS = append(s.socks.TLS, socks.TLS...)
		s.socks.WS = append(s.socks.WS, socks.WS...)
		s.socks.WSS = append(s.socks.WSS, socks.WSS...)
	}
	s.self.setAccess(s.socks.addrs())
}

// accessUDP returns the access UDP sockets being served.
func (s *Server) accessUDP() []*udpSocket {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	return append([]*udpSocket(nil), s.udp...)
}

// udpReady waits until sipgo has taken each of us into service.
func (s *Server) udpReady(ctx context.Context, us []*udpSocket) error {
	for _, u := range us {
		select {
		case <-u.ready:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// holdsAccess reports whether this host holds the access addresses, and
// logs when that changes. A standby of a pair binds the floating address
// before it moves here (net.ipv4.ip_nonlocal_bind) and sends no
// keepalives meanwhile: its pings would leave from an address whose
// answers reach the active edge. Wildcard listeners always hold.
func (s *Server) holdsAccess() bool {
	held := true
	if want := s.specificAccess(); len(want) > 0 {
		held = false
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if pf, err := netip.ParsePrefix(a.String()); err == nil && want[pf.Addr().Unmap()] {
					held = true
					break
				}
			}
		}
	}
	first := !s.roleLogged.Swap(true)
	if was := s.holding.Swap(held); first || was != held {
		if held {
			s.log.Info("access address held here: active, keepalives on")
			s.d.Events(audit.Event{Kind: audit.ModeChange, Detail: "active"})
		} else {
			s.log.Info("access address not on this host: standby, keepalives held back until it moves here")
			s.d.Events(audit.Event{Kind: audit.ModeChange, Detail: "standby"})
		}
	}
	return held
}

// specificAccess is the set of non-wildcard access addresses.
func (s *Server) specificAccess() map[netip.Addr]bool {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	want := map[netip.Addr]bool{}
	for _, ap := range s.socks.addrs() {
		if a := ap.Addr().Unmap(); !a.IsUnspecified() {
			want[a] = true
		}
	}
	return want
}

// Serves reports whether flow f arrived on one of this edge's access
// sockets: another edge's flows (sharing state, on other addresses) are
// its own to keep alive.
func (s *Server) Serves(f nat.FlowKey) bool {
	return s.self.access.Load().own[f.Local]
}
