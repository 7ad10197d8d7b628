package upstream

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// A reload keeps what is known of the cores that stay, starts new ones
// up, and forgets the ones that left.
func TestReloadKeepsHealth(t *testing.T) {
	var ev events
	cfg := DefaultConfig()
	cfg.Upstreams = []string{"sip:10.0.0.1", "sip:10.0.0.2", "sip:10.0.0.3"}
	p, err := NewPool(cfg, WithOnChange(ev.record))
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := p.Targets()[0], p.Targets()[1], p.Targets()[2]
	setDown(p, a)
	p.Report(b, true, true)
	p.Report(c, false, false) // one failure of two: counted
	ev.take()

	// Same URIs with new priorities and weights, one core gone, one new.
	cfg.Upstreams = []string{"sip:10.0.0.3;weight=2", "sip:10.0.0.1;priority=0;weight=5", "sip:10.0.0.2", "sip:10.0.0.4"}
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tg   Target
		want State
	}{{a, StateDown}, {b, StateOverloaded}, {c, StateUp}, {p.Targets()[3], StateUp}} {
		if got := stateOf(t, p, tc.tg); got != tc.want {
			t.Errorf("%s after reload: %s, want %s", tc.tg, got, tc.want)
		}
	}
	if got := p.Targets()[1]; got.Weight != 5 || got.Priority != 0 {
		t.Errorf("reloaded target %+v", got)
	}
	p.Report(c, false, false) // the count carried over: second failure
	if got := stateOf(t, p, c); got != StateDown {
		t.Errorf("%s: failure count lost in the reload (%s)", c, got)
	}
	if got := ev.take(); fmt.Sprint(got) != "[10.0.0.3 down]" {
		t.Errorf("events %q", got)
	}

	// A bad config changes nothing; a core that left and comes back
	// starts afresh.
	bad := cfg
	bad.Upstreams = []string{"sip:10.0.0.9;transport=sctp"}
	if err := p.Reload(bad); err == nil {
		t.Fatal("bad upstream accepted")
	}
	if len(p.Targets()) != 4 || stateOf(t, p, a) != StateDown {
		t.Fatal("a failed reload changed the pool")
	}
	cfg.Upstreams = []string{"sip:10.0.0.2"}
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.State(a); ok {
		t.Error("a removed core still has a state")
	}
	p.Report(a, false, false) // a request that left before the reload
	cfg.Upstreams = []string{"sip:10.0.0.1", "sip:10.0.0.2"}
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if got := stateOf(t, p, a); got != StateUp {
		t.Errorf("a returning core starts %s", got)
	}
	if got := ev.take(); len(got) != 0 {
		t.Errorf("reloads raised events %q", got)
	}
}

// Everything at once, for the race detector: forwarders reporting and
// picking, the prober, and reloads.
func TestPoolConcurrent(t *testing.T) {
	var changes sync.Map
	cfgA := DefaultConfig()
	cfgA.Upstreams = []string{"sip:10.0.0.1", "sip:10.0.0.2;priority=0;weight=3", "sip:10.0.0.3"}
	cfgB := DefaultConfig()
	cfgB.Upstreams = []string{"sip:10.0.0.2", "sip:10.0.0.3;priority=0", "sip:10.0.0.4"}
	cfgB.DownAfter = 1
	p, err := NewPool(cfgA, WithOnChange(func(tg Target, s State) { changes.Store(tg.String(), s) }))
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range n {
				ts := p.Targets()
				tg := ts[(g+i)%len(ts)]
				p.Report(tg, (i+g)%3 != 0, i%7 == 0)
				key := fmt.Sprint("sip:user", i, "@example.com")
				order := p.Order(key)
				seen := map[string]bool{}
				for j, o := range order {
					if seen[o.String()] || (j > 0 && o.Priority < order[j-1].Priority) {
						t.Errorf("Order(%s) = %v", key, order)
						return
					}
					seen[o.String()] = true
				}
				if _, err := p.PickFor(key); err != nil && len(order) > 0 {
					// Another goroutine may have downed the rest meanwhile;
					// only the error's kind is checked.
					if _, ok := err.(*Unreachable); !ok {
						t.Errorf("PickFor: %v", err)
					}
				}
				p.State(tg)
				p.Trusts(tg.Addr.Addr())
			}
		})
	}
	wg.Go(func() {
		for i := range n / 10 {
			cfg := cfgA
			if i%2 == 1 {
				cfg = cfgB
			}
			if err := p.Reload(cfg); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Go(func() {
		for range n / 10 {
			p.ProbeOnce(context.Background(), func(_ context.Context, tg Target) (int, error) {
				if tg.Addr.Addr().String() == "10.0.0.3" {
					return 503, nil
				}
				return 200, nil
			})
		}
	})
	wg.Wait()
	count := 0
	changes.Range(func(any, any) bool { count++; return true })
	if count == 0 {
		t.Error("no state ever changed")
	}
}
