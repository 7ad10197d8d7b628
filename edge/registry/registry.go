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
	"slices"
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
	Recovered                    // a UDP flow unknown to this process came back from its token
)

var kindNames = [...]string{Registered: "register", Refreshed: "refresh", Moved: "flow moved",
	Unregistered: "unregister", Expired: "expire", FlowDead: "flow dead", Recovered: "flow recovered"}

func (k Kind) String() string {
	if k >= Registered && k <= Recovered {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Event is one change, reported after it was made.
type Event struct {
	Kind    Kind
	Binding Binding     // the binding concerned (the new one for Moved)
	Old     Binding     // Moved: the binding it replaced
	Flow    nat.FlowKey // FlowDead, Recovered: the flow
	Why     string      // FlowDead: why it died
	Removed []Binding   // FlowDead: the bindings it took along
	Asleep  int         // FlowDead: bindings it left for a push to wake
	// Auth is the Update's: whether the REGISTER that made the change
	// carried credentials ("accepted") or not ("none").
	Auth string
}

// Watcher keeps flows open: the UDP keepaliver and the stream prober.
type Watcher interface {
	Watch(nat.FlowKey)
	// WatchSoon watches with the first keepalive due within the given
	// time: for flows whose last keepalive is unknown (restored).
	WatchSoon(nat.FlowKey, time.Duration)
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
	// RecoverHold is how long a recovered flow (Recover) is kept open
	// without a binding: the longest registration the core may hold for
	// it. Default one hour.
	RecoverHold time.Duration
	// Wakes reports whether a binding's phone can be woken by a push
	// (RFC 8599): such a binding outlives its flow, until it expires,
	// and the flow stays known as dead (no keepalives). nil: none can.
	Wakes func(Binding) bool
}

// Registry is the registration state. Safe for concurrent use.
type Registry struct {
	d  Deps
	mu sync.Mutex // guards t, recovered and every change to flows, watches and source counts
	t  table
	// recovered are flows brought back by Recover that no binding holds
	// yet, with when they are let go.
	recovered map[nat.FlowKey]recovery
	// buried are flows from before this process started that it saw go
	// (dead, unregistered), with when the core can no longer hold a
	// registration on them: their tokens must not bring them back.
	buried map[nat.FlowKey]time.Time
	// asleep are dead flows still holding bindings a push can wake.
	asleep map[nat.FlowKey]bool
	// preStart: a token minted before it may be from an earlier process
	// (tokens carry whole seconds, so it is the second after the start).
	preStart time.Time
}

// New returns an empty registry.
func New(d Deps) (*Registry, error) {
	if d.Now == nil || d.Flows == nil || d.UDP == nil || d.Stream == nil {
		return nil, errors.New("registry: Now, Flows, UDP and Stream are required")
	}
	if d.StreamOpen == nil {
		d.StreamOpen = func(nat.FlowKey) bool { return true }
	}
	if d.RecoverHold <= 0 {
		d.RecoverHold = time.Hour
	}
	return &Registry{d: d, t: newTable(), recovered: make(map[nat.FlowKey]recovery),
		buried: make(map[nat.FlowKey]time.Time), asleep: make(map[nat.FlowKey]bool), preStart: d.Now().Truncate(time.Second).Add(time.Second)}, nil
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
	// Auth is passed on to the events: "accepted" when the REGISTER
	// carried credentials the core took, "none" when it took it without.
	Auth string
}

// Apply records u. A stream flow whose connection closed already gets no
// binding: the endpoint's reconnect will register again.
func (r *Registry) Apply(u Update) {
	// Kept small: Apply runs deep in a request's goroutine, and a frame of
	// kilobytes made most requests grow their stacks here.
	var evs []Event
	r.mu.Lock()
	touched := []nat.FlowKey{u.Flow}
	if u.Star {
		for _, b := range r.t.ofAOR(u.AOR) {
			touched, evs = r.dropLocked(b, touched, evs)
		}
	}
	for _, id := range u.Remove {
		if b, ok := r.t.get(u.AOR, id); ok {
			touched, evs = r.dropLocked(b, touched, evs)
		}
	}
	if len(u.Put) > 0 {
		delete(r.asleep, u.Flow) // the same flow, alive again
		// Seen before the check: a close after it finds the flow alive and
		// reports it dead, which waits for this lock.
		r.d.Flows.Seen(u.Flow)
		if u.Flow.Transport.Reliable() && !r.d.StreamOpen(u.Flow) {
			u.Put = nil
		}
	}
	touched, evs = r.putLocked(&u, touched, evs)
	for _, f := range touched {
		r.syncFlowLocked(f)
	}
	r.mu.Unlock()
	for i := range evs {
		evs[i].Auth = u.Auth
	}
	r.emit(evs)
}

// dropLocked removes b for Apply.
//
//go:noinline
func (r *Registry) dropLocked(b Binding, touched []nat.FlowKey, evs []Event) ([]nat.FlowKey, []Event) {
	if r.t.delete(b) {
		touched = addFlow(touched, b.Flow)
		evs = append(evs, Event{Kind: Unregistered, Binding: b})
	}
	return touched, evs
}

// putLocked records u's Put for Apply.
//
//go:noinline
func (r *Registry) putLocked(u *Update, touched []nat.FlowKey, evs []Event) ([]nat.FlowKey, []Event) {
	now := r.d.Now()
	var since time.Time
	if f, ok := r.d.Flows.Get(u.Flow); ok {
		since = f.Created
	}
	for i := range u.Put {
		b := &u.Put[i]
		b.AOR, b.Flow, b.FlowSince, b.Updated = u.AOR, u.Flow, since, now
		r.t.own(b)
		old, replaced := r.t.put(*b)
		e := Event{Kind: Registered, Binding: *b}
		switch {
		case !replaced:
		case old.Flow == b.Flow:
			e.Kind, e.Old = Refreshed, old
		default:
			touched = addFlow(touched, old.Flow)
			e.Kind, e.Old = Moved, old
		}
		evs = append(evs, e)
	}
	return touched, evs
}

func addFlow(fs []nat.FlowKey, f nat.FlowKey) []nat.FlowKey {
	if slices.Contains(fs, f) {
		return fs
	}
	return append(fs, f)
}

// syncFlowLocked makes the flow table, the watches and the source count
// match the bindings on f.
//
//go:noinline
func (r *Registry) syncFlowLocked(f nat.FlowKey) {
	w := r.watcherOf(f)
	if len(r.t.byFlow[f]) == 0 {
		delete(r.asleep, f)
	}
	if r.asleep[f] {
		// Bindings waiting for a push: the flow itself is gone.
		w.Unwatch(f)
		r.d.Flows.Remove(f)
	} else if len(r.t.byFlow[f]) > 0 {
		delete(r.recovered, f) // its bindings hold it now
		r.d.Flows.Seen(f)
		w.Watch(f)
	} else if _, held := r.recovered[f]; !held {
		// A flow no binding uses is forgotten: the core's requests carrying
		// its (still validly signed) token then get 430, whoever holds
		// that NAT address now.
		w.Unwatch(f)
		if fl, ok := r.d.Flows.Get(f); ok && fl.Created.Before(r.preStart) {
			r.buried[f] = r.d.Now().Add(r.d.RecoverHold)
		}
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
	var gone, asleep []Binding
	for _, b := range r.t.ofFlow(f) {
		if r.d.Wakes != nil && r.d.Wakes(b) {
			asleep = append(asleep, b) // a push wakes it: not lost
			continue
		}
		r.t.delete(b)
		gone = append(gone, b)
	}
	if len(asleep) > 0 {
		r.asleep[f] = true
	}
	delete(r.recovered, f)
	r.syncFlowLocked(f)
	r.mu.Unlock()
	sortByContact(gone)
	r.emit([]Event{{Kind: FlowDead, Flow: f, Why: why, Removed: gone, Asleep: len(asleep)}})
}

// Asleep returns the bindings on flow f, dead, that a push can wake.
func (r *Registry) Asleep(f nat.FlowKey) []Binding {
	now := r.d.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.asleep[f] {
		return nil
	}
	var out []Binding
	for _, b := range r.t.ofFlow(f) {
		if b.Expires.After(now) {
			out = append(out, b)
		}
	}
	sortByContact(out)
	return out
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
	for f, rc := range r.recovered {
		if !rc.until.After(now) {
			delete(r.recovered, f)
			touched[f] = true
		}
	}
	for f, until := range r.buried {
		if !until.After(now) {
			delete(r.buried, f)
		}
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

//go:noinline
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

// HasFlow reports whether any binding uses flow f, or f was recovered
// from its token and awaits its endpoint's next registration.
func (r *Registry) HasFlow(f nat.FlowKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, held := r.recovered[f]
	return held || len(r.t.byFlow[f]) > 0
}

// recovery is a recovered flow: until when it is held without a
// binding, and the tenant whose token brought it back.
type recovery struct {
	until  time.Time
	tenant string
}

// HasFlowIn reports whether flow f holds a binding of tenant's, or was
// recovered from a token sealed for tenant and awaits its endpoint's
// next registration.
func (r *Registry) HasFlowIn(f nat.FlowKey, tenant string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rc, held := r.recovered[f]; held {
		return rc.tenant == tenant // its token was sealed for that tenant only
	}
	for _, k := range r.t.byFlow[f] {
		if b, _ := r.t.get(k.aor, k.id); b.Tenant == tenant {
			return true
		}
	}
	return false
}

// Recover brings back a UDP flow this process has no record of, named
// by a token the edge may have minted before this process started (after a restart without
// state, or one whose last changes were not yet stored): the core holds
// a registration on it that the edge never saw. The flow is tracked as
// created when the token was minted, so its tokens stay current, and
// kept open for RecoverHold or until a binding takes it over. It
// reports whether the flow is usable now; stream flows never are, their
// connections died with the process, and neither is one from before the
// start that this process saw go.
func (r *Registry) Recover(f nat.FlowKey, minted time.Time, tenant string) bool {
	if f.Transport.Reliable() || !f.Valid() || !minted.Before(r.preStart) {
		return false
	}
	now := r.d.Now()
	r.mu.Lock()
	if _, ok := r.d.Flows.Get(f); ok {
		r.mu.Unlock()
		return true // recovered meanwhile, or registered
	}
	if _, ok := r.buried[f]; ok {
		r.mu.Unlock()
		return false
	}
	if !r.d.Flows.Adopt(f, minted) {
		r.mu.Unlock()
		return false // table full
	}
	r.recovered[f] = recovery{until: now.Add(r.d.RecoverHold), tenant: tenant}
	r.d.UDP.Watch(f)
	r.mu.Unlock()
	r.emit([]Event{{Kind: Recovered, Flow: f, Why: "token"}})
	return true
}

// Restore loads bindings kept from an earlier run, before any traffic:
// those expired meanwhile, and those on stream flows (whose connections
// died with that run), are dropped. Each UDP flow comes back as created
// when it first was, with its first keepalive due within spread. It
// emits no events: nothing changed but the process.
func (r *Registry) Restore(bs []Binding, spread time.Duration) (restored, dropped int) {
	now := r.d.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	flows := map[nat.FlowKey]bool{}
	for _, b := range bs {
		if !b.Expires.After(now) || b.Flow.Transport.Reliable() || !b.Flow.Valid() || b.AOR == "" {
			dropped++
			continue
		}
		if !flows[b.Flow] {
			if !r.d.Flows.Adopt(b.Flow, b.FlowSince) {
				dropped++
				continue
			}
			flows[b.Flow] = true
		}
		if _, replaced := r.t.put(b); replaced {
			dropped++ // a duplicate in the input
			continue
		}
		restored++
	}
	for f := range flows {
		r.d.UDP.WatchSoon(f, spread)
		if r.d.Sources != nil {
			r.d.Sources.SetBindings(f.Remote.Addr(), r.t.bySrc[ratelimit.SourcePrefix(f.Remote.Addr())])
		}
	}
	return restored, dropped
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

// Rewatch watches every flow that holds a binding or was recovered
// again: after keepalives were turned off and back on by a reload.
func (r *Registry) Rewatch() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for f := range r.t.byFlow {
		r.watcherOf(f).Watch(f)
	}
	for f := range r.recovered {
		r.d.UDP.Watch(f)
	}
}

func (r *Registry) watcherOf(f nat.FlowKey) Watcher {
	if f.Transport.Reliable() {
		return r.d.Stream
	}
	return r.d.UDP
}

// Merge applies changes another edge made to the state it shares with
// this one (a Redis change feed): bindings put (live UDP ones only, their
// flows adopted and watched) and deleted. It emits no events, so they
// are not written back. A full resync only adds: what this edge holds
// that the feed lacks expires by itself.
func (r *Registry) Merge(put, del []Binding) {
	now := r.d.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	touched := map[nat.FlowKey]bool{}
	for _, b := range del {
		if cur, ok := r.t.get(b.AOR, b.ID()); ok && cur.Flow == b.Flow && r.t.delete(cur) {
			touched[cur.Flow] = true
		}
	}
	for _, b := range put {
		if !b.Expires.After(now) || b.Flow.Transport.Reliable() || !b.Flow.Valid() || b.AOR == "" {
			continue
		}
		if !r.d.Flows.Adopt(b.Flow, b.FlowSince) {
			continue
		}
		if old, replaced := r.t.put(b); replaced && old.Flow != b.Flow {
			touched[old.Flow] = true
		}
		touched[b.Flow] = true
	}
	for f := range touched {
		r.syncFlowLocked(f)
	}
}

// ForgetAtCore marks bindings the core may no longer hold (it restarted,
// or the AOR moved to another core): their next refreshes must reach it
// again (see Binding.CoreLost). Every binding of tenant when aor is
// empty; else those of aor with the given IDs. It returns how many it
// marked. The mark is not an event: a restart of the edge forgets it.
func (r *Registry) ForgetAtCore(tenant, aor string, ids ...string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	mark := func(bs []Binding, i int) {
		if b := &bs[i]; b.Tenant == tenant && !b.CoreLost() {
			b.CoreExpires = time.Time{}
			n++
		}
	}
	if aor != "" {
		for _, id := range ids {
			if i := r.t.index(aor, id); i >= 0 {
				mark(r.t.byAOR[aor], i)
			}
		}
		return n
	}
	for _, bs := range r.t.byAOR {
		for i := range bs {
			mark(bs, i)
		}
	}
	return n
}

// LostAtCore counts tenant's live bindings marked by ForgetAtCore that no
// core has accepted since.
func (r *Registry) LostAtCore(tenant string) int {
	now := r.d.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, bs := range r.t.byAOR {
		for _, b := range bs {
			if b.Tenant == tenant && b.CoreLost() && b.Expires.After(now) {
				n++
			}
		}
	}
	return n
}
