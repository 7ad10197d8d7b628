package edge_test

import (
	"errors"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/edgetest"
)

// Draining: REGISTERs get 503 with a spread Retry-After, a call in
// progress still ends (its BYE passes both ways), and stream connections
// are closed within the grace period, cleanly (EOF, not a reset).
func TestDrain(t *testing.T) {
	c := setupCall(t, "udp", func(cfg *edgetest.Config) { cfg.Drain.Grace = 3 * time.Second })
	tcp := edgetest.Dial(t, "tcp", c.e.TCP)
	tcp.Send(tcp.Register(edgetest.Reg{User: "carol"}))
	if res := tcp.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("TCP REGISTER got %d", res.StatusCode)
	}
	// A call in progress.
	c.core.Send(c.request("INVITE", c.contact(), c.path, "drain-call", 1, ""))
	inv := c.phone.MustRecvRequest("INVITE", wait)
	c.phone.Respond(inv, 200, "OK", "callee")
	ok := c.core.MustRecvResponse(wait)
	if ok.StatusCode != 200 {
		t.Fatalf("INVITE got %d", ok.StatusCode)
	}
	route := routeSet(ok)

	stopped := make(chan struct{})
	start := time.Now()
	go func() { c.e.Stop(); close(stopped) }()

	// The drain begins when a REGISTER gets 503 (bounded wait, no sleep).
	var retry int
	for i := 2; ; i++ {
		c.phone.Send(c.phone.Register(edgetest.Reg{User: "bob", CSeq: i}))
		res := c.phone.MustRecvResponse(wait)
		if res.StatusCode == 503 {
			h := res.GetHeader("Retry-After")
			if h == nil {
				t.Fatal("503 while draining without Retry-After")
			}
			retry, _ = strconv.Atoi(h.Value())
			break
		}
		if time.Since(start) > wait {
			t.Fatalf("REGISTER still answered %d after the drain began", res.StatusCode)
		}
	}
	if retry < 15 || retry > 45 {
		t.Errorf("Retry-After %d, want 15..45 (30 s ± 50%%)", retry)
	}
	// The call still ends.
	c.core.Send(c.request("BYE", c.contact(), route, "drain-call", 2, ";tag=callee"))
	bye := c.phone.MustRecvRequest("BYE", wait)
	c.phone.Respond(bye, 200, "OK", "")
	if res := c.core.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("BYE while draining got %d", res.StatusCode)
	}
	// The TCP connection is closed by the edge within the grace, with a FIN.
	for {
		_, err := tcp.Recv(5 * time.Second)
		if err == nil {
			continue
		}
		if !errors.Is(err, io.EOF) {
			t.Fatalf("TCP connection ended with %v, want EOF", err)
		}
		break
	}
	select {
	case <-stopped:
	case <-time.After(wait):
		t.Fatal("edge did not stop")
	}
	if d := time.Since(start); d > 3*time.Second+time.Second {
		t.Errorf("drain took %v, grace 3s", d)
	}
}

// Hurry (a second SIGTERM) ends a drain at once.
func TestDrainHurry(t *testing.T) {
	c := setupCall(t, "tcp", func(cfg *edgetest.Config) { cfg.Drain.Grace = time.Minute })
	other := edgetest.Dial(t, "tcp", c.e.TCP) // two connections: one is closed at the start, one after half a minute
	other.Send(other.Register(edgetest.Reg{User: "carol"}))
	other.MustRecvResponse(wait)
	stopped := make(chan struct{})
	go func() { c.e.Stop(); close(stopped) }()
	// Wait for the drain: a REGISTER answered 503.
	for i := 2; ; i++ {
		c.phone.Send(c.phone.Register(edgetest.Reg{User: "bob", CSeq: i}))
		res, err := c.phone.Recv(wait)
		if err != nil {
			break // this connection was the first closed
		}
		if r, ok := res.(*sip.Response); ok && r.StatusCode == 503 {
			break
		}
		if i > 1000 {
			t.Fatal("no drain")
		}
	}
	start := time.Now()
	c.e.Server.Hurry()
	select {
	case <-stopped:
	case <-time.After(wait):
		t.Fatal("Hurry did not end the drain")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("stopped %v after Hurry", d)
	}
}
