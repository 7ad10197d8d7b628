package edge_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// REGISTER over TLS: the flow token names the TLS connection and a
// request from the core comes back on it.
func TestRegisterOverTLS(t *testing.T) {
	cert, key := edgetest.SelfSignedCert(t, t.TempDir())
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		c.Access.TLS = []string{"127.0.0.1:0"}
		c.Access.TLSCert, c.Access.TLSKey = cert, key
	})
	phone := edgetest.DialTLS(t, e.TLS)
	phone.Send(phone.Register(edgetest.Reg{User: "tls"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("got %d", res.StatusCode)
	}
	got := core.Requests()[0]
	if k := pathToken(t, e, got); k.Transport != nat.TLS || k.Remote != phone.Local {
		t.Fatalf("token flow %v", k)
	}
	path := core.Bindings("sip:tls@example.com")[0].Path[0]
	coreSock := edgetest.Dial(t, "udp", e.CoreAddr())
	coreSock.Send("MESSAGE sip:tls@" + phone.Local.String() + ";transport=tls SIP/2.0\n" +
		"Via: SIP/2.0/UDP " + coreSock.Local.String() + ";branch=z9hG4bK-tls-msg;rport\n" +
		"Route: " + path + "\nMax-Forwards: 70\nFrom: <sip:core@example.com>;tag=c\nTo: <sip:tls@example.com>\n" +
		"Call-ID: tls-msg\nCSeq: 1 MESSAGE\nContent-Length: 0\n\n")
	msg := phone.MustRecvRequest("MESSAGE", wait)
	phone.Respond(msg, 200, "OK", "p")
	if res := coreSock.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("core got %d", res.StatusCode)
	}
}

// registerOverWS registers user over a WebSocket (RFC 7118, "sip"
// subprotocol) to url, as a browser phone does, and returns the local
// address of the connection once the answer is a 200.
func registerOverWS(t *testing.T, url, user string, tlsConf *tls.Config) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	d := ws.Dialer{Protocols: []string{"sip"}, TLSConfig: tlsConf}
	conn, _, _, err := d.Dial(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	reg := "REGISTER sip:example.com SIP/2.0\r\n" +
		"Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK-" + user + "-1;rport\r\n" +
		"Max-Forwards: 70\r\nFrom: <sip:" + user + "@example.com>;tag=w1\r\nTo: <sip:" + user + "@example.com>\r\n" +
		"Call-ID: " + user + "-1\r\nCSeq: 1 REGISTER\r\nContact: <sip:" + user + "@df7jal23ls0d.invalid;transport=ws>\r\n" +
		"Expires: 600\r\nContent-Length: 0\r\n\r\n"
	if err := wsutil.WriteClientText(conn, []byte(reg)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(wait))
	data, err := wsutil.ReadServerText(conn)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sip.ParseMessage(data)
	if err != nil {
		t.Fatal(err)
	}
	if res, ok := m.(*sip.Response); !ok || res.StatusCode != 200 {
		t.Fatalf("got %s", strings.SplitN(string(data), "\r\n", 2)[0])
	}
	return conn.LocalAddr().String()
}

// REGISTER over WebSocket (RFC 7118).
func TestRegisterOverWebSocket(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		c.Access.WS = []string{"127.0.0.1:0"}
	})
	local := registerOverWS(t, "ws://"+e.WS.String(), "ws", nil)
	bs := e.Bindings().Lookup("sip:ws@example.com")
	if len(bs) != 1 || bs[0].Flow.Transport != nat.WS || bs[0].Flow.Remote.String() != local {
		t.Fatalf("bindings %+v, want one on the WS connection from %s", bs, local)
	}
	if !bs[0].NAT.BehindNAT() {
		t.Errorf("a .invalid Via host should count as NAT evidence, got %v", bs[0].NAT)
	}
}

// REGISTER over secure WebSocket (WSS).
func TestRegisterOverSecureWebSocket(t *testing.T) {
	cert, key := edgetest.SelfSignedCert(t, t.TempDir())
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		c.Access.WSS = []string{"127.0.0.1:0"}
		c.Access.TLSCert, c.Access.TLSKey = cert, key
	})
	local := registerOverWS(t, "wss://"+e.WSS.String(), "wss", &tls.Config{InsecureSkipVerify: true})
	bs := e.Bindings().Lookup("sip:wss@example.com")
	if len(bs) != 1 || bs[0].Flow.Transport != nat.WSS || bs[0].Flow.Remote.String() != local {
		t.Fatalf("bindings %+v, want one on a WSS flow from %s", bs, local)
	}
}

// When a phone's TCP connection is gone before its answer is ready,
// sipgo falls back to the Via address: the access side must never dial
// it (anyone could make the edge connect anywhere).
func TestAccessSideNeverDials(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	trap, err := net.Listen("tcp", "127.0.0.9:0")
	if err != nil {
		t.Fatal(err)
	}
	defer trap.Close()
	dialed := make(chan struct{}, 100)
	go func() {
		for {
			c, err := trap.Accept()
			if err != nil {
				return
			}
			c.Close()
			dialed <- struct{}{}
		}
	}()
	for i := range 20 {
		c, err := net.Dial("tcp", e.TCP.String())
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for j := range 5 {
			fmt.Fprintf(&b, "OPTIONS sip:%s SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bK-trap-%d-%d\r\nMax-Forwards: 70\r\n"+
				"From: <sip:x@example.com>;tag=t\r\nTo: <sip:%s>\r\nCall-ID: trap-%d-%d\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
				e.TCP, trap.Addr(), i, j, e.TCP, i, j)
		}
		c.Write([]byte(b.String()))
		c.(*net.TCPConn).SetLinger(0) // RST: the answers find no connection
		c.Close()
	}
	// A UDP phone's answer after all that proves the edge has handled it.
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "after"}))
	phone.MustRecvResponse(wait)
	select {
	case <-dialed:
		t.Fatal("the edge connected to the address in a phone's Via")
	case <-time.After(500 * time.Millisecond):
	}
}

// The WebSocket rows of the border review, through the edge: an idle
// connection to the WS port does not hold up anyone's upgrade, a client
// offering no `sip` subprotocol is refused, a message in a binary frame
// is served, and a malformed message costs only itself.
func TestWebSocketBorder(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		c.Access.WS = []string{"127.0.0.1:0"}
	})
	idle, err := net.Dial("tcp", e.WS.String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	registerOverWS(t, "ws://"+e.WS.String(), "wsbehind", nil) // while idle stays silent

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, _, _, err := (ws.Dialer{}).Dial(ctx, "ws://"+e.WS.String()); err == nil {
		t.Fatal("a client offering no sip subprotocol was upgraded")
	}

	conn, _, _, err := (ws.Dialer{Protocols: []string{"sip"}}).Dial(ctx, "ws://"+e.WS.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := wsutil.WriteClientText(conn, []byte("this is not SIP\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	reg := "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bK-bin;rport\r\n" +
		"Max-Forwards: 70\r\nFrom: <sip:wsbin@example.com>;tag=b\r\nTo: <sip:wsbin@example.com>\r\n" +
		"Call-ID: wsbin\r\nCSeq: 1 REGISTER\r\nContact: <sip:wsbin@x.invalid;transport=ws>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
	if err := wsutil.WriteClientBinary(conn, []byte(reg)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(wait))
	data, err := wsutil.ReadServerText(conn)
	if err != nil {
		t.Fatalf("no answer to a binary REGISTER after a malformed message: %v", err)
	}
	if !strings.HasPrefix(string(data), "SIP/2.0 200") {
		t.Fatalf("got %q", strings.SplitN(string(data), "\r\n", 2)[0])
	}
}
