package binding

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sipedge/sipedge/nat"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func flow(port uint16) nat.FlowKey {
	return nat.FlowKey{Transport: nat.UDP, Local: netip.MustParseAddrPort("192.0.2.1:5060"),
		Remote: netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), port)}
}

func TestPutLookupRemove(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	var removed []Binding
	tab := New(clk.Now, Events{OnRemove: func(b Binding) { removed = append(removed, b) }})
	aor := "sip:alice@example.com"
	tab.Put(Binding{AOR: aor, Contact: "sip:a@10.0.0.1", Flow: flow(1), Expires: clk.Now().Add(time.Hour)})
	tab.Put(Binding{AOR: aor, Contact: "sip:a@10.0.0.2", Flow: flow(2), Expires: clk.Now().Add(time.Hour)})
	tab.Put(Binding{AOR: aor, Contact: "sip:a@10.0.0.1", Flow: flow(3), Expires: clk.Now().Add(time.Hour)}) // refresh
	bs := tab.Lookup(aor)
	if len(bs) != 2 || bs[0].Flow != flow(3) || tab.Len() != 2 {
		t.Fatalf("after refresh: %+v (len %d)", bs, tab.Len())
	}
	if len(tab.Lookup("sip:bob@example.com")) != 0 {
		t.Fatal("lookup of another AOR found bindings")
	}
	if !tab.Remove(aor, "sip:a@10.0.0.1") || tab.Remove(aor, "sip:a@10.0.0.1") {
		t.Fatal("Remove should succeed once")
	}
	// Three removals: the refresh that left flow 1, Remove, RemoveAOR.
	if n := tab.RemoveAOR(aor); n != 1 || tab.Len() != 0 || len(removed) != 3 {
		t.Fatalf("RemoveAOR = %d, len %d, removed events %d", n, tab.Len(), len(removed))
	}
}

func TestExpiryWithInjectedClock(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	expired := make(chan Binding, 4)
	tab := New(clk.Now, Events{OnExpire: func(b Binding) { expired <- b }})
	tab.Put(Binding{AOR: "sip:a@x", Contact: "sip:a@1", Expires: clk.Now().Add(60 * time.Second)})
	tab.Put(Binding{AOR: "sip:b@x", Contact: "sip:b@1", Expires: clk.Now().Add(120 * time.Second)})

	clk.Add(59 * time.Second)
	if len(tab.Sweep()) != 0 || len(tab.Lookup("sip:a@x")) != 1 {
		t.Fatal("swept a live binding")
	}
	clk.Add(time.Second)
	if len(tab.Lookup("sip:a@x")) != 0 {
		t.Fatal("an expired binding is still looked up before the sweep")
	}

	// The sweeper runs on ticks the test sends.
	ctx, cancel := context.WithCancel(context.Background())
	tick := make(chan time.Time)
	done := make(chan struct{})
	go func() { tab.RunSweeper(ctx, tick); close(done) }()
	tick <- clk.Now()
	select {
	case b := <-expired:
		if b.AOR != "sip:a@x" {
			t.Fatalf("expired %s", b.AOR)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sweeper did not expire the binding")
	}
	cancel()
	<-done
	if tab.Len() != 1 {
		t.Fatalf("len = %d, want 1", tab.Len())
	}
}

func TestByCoreContactIsScopedToAOR(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	tab := New(clk.Now, Events{})
	tab.Put(Binding{AOR: "sip:a@x", Contact: "sip:a@1", CoreContact: "sip:TOK@edge", Expires: clk.Now().Add(time.Hour)})
	if _, ok := tab.ByCoreContact("sip:b@x", "sip:TOK@edge"); ok {
		t.Fatal("found another user's binding")
	}
	if b, ok := tab.ByCoreContact("sip:a@x", "sip:TOK@edge"); !ok || b.Contact != "sip:a@1" {
		t.Fatal("own binding not found")
	}
}

func TestConcurrentPuts(t *testing.T) {
	tab := New(time.Now, Events{})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 500 {
				c := "sip:c@" + netip.AddrFrom4([4]byte{10, byte(i), byte(j >> 8), byte(j)}).String()
				tab.Put(Binding{AOR: "sip:a@x", Contact: c, Expires: time.Now().Add(time.Hour)})
				if j%2 == 0 {
					tab.Remove("sip:a@x", c)
				}
			}
		}()
	}
	wg.Wait()
	if tab.Len() != 8*250 || len(tab.All()) != 8*250 {
		t.Fatalf("len %d, all %d", tab.Len(), len(tab.All()))
	}
}

func TestSameInstanceMovesTheBinding(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	tab := New(clk.Now, Events{})
	aor := "sip:alice@example.com"
	inst := `"<urn:uuid:00000000-0000-0000-0000-000000000001>"`
	tab.Put(Binding{AOR: aor, Contact: "sip:a@198.51.100.7:1111", Instance: inst, RegID: 1, Flow: flow(1111), Expires: clk.Now().Add(time.Hour)})
	tab.Put(Binding{AOR: aor, Contact: "sip:a@198.51.100.7:2222", Instance: inst, RegID: 1, Flow: flow(2222), Expires: clk.Now().Add(time.Hour)})
	bs := tab.Lookup(aor)
	if len(bs) != 1 || bs[0].Flow != flow(2222) || tab.Len() != 1 {
		t.Fatalf("bindings = %+v, want only the new flow", bs)
	}
	// Another reg-id of the same instance is a second flow, kept (RFC 5626 §4.2).
	tab.Put(Binding{AOR: aor, Contact: "sip:a@198.51.100.7:3333", Instance: inst, RegID: 2, Flow: flow(3333), Expires: clk.Now().Add(time.Hour)})
	// The same instance under another AOR is untouched by either.
	tab.Put(Binding{AOR: "sip:bob@example.com", Contact: "sip:b@1", Instance: inst, RegID: 1, Expires: clk.Now().Add(time.Hour)})
	if len(tab.Lookup(aor)) != 2 || len(tab.Lookup("sip:bob@example.com")) != 1 {
		t.Fatalf("aor %d, bob %d", len(tab.Lookup(aor)), len(tab.Lookup("sip:bob@example.com")))
	}
}

func TestRemoveFlow(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	var gone []string
	tab := New(clk.Now, Events{OnRemove: func(b Binding) { gone = append(gone, b.Contact) }})
	exp := clk.Now().Add(time.Hour)
	tab.Put(Binding{AOR: "sip:a@x", Contact: "sip:a@1", Flow: flow(1), Expires: exp})
	tab.Put(Binding{AOR: "sip:b@x", Contact: "sip:b@1", Flow: flow(1), Expires: exp})
	tab.Put(Binding{AOR: "sip:c@x", Contact: "sip:c@2", Flow: flow(2), Expires: exp})
	if !tab.HasFlow(flow(1)) || len(tab.RemoveFlow(flow(1))) != 2 || tab.HasFlow(flow(1)) {
		t.Fatal("RemoveFlow did not remove both bindings of the flow")
	}
	if tab.Len() != 1 || len(gone) != 2 || !tab.HasFlow(flow(2)) {
		t.Fatalf("len %d, removed %v", tab.Len(), gone)
	}
	// A refresh that moves a binding to another flow re-indexes it.
	tab.Put(Binding{AOR: "sip:c@x", Contact: "sip:c@2", Flow: flow(3), Expires: exp})
	if tab.HasFlow(flow(2)) || !tab.HasFlow(flow(3)) {
		t.Fatal("flow index not moved on refresh")
	}
}

func TestMoveToAnotherFlowReportsTheOld(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	var removed []nat.FlowKey
	tab := New(clk.Now, Events{OnRemove: func(b Binding) { removed = append(removed, b.Flow) }})
	exp := clk.Now().Add(time.Hour)
	tab.Put(Binding{AOR: "sip:a@x", Contact: "sip:a@1", Flow: flow(1), Expires: exp})
	tab.Put(Binding{AOR: "sip:a@x", Contact: "sip:a@1", Flow: flow(1), Expires: exp}) // refresh
	tab.Put(Binding{AOR: "sip:a@x", Contact: "sip:a@1", Flow: flow(2), Expires: exp}) // new NAT port
	if len(removed) != 1 || removed[0] != flow(1) || tab.HasFlow(flow(1)) {
		t.Fatalf("removed %v; old flow still used: %v", removed, tab.HasFlow(flow(1)))
	}
}
