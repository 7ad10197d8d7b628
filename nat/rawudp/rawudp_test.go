package rawudp_test

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/sipedge/sipedge/nat/rawudp"
)

// listen binds a socket. Only IPv6 may be missing (a host without ::1),
// and then only outside CI.
func listen(t *testing.T, network, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenPacket(network, addr)
	if err != nil {
		if network != "udp6" || os.Getenv("CI") != "" {
			t.Fatalf("listen %s %s: %v", network, addr, err)
		}
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

func wrap(t *testing.T, c *net.UDPConn) *rawudp.Conn {
	t.Helper()
	r := rawudp.New(c)
	if r == nil {
		if runtime.GOOS == "linux" {
			t.Fatal("rawudp.New refused a UDP socket on Linux")
		}
		t.Skip("raw calls are Linux's only")
	}
	return r
}

func peerOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// Datagrams go both ways between a raw Conn and a plain socket, with
// their sources as the net package gives them.
func TestBothWays(t *testing.T) {
	for _, tc := range []struct{ name, network, addr string }{
		{"IPv4", "udp4", "127.0.0.1:0"},
		{"IPv6", "udp6", "[::1]:0"},
		{"dual-stack socket, IPv4 peer", "udp", ":0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := wrap(t, listen(t, tc.network, tc.addr))
			peerNet, peerAddr := "udp4", "127.0.0.1:0"
			if tc.network == "udp6" {
				peerNet, peerAddr = "udp6", "[::1]:0"
			}
			peer := listen(t, peerNet, peerAddr)
			to := netip.AddrPortFrom(peerOf(peer).Addr(), peerOf(peer).Port())
			ours := peerOf(raw.UDPConn)
			if tc.network == "udp" {
				ours = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ours.Port())
			}

			if n, err := raw.WriteToUDPAddrPort([]byte("OPTIONS sip:a SIP/2.0\r\n\r\n"), to); err != nil || n != 25 {
				t.Fatalf("write: %d, %v", n, err)
			}
			buf := make([]byte, 100)
			peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, from, err := peer.ReadFromUDPAddrPort(buf)
			if err != nil || string(buf[:n]) != "OPTIONS sip:a SIP/2.0\r\n\r\n" {
				t.Fatalf("peer read %q, %v", buf[:n], err)
			}
			if from.Addr().Unmap() != ours.Addr() || from.Port() != ours.Port() {
				t.Fatalf("peer saw it from %s, want %s", from, ours)
			}

			if _, err := peer.WriteToUDPAddrPort([]byte("SIP/2.0 200 OK\r\n\r\n"), ours); err != nil {
				t.Fatal(err)
			}
			raw.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, from, err = raw.ReadFromUDPAddrPort(buf)
			if err != nil || string(buf[:n]) != "SIP/2.0 200 OK\r\n\r\n" {
				t.Fatalf("raw read %q, %v", buf[:n], err)
			}
			if from.Addr().Unmap() != to.Addr().Unmap() || from.Port() != to.Port() {
				t.Fatalf("raw read it from %s, want %s", from, to)
			}
			// WriteTo, as sipgo sends, takes the same way.
			if _, err := raw.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(to)); err != nil {
				t.Fatal(err)
			}
			if n, _, err := peer.ReadFromUDPAddrPort(buf); err != nil || string(buf[:n]) != "x" {
				t.Fatalf("peer read %q, %v after WriteTo", buf[:n], err)
			}
			if tc.network == "udp" && !from.Addr().Is4In6() {
				t.Fatalf("a dual-stack socket reads IPv4 peers as mapped, as the net package does: got %s", from)
			}
		})
	}
}

// A read waits for the datagram (the poller, not a spin), an empty one
// included, and a longer one is cut to the buffer as recvfrom does.
func TestReadWaitsAndTruncates(t *testing.T) {
	raw := wrap(t, listen(t, "udp4", "127.0.0.1:0"))
	peer := listen(t, "udp4", "127.0.0.1:0")
	got := make(chan string, 2)
	go func() {
		buf := make([]byte, 4)
		for range 2 {
			n, _, err := raw.ReadFromUDPAddrPort(buf)
			if err != nil {
				got <- err.Error()
				return
			}
			got <- string(buf[:n])
		}
	}()
	to := peerOf(raw.UDPConn)
	peer.WriteToUDPAddrPort(nil, to)
	peer.WriteToUDPAddrPort([]byte("REGISTER"), to)
	for _, want := range []string{"", "REGI"} {
		select {
		case s := <-got:
			if s != want {
				t.Fatalf("read %q, want %q", s, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no read")
		}
	}
}

// A read deadline ends a waiting read with a timeout, as the edge's read
// loop restarts rely on; a closed socket ends it with net.ErrClosed.
func TestDeadlineAndClose(t *testing.T) {
	c := listen(t, "udp4", "127.0.0.1:0")
	raw := wrap(t, c)
	raw.SetReadDeadline(time.Now().Add(-time.Second))
	_, _, err := raw.ReadFromUDPAddrPort(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	raw.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, _, err := raw.ReadFromUDPAddrPort(make([]byte, 10))
		done <- err
	}()
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read on a closed socket: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("closing did not end the read")
	}
	if _, err := raw.WriteToUDPAddrPort([]byte("x"), peerOf(c)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on a closed socket: %v, want net.ErrClosed", err)
	}
}

// Where the raw path cannot send (an IPv6 peer from an IPv4 socket), the
// net package's error comes back, not a raw errno.
func TestWrongFamily(t *testing.T) {
	raw := wrap(t, listen(t, "udp4", "127.0.0.1:0"))
	if _, err := raw.WriteToUDPAddrPort([]byte("x"), netip.MustParseAddrPort("[::1]:5060")); err == nil {
		t.Fatal("an IPv6 peer from an IPv4 socket: no error")
	}
	if _, err := raw.WriteToUDPAddrPort([]byte("x"), netip.AddrPort{}); err == nil {
		t.Fatal("no address: no error")
	}
}

// A send and a read allocate nothing.
func TestSendReadAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race (sync.Pool drops items)")
	}
	raw := wrap(t, listen(t, "udp4", "127.0.0.1:0"))
	to := peerOf(raw.UDPConn) // to itself
	msg, buf := bytes.Repeat([]byte("x"), 300), make([]byte, 500)
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := raw.WriteToUDPAddrPort(msg, to); err != nil {
			t.Fatal(err)
		}
		if n, _, err := raw.ReadFromUDPAddrPort(buf); err != nil || n != len(msg) {
			t.Fatal(n, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per send and read, want 0", allocs)
	}
}

// BenchmarkSendRecv compares a datagram sent and read back on one socket
// through the raw calls and through the net package.
func BenchmarkSendRecv(b *testing.B) {
	for _, mode := range []string{"raw", "net"} {
		b.Run(mode, func(b *testing.B) {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			type conn interface {
				WriteToUDPAddrPort([]byte, netip.AddrPort) (int, error)
				ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error)
			}
			var u conn = c
			if mode == "raw" {
				u = rawudp.New(c)
			}
			to := c.LocalAddr().(*net.UDPAddr).AddrPort()
			msg, buf := bytes.Repeat([]byte("x"), 400), make([]byte, 1500)
			b.ReportAllocs()
			for b.Loop() {
				u.WriteToUDPAddrPort(msg, to)
				u.ReadFromUDPAddrPort(buf)
			}
		})
	}
}
