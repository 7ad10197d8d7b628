package udptx

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
)

// The raw sender delivers to IPv4 and IPv6 receivers from IPv4, IPv6 and
// dual-stack sockets, as net's own write does, and reports the kernel's
// refusals as net errors.
func TestRawSender(t *testing.T) {
	for _, c := range []struct{ name, from, to string }{
		{"ipv4", "127.0.0.1:0", "127.0.0.1:0"},
		{"ipv6", "[::1]:0", "[::1]:0"},
		{"dual stack to ipv4", "[::]:0", "127.0.0.1:0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			from, err := listenOrSkip(t, c.from)
			if err != nil {
				return
			}
			defer from.Close()
			to, err := listenOrSkip(t, c.to)
			if err != nil {
				return
			}
			defer to.Close()
			s := NewRawSender(from)
			if _, ok := s.(*RawSender); !ok && isLinux {
				t.Fatalf("NewRawSender fell back to %T", s)
			}
			dest := to.LocalAddr().(*net.UDPAddr).AddrPort()
			if n, err := s.WriteToUDPAddrPort([]byte("OPTIONS sip:x SIP/2.0\r\n\r\n"), dest); err != nil || n != 25 {
				t.Fatalf("write: %d, %v", n, err)
			}
			to.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 100)
			n, src, err := to.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatal(err)
			}
			if string(buf[:n]) != "OPTIONS sip:x SIP/2.0\r\n\r\n" || src.Port() != from.LocalAddr().(*net.UDPAddr).AddrPort().Port() {
				t.Fatalf("got %q from %s", buf[:n], src)
			}
		})
	}
	from, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer from.Close()
	s := NewRawSender(from)
	big := make([]byte, 70000) // over the largest datagram
	if _, err := s.WriteToUDPAddrPort(big, netip.MustParseAddrPort("127.0.0.1:9")); !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("oversized datagram: %v, want EMSGSIZE", err)
	}
	from.Close()
	if _, err := s.WriteToUDPAddrPort([]byte("x"), netip.MustParseAddrPort("127.0.0.1:9")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("closed socket: %v, want net.ErrClosed", err)
	}
}

// listenOrSkip listens on addr; a box without IPv6 skips, except in CI.
func listenOrSkip(t *testing.T, addr string) (*net.UDPConn, error) {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("listen %s: %v", addr, err)
		}
		t.Skipf("no %s socket here: %v", addr, err)
	}
	return c, err
}
