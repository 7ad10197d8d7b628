package edge_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// TestInflightCapFollowsTheCore: with the in-flight slots taken at a
// silent core the next REGISTER gets 503 with Retry-After at once; once
// the core has shown it answers more in inflight_time (1 s), as many may
// wait on it. (A new AOR gets three quarters of the slots: the rest are
// kept for refreshes.)
func TestInflightCapFollowsTheCore(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{Silent: true})
	clk := fakeClock()
	e := edgetest.StartWith(t, core.URI("udp"), func(c *edgetest.Config) {
		c.RateLimit.Allow = []string{"127.0.0.0/8"} // many REGISTERs from one address
		c.RateLimit.MaxInflight = 4
	}, edgetest.Hooks{Clock: clk})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	register := func(user string) *edgetest.Phone {
		p := edgetest.Dial(t, "udp", e.UDP)
		p.Send(p.Register(edgetest.Reg{User: user}))
		return p
	}
	refused := func() uint64 { return e.Limiter().Stats().Rejected[ratelimit.ReasonInflight] }

	// The maintenance loop's looks (Sweep) are made here too, at known
	// moments of the fake clock: the first one starts the count.
	e.Limiter().Sweep()

	// The fixed floor: three at the silent core, the fourth turned away.
	waiting := []*edgetest.Phone{register("a0"), register("a1"), register("a2")}
	for range waiting {
		if _, err := core.NextRequest(ctx); err != nil {
			t.Fatalf("the core did not get the first three: %v", err)
		}
	}
	if res := register("a3").MustRecvResponse(wait); res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("fourth new AOR at max_inflight 4: %d (Retry-After %v), want 503 with Retry-After", res.StatusCode, res.GetHeader("Retry-After"))
	}
	for _, p := range waiting { // the core's silence ends them (core.timeout)
		if res := p.MustRecvResponse(10 * time.Second); res.StatusCode != 503 {
			t.Fatalf("REGISTER at a silent core: %d %s", res.StatusCode, res.Reason)
		}
	}
	core.SetSilent(false)

	// A second of the core answering 17, one after another: 20 slots given
	// back in all.
	for i := range 17 {
		if res := register(fmt.Sprintf("b%d", i)).MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("REGISTER b%d: %d %s (refused for the cap so far: %d)", i, res.StatusCode, res.Reason, refused())
		}
	}
	clk.Advance(time.Second)
	e.Limiter().Sweep()
	// A slot is given back just after the answer is relayed: the last may
	// not be back yet.
	if n := e.Limiter().Stats().InflightLimit; n < 19 || n > 20 {
		t.Fatalf("limit %d after the core answered 20 in a second, want 20", n)
	}

	// Now ten new AORs may wait on the silent core, where three could.
	core.SetSilent(true)
	before := refused()
	for i := range 10 {
		register(fmt.Sprintf("c%d", i))
	}
	for i := range 10 {
		if _, err := core.NextRequest(ctx); err != nil {
			t.Fatalf("the core got %d of 10 REGISTERs: %v", i, err)
		}
	}
	if n := refused() - before; n != 0 {
		t.Fatalf("%d refused for the in-flight cap at the core's pace", n)
	}
}
