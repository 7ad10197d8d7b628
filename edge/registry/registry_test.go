package registry

import (
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

// watcher records which flows are watched.
type watcher struct {
	mu sync.Mutex
	on map[nat.FlowKey]bool
}

func (w *watcher) Watch(k nat.FlowKey)                      { w.mu.Lock(); w.on[k] = true; w.mu.Unlock() }
func (w *watcher) WatchSoon(k nat.FlowKey, _ time.Duration) { w.Watch(k) }
func (w *watcher) Unwatch(k nat.FlowKey)                    { w.mu.Lock(); delete(w.on, k); w.mu.Unlock() }
func (w *watcher) has(k nat.FlowKey) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.on[k]
}

type counter struct {
	mu sync.Mutex
	n  map[netip.Addr]int
}

func (c *counter) SetBindings(a netip.Addr, n int) { c.mu.Lock(); c.n[a] = n; c.mu.Unlock() }

type rig struct {
	clk    *fakeClock
	flows  *nat.FlowTable
	udp    *watcher
	stream *watcher
	src    *counter
	r      *Registry
	mu     sync.Mutex
	events []Event
}

func newRig(t testing.TB) *rig {
	t.Helper()
	g := &rig{clk: &fakeClock{t: time.Unix(1e9, 0)}, udp: &watcher{on: map[nat.FlowKey]bool{}},
		stream: &watcher{on: map[nat.FlowKey]bool{}}, src: &counter{n: map[netip.Addr]int{}}}
	var err error
	g.flows, err = nat.NewFlowTable(1_000_000, g.clk.Now, nat.FlowEvents{OnDead: func(k nat.FlowKey, why string) { g.r.FlowDead(k, why) }})
	if err != nil {
		t.Fatal(err)
	}
	g.r, err = New(Deps{Now: g.clk.Now, Flows: g.flows, UDP: g.udp, Stream: g.stream, Sources: g.src,
		OnEvent: func(e Event) { g.mu.Lock(); g.events = append(g.events, e); g.mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *rig) kinds() []Kind {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []Kind
	for _, e := range g.events {
		out = append(out, e.Kind)
	}
	g.events = nil
	return out
}

// put registers one binding the way the registrar does.
func (g *rig) put(b Binding) {
	g.r.Apply(Update{AOR: b.AOR, Flow: b.Flow, Put: []Binding{b}})
}

func (g *rig) remove(aor, id string, f nat.FlowKey) {
	g.r.Apply(Update{AOR: aor, Flow: f, Remove: []string{id}})
}

func flow(port uint16) nat.FlowKey {
	return nat.FlowKey{Transport: nat.UDP, Local: netip.MustParseAddrPort("192.0.2.1:5060"),
		Remote: netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), port)}
}

func tcpFlow(port uint16) nat.FlowKey {
	k := flow(port)
	k.Transport = nat.TCP
	return k
}

func equalKinds(a []Kind, b ...Kind) bool {
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

func TestApplyLookupRemove(t *testing.T) {
	g := newRig(t)
	aor := "sip:alice@example.com"
	exp := g.clk.Now().Add(time.Hour)
	g.put(Binding{AOR: aor, Contact: "sip:a@10.0.0.1", Flow: flow(1), Expires: exp})
	g.put(Binding{AOR: aor, Contact: "sip:a@10.0.0.2", Flow: flow(2), Expires: exp})
	g.put(Binding{AOR: aor, Contact: "sip:a@10.0.0.1", Flow: flow(3), Expires: exp}) // moved to a new NAT port
	bs := g.r.Lookup(aor)
	if len(bs) != 2 || bs[0].Flow != flow(3) || g.r.Len() != 2 {
		t.Fatalf("after move: %+v (len %d)", bs, g.r.Len())
	}
	if k := g.kinds(); !equalKinds(k, Registered, Registered, Moved) {
		t.Fatalf("events %v", k)
	}
	// The flow the binding left is forgotten and no longer kept open.
	if g.r.HasFlow(flow(1)) || g.udp.has(flow(1)) || g.flows.Alive(flow(1)) {
		t.Fatal("old flow still kept")
	}
	if !g.udp.has(flow(3)) || !g.flows.Alive(flow(3)) {
		t.Fatal("new flow not kept")
	}
	if len(g.r.Lookup("sip:bob@example.com")) != 0 {
		t.Fatal("lookup of another AOR found bindings")
	}
	g.remove(aor, "sip:a@10.0.0.1", flow(3))
	g.remove(aor, "sip:a@10.0.0.1", flow(3))
	if k := g.kinds(); !equalKinds(k, Unregistered) {
		t.Fatalf("events %v, want one unregister", k)
	}
	g.r.Apply(Update{AOR: aor, Flow: flow(2), Star: true})
	if g.r.Len() != 0 || g.udp.has(flow(2)) || g.flows.Len() != 0 {
		t.Fatalf("after Contact *: len %d, flows %d", g.r.Len(), g.flows.Len())
	}
	if n := g.src.n[netip.MustParseAddr("198.51.100.7")]; n != 0 {
		t.Fatalf("source still counts %d bindings", n)
	}
}

func TestRefreshIsAnEvent(t *testing.T) {
	g := newRig(t)
	b := Binding{AOR: "sip:a@x", Contact: "sip:a@1", Flow: flow(1), Expires: g.clk.Now().Add(time.Hour)}
	g.put(b)
	g.put(b)
	if k := g.kinds(); !equalKinds(k, Registered, Refreshed) {
		t.Fatalf("events %v", k)
	}
	if g.src.n[netip.MustParseAddr("198.51.100.7")] != 1 {
		t.Fatal("source count wrong after refresh")
	}
}

func TestExpiryWithInjectedClock(t *testing.T) {
	g := newRig(t)
	g.put(Binding{AOR: "sip:a@x", Contact: "sip:a@1", Flow: flow(1), Expires: g.clk.Now().Add(60 * time.Second)})
	g.put(Binding{AOR: "sip:b@x", Contact: "sip:b@1", Flow: flow(2), Expires: g.clk.Now().Add(120 * time.Second)})
	g.kinds()
	g.clk.Add(59 * time.Second)
	if len(g.r.Expire()) != 0 || len(g.r.Lookup("sip:a@x")) != 1 {
		t.Fatal("expired a live binding")
	}
	g.clk.Add(time.Second)
	if len(g.r.Lookup("sip:a@x")) != 0 {
		t.Fatal("an expired binding is still looked up before the sweep")
	}
	gone := g.r.Expire()
	if len(gone) != 1 || gone[0].AOR != "sip:a@x" || g.r.Len() != 1 {
		t.Fatalf("expired %+v, len %d", gone, g.r.Len())
	}
	if k := g.kinds(); !equalKinds(k, Expired) {
		t.Fatalf("events %v", k)
	}
	if g.udp.has(flow(1)) || g.flows.Alive(flow(1)) || !g.udp.has(flow(2)) {
		t.Fatal("expiry did not release exactly its flow")
	}
}

func TestByCoreContactIsScopedToAOR(t *testing.T) {
	g := newRig(t)
	g.put(Binding{AOR: "sip:a@x", Contact: "sip:a@1", CoreContact: "sip:TOK@edge", Flow: flow(1), Expires: g.clk.Now().Add(time.Hour)})
	if _, ok := g.r.ByCoreContact("sip:b@x", "sip:TOK@edge"); ok {
		t.Fatal("found another user's binding")
	}
	if b, ok := g.r.ByCoreContact("sip:a@x", "sip:TOK@edge"); !ok || b.Contact != "sip:a@1" {
		t.Fatal("own binding not found")
	}
	if b, ok := g.r.ByCore("sip:TOK@edge"); !ok || b.AOR != "sip:a@x" {
		t.Fatal("ByCore did not find the binding")
	}
}

func TestConcurrentApply(t *testing.T) {
	g := newRig(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 500 {
				c := "sip:c@" + netip.AddrFrom4([4]byte{10, byte(i), byte(j >> 8), byte(j)}).String()
				f := flow(uint16(1 + i*1000 + j))
				g.put(Binding{AOR: "sip:a@x", Contact: c, Flow: f, Expires: time.Now().Add(time.Hour)})
				if j%2 == 0 {
					g.remove("sip:a@x", c, f)
				}
			}
		})
	}
	wg.Wait()
	if g.r.Len() != 8*250 || len(g.r.All()) != 8*250 || g.flows.Len() != 8*250 {
		t.Fatalf("len %d, all %d, flows %d", g.r.Len(), len(g.r.All()), g.flows.Len())
	}
}

func TestSameInstanceMovesTheBinding(t *testing.T) {
	g := newRig(t)
	aor := "sip:alice@example.com"
	inst := `"<urn:uuid:00000000-0000-0000-0000-000000000001>"`
	exp := g.clk.Now().Add(time.Hour)
	g.put(Binding{AOR: aor, Contact: "sip:a@198.51.100.7:1111", Instance: inst, RegID: 1, Flow: flow(1111), Expires: exp})
	g.put(Binding{AOR: aor, Contact: "sip:a@198.51.100.7:2222", Instance: inst, RegID: 1, Flow: flow(2222), Expires: exp})
	bs := g.r.Lookup(aor)
	if len(bs) != 1 || bs[0].Flow != flow(2222) || g.r.Len() != 1 || g.udp.has(flow(1111)) {
		t.Fatalf("bindings = %+v, want only the new flow", bs)
	}
	// Another reg-id of the same instance is a second flow, kept (RFC 5626 §4.2).
	g.put(Binding{AOR: aor, Contact: "sip:a@198.51.100.7:3333", Instance: inst, RegID: 2, Flow: flow(3333), Expires: exp})
	// The same instance under another AOR is untouched by either.
	g.put(Binding{AOR: "sip:bob@example.com", Contact: "sip:b@1", Instance: inst, RegID: 1, Flow: flow(4444), Expires: exp})
	if len(g.r.Lookup(aor)) != 2 || len(g.r.Lookup("sip:bob@example.com")) != 1 {
		t.Fatalf("aor %d, bob %d", len(g.r.Lookup(aor)), len(g.r.Lookup("sip:bob@example.com")))
	}
}

func TestFlowDeadTakesItsBindings(t *testing.T) {
	g := newRig(t)
	exp := g.clk.Now().Add(time.Hour)
	g.put(Binding{AOR: "sip:a@x", Contact: "sip:a@1", Flow: flow(1), Expires: exp})
	g.put(Binding{AOR: "sip:b@x", Contact: "sip:b@1", Flow: flow(1), Expires: exp})
	g.put(Binding{AOR: "sip:c@x", Contact: "sip:c@2", Flow: flow(2), Expires: exp})
	g.kinds()
	g.flows.Closed(flow(1), "test")
	g.mu.Lock()
	evs := g.events
	g.events = nil
	g.mu.Unlock()
	if len(evs) != 1 || evs[0].Kind != FlowDead || len(evs[0].Removed) != 2 || evs[0].Why != "test" {
		t.Fatalf("events %+v", evs)
	}
	if g.r.HasFlow(flow(1)) || g.r.Len() != 1 || g.udp.has(flow(1)) || g.flows.Len() != 1 || !g.r.HasFlow(flow(2)) {
		t.Fatal("flow death left state behind")
	}
}

// A stream flow whose connection closed before the core's 2xx came back
// gets no binding.
func TestClosedStreamGetsNoBinding(t *testing.T) {
	g := newRig(t)
	g.r.d.StreamOpen = func(nat.FlowKey) bool { return false }
	g.put(Binding{AOR: "sip:a@x", Contact: "sip:a@1", Flow: tcpFlow(1), Expires: g.clk.Now().Add(time.Hour)})
	if g.r.Len() != 0 || g.flows.Len() != 0 || g.stream.has(tcpFlow(1)) {
		t.Fatal("binding recorded on a closed connection")
	}
}

// A REGISTER's 2xx racing the death of the same flow. The binding table
// and the flow table used to have a lock each, kept in step by events
// that called back into each other, so some interleavings left a binding
// whose flow was gone (430 for the phone until its next refresh) or a
// flow kept alive with no binding. With one owner, whatever the order,
// either both are there, watched, or neither is.
func TestRegisterRacingFlowDeath(t *testing.T) {
	g := newRig(t)
	exp := g.clk.Now().Add(time.Hour)
	for i := range 2000 {
		f := flow(uint16(10000 + i))
		if i%2 == 1 {
			f = tcpFlow(uint16(10000 + i))
		}
		b := Binding{AOR: "sip:a@x", Contact: "sip:a@" + f.Remote.String(), Flow: f, Expires: exp}
		g.put(b) // registered once, so the flow is known
		var wg sync.WaitGroup
		wg.Go(func() { g.put(b) })
		wg.Go(func() { g.flows.Closed(f, "race") })
		wg.Wait()
		bound, alive := g.r.HasFlow(f), g.flows.Alive(f)
		w := g.udp
		if f.Transport.Reliable() {
			w = g.stream
		}
		if bound != alive || bound != w.has(f) {
			t.Fatalf("round %d: binding %v, flow alive %v, watched %v", i, bound, alive, w.has(f))
		}
		g.r.Apply(Update{AOR: "sip:a@x", Flow: f, Star: true})
	}
}

// A UDP flow named by a token from before a restart comes back as created
// when the token was minted, watched, held without a binding for
// RecoverHold, and handed over to the binding its endpoint registers.
func TestRecover(t *testing.T) {
	g := newRig(t)
	f := flow(4000)
	minted := g.clk.Now().Add(-10 * time.Minute)
	if !g.r.Recover(f, minted, "") {
		t.Fatal("Recover refused a UDP flow")
	}
	if fl, ok := g.flows.Get(f); !ok || !fl.Created.Equal(minted) {
		t.Fatalf("recovered flow = %+v, %v; want created %v", fl, ok, minted)
	}
	if !g.udp.has(f) || !g.r.HasFlow(f) {
		t.Fatal("recovered flow not watched or not held")
	}
	if k := g.kinds(); !equalKinds(k, Recovered) {
		t.Fatalf("events %v, want [flow recovered]", k)
	}
	if g.r.Recover(tcpFlow(4000), minted, "") {
		t.Error("a stream flow was recovered")
	}
	if g.r.Recover(flow(4009), g.clk.Now().Add(time.Second), "") {
		t.Error("a token minted after the start (this process's own) recovered a flow")
	}
	// Its endpoint registers: the binding holds the flow, with the token's time.
	g.put(Binding{AOR: "sip:a@x", Contact: "sip:a@10.0.0.1", Flow: f, Expires: g.clk.Now().Add(time.Hour)})
	if bs := g.r.Lookup("sip:a@x"); len(bs) != 1 || !bs[0].FlowSince.Equal(minted) {
		t.Fatalf("binding %+v, want FlowSince %v", bs, minted)
	}
	g.remove("sip:a@x", "sip:a@10.0.0.1", f)
	if _, ok := g.flows.Get(f); ok || g.udp.has(f) {
		t.Error("flow kept after its only binding went")
	}
	// This process saw it go: its token no longer brings it back, until
	// the core cannot hold a registration on it any more.
	if g.r.Recover(f, minted, "") {
		t.Error("a flow that went after the start came back from its token")
	}
	// Without a registration, it is let go after the hold.
	f2 := flow(4001)
	g.r.Recover(f2, minted, "")
	g.clk.Add(time.Hour - time.Second)
	g.r.Expire()
	if !g.r.HasFlow(f2) {
		t.Fatal("recovered flow let go before the hold")
	}
	g.clk.Add(time.Second)
	g.r.Expire()
	if _, ok := g.flows.Get(f2); ok || g.udp.has(f2) || g.r.HasFlow(f2) {
		t.Error("recovered flow kept after the hold")
	}
	// A recovered flow that dies is gone at once.
	f3 := flow(4002)
	g.r.Recover(f3, minted, "")
	g.r.FlowDead(f3, "keepalive")
	if g.r.HasFlow(f3) || g.udp.has(f3) {
		t.Error("dead recovered flow kept")
	}
}

// Restore brings back live UDP bindings with their flows' first
// creation time; expired ones and stream ones are dropped.
func TestRestore(t *testing.T) {
	g := newRig(t)
	now, since := g.clk.Now(), g.clk.Now().Add(-time.Hour)
	bs := []Binding{
		{AOR: "sip:a@x", Contact: "sip:a@10.0.0.1", Flow: flow(1), FlowSince: since, Expires: now.Add(time.Hour)},
		{AOR: "sip:b@x", Contact: "sip:b@10.0.0.2", Flow: flow(1), FlowSince: since, Expires: now.Add(time.Minute)},
		{AOR: "sip:c@x", Contact: "sip:c@10.0.0.3", Flow: flow(2), FlowSince: since, Expires: now},
		{AOR: "sip:d@x", Contact: "sip:d@10.0.0.4", Flow: tcpFlow(3), FlowSince: since, Expires: now.Add(time.Hour)},
		{AOR: "sip:a@x", Contact: "sip:a@10.0.0.1", Flow: flow(1), FlowSince: since, Expires: now.Add(time.Hour)},
	}
	restored, dropped := g.r.Restore(bs, 5*time.Second)
	if restored != 2 || dropped != 3 {
		t.Fatalf("restored %d, dropped %d; want 2, 3", restored, dropped)
	}
	if fl, ok := g.flows.Get(flow(1)); !ok || !fl.Created.Equal(since) || !g.udp.has(flow(1)) {
		t.Fatalf("flow 1 = %+v, %v, watched %v", fl, ok, g.udp.has(flow(1)))
	}
	for _, f := range []nat.FlowKey{flow(2), tcpFlow(3)} {
		if _, ok := g.flows.Get(f); ok {
			t.Errorf("flow %v restored", f)
		}
	}
	if g.src.n[flow(1).Remote.Addr()] != 2 {
		t.Errorf("source count %d, want 2", g.src.n[flow(1).Remote.Addr()])
	}
	if k := g.kinds(); len(k) != 0 {
		t.Errorf("Restore emitted %v", k)
	}
	// A refresh after the restore is a refresh, on the same flow.
	g.put(Binding{AOR: "sip:a@x", Contact: "sip:a@10.0.0.1", Flow: flow(1), Expires: now.Add(2 * time.Hour)})
	if k := g.kinds(); !equalKinds(k, Refreshed) {
		t.Errorf("events %v, want [refresh]", k)
	}
}

// Another edge's changes arrive without events; its deletes remove only
// the binding it deleted, on the flow it named.
func TestMerge(t *testing.T) {
	g := newRig(t)
	now, since := g.clk.Now(), g.clk.Now().Add(-time.Hour)
	a := Binding{AOR: "sip:a@x", Contact: "sip:a@10.0.0.1", Flow: flow(1), FlowSince: since, Expires: now.Add(time.Hour)}
	b := Binding{AOR: "sip:b@x", Contact: "sip:b@10.0.0.2", Flow: flow(2), FlowSince: since, Expires: now.Add(time.Hour)}
	stale := Binding{AOR: "sip:c@x", Contact: "sip:c@10.0.0.3", Flow: flow(3), Expires: now}
	g.r.Merge([]Binding{a, b, stale}, nil)
	if g.r.Len() != 2 || !g.udp.has(flow(1)) || !g.r.HasFlow(flow(2)) {
		t.Fatalf("after merge: %d bindings, flow 1 watched %v", g.r.Len(), g.udp.has(flow(1)))
	}
	if fl, _ := g.flows.Get(flow(1)); !fl.Created.Equal(since) {
		t.Errorf("merged flow created %v, want %v", fl.Created, since)
	}
	if k := g.kinds(); len(k) != 0 {
		t.Errorf("Merge emitted %v", k)
	}
	// A delete naming another flow (the binding moved here since) is ignored.
	moved := a
	moved.Flow = flow(9)
	g.r.Merge(nil, []Binding{moved, b})
	if g.r.Len() != 1 || g.r.HasFlow(flow(2)) {
		t.Errorf("after deletes: %d bindings, flow 2 held %v", g.r.Len(), g.r.HasFlow(flow(2)))
	}
}

// A flow holds bindings of the tenants its AORs belong to, no others.
func TestHasFlowIn(t *testing.T) {
	g := newRig(t)
	f := flow(7000)
	g.put(Binding{AOR: "sip:ann@acme.test", Tenant: "acme", Contact: "sip:ann@10.0.0.1", Flow: f, Expires: g.clk.Now().Add(time.Hour)})
	if !g.r.HasFlowIn(f, "acme") || g.r.HasFlowIn(f, "bolt") || g.r.HasFlowIn(f, "") {
		t.Errorf("HasFlowIn: acme %v, bolt %v, default %v; want true, false, false", g.r.HasFlowIn(f, "acme"), g.r.HasFlowIn(f, "bolt"), g.r.HasFlowIn(f, ""))
	}
}

// A flow recovered from a token sealed for one tenant holds nothing for
// another.
func TestRecoveredFlowKeepsItsTenant(t *testing.T) {
	g := newRig(t)
	f := flow(4100)
	if !g.r.Recover(f, g.clk.Now().Add(-time.Minute), "acme") {
		t.Fatal("not recovered")
	}
	if !g.r.HasFlowIn(f, "acme") || g.r.HasFlowIn(f, "bolt") || g.r.HasFlowIn(f, "") {
		t.Error("a recovered flow counts for tenants other than its token's")
	}
}
