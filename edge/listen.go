package edge

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Sockets are the edge's own sockets, bound before serving so a bound
// socket means a ready server. Tests bind 127.0.0.1:0 and pass them in.
type Sockets struct {
	UDP     []net.PacketConn
	TCP     []net.Listener
	TLS     []net.Listener // already TLS-wrapped
	WS      []net.Listener
	WSS     []net.Listener // already TLS-wrapped
	CoreUDP net.PacketConn
	CoreTCP net.Listener
}

// Listen binds every address of [access] and the core-side socket.
func Listen(access AccessConfig, coreListen string) (*Sockets, error) {
	s := &Sockets{}
	if err := s.bindAccess(access); err != nil {
		s.Close()
		return nil, err
	}
	var err error
	if s.CoreUDP, err = net.ListenPacket("udp", coreListen); err != nil {
		s.Close()
		return nil, fmt.Errorf("core.listen: %w", err)
	}
	bigBuffers(s.CoreUDP)
	if s.CoreTCP, err = net.Listen("tcp", coreListen); err != nil {
		s.Close()
		return nil, fmt.Errorf("core.listen: %w", err)
	}
	return s, nil
}

// bindAccess binds the access addresses into s; on error the caller
// closes what was bound.
func (s *Sockets) bindAccess(access AccessConfig) error {
	var tlsConf *tls.Config
	if len(access.TLS)+len(access.WSS) > 0 {
		cert, err := tls.LoadX509KeyPair(access.TLSCert, access.TLSKey)
		if err != nil {
			return fmt.Errorf("access.tls_cert: %w", err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	for _, a := range access.UDP {
		c, err := net.ListenPacket("udp", a)
		if err != nil {
			return fmt.Errorf("access.udp: %w", err)
		}
		bigBuffers(c)
		s.UDP = append(s.UDP, c)
	}
	streams := []struct {
		key   string
		addrs []string
		dst   *[]net.Listener
		tls   bool
	}{
		{"access.tcp", access.TCP, &s.TCP, false},
		{"access.tls", access.TLS, &s.TLS, true},
		{"access.ws", access.WS, &s.WS, false},
		{"access.wss", access.WSS, &s.WSS, true},
	}
	for _, st := range streams {
		for _, a := range st.addrs {
			l, err := net.Listen("tcp", a)
			if err != nil {
				return fmt.Errorf("%s: %w", st.key, err)
			}
			if st.tls {
				l = tls.NewListener(l, tlsConf)
			}
			*st.dst = append(*st.dst, l)
		}
	}
	return nil
}

// udpBuffer is the socket buffer size asked for on UDP sockets: the
// kernel default (~200 KiB) overflows in bursts of a few thousand
// messages a second. The kernel caps it at net.core.rmem_max/wmem_max.
const udpBuffer = 4 << 20

func bigBuffers(c net.PacketConn) {
	if u, ok := c.(*net.UDPConn); ok {
		_ = u.SetReadBuffer(udpBuffer) // best effort: capped, never fatal
		_ = u.SetWriteBuffer(udpBuffer)
	}
}

// addrs returns the address of every access socket.
func (s *Sockets) addrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, c := range s.UDP {
		if a, err := netip.ParseAddrPort(c.LocalAddr().String()); err == nil {
			out = append(out, unmap(a))
		}
	}
	for _, l := range append(append(append(append([]net.Listener{}, s.TCP...), s.TLS...), s.WS...), s.WSS...) {
		if a, err := netip.ParseAddrPort(l.Addr().String()); err == nil {
			out = append(out, unmap(a))
		}
	}
	return out
}

// listeners returns every stream listener.
func (s *Sockets) listeners() []net.Listener {
	out := append([]net.Listener{}, s.TCP...)
	out = append(out, s.TLS...)
	out = append(out, s.WS...)
	out = append(out, s.WSS...)
	if s.CoreTCP != nil {
		out = append(out, s.CoreTCP)
	}
	return out
}

// Close closes every socket; closing twice is harmless.
func (s *Sockets) Close() error {
	var errs []error
	for _, l := range s.listeners() {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for _, c := range append(append([]net.PacketConn{}, s.UDP...), s.CoreUDP) {
		if c == nil {
			continue
		}
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
