// Package registry is the one owner of registration state: the bindings
// the core accepted, the flows they were registered on, the keepalive
// watch on each flow and the count of bindings per source. Every
// operation changes all of them under one lock, then tells observers
// what happened, so no binding outlives its flow or the other way round.
package registry

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// Kind is what happened.
type Kind uint8

const (
	Registered   Kind = iota + 1 // a new binding
	Refreshed                    // the same binding on the same flow, new expiry
	Moved                        // the binding now lives on another flow (NAT rebinding, reconnect)
	Unregistered                 // removed by the endpoint or dropped by the core
	Expired                      // its expiry passed
	FlowDead                     // a flow died and took its bindings
)

var kindNames = [...]string{Registered: "register", Refreshed: "refresh", Moved: "flow moved",
	Unregistered: "unregister", Expired: "expire", FlowDead: "flow dead"}

func (k Kind) String() string {
	if k >= Registered && k <= FlowDead {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Event is one change, reported after it was made.
type Event struct {
	Kind    Kind
	Binding Binding     // the binding concerned (the new one for Moved)
	Old     Binding     // Moved: the binding it replaced
	Flow    nat.FlowKey // FlowDead: the flow
	Why     string      // FlowDead: why it died
	Removed []Binding   // FlowDead: the bindings it took along
}

// Watcher keeps flows open: the UDP keepaliver and the stream prober.
type Watcher interface {
	Watch(nat.FlowKey)
	Unwatch(nat.FlowKey)
}

// Deps are what a Registry keeps in step with its bindings.
type Deps struct {
	Now    func() time.Time // required
	Flows  *nat.FlowTable   // required
	UDP    Watcher          // required: keeps UDP flows open
	Stream Watcher          // required: probes silent stream flows
	// Sources learns how many bindings a source holds, so an office
	// behind one address gets a budget to match (ratelimit.Limiter).
	Sources interface{ SetBindings(netip.Addr, int) }
	// StreamOpen reports whether a stream flow's connection is still
	// open; nil means always.
	StreamOpen func(nat.FlowKey) bool
	// OnEvent observes every change, after it was made, with no lock
	// held. Events of one operation arrive in order.
	OnEvent func(Event)
}

// Registry is the registration state. Safe for concurrent use.
type Registry struct {
	d  Deps
	mu sync.Mutex // guards t and every change to flows, watches and source counts
	t  table
}

// New returns an empty registry.
func New(d Deps) (*Registry, error) {
	if d.Now == nil || d.Flows == nil || d.UDP == nil || d.Stream == nil {
		return nil, errors.New("registry: Now, Flows, UDP and Stream are required")
	}
	if d.StreamOpen == nil {
		d.StreamOpen = func(nat.FlowKey) bool { return true }
	}
	return &Registry{d: d, t: newTable()}, nil
}

// Update is what one REGISTER's 2xx says about an AOR's bindings on one
// flow.
type Update struct {
	AOR  string
	Flow nat.FlowKey
	// Star removes every binding of AOR (Contact: *).
	Star bool
	// Put are the bindings the core granted, on Flow.
	Put []Binding
	// Remove are the IDs (see ID) of bindings the core no longer holds.
	Remove []string
}

// Apply records u. A stream flow whose connection closed already gets no
// binding: the endpoint's reconnect will register again.
func (r *Registry) Apply(u Update) {
	now := r.d.Now()
	var evs []Event
	r.mu.Lock()
	touched := map[nat.FlowKey]bool{u.Flow: true}
	drop := func(b Binding) {
		if r.t.delete(b) {
			touched[b.Flow] = true
			evs = append(evs, Event{Kind: Unregistered, Binding: b})
		}
	}
	if u.Star {
		for _, b := range r.t.ofAOR(u.AOR) {
			drop(b)
		}
	}
	for _, id := range u.Remove {
		if b, ok := r.t.get(u.AOR, id); ok {
			drop(b)
		}
	}
	if len(u.Put) > 0 {
		// Seen before the check: a close after it finds the flow alive and
		// reports it dead, which waits for this lock.
		r.d.Flows.Seen(u.Flow)
		if u.Flow.Transport.Reliable() && !r.d.StreamOpen(u.Flow) {
			u.Put = nil
		}
	}
	for _, b := range u.Put {
		b.AOR, b.Flow, b.Updated = u.AOR, u.Flow, now
		old, replaced := r.t.put(b)
		switch {
		case !replaced:
			evs = append(evs, Event{Kind: Registered, Binding: b})
		case old.Flow == b.Flow:
			evs = append(evs, Event{Kind: Refreshed, Binding: b, Old: old})
		default:
			touched[old.Flow] = true
			evs = append(evs, Event{Kind: Moved, Binding: b, Old: old})
		}
	}
	for f := range touched {
		r.syncFlowLocked(f)
	}
	r.mu.Unlock()
	r.emit(evs)
}

// syncFlowLocked makes the flow table, the watches and the source count
// match the bindings on f.
func (r *Registry) syncFlowLocked(f nat.FlowKey) {
	w := r.d.UDP
	if f.Transport.Reliable() {
		w = r.d.Stream
	}
	if len(r.t.byFlow[f]) > 0 {
		r.d.Flows.Seen(f)
		w.Watch(f)
	} else {
		// A flow no binding uses is forgotten: the core's requests carrying
		// its (still validly signed) token then get 430, whoever holds
		// that NAT address now.
		w.Unwatch(f)
		r.d.Flows.Remove(f)
	}
	if r.d.Sources != nil {
		src := f.Remote.Addr()
		r.d.Sources.SetBindings(src, r.t.bySrc[ratelimit.SourcePrefix(src)])
	}
}

// FlowDead removes the bindings of a flow that died (nat.FlowEvents'
// OnDead) along with the flow itself.
func (r *Registry) FlowDead(f nat.FlowKey, why string) {
	r.mu.Lock()
	gone := r.t.ofFlow(f)
	for _, b := range gone {
		r.t.delete(b)
	}
	r.syncFlowLocked(f)
	r.mu.Unlock()
	sortByContact(gone)
	r.emit([]Event{{Kind: FlowDead, Flow: f, Why: why, Removed: gone}})
}

// Expire removes every binding whose expiry has passed and returns them.
func (r *Registry) Expire() []Binding {
	now := r.d.Now()
	r.mu.Lock()
	gone := r.t.expired(now)
	touched := map[nat.FlowKey]bool{}
	for _, b := range gone {
		r.t.delete(b)
		touched[b.Flow] = true
	}
	for f := range touched {
		r.syncFlowLocked(f)
	}
	r.mu.Unlock()
	evs := make([]Event, len(gone))
	for i, b := range gone {
		evs[i] = Event{Kind: Expired, Binding: b}
	}
	r.emit(evs)
	return gone
}

// SweepFlows forgets flows idle for idle that no binding uses: a
// backstop, since every operation already removes the flows it empties.
func (r *Registry) SweepFlows(idle time.Duration) int {
	return r.d.Flows.Sweep(idle, r.HasFlow)
}

func (r *Registry) emit(evs []Event) {
	if r.d.OnEvent == nil {
		return
	}
	for _, e := range evs {
		r.d.OnEvent(e)
	}
}

// Lookup returns the live contacts of aor, sorted by contact.
func (r *Registry) Lookup(aor string) []Binding {
	now := r.d.Now()
	r.mu.Lock()
	out := r.t.ofAOR(aor)
	r.mu.Unlock()
	live := out[:0]
	for _, b := range out {
		if b.Expires.After(now) {
			live = append(live, b)
		}
	}
	sortByContact(live)
	return live
}

// HasAORFrom reports whether aor has a live binding registered from src.
func (r *Registry) HasAORFrom(aor string, src netip.Addr) bool {
	now := r.d.Now()
	src = src.Unmap()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.t.byAOR[aor] {
		if b.Flow.Remote.Addr().Unmap() == src && b.Expires.After(now) {
			return true
		}
	}
	return false
}

// HasFlow reports whether any binding uses flow f.
func (r *Registry) HasFlow(f nat.FlowKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.t.byFlow[f]) > 0
}

// ByCoreContact finds the live binding of aor whose core-side contact is
// coreContact. Scoped to one AOR so no user can reach another's binding.
func (r *Registry) ByCoreContact(aor, coreContact string) (Binding, bool) {
	now := r.d.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.t.byAOR[aor] {
		if b.CoreContact == coreContact && b.Expires.After(now) {
			return b, true
		}
	}
	return Binding{}, false
}

// ByCore finds the live binding whose core-side contact is coreContact.
// Only rewrite mode makes them distinct per binding.
func (r *Registry) ByCore(coreContact string) (Binding, bool) {
	now := r.d.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	k, ok := r.t.byCore[coreContact]
	if !ok {
		return Binding{}, false
	}
	b, ok := r.t.get(k.aor, k.id)
	return b, ok && b.Expires.After(now)
}

// Len returns the number of bindings, expired or not yet swept.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.t.count
}

// All returns a snapshot of every binding, sorted by AOR and contact.
func (r *Registry) All() []Binding {
	r.mu.Lock()
	out := r.t.all()
	r.mu.Unlock()
	sortByContact(out)
	return out
}
