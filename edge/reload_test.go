package edge_test

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// freeUDP returns a loopback address with a UDP and TCP port free now.
func freeUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// A reload changes the registration policy and the listeners while the
// bindings stay; one that cannot bind a listener changes nothing.
func TestReload(t *testing.T) {
	reg := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, reg.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "bob"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER got %d", res.StatusCode)
	}

	// Domains: example.com is no longer served; bob's binding stays.
	cfg := e.Config()
	cfg.Registration.Domains = []string{"other.example"}
	cfg.Core.Timeout++
	restart, err := e.Reload(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(restart) != 1 || restart[0] != "core.timeout" {
		t.Errorf("needs restart %v, want [core.timeout]", restart)
	}
	// Still not applied at the next reload: still named.
	if restart, err := e.Reload(cfg); err != nil || len(restart) != 1 {
		t.Errorf("second reload: needs restart %v, %v; want [core.timeout] again", restart, err)
	}
	phone.Send(phone.Register(edgetest.Reg{User: "bob", CSeq: 2}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("REGISTER for a domain no longer served got %d, want 403", res.StatusCode)
	}
	if n := e.Bindings().Len(); n != 1 {
		t.Fatalf("%d bindings after the reload, want 1", n)
	}

	// A listener that cannot be bound: refused, nothing changed.
	busy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	bad := cfg
	bad.Registration.Domains = nil
	bad.Access.UDP = append([]string{busy.LocalAddr().String()}, cfg.Access.UDP...)
	if _, err := e.Reload(bad); err == nil || !strings.Contains(err.Error(), "access.udp") {
		t.Fatalf("reload with a busy address: %v", err)
	}
	phone.Send(phone.Register(edgetest.Reg{User: "bob", CSeq: 3}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("a refused reload changed the domains: %d", res.StatusCode)
	}

	// A new UDP listener opens and serves; the old one closes, and the
	// flow on it dies with its binding.
	added := freeUDP(t)
	next := cfg
	next.Registration.Domains = nil
	next.Access.UDP = []string{added}
	if _, err := e.Reload(next); err != nil {
		t.Fatal(err)
	}
	moved := edgetest.Dial(t, "udp", netip.MustParseAddrPort(added))
	moved.Send(moved.Register(edgetest.Reg{User: "carol"}))
	if res := moved.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER on the added listener got %d", res.StatusCode)
	}
	if bs := e.Bindings().Lookup("sip:bob@example.com"); len(bs) != 0 {
		t.Errorf("bob's binding on the closed listener stayed: %+v", bs)
	}
	phone.Send(phone.Register(edgetest.Reg{User: "bob", CSeq: 4}))
	if _, err := phone.Recv(wait / 5); err == nil {
		t.Error("the removed listener still answers")
	}
}
