// Package dialog remembers the dialogs the edge saw established, so an
// in-dialog request from a phone is let through only for a dialog that
// exists, on the flow that phone took part in it from, with the route
// set the dialog established. Bounded: a full table refuses new dialogs
// (their in-dialog requests are then refused too) rather than grow.
package dialog

import (
	"slices"
	"strings"
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
	// Peer, for a call the edge routed between two of its phones alone
	// (survival), is the other phone's flow: in-dialog requests go there,
	// not to the core. Zero otherwise.
	Peer    nat.FlowKey
	expires time.Time
}

// perDialog bounds the phones one dialog may hold: two for a call
// between two phones behind the edge, a few more for forks.
const perDialog = 4

// EarlyTTL is how long an early dialog (a 1xx with a To-tag) is kept
// unless confirmed: an INVITE transaction's Timer C.
const EarlyTTL = 3 * time.Minute

// Table is the dialogs the edge saw established. Safe for concurrent use.
type Table struct {
	now func() time.Time
	ttl time.Duration // how long a confirmed dialog lives without an in-dialog request
	max int

	mu sync.Mutex
	m  map[ID][]Dialog // one per phone flow taking part
}

// New returns a table of at most max dialogs, each forgotten after ttl
// without use.
func New(max int, ttl time.Duration, now func() time.Time) *Table {
	return &Table{now: now, ttl: ttl, max: max, m: make(map[ID][]Dialog)}
}

// Establish records d as id's for d.Flow (a dialog between two phones
// behind the edge has one record for each). A confirmed dialog is never
// downgraded to early; an early one lives EarlyTTL unless confirmed. It
// reports false if the table is full.
func (t *Table) Establish(id ID, d Dialog) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	ds, ok := t.m[id]
	if !ok && len(t.m) >= t.max {
		return false
	}
	i := slices.IndexFunc(ds, func(o Dialog) bool { return o.Flow == d.Flow })
	switch {
	case i >= 0:
		d.Confirmed = d.Confirmed || ds[i].Confirmed
	case len(ds) >= perDialog:
		return false
	default:
		ds = append(ds, Dialog{})
		i = len(ds) - 1
	}
	d.expires = t.now().Add(t.ttlOf(d))
	ds[i] = d
	if !ok {
		// Kept for the dialog's life: not a slice of the message it came
		// in, which may share one string (sipwire.Parse).
		id = ID{strings.Clone(id.callID), strings.Clone(id.tagA), strings.Clone(id.tagB)}
	}
	t.m[id] = ds
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
// request must carry onward. peer is the dialog's Peer for flow.
func (t *Table) Allow(id ID, flow nat.FlowKey, route []string) (restore []string, peer nat.FlowKey, ok bool) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	ds := t.m[id]
	i := slices.IndexFunc(ds, func(d Dialog) bool { return d.Flow == flow })
	if i < 0 || !ds[i].expires.After(now) {
		return nil, peer, false
	}
	d := &ds[i]
	switch {
	case slices.Equal(d.Route, route):
	case len(route) == 0:
		restore = d.Route
	default:
		return nil, peer, false
	}
	d.expires = now.Add(t.ttlOf(*d))
	return restore, d.Peer, true
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
	for id, ds := range t.m {
		live := slices.DeleteFunc(ds, func(d Dialog) bool { return !d.expires.After(now) })
		if len(live) == 0 {
			delete(t.m, id)
			n++
		} else {
			t.m[id] = live
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
