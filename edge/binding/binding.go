// Package binding is the edge's table of registrations the core accepted:
// for each address-of-record, its contacts and the flow each was
// registered on. Expiry is data compared with an injected clock; one
// sweeper removes what has expired.
package binding

import (
	"context"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/sipedge/sipedge/nat"
)

// Binding is one contact of one AOR as the core accepted it.
type Binding struct {
	AOR         string      // sip:user@domain
	Contact     string      // the endpoint's own Contact URI
	CoreContact string      // the Contact URI the core stored (differs in rewrite mode)
	Flow        nat.FlowKey // where the REGISTER came from
	Expires     time.Time   // as granted by the core
	CallID      string
	CSeq        uint32
	UserAgent   string
	Instance    string // +sip.instance, if any
	RegID       int    // reg-id, 0 if none
	NAT         nat.Evidence
	Updated     time.Time
}

// Events are optional callbacks, called without the table's lock held.
type Events struct {
	OnBind   func(Binding)
	OnRemove func(Binding) // explicit unregister
	OnExpire func(Binding)
}

type key struct{ aor, id string }

// ID names a binding within its AOR: the contact the core holds, and for
// an RFC 5626 outbound client its instance and reg-id too, since one
// Contact may be registered over several flows (reg-id 1 and 2).
func ID(coreContact, instance string, regID int) string {
	if instance == "" {
		return coreContact
	}
	return coreContact + "|" + instance + "|" + strconv.Itoa(regID)
}

// ID is the binding's name within its AOR.
func (b Binding) ID() string {
	cc := b.CoreContact
	if cc == "" {
		cc = b.Contact
	}
	return ID(cc, b.Instance, b.RegID)
}

// Table holds bindings by AOR and contact, with indexes by core-side
// contact and by flow. Safe for concurrent use.
type Table struct {
	now    func() time.Time
	events Events

	mu     sync.Mutex
	byAOR  map[string]map[string]Binding // AOR -> Contact -> binding
	byCore map[string]key                // CoreContact -> binding (rewrite mode)
	byFlow map[nat.FlowKey]map[key]struct{}
	bySrc  map[netip.Prefix]int // bindings per source address (IPv6: per /64)
	count  int
}

// sourceOf is the unit a source is counted in: the address, or its /64
// for IPv6, where one subscriber holds a whole prefix.
func sourceOf(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p
	}
	return netip.PrefixFrom(a, 32)
}

// CountSource returns how many bindings were registered from src (its
// /64 for IPv6).
func (t *Table) CountSource(src netip.Addr) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.bySrc[sourceOf(src)]
}

// New returns an empty table reading time from now.
func New(now func() time.Time, ev Events) *Table {
	return &Table{now: now, events: ev, byAOR: make(map[string]map[string]Binding),
		byCore: make(map[string]key), byFlow: make(map[nat.FlowKey]map[key]struct{}), bySrc: make(map[netip.Prefix]int)}
}

// Put inserts or refreshes b, keyed by (AOR, Contact). A binding with an
// instance and reg-id replaces the one of the same AOR, instance and
// reg-id even if its Contact changed (RFC 5626 §6): a phone behind a
// symmetric NAT re-registering from a new port moves its binding instead
// of leaving a dead twin. OnRemove reports every binding that left a flow
// this way, so whoever watches flows can let the old one go.
func (t *Table) Put(b Binding) {
	b.Updated = t.now()
	var replaced []Binding
	t.mu.Lock()
	if b.Instance != "" {
		for c, old := range t.byAOR[b.AOR] {
			if c != b.ID() && old.Instance == b.Instance && old.RegID == b.RegID {
				replaced = append(replaced, old)
				t.deleteLocked(old)
			}
		}
	}
	if old, ok := t.byAOR[b.AOR][b.ID()]; ok && old.Flow == b.Flow && old.CoreContact == b.CoreContact {
		t.byAOR[b.AOR][b.ID()] = b // a plain refresh: indexes unchanged
	} else {
		if ok {
			t.deleteLocked(old)
			if old.Flow != b.Flow {
				replaced = append(replaced, old) // it left its old flow
			}
		}
		t.insertLocked(b)
	}
	t.mu.Unlock()
	t.fire(t.events.OnRemove, replaced)
	if t.events.OnBind != nil {
		t.events.OnBind(b)
	}
}

// Remove deletes the binding of aor named id (see ID) and reports
// whether it existed.
func (t *Table) Remove(aor, id string) bool {
	t.mu.Lock()
	b, ok := t.byAOR[aor][id]
	if ok {
		t.deleteLocked(b)
	}
	t.mu.Unlock()
	if ok {
		t.fire(t.events.OnRemove, []Binding{b})
	}
	return ok
}

// RemoveAOR deletes every contact of aor (Contact: *) and returns how many.
func (t *Table) RemoveAOR(aor string) int {
	t.mu.Lock()
	removed := make([]Binding, 0, len(t.byAOR[aor]))
	for _, b := range t.byAOR[aor] {
		removed = append(removed, b)
		t.deleteLocked(b)
	}
	t.mu.Unlock()
	t.fire(t.events.OnRemove, removed)
	return len(removed)
}

// RemoveFlow deletes every binding registered on flow f (the flow died)
// and returns them.
func (t *Table) RemoveFlow(f nat.FlowKey) []Binding {
	t.mu.Lock()
	var removed []Binding
	for k := range t.byFlow[f] {
		b := t.byAOR[k.aor][k.id]
		removed = append(removed, b)
		t.deleteLocked(b)
	}
	t.mu.Unlock()
	t.fire(t.events.OnRemove, removed)
	return removed
}

// HasAORFrom reports whether aor has a live binding registered from src.
func (t *Table) HasAORFrom(aor string, src netip.Addr) bool {
	now := t.now()
	src = src.Unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range t.byAOR[aor] {
		if b.Flow.Remote.Addr().Unmap() == src && b.Expires.After(now) {
			return true
		}
	}
	return false
}

// HasFlow reports whether any binding uses flow f.
func (t *Table) HasFlow(f nat.FlowKey) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byFlow[f]) > 0
}

func (t *Table) fire(f func(Binding), bs []Binding) {
	if f == nil {
		return
	}
	for _, b := range bs {
		f(b)
	}
}

func (t *Table) insertLocked(b Binding) {
	m := t.byAOR[b.AOR]
	if m == nil {
		m = make(map[string]Binding)
		t.byAOR[b.AOR] = m
	}
	m[b.ID()] = b
	t.count++
	k := key{b.AOR, b.ID()}
	if b.CoreContact != "" {
		t.byCore[b.CoreContact] = k
	}
	fm := t.byFlow[b.Flow]
	if fm == nil {
		fm = make(map[key]struct{})
		t.byFlow[b.Flow] = fm
	}
	fm[k] = struct{}{}
	t.bySrc[sourceOf(b.Flow.Remote.Addr())]++
}

func (t *Table) deleteLocked(b Binding) {
	k := key{b.AOR, b.ID()}
	m := t.byAOR[b.AOR]
	if _, ok := m[b.ID()]; !ok {
		return
	}
	delete(m, b.ID())
	t.count--
	if len(m) == 0 {
		delete(t.byAOR, b.AOR)
	}
	if b.CoreContact != "" && t.byCore[b.CoreContact] == k {
		delete(t.byCore, b.CoreContact)
	}
	if fm := t.byFlow[b.Flow]; fm != nil {
		delete(fm, k)
		if len(fm) == 0 {
			delete(t.byFlow, b.Flow)
		}
	}
	src := sourceOf(b.Flow.Remote.Addr())
	if t.bySrc[src]--; t.bySrc[src] <= 0 {
		delete(t.bySrc, src)
	}
}

// Lookup returns the live contacts of aor, sorted by contact.
func (t *Table) Lookup(aor string) []Binding {
	now := t.now()
	t.mu.Lock()
	out := make([]Binding, 0, len(t.byAOR[aor]))
	for _, b := range t.byAOR[aor] {
		if b.Expires.After(now) {
			out = append(out, b)
		}
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Contact < out[j].Contact })
	return out
}

// ByCoreContact finds the live binding of aor whose core-side contact is
// coreContact. Scoped to one AOR so no user can reach another's binding.
func (t *Table) ByCoreContact(aor, coreContact string) (Binding, bool) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range t.byAOR[aor] {
		if b.CoreContact == coreContact && b.Expires.After(now) {
			return b, true
		}
	}
	return Binding{}, false
}

// ByCore finds the live binding whose core-side contact is coreContact.
// Only rewrite mode makes them distinct per binding.
func (t *Table) ByCore(coreContact string) (Binding, bool) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	k, ok := t.byCore[coreContact]
	if !ok {
		return Binding{}, false
	}
	b, ok := t.byAOR[k.aor][k.id]
	return b, ok && b.Expires.After(now)
}

// Len returns the number of bindings, expired or not yet swept.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.count
}

// All returns a snapshot of every binding, sorted by AOR and contact.
func (t *Table) All() []Binding {
	t.mu.Lock()
	out := make([]Binding, 0, t.count)
	for _, m := range t.byAOR {
		for _, b := range m {
			out = append(out, b)
		}
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].AOR != out[j].AOR {
			return out[i].AOR < out[j].AOR
		}
		return out[i].Contact < out[j].Contact
	})
	return out
}

// Sweep removes every binding expired at the clock's now and returns them.
func (t *Table) Sweep() []Binding {
	now := t.now()
	var gone []Binding
	t.mu.Lock()
	for _, m := range t.byAOR {
		for _, b := range m {
			if !b.Expires.After(now) {
				gone = append(gone, b)
				t.deleteLocked(b)
			}
		}
	}
	t.mu.Unlock()
	t.fire(t.events.OnExpire, gone)
	return gone
}

// RunSweeper calls Sweep on every tick until ctx ends. The ticks come from
// the caller so tests can drive them.
func (t *Table) RunSweeper(ctx context.Context, tick <-chan time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			t.Sweep()
		}
	}
}
