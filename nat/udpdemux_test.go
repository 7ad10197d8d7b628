package nat

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v2"
)

const waitTimeout = 5 * time.Second

var sipDatagram = []byte("OPTIONS sip:edge.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n\r\n")

type readResult struct {
	data []byte
	src  net.Addr
	err  error
}

// harness is a wrapped server socket whose ReadFrom results arrive on
// reads, and which echoes every datagram it returns back to its sender,
// as sipgo would answer one. Because loopback UDP keeps order, a client
// that receives the echo knows the server read everything sent before
// and sent no reply to it.
type harness struct {
	conn  *PacketConn
	reads chan readResult
	done  chan struct{}
	stun  chan netip.AddrPort
	crlf  chan netip.AddrPort
}

func newHarness(t *testing.T, network, addr string, hooks PacketHooks, wrap func(net.PacketConn) net.PacketConn) *harness {
	t.Helper()
	inner, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{
		reads: make(chan readResult, 16),
		done:  make(chan struct{}),
		stun:  make(chan netip.AddrPort, 16),
		crlf:  make(chan netip.AddrPort, 16),
	}
	if hooks.OnSTUN == nil {
		hooks.OnSTUN = func(src netip.AddrPort) { h.stun <- src }
	}
	if hooks.OnCRLF == nil {
		hooks.OnCRLF = func(src netip.AddrPort) { h.crlf <- src }
	}
	if wrap != nil {
		inner = wrap(inner)
	}
	h.conn = NewPacketConn(inner, hooks)
	go func() {
		defer close(h.done)
		buf := make([]byte, 65535)
		for {
			n, src, err := h.conn.ReadFrom(buf)
			h.reads <- readResult{bytes.Clone(buf[:n]), src, err}
			if err != nil {
				return
			}
			if _, err := h.conn.WriteTo(buf[:n], src); err != nil {
				t.Errorf("echo: %v", err)
			}
		}
	}()
	t.Cleanup(func() {
		h.conn.Close()
		select {
		case <-h.done:
		case <-time.After(waitTimeout):
			t.Error("reader did not stop after Close")
		}
	})
	return h
}

func (h *harness) dial(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, h.conn.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// nextRead waits for the next datagram ReadFrom returned.
func (h *harness) nextRead(t *testing.T) readResult {
	t.Helper()
	select {
	case r := <-h.reads:
		return r
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for ReadFrom")
		return readResult{}
	}
}

// noMoreReads checks that ReadFrom returned nothing else.
func (h *harness) noMoreReads(t *testing.T) {
	t.Helper()
	select {
	case r := <-h.reads:
		t.Errorf("ReadFrom also returned %q (err %v)", r.data, r.err)
	default:
	}
}

func send(t *testing.T, c *net.UDPConn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

func recv(t *testing.T, c *net.UDPConn) []byte {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("client read: %v", err)
	}
	return buf[:n]
}

// expectEcho sends a SIP datagram and checks that it is the next thing
// both the server reader and the client see.
func expectEcho(t *testing.T, h *harness, c *net.UDPConn) {
	t.Helper()
	send(t, c, sipDatagram)
	r := h.nextRead(t)
	if r.err != nil || !bytes.Equal(r.data, sipDatagram) {
		t.Fatalf("ReadFrom = %q, %v; want the SIP datagram", r.data, r.err)
	}
	if got := recv(t, c); !bytes.Equal(got, sipDatagram) {
		t.Fatalf("client received %q before the echo", got)
	}
}

func expectHook(t *testing.T, ch chan netip.AddrPort, want netip.AddrPort) {
	t.Helper()
	select {
	case got := <-ch:
		if got != want {
			t.Errorf("hook got source %v, want %v", got, want)
		}
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for hook")
	}
}

func noHook(t *testing.T, name string, ch chan netip.AddrPort) {
	t.Helper()
	select {
	case src := <-ch:
		t.Errorf("%s hook fired for %v", name, src)
	default:
	}
}

func bindingRequest(t testing.TB, setters ...stun.Setter) *stun.Message {
	t.Helper()
	m, err := stun.Build(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, setters...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func localAddrPort(c net.Conn) netip.AddrPort {
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func checkBindingSuccess(t *testing.T, raw []byte, req *stun.Message, want netip.AddrPort) {
	t.Helper()
	res := new(stun.Message)
	if err := stun.Decode(raw, res); err != nil {
		t.Fatalf("response is not STUN: %v", err)
	}
	if res.Type != stun.BindingSuccess {
		t.Errorf("response type %v, want %v", res.Type, stun.BindingSuccess)
	}
	if res.TransactionID != req.TransactionID {
		t.Error("response transaction ID differs from the request's")
	}
	var mapped stun.XORMappedAddress
	if err := mapped.GetFrom(res); err != nil {
		t.Fatalf("no XOR-MAPPED-ADDRESS: %v", err)
	}
	ip, _ := netip.AddrFromSlice(mapped.IP)
	if got := netip.AddrPortFrom(ip.Unmap(), uint16(mapped.Port)); got != want {
		t.Errorf("XOR-MAPPED-ADDRESS = %v, want %v", got, want)
	}
	if err := stun.Fingerprint.Check(res); err != nil {
		t.Errorf("FINGERPRINT: %v", err)
	}
	if last := res.Attributes[len(res.Attributes)-1].Type; last != stun.AttrFingerprint {
		t.Errorf("last attribute is %v, want FINGERPRINT", last)
	}
}

func TestSTUNBindingAnswered(t *testing.T) {
	for _, tc := range []struct{ name, listen, client string }{
		{"IPv4", "127.0.0.1:0", "127.0.0.1"},
		{"IPv6", "[::1]:0", "::1"},
		{"IPv4 on dual-stack socket", "[::]:0", "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "udp", tc.listen, PacketHooks{}, nil)
			port := h.conn.LocalAddr().(*net.UDPAddr).AddrPort().Port()
			dst := netip.AddrPortFrom(netip.MustParseAddr(tc.client), port)
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			me := localAddrPort(c)

			for _, req := range []*stun.Message{
				bindingRequest(t, stun.Fingerprint),
				bindingRequest(t), // FINGERPRINT is optional
				bindingRequest(t, stun.NewSoftware("x"), stun.Fingerprint),
			} {
				send(t, c, req.Raw)
				checkBindingSuccess(t, recv(t, c), req, me)
				expectHook(t, h.stun, me)
			}
			expectEcho(t, h, c) // the STUN requests were never returned
			h.noMoreReads(t)
			noHook(t, "OnCRLF", h.crlf)
		})
	}
}

func TestSIPSourceAddress(t *testing.T) {
	h := newHarness(t, "udp", "127.0.0.1:0", PacketHooks{}, nil)
	c := h.dial(t)
	send(t, c, sipDatagram)
	r := h.nextRead(t)
	if r.err != nil {
		t.Fatal(r.err)
	}
	ua, ok := r.src.(*net.UDPAddr)
	if !ok {
		t.Fatalf("source is %T, want *net.UDPAddr", r.src)
	}
	if got, want := ua.String(), c.LocalAddr().String(); got != want {
		t.Errorf("source %s, want %s", got, want)
	}
	recv(t, c)
}

func TestCRLFKeepalive(t *testing.T) {
	h := newHarness(t, "udp", "127.0.0.1:0", PacketHooks{}, nil)
	c := h.dial(t)
	me := localAddrPort(c)
	for _, ka := range []string{"\r\n\r\n", "\r\n", "\n", "\r\n\r\n\r\n\r\n"} {
		send(t, c, []byte(ka))
		expectHook(t, h.crlf, me)
	}
	expectEcho(t, h, c) // nothing came back before the echo: no pong on UDP
	h.noMoreReads(t)
	noHook(t, "OnSTUN", h.stun)
}

func TestOtherSTUNDropped(t *testing.T) {
	h := newHarness(t, "udp", "127.0.0.1:0", PacketHooks{}, nil)
	c := h.dial(t)

	badFP := bindingRequest(t, stun.Fingerprint)
	badFP.Raw[len(badFP.Raw)-1] ^= 0xff
	trailing := append(bytes.Clone(bindingRequest(t).Raw), 0, 0, 0, 0)
	unaligned := bindingRequest(t, stun.NewSoftware("ab"))
	unaligned.Raw = unaligned.Raw[:len(unaligned.Raw)-2]
	unaligned.Raw[3] -= 2
	truncated := bindingRequest(t, stun.NewSoftware("abcd"))
	truncated.Raw = truncated.Raw[:len(truncated.Raw)-4]
	badAttr := bindingRequest(t)
	badAttr.Raw = append(badAttr.Raw, 0x80, 0x22, 0x00, 0x10) // attribute longer than the message
	badAttr.Raw[3] = 4
	fpNotLast := bindingRequest(t, stun.Fingerprint, stun.NewSoftware("abcd"))

	for name, raw := range map[string][]byte{
		"binding indication": mustBuild(t, stun.TransactionID, stun.NewType(stun.MethodBinding, stun.ClassIndication), stun.Fingerprint),
		"binding success":    mustBuild(t, stun.TransactionID, stun.BindingSuccess, stun.Fingerprint),
		"allocate request":   mustBuild(t, stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest)),
		"bad fingerprint":    badFP.Raw,
		"fingerprint first":  fpNotLast.Raw,
		"trailing bytes":     trailing,
		"unaligned length":   unaligned.Raw,
		"truncated":          truncated.Raw,
		"bad attribute":      badAttr.Raw,
	} {
		if !isSTUN(raw) {
			t.Fatalf("%s: test datagram does not look like STUN", name)
		}
		send(t, c, raw)
	}
	expectEcho(t, h, c) // no STUN reply arrived first
	h.noMoreReads(t)
	noHook(t, "OnSTUN", h.stun)
}

func mustBuild(t *testing.T, setters ...stun.Setter) []byte {
	t.Helper()
	m, err := stun.Build(setters...)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

func TestAcceptDrops(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []int
	)
	h := newHarness(t, "udp", "127.0.0.1:0", PacketHooks{
		Accept: func(src netip.AddrPort, n int) bool {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, n)
			return n != 4 && n != 28 && n != 5 // drop CRLF pings, a fingerprinted request and "DROP!"
		},
	}, nil)
	c := h.dial(t)
	send(t, c, bindingRequest(t, stun.Fingerprint).Raw) // 28 bytes
	send(t, c, []byte("\r\n\r\n"))
	send(t, c, []byte("DROP!"))
	expectEcho(t, h, c)
	h.noMoreReads(t)
	noHook(t, "OnSTUN", h.stun)
	noHook(t, "OnCRLF", h.crlf)
	mu.Lock()
	defer mu.Unlock()
	if want := []int{28, 4, 5, len(sipDatagram)}; !equalInts(seen, want) {
		t.Errorf("Accept saw sizes %v, want %v", seen, want)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// plainConn hides *net.UDPConn's netip methods, so the wrapper takes its
// generic net.PacketConn path.
type plainConn struct{ net.PacketConn }

func TestGenericPacketConn(t *testing.T) {
	h := newHarness(t, "udp", "127.0.0.1:0", PacketHooks{}, func(c net.PacketConn) net.PacketConn { return plainConn{c} })
	if h.conn.udp != nil {
		t.Fatal("wrapper did not take the generic path")
	}
	c := h.dial(t)
	me := localAddrPort(c)
	req := bindingRequest(t, stun.Fingerprint)
	send(t, c, req.Raw)
	checkBindingSuccess(t, recv(t, c), req, me)
	expectHook(t, h.stun, me)
	send(t, c, []byte("\r\n\r\n"))
	expectHook(t, h.crlf, me)
	expectEcho(t, h, c)
	h.noMoreReads(t)
}

func TestCloseUnblocksRead(t *testing.T) {
	h := newHarness(t, "udp", "127.0.0.1:0", PacketHooks{}, nil)
	if err := h.conn.Close(); err != nil {
		t.Fatal(err)
	}
	if r := h.nextRead(t); !errors.Is(r.err, net.ErrClosed) {
		t.Errorf("ReadFrom after Close: %v, want net.ErrClosed", r.err)
	}
}

func TestReadDeadline(t *testing.T) {
	inner, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := NewPacketConn(inner, PacketHooks{})
	defer c.Close()
	if err := c.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ReadFrom(make([]byte, 100)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ReadFrom past deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Error(err)
	}
	if err := c.SetWriteDeadline(time.Time{}); err != nil {
		t.Error(err)
	}
}

func TestClassify(t *testing.T) {
	stunReq := bindingRequest(t).Raw
	for _, tc := range []struct {
		name       string
		b          []byte
		stun, crlf bool
	}{
		{"empty", nil, false, false},
		{"CRLF", []byte("\r\n"), false, true},
		{"CR", []byte("\r"), false, true},
		{"CRLF space", []byte("\r\n "), false, false},
		{"SIP", sipDatagram, false, false},
		{"STUN", stunReq, true, false},
		{"STUN header only, 19 bytes", stunReq[:19], false, false},
		{"cookie but top bits set", append([]byte{0x40}, stunReq[1:]...), false, false},
		{"NULs", make([]byte, 20), false, false},
	} {
		if got := isSTUN(tc.b); got != tc.stun {
			t.Errorf("%s: isSTUN = %v", tc.name, got)
		}
		if got := isCRLF(tc.b); got != tc.crlf {
			t.Errorf("%s: isCRLF = %v", tc.name, got)
		}
	}
}

// feedConn is an in-memory socket that serves a STUN request stun times
// and then one SIP datagram, discarding writes.
type feedConn struct {
	net.PacketConn // nil; only the methods below are used
	stunReq        []byte
	stun           int
	src            netip.AddrPort
	wrote, reads   int
}

func (f *feedConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	f.reads++
	if f.stun > 0 {
		f.stun--
		return copy(b, f.stunReq), f.src, nil
	}
	return copy(b, sipDatagram), f.src, nil
}

func (f *feedConn) WriteToUDPAddrPort(b []byte, _ netip.AddrPort) (int, error) {
	f.wrote++
	return len(b), nil
}

func TestSTUNAnswerAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	req := bindingRequest(t, stun.Fingerprint)
	for _, src := range []string{"192.0.2.1:5060", "[::ffff:192.0.2.1]:5060", "[2001:db8::1]:5060"} {
		f := &feedConn{stunReq: req.Raw, src: netip.MustParseAddrPort(src)}
		c := NewPacketConn(f, PacketHooks{})
		buf := make([]byte, 2048)
		readAfter := func(stuns int) float64 {
			return testing.AllocsPerRun(100, func() {
				f.stun = stuns
				if _, _, err := c.ReadFrom(buf); err != nil {
					t.Fatal(err)
				}
			})
		}
		// The SIP datagram that ends each read allocates its net.Addr;
		// the STUN answers before it must add nothing.
		if sip, withSTUN := readAfter(0), readAfter(10); sip > 1 || withSTUN != sip {
			t.Errorf("%s: SIP read %v allocs, after 10 STUN answers %v", src, sip, withSTUN)
		}
		if f.wrote != 101*10 { // AllocsPerRun adds a warm-up run
			t.Errorf("%s: %d STUN answers written, want 1010", src, f.wrote)
		}
	}
}

func TestUDPAddrOf(t *testing.T) {
	for _, s := range []string{"192.0.2.1:5060", "[::ffff:192.0.2.1]:1", "[2001:db8::1]:65535", "[fe80::1%eth0]:5060"} {
		ap := netip.MustParseAddrPort(s)
		got, want := udpAddrOf(ap), net.UDPAddrFromAddrPort(ap)
		if !got.IP.Equal(want.IP) || len(got.IP) != len(want.IP) || got.Port != want.Port || got.Zone != want.Zone {
			t.Errorf("udpAddrOf(%v) = %#v, want %#v", ap, got, want)
		}
		if got.String() != want.String() {
			t.Errorf("udpAddrOf(%v) prints %q, want %q", ap, got, want)
		}
	}
}

func BenchmarkSTUNAnswer(b *testing.B) {
	req := bindingRequest(b, stun.Fingerprint)
	f := &feedConn{stunReq: req.Raw, src: netip.MustParseAddrPort("192.0.2.1:5060")}
	c := NewPacketConn(f, PacketHooks{OnSTUN: func(netip.AddrPort) {}})
	buf := make([]byte, 2048)
	b.ReportAllocs()
	f.stun = b.N
	b.ResetTimer()
	if _, _, err := c.ReadFrom(buf); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if f.wrote != b.N {
		b.Fatalf("answered %d of %d", f.wrote, b.N)
	}
}

func BenchmarkSTUNAnswerLoopback(b *testing.B) {
	inner, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := NewPacketConn(inner, PacketHooks{})
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 2048)
		_, _, err := srv.ReadFrom(buf) // returns on the final SIP datagram
		done <- err
	}()
	c, err := net.DialUDP("udp", nil, inner.LocalAddr().(*net.UDPAddr))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := bindingRequest(b, stun.Fingerprint).Raw
	buf := make([]byte, 2048)
	if err := c.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := c.Write(sipDatagram); err != nil {
		b.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			b.Fatal(err)
		}
	case <-time.After(waitTimeout):
		b.Fatal("server read did not return")
	}
	srv.Close()
}

func FuzzDemux(f *testing.F) {
	f.Add(bindingRequest(f, stun.Fingerprint).Raw)
	f.Add(bindingRequest(f, stun.NewSoftware("sipedge")).Raw)
	f.Add([]byte("\r\n\r\n"))
	f.Add(sipDatagram)
	f.Fuzz(func(t *testing.T, data []byte) {
		fc := &feedConn{stunReq: data, stun: 1, src: netip.MustParseAddrPort("192.0.2.1:5060")}
		c := NewPacketConn(fc, PacketHooks{})
		buf := make([]byte, max(len(data), len(sipDatagram)))
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		swallowed := isSTUN(data) || isCRLF(data)
		if swallowed != (fc.reads == 2) {
			t.Fatalf("input %q: swallowed = %v, but ReadFrom read %d datagrams", data, swallowed, fc.reads)
		}
		if want := data; !swallowed && !bytes.Equal(buf[:n], want) {
			t.Fatalf("ReadFrom returned %q for input %q", buf[:n], data)
		}
		if fc.wrote > 0 && !isSTUN(data) {
			t.Fatalf("answered a non-STUN datagram %q", data)
		}
	})
}

func TestInspectDrops(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []string
	)
	h := newHarness(t, "udp", "127.0.0.1:0", PacketHooks{
		Inspect: func(src netip.AddrPort, b []byte) bool {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, string(b))
			return string(b) != "garbage"
		},
	}, nil)
	c := h.dial(t)
	send(t, c, []byte("\r\n\r\n")) // a keepalive: never inspected
	send(t, c, []byte("garbage"))  // dropped by Inspect
	expectEcho(t, h, c)
	h.noMoreReads(t)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || seen[0] != "garbage" || seen[1] != string(sipDatagram) {
		t.Errorf("Inspect saw %q", seen)
	}
}

// Ping sends a CRLF keepalive from the wrapped socket, which a peer's
// PacketConn swallows as one.
func TestPacketConnPing(t *testing.T) {
	for _, tc := range []struct {
		name string
		wrap func(net.PacketConn) net.PacketConn
	}{
		{"UDPConn", nil},
		{"generic", func(c net.PacketConn) net.PacketConn { return plainConn{c} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from := newHarness(t, "udp", "127.0.0.1:0", PacketHooks{}, tc.wrap)
			to := newHarness(t, "udp", "127.0.0.1:0", PacketHooks{}, nil)
			if err := from.conn.Ping(to.conn.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
				t.Fatal(err)
			}
			expectHook(t, to.crlf, from.conn.LocalAddr().(*net.UDPAddr).AddrPort())

			// What arrives is exactly "\r\n\r\n".
			c := from.dial(t)
			if err := from.conn.Ping(localAddrPort(c)); err != nil {
				t.Fatal(err)
			}
			if got := recv(t, c); string(got) != "\r\n\r\n" {
				t.Errorf("received %q, want a CRLF ping", got)
			}
			to.noMoreReads(t)
		})
	}
}

func TestPacketConnPingAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	inner, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c := NewPacketConn(inner, PacketHooks{})
	defer c.Close()
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	to := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	if n := testing.AllocsPerRun(100, func() {
		if err := c.Ping(to); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Ping allocates %v times", n)
	}
}
