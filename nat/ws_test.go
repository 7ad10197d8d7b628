package nat

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/gobwas/ws"
)

// wsServe serves sipgo's ServeWS, with the registrar's REGISTER handler,
// on a NewWSListener over a probe on 127.0.0.1:0 with ev's hooks and lim.
func wsServe(t *testing.T, ev *streamEvents, lim StreamLimits) (*Listener, *probeListener, *registrar, func()) {
	t.Helper()
	probe := newProbeListener(t)
	hooks := ev.hooks()
	hooks.Limits = lim
	l := NewWSListener(probe, WS, hooks)
	r := newRegistrar()
	stop := serveSIP(t, l, serveWS, r.setup(t))
	return l, probe, r, stop
}

// dialWS upgrades a new connection to l offering protocols and checks
// that the server chose sip.
func dialWS(t *testing.T, l *Listener, scheme string, d ws.Dialer) (net.Conn, FlowKey) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	nc, br, hs, err := d.Dial(ctx, scheme+"://"+l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if br != nil {
		t.Fatal("the server sent bytes after its 101")
	}
	if hs.Protocol != "sip" {
		t.Fatalf("subprotocol %q, want sip", hs.Protocol)
	}
	if err := nc.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	tp := WS
	if scheme == "wss" {
		tp = WSS
	}
	return nc, FlowKey{Transport: tp, Local: addrPort(l.Addr()), Remote: addrPort(nc.LocalAddr())}
}

var sipDialer = ws.Dialer{Protocols: []string{"sip"}}

func serveWSS(s *sipgo.Server, l net.Listener) error { return s.ServeWSS(l) }

// sendFrame writes one client frame, masked.
func sendFrame(t *testing.T, w io.Writer, fin bool, op ws.OpCode, p string) {
	t.Helper()
	if err := ws.WriteFrame(w, ws.MaskFrame(ws.NewFrame(op, fin, []byte(p)))); err != nil {
		t.Fatal(err)
	}
}

// expectFrame reads one server frame, which must be unmasked, of op and
// whose payload starts with prefix.
func expectFrame(t *testing.T, r io.Reader, op ws.OpCode, prefix string) ws.Frame {
	t.Helper()
	f, err := ws.ReadFrame(r)
	if err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	if f.Header.Masked || !f.Header.Fin || f.Header.OpCode != op || !strings.HasPrefix(string(f.Payload), prefix) {
		t.Fatalf("frame %+v %q, want a final unmasked op %v with %q...", f.Header, f.Payload, op, prefix)
	}
	return f
}

func expect200WS(t *testing.T, r io.Reader) {
	t.Helper()
	expectFrame(t, r, ws.OpText, "SIP/2.0 200 OK\r\n")
}

// expectCloseFrame reads a Close with code, then the end of the stream
// (a reset if the server left bytes of a bad frame unread).
func expectCloseFrame(t *testing.T, nc net.Conn, code ws.StatusCode) {
	t.Helper()
	f := expectFrame(t, nc, ws.OpClose, "")
	if got, _ := ws.ParseCloseFrameData(f.Payload); got != code || len(f.Payload) != 2 {
		t.Errorf("Close %q (code %d), want code %d alone", f.Payload, got, code)
	}
	if b, err := io.ReadAll(nc); len(b) != 0 || err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("after the Close: %q, %v; want the end", b, err)
	}
}

// TestWSHandshakeRefused: a client that does not offer sip, or whose
// handshake is bad or too large, is refused before sipgo sees it.
func TestWSHandshakeRefused(t *testing.T) {
	req := func(headers string) string {
		return "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + headers + "\r\n"
	}
	const v13 = "Sec-WebSocket-Version: 13\r\n"
	for _, tc := range []struct {
		name, req string
		status    int // 0: 431 or a reset, as the client is still sending
	}{
		{"no subprotocol", req(v13), 400},
		{"other subprotocols", req(v13 + "Sec-WebSocket-Protocol: chat, SIP\r\n"), 400},
		{"version 8", req("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Protocol: sip\r\n"), 426},
		{"POST", strings.Replace(req(v13+"Sec-WebSocket-Protocol: sip\r\n"), "GET", "POST", 1), 400},
		{"no Upgrade", strings.Replace(req(v13+"Sec-WebSocket-Protocol: sip\r\n"), "Upgrade: websocket\r\n", "", 1), 400},
		{"short key", strings.Replace(req(v13+"Sec-WebSocket-Protocol: sip\r\n"), "dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=", 1), 400},
		{"too large", req(v13 + "Sec-WebSocket-Protocol: sip\r\nX-Pad: " + strings.Repeat("a", 2000) + "\r\n"), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := newStreamEvents()
			l, probe, _, _ := wsServe(t, ev, StreamLimits{MaxHeaderBytes: 1024})
			c, k := dialFlow(t, l, WS)
			c.send(t, tc.req)
			status, err := c.r.ReadString('\n')
			switch want := fmt.Sprintf("HTTP/1.1 %d ", tc.status); {
			case tc.status == 0 && (strings.HasPrefix(status, "HTTP/1.1 431 ") || errors.Is(err, syscall.ECONNRESET)):
			case tc.status == 0 || !strings.HasPrefix(status, want):
				t.Errorf("response %q, %v; want %q...", status, err, want)
			}
			expectClose(t, ev, closeEvent{k, "handshake"})
			probe.waitClosed(t)
			if n := l.Conns(); n != 0 {
				t.Errorf("%d conns after the refusal", n)
			}
		})
	}

	t.Run("gobwas dialer without subprotocols", func(t *testing.T) {
		ev := newStreamEvents()
		l, _, _, _ := wsServe(t, ev, StreamLimits{})
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		nc, _, _, err := ws.Dialer{}.Dial(ctx, "ws://"+l.Addr().String())
		if nc != nil {
			nc.Close()
		}
		if se, ok := errors.AsType[ws.StatusError](err); !ok || se != 400 {
			t.Fatalf("Dial: %v, want status 400", err)
		}
		select {
		case got := <-ev.closes:
			if got.why != "handshake" {
				t.Errorf("OnClose why %q, want handshake", got.why)
			}
		case <-time.After(waitTimeout):
			t.Fatal("timed out waiting for OnClose")
		}
	})
}

// TestWSHandshakeSIP: a client offering sip among others gets it, and a
// SIP request answered; one that sends its first frame along with its
// handshake request loses nothing.
func TestWSHandshakeSIP(t *testing.T) {
	ev := newStreamEvents()
	l, _, r, _ := wsServe(t, ev, StreamLimits{})
	nc, _ := dialWS(t, l, "ws", ws.Dialer{Protocols: []string{"chat", "sip"}})
	sendFrame(t, nc, true, ws.OpText, registerRequest("WS", nc.LocalAddr(), ""))
	expect200WS(t, nc)

	c, _ := dialFlow(t, l, WS)
	var f strings.Builder
	if err := ws.WriteFrame(&f, ws.MaskFrame(ws.NewTextFrame([]byte(registerRequest("WS", c.LocalAddr(), ""))))); err != nil {
		t.Fatal(err)
	}
	c.send(t, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: sip\r\n\r\n"+f.String())
	want := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
	c.expectBytes(t, want)
	expect200WS(t, c.r)
	if n := r.regs.Load(); n != 2 {
		t.Errorf("%d REGISTERs handled, want 2", n)
	}
}

// TestWSSilentClientDoesNotBlock: a TCP connection that never sends its
// handshake does not hold up another client's upgrade.
func TestWSSilentClientDoesNotBlock(t *testing.T) {
	ev := newStreamEvents()
	l, _, _, _ := wsServe(t, ev, StreamLimits{}) // 10 s to handshake, twice waitTimeout
	silent, k := dialFlow(t, l, WS)
	expectAccept(t, ev, k.Remote)

	nc, _ := dialWS(t, l, "ws", sipDialer)
	expectAccept(t, ev, addrPort(nc.LocalAddr()))
	sendFrame(t, nc, true, ws.OpText, registerRequest("WS", nc.LocalAddr(), ""))
	expect200WS(t, nc)
	noEvent(t, "OnClose", ev.closes)

	silent.Close()
	expectClose(t, ev, closeEvent{k, "handshake"})
}

// TestWSTextAndBinary: a REGISTER in a text frame and one in a binary
// frame are both answered.
func TestWSTextAndBinary(t *testing.T) {
	ev := newStreamEvents()
	l, _, r, _ := wsServe(t, ev, StreamLimits{})
	nc, _ := dialWS(t, l, "ws", sipDialer)
	for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary, ws.OpText} {
		sendFrame(t, nc, true, op, registerRequest("WS", nc.LocalAddr(), "body\x00\xff"))
		expect200WS(t, nc)
	}
	if n := r.regs.Load(); n != 3 {
		t.Errorf("%d REGISTERs handled, want 3", n)
	}
}

// TestWSFragmented: a message in three frames, with a ping between two of
// them, arrives whole.
func TestWSFragmented(t *testing.T) {
	for name, op := range map[string]ws.OpCode{"text": ws.OpText, "binary": ws.OpBinary} {
		t.Run(name, func(t *testing.T) {
			ev := newStreamEvents()
			l, _, r, _ := wsServe(t, ev, StreamLimits{})
			nc, k := dialWS(t, l, "ws", sipDialer)
			msg := registerRequest("WS", nc.LocalAddr(), "a body")
			a, b := len(msg)/3, 2*len(msg)/3
			sendFrame(t, nc, false, op, msg[:a])
			sendFrame(t, nc, false, ws.OpContinuation, msg[a:b])
			sendFrame(t, nc, true, ws.OpPing, "mid")
			sendFrame(t, nc, true, ws.OpContinuation, msg[b:])
			expectFrame(t, nc, ws.OpPong, "mid")
			expectKey(t, "OnPing", ev.pings, k)
			expect200WS(t, nc)
			if n := r.regs.Load(); n != 1 {
				t.Errorf("%d REGISTERs handled, want 1", n)
			}
		})
	}
}

// TestWSPing: a ping gets a pong of its payload, a pong gets nothing, a
// framed CRLF keepalive gets sipgo's answer, and requests still pass.
func TestWSPing(t *testing.T) {
	ev := newStreamEvents()
	l, _, _, _ := wsServe(t, ev, StreamLimits{})
	nc, k := dialWS(t, l, "ws", sipDialer)
	reads := ev.reads.Load()
	sendFrame(t, nc, true, ws.OpPing, "are you there? \x00\xff")
	if f := expectFrame(t, nc, ws.OpPong, ""); string(f.Payload) != "are you there? \x00\xff" {
		t.Errorf("pong %q", f.Payload)
	}
	expectKey(t, "OnPing", ev.pings, k)
	if ev.reads.Load() == reads {
		t.Error("the ping did not fire OnRead")
	}
	sendFrame(t, nc, true, ws.OpPong, "unsolicited")
	sendFrame(t, nc, true, ws.OpPing, "")
	expectFrame(t, nc, ws.OpPong, "")
	sendFrame(t, nc, true, ws.OpText, "\r\n\r\n")
	expectFrame(t, nc, ws.OpText, "\r\n")
	sendFrame(t, nc, true, ws.OpText, optionsRequest("WS", nc.LocalAddr()))
	expect200WS(t, nc)
	noEvent(t, "OnPong", ev.pongs)
}

// TestWSClose: a Close is answered with a Close of its code, then the
// TCP close.
func TestWSClose(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload []byte
	}{
		{"1000 with a reason", ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")},
		{"4001", ws.NewCloseFrameBody(4001, "")},
		{"empty", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := newStreamEvents()
			l, probe, _, _ := wsServe(t, ev, StreamLimits{})
			nc, k := dialWS(t, l, "ws", sipDialer)
			sendFrame(t, nc, true, ws.OpText, optionsRequest("WS", nc.LocalAddr()))
			expect200WS(t, nc)
			sendFrame(t, nc, true, ws.OpClose, string(tc.payload))
			f := expectFrame(t, nc, ws.OpClose, "")
			if want := tc.payload[:min(len(tc.payload), 2)]; string(f.Payload) != string(want) {
				t.Errorf("Close %q, want %q", f.Payload, want)
			}
			if b, err := io.ReadAll(nc); len(b) != 0 || err != nil {
				t.Errorf("after the Close: %q, %v; want a clean end", b, err)
			}
			expectClose(t, ev, closeEvent{k, "eof"})
			probe.waitClosed(t)
		})
	}
}

// TestWSGarbage: messages sipgo's parser would fail on, which would end
// the connection, are dropped, and the connection goes on.
func TestWSGarbage(t *testing.T) {
	ev := newStreamEvents()
	l, _, r, _ := wsServe(t, ev, StreamLimits{})
	nc, _ := dialWS(t, l, "ws", sipDialer)
	from := nc.LocalAddr()
	for _, bad := range []string{
		"hello",
		"",
		"\x00\x00",
		"\r\n\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS x", // no end of headers
		strings.Replace(registerRequest("WS", from, ""), "Max-Forwards: 70", "Max-Forwards 70", 1),
		strings.Replace(registerRequest("WS", from, ""), "Content-Length: 0", "Content-Length: 10", 1),
		strings.Replace(registerRequest("WS", from, ""), "Content-Length: 0", "Content-Length: x", 1),
		strings.Replace(registerRequest("WS", from, ""), "sip:127.0.0.1 SIP", "* SIP", 1),
	} {
		sendFrame(t, nc, true, ws.OpText, bad)
	}
	sendFrame(t, nc, true, ws.OpText, "\r\n"+registerRequest("WS", from, ""))
	expect200WS(t, nc)
	if n := r.regs.Load(); n != 1 {
		t.Errorf("%d REGISTERs handled, want 1", n)
	}
	noEvent(t, "OnClose", ev.closes)
}

// TestWSProtocolErrors: frames RFC 6455 forbids get a Close 1002 and the
// connection closed.
func TestWSProtocolErrors(t *testing.T) {
	masked := func(h ws.Header, p string) []byte {
		h.Masked, h.Mask, h.Length = true, ws.NewMask(), int64(len(p))
		var b strings.Builder
		if err := ws.WriteHeader(&b, h); err != nil {
			t.Fatal(err)
		}
		q := []byte(p)
		ws.Cipher(q, h.Mask, 0)
		return append([]byte(b.String()), q...)
	}
	unmasked := func(h ws.Header, p string) []byte {
		h.Length = int64(len(p))
		var b strings.Builder
		if err := ws.WriteHeader(&b, h); err != nil {
			t.Fatal(err)
		}
		return []byte(b.String() + p)
	}
	for _, tc := range []struct {
		name   string
		frames [][]byte
	}{
		{"unmasked", [][]byte{unmasked(ws.Header{Fin: true, OpCode: ws.OpText}, "x")}},
		{"RSV1", [][]byte{masked(ws.Header{Fin: true, Rsv: ws.Rsv(true, false, false), OpCode: ws.OpText}, "x")}},
		{"reserved opcode", [][]byte{masked(ws.Header{Fin: true, OpCode: 3}, "x")}},
		{"continuation first", [][]byte{masked(ws.Header{Fin: true, OpCode: ws.OpContinuation}, "x")}},
		{"text inside a message", [][]byte{
			masked(ws.Header{OpCode: ws.OpText}, "x"),
			masked(ws.Header{Fin: true, OpCode: ws.OpText}, "y"),
		}},
		{"fragmented ping", [][]byte{masked(ws.Header{OpCode: ws.OpPing}, "x")}},
		{"long ping", [][]byte{masked(ws.Header{Fin: true, OpCode: ws.OpPing}, strings.Repeat("x", 126))}},
		{"bad close code", [][]byte{masked(ws.Header{Fin: true, OpCode: ws.OpClose}, "\x03\xed")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := newStreamEvents()
			l, probe, r, _ := wsServe(t, ev, StreamLimits{})
			nc, k := dialWS(t, l, "ws", sipDialer)
			for _, f := range tc.frames {
				if _, err := nc.Write(f); err != nil {
					t.Fatal(err)
				}
			}
			expectCloseFrame(t, nc, ws.StatusProtocolError)
			expectClose(t, ev, closeEvent{k, "protocol"})
			probe.waitClosed(t)
			if n := r.regs.Load(); n != 0 {
				t.Errorf("%d REGISTERs handled", n)
			}
		})
	}
}

// sizedRegister is a REGISTER of exactly size bytes.
func sizedRegister(t *testing.T, from net.Addr, size int) string {
	t.Helper()
	m := registerRequest("WS", from, strings.Repeat("a", 1000))
	n := 1000 + size - len(m)
	if n < 1000 || n > 9999 {
		t.Fatalf("cannot make a REGISTER of %d bytes", size)
	}
	m = strings.Replace(m, "Content-Length: 1000\r\n\r\n"+strings.Repeat("a", 1000), fmt.Sprintf("Content-Length: %d\r\n\r\n%s", n, strings.Repeat("a", n)), 1)
	if len(m) != size {
		t.Fatalf("made %d bytes, want %d", len(m), size)
	}
	return m
}

// TestWSTooLarge: a message of MaxHeaderBytes+MaxBodyBytes passes; one
// byte more, across fragments, gets a Close 1009 before it is whole.
func TestWSTooLarge(t *testing.T) {
	ev := newStreamEvents()
	lim := StreamLimits{MaxHeaderBytes: 1024, MaxBodyBytes: 1024}
	l, probe, r, _ := wsServe(t, ev, lim)
	nc, k := dialWS(t, l, "ws", sipDialer)
	sendFrame(t, nc, true, ws.OpText, sizedRegister(t, nc.LocalAddr(), 2048))
	expect200WS(t, nc)

	m := sizedRegister(t, nc.LocalAddr(), 2049)
	sendFrame(t, nc, false, ws.OpText, m[:1000])
	sendFrame(t, nc, false, ws.OpContinuation, m[1000:2000])
	// The Close comes on this header, whose payload is never sent.
	if err := ws.WriteHeader(nc, ws.Header{Fin: true, OpCode: ws.OpContinuation, Masked: true, Length: 49}); err != nil {
		t.Fatal(err)
	}
	expectCloseFrame(t, nc, ws.StatusMessageTooBig)
	expectClose(t, ev, closeEvent{k, "too large"})
	probe.waitClosed(t)
	if n := r.regs.Load(); n != 1 {
		t.Errorf("%d REGISTERs handled, want 1", n)
	}
}

// TestWSSlowMessage: a message must arrive within HeaderTimeout of its
// first byte.
func TestWSSlowMessage(t *testing.T) {
	ev := newStreamEvents()
	lim := StreamLimits{HeaderTimeout: 200 * time.Millisecond}
	l, probe, _, _ := wsServe(t, ev, lim)
	nc, k := dialWS(t, l, "ws", sipDialer)
	sendFrame(t, nc, true, ws.OpText, optionsRequest("WS", nc.LocalAddr()))
	expect200WS(t, nc)

	start := time.Now()
	if _, err := nc.Write([]byte{0x81, 0x85}); err != nil { // a text frame's first 2 bytes
		t.Fatal(err)
	}
	closedAfter(t, ev, k, "header timeout", start, lim.HeaderTimeout)
	probe.waitClosed(t)
}

// TestWSListenerClose closes a connection still in its handshake, and
// waits for its goroutine (TestMain checks for leaks).
func TestWSListenerClose(t *testing.T) {
	ev := newStreamEvents()
	l, _, _, stop := wsServe(t, ev, StreamLimits{})
	silent, k := dialFlow(t, l, WS)
	expectAccept(t, ev, k.Remote)
	stop()
	expectClose(t, ev, closeEvent{k, "closed"})
	silent.expectEnd(t)
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
}

// TestWSS: the shim on a TLS listener.
func TestWSS(t *testing.T) {
	ev := newStreamEvents()
	probe, tl, pool := newTLSListener(t)
	l := NewWSListener(tl, WSS, ev.hooks())
	serveSIP(t, l, serveWSS)
	d := sipDialer
	d.TLSConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	nc, k := dialWS(t, l, "wss", d)
	sendFrame(t, nc, true, ws.OpPing, "tls")
	expectFrame(t, nc, ws.OpPong, "tls")
	sendFrame(t, nc, true, ws.OpBinary, optionsRequest("WSS", nc.LocalAddr()))
	expect200WS(t, nc)
	sendFrame(t, nc, true, ws.OpClose, string(ws.NewCloseFrameBody(ws.StatusGoingAway, "")))
	expectFrame(t, nc, ws.OpClose, "\x03\xe9")
	expectClose(t, ev, closeEvent{k, "eof"})
	probe.waitClosed(t)
}

func TestSIPShaped(t *testing.T) {
	reg := registerRequest("WS", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5060}, "")
	for _, tc := range []struct {
		name, msg string
		ok        bool
		trimmed   string // when not msg
	}{
		{"request", reg, true, ""},
		{"leading CRLF", "\r\n\n" + reg, true, reg},
		{"response", "SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", true, ""},
		{"response without reason", "SIP/2.0 200 \r\n\r\n", true, ""},
		{"keepalive", "\r\n\r\n", true, ""},
		{"short keepalive", "\r\n", true, ""},
		{"long keepalive", "\r\n\r\n\r\n", false, ""},
		{"empty", "", false, ""},
		{"folded Content-Length", strings.Replace(reg, "Content-Length: 0", "Content-Length:\r\n 0", 1), true, ""},
		{"compact l", strings.Replace(reg, "Content-Length: 0", "l: 0", 1), true, ""},
		{"body shorter than l", strings.Replace(reg, "Content-Length: 0", "l: 1", 1), false, ""},
		{"body longer", strings.Replace(reg, "Content-Length: 0", "Content-Length: 1", 1) + "ab", true, ""},
		{"no Content-Length", strings.Replace(reg, "Content-Length: 0\r\n", "", 1) + "ab", true, ""},
		{"lone CR", strings.Replace(reg, "Max-Forwards: 70", "Max-Forwards: 7\r0", 1), false, ""},
		{"no colon", strings.Replace(reg, "Max-Forwards: 70", "Max-Forwards", 1), false, ""},
		{"colon in the continuation", strings.Replace(reg, "Max-Forwards: 70", "Max-Forwards\r\n : 70", 1), true, ""},
		{"two spaces in the version", strings.Replace(reg, " SIP/2.0\r\n", " SIP/2.0 x\r\n", 1), false, ""},
		{"bad URI", strings.Replace(reg, "sip:127.0.0.1 SIP", "sip:[ SIP", 1), false, ""},
		{"status not a number", "SIP/2.0 2x0 OK\r\n\r\n", false, ""},
		{"HTTP", "HTTP/1.1 200 OK\r\n\r\n", false, ""},
		{"two words", "REGISTER SIP/2.0\r\n\r\n", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := sipShaped([]byte(tc.msg))
			if ok != tc.ok {
				t.Errorf("sipShaped = %v, want %v", ok, tc.ok)
			}
			want := tc.msg
			if tc.trimmed != "" {
				want = tc.trimmed
			}
			if ok && string(got) != want {
				t.Errorf("kept %q, want %q", got, want)
			}
		})
	}
}

// TestWSWritesWhole: sipgo's frames reach the client whole, after its
// 101 is swallowed, however its writes are cut, and a pong written
// between two of them lands between frames.
func TestWSWritesWhole(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	l := NewWSListener(nil, WS, StreamHooks{})
	c := &Conn{inner: a, l: l, key: FlowKey{Transport: WS}}
	c.ws = &wsConn{c: c}
	defer c.Close()

	frame := func(p string) []byte {
		var s strings.Builder
		if err := ws.WriteFrame(&s, ws.NewTextFrame([]byte(p))); err != nil {
			t.Fatal(err)
		}
		return []byte(s.String())
	}
	long := strings.Repeat("x", 300) // a 16-bit length
	resp := "HTTP/1.1 101 Switching Protocols\r\nX: \r\r\n\r\n"
	writes := [][]byte{[]byte(resp[:20]), []byte(resp[20:])}
	f1, f2 := frame("first"), frame(long)
	writes = append(writes, f1[:1], f1[1:2], append(f1[2:], f2[:3]...), f2[3:])

	got := make(chan []byte)
	go func() {
		b.SetReadDeadline(time.Now().Add(waitTimeout))
		all, _ := io.ReadAll(b)
		got <- all
	}()
	for i, w := range writes {
		if n, err := c.Write(w); n != len(w) || err != nil {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
		if i == 3 { // inside the first frame
			if err := c.ws.control(ws.OpPong, []byte("p")); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.Close()
	var want []byte
	want = append(append(append(want, 0x8a, 1, 'p'), f1...), f2...)
	select {
	case all := <-got:
		if string(all) != string(want) {
			t.Errorf("client read %q,\nwant %q", all, want)
		}
	case <-time.After(waitTimeout):
		t.Fatal("timed out")
	}
	if h, n := parseWSHeader(f2); n != 4 || h.Length != 300 {
		t.Errorf("parseWSHeader: %+v, %d", h, n)
	}
	var big [10]byte
	big[0], big[1] = 0x82, 127
	binary.BigEndian.PutUint64(big[2:], 1<<63)
	if h, n := parseWSHeader(big[:]); n != 10 || h.Length != wsHugeFrame {
		t.Errorf("parseWSHeader of a 2^63 length: %+v, %d", h, n)
	}
}
