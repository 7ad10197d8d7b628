// Package dialog remembers the dialogs the edge saw established, so an
// in-dialog request from a phone is let through only for a dialog that
// exists, on the flow that phone took part in it from, with the route
// set the dialog established. Bounded: a full table refuses new dialogs
// (their in-dialog requests are then refused too) rather than grow.
package dialog

import (
	"slices"
	"sync"
	"time"

	"github.com/sipedge/sipedge/nat"
)

// ID names a dialog by Call-ID and its two tags, in either order.
type ID struct{ callID, tagA, tagB string }

// NewID is the dialog of callID between tags a and b.
func NewID(callID, a, b string) ID {
	if a > b {
		a, b = b, a
	}
	return ID{callID, a, b}
}

// Dialog is what the edge knows of one.
type Dialog struct {
	// Flow is the phone's flow: only it may send in-dialog requests.
	Flow nat.FlowKey
	// Route is the route set the phone must send beyond the edge's own
	// entries (the core's Record-Route entries, in the phone's order).
	Route []string
	// Confirmed is false for an early dialog (a 1xx with a To-tag).
	Confirmed bool
	expires   time.Time
}

// EarlyTTL is how long an early dialog (a 1xx with a To-tag) is kept
// unless confirmed: an INVITE transaction's Timer C.
const EarlyTTL = 3 * time.Minute

// Table is the dialogs the edge saw established. Safe for concurrent use.
type Table struct {
	now func() time.Time
	ttl time.Duration // how long a confirmed dialog lives without an in-dialog request
	max int

	mu sync.Mutex
	m  map[ID]Dialog
}

// New returns a table of at most max dialogs, each forgotten after ttl
// without use.
func New(max int, ttl time.Duration, now func() time.Time) *Table {
	return &Table{now: now, ttl: ttl, max: max, m: make(map[ID]Dialog)}
}

// Establish records d as id. A confirmed dialog is never downgraded to
// early; an early one lives EarlyTTL unless confirmed. It reports false
// if the table is full.
func (t *Table) Establish(id ID, d Dialog) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.m[id]; ok {
		d.Confirmed = d.Confirmed || old.Confirmed
	} else if len(t.m) >= t.max {
		return false
	}
	d.expires = t.now().Add(t.ttlOf(d))
	t.m[id] = d
	return true
}

func (t *Table) ttlOf(d Dialog) time.Duration {
	if d.Confirmed {
		return t.ttl
	}
	return min(t.ttl, EarlyTTL)
}

// Allow reports whether an in-dialog request of dialog id, arriving on
// flow with route set beyond the edge's own entries, belongs to it, and
// keeps the dialog alive if so. The route set must be the dialog's, or
// empty when the edge hid it from the phone: restore is then what the
// request must carry onward.
func (t *Table) Allow(id ID, flow nat.FlowKey, route []string) (restore []string, ok bool) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	d, ok := t.m[id]
	if !ok || !d.expires.After(now) || d.Flow != flow {
		return nil, false
	}
	switch {
	case slices.Equal(d.Route, route):
	case len(route) == 0:
		restore = d.Route
	default:
		return nil, false
	}
	d.expires = now.Add(t.ttlOf(d))
	t.m[id] = d
	return restore, true
}

// End forgets id (the dialog's BYE was answered).
func (t *Table) End(id ID) {
	t.mu.Lock()
	delete(t.m, id)
	t.mu.Unlock()
}

// Sweep forgets dialogs unused for the ttl and returns how many.
func (t *Table) Sweep() int {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for id, d := range t.m {
		if !d.expires.After(now) {
			delete(t.m, id)
			n++
		}
	}
	return n
}

// Len is the number of dialogs held.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
