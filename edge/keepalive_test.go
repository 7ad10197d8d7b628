package edge_test

import (
	"net"
	"testing"
	"time"

	"github.com/pion/stun/v2"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// A STUN Binding request on the SIP port is answered with the phone's
// public address (RFC 5626 §8), and SIP keeps working on the same socket.
func TestSTUNOnSIPPort(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", e.UDP)

	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(e.UDP))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if _, err := c.Write(req.Raw); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no STUN answer: %v", err)
	}
	res := &stun.Message{Raw: buf[:n]}
	if err := res.Decode(); err != nil || res.Type != stun.BindingSuccess || res.TransactionID != req.TransactionID {
		t.Fatalf("bad STUN answer %v: %v", res, err)
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(res); err != nil {
		t.Fatal(err)
	}
	if got := c.LocalAddr().(*net.UDPAddr); !xor.IP.Equal(got.IP) || xor.Port != got.Port {
		t.Fatalf("XOR-MAPPED-ADDRESS %v, want %v", xor, got)
	}
	c.Write([]byte("\r\n\r\n")) // a CRLF keepalive is swallowed, not answered
	phone.Send(phone.Register(edgetest.Reg{User: "stun"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER after STUN got %d", res.StatusCode)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("CRLF keepalive was answered on UDP: %q", buf[:n])
	}
}
