package admin

import (
	"slices"
	"sync"
	"time"

	"github.com/sipedge/sipedge/edge/audit"
)

// What the dashboard remembers, whatever happens: a flood of events
// costs no more memory than this.
const (
	maxLost        = 200 // lost devices (expire, flow_dead, unregister)
	maxLostAORs    = 20  // the AORs kept of one dead flow's bindings
	maxAlerts      = 100
	minutes        = 60 // per-minute counts of the last hour
	maxSubscribers = 32 // open event streams
	subscriberQ    = 64 // events a stream may fall behind by before it misses some
)

// Feed is what the dashboard shows besides the live tables: the devices
// lost lately and why, the alerts, the registrations and failures per
// minute over the last hour, and the audit events as they happen, for
// the event streams. Emit is called from the SIP path, so it never
// waits for a reader. Safe for concurrent use.
type Feed struct {
	now func() time.Time

	mu     sync.Mutex
	lost   ring[Lost]
	alerts ring[AlertView]
	regs   [minutes]bucket
	fails  [minutes]bucket
	subs   map[*subscriber]struct{}
}

// NewFeed is an empty feed; now is the clock (nil: the system's).
func NewFeed(now func() time.Time) *Feed {
	if now == nil {
		now = time.Now
	}
	return &Feed{now: now, lost: newRing[Lost](maxLost), alerts: newRing[AlertView](maxAlerts),
		subs: map[*subscriber]struct{}{}}
}

// Lost is a device the edge no longer reaches, and why.
type Lost struct {
	Time      time.Time `json:"time"`
	Kind      string    `json:"kind"` // expire, flow_dead, unregister
	AOR       string    `json:"aor,omitempty"`
	Tenant    string    `json:"tenant,omitempty"`
	Source    string    `json:"source,omitempty"`
	Transport string    `json:"transport,omitempty"`
	Cause     string    `json:"cause"`
	// Count is how many bindings a dead flow took along, AORs the first
	// maxLostAORs of them (flow_dead).
	Count int      `json:"count,omitempty"`
	AORs  []string `json:"aors,omitempty"`
}

// AlertView is an alert as the dashboard shows it.
type AlertView struct {
	Time     time.Time `json:"time"`
	Severity string    `json:"severity"`
	Type     string    `json:"type"` // the alert's name: mass_loss, source_jump...
	AOR      string    `json:"aor,omitempty"`
	Tenant   string    `json:"tenant,omitempty"`
	Source   string    `json:"source,omitempty"`
	Count    int       `json:"count,omitempty"`
	Detail   string    `json:"detail,omitempty"`
}

// Minute is one minute of the last hour.
type Minute struct {
	Start         time.Time `json:"start"`
	Registrations int       `json:"registrations"` // register + refresh
	Failures      int       `json:"failures"`      // rejected + auth_failure
}

// EventView is an audit event as the event stream sends it.
type EventView struct {
	Time      time.Time `json:"time"`
	Kind      string    `json:"kind"`
	Severity  string    `json:"severity"`
	AOR       string    `json:"aor,omitempty"`
	Tenant    string    `json:"tenant,omitempty"`
	Source    string    `json:"source,omitempty"`
	Transport string    `json:"transport,omitempty"`
	Code      int       `json:"code,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Core      string    `json:"core,omitempty"`
	Prefix    string    `json:"prefix,omitempty"`
	Count     int       `json:"count,omitempty"`
	Detail    string    `json:"detail,omitempty"`
}

// Emit takes one audit event. Its time is the feed's clock when the
// event has none; the minute it counts in is always the clock's. A nil
// feed (no dashboard) takes nothing.
func (f *Feed) Emit(e audit.Event) {
	if f == nil {
		return
	}
	now := f.now()
	if e.Time.IsZero() {
		e.Time = now
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	kept := false
	switch e.Kind {
	case audit.Register, audit.Refresh:
		count(&f.regs, now)
	case audit.Rejected, audit.AuthFailure:
		count(&f.fails, now)
	case audit.Expire, audit.FlowDead, audit.Unregister, audit.Alert:
		kept = true
	}
	if !kept && len(f.subs) == 0 {
		return // counted; nothing to keep and nobody watching
	}
	v := view(e)
	switch e.Kind {
	case audit.Expire, audit.FlowDead, audit.Unregister:
		f.lost.add(lost(v, e))
	case audit.Alert:
		f.alerts.add(AlertView{Time: v.Time, Severity: v.Severity, Type: e.Reason, AOR: v.AOR, Tenant: v.Tenant,
			Source: v.Source, Count: v.Count, Detail: v.Detail})
	}
	for s := range f.subs {
		select {
		case s.ch <- v:
		default: // behind: it misses this one; the next snapshot catches it up
		}
	}
}

// Summary is what /api/summary answers and every snapshot holds.
type Summary struct {
	Time    time.Time   `json:"time"`
	Counts  Counts      `json:"counts"`
	Minutes []Minute    `json:"minutes"` // the last hour, oldest first
	Lost    []Lost      `json:"lost"`    // newest first
	Alerts  []AlertView `json:"alerts"`  // newest first
}

// Counts are the dashboard's headline numbers.
type Counts struct {
	Devices       int `json:"devices"` // bindings
	Flows         int `json:"flows"`
	Bans          int `json:"bans"`
	Cores         int `json:"cores"`
	CoresUp       int `json:"cores_up"`
	Registrations int `json:"registrations_hour"`
	Failures      int `json:"failures_hour"`
}

// summary is the feed's part of a Summary (no live counts).
func (f *Feed) summary() Summary {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	s := Summary{Time: now, Minutes: make([]Minute, minutes), Lost: f.lost.newestFirst(), Alerts: f.alerts.newestFirst()}
	cur := minuteOf(now)
	for i := range minutes {
		m := cur - int64(minutes-1-i)
		s.Minutes[i] = Minute{Start: time.Unix(m*60, 0).UTC(), Registrations: f.regs[m%minutes].at(m), Failures: f.fails[m%minutes].at(m)}
		s.Counts.Registrations += s.Minutes[i].Registrations
		s.Counts.Failures += s.Minutes[i].Failures
	}
	return s
}

// subscriber is one event stream's queue.
type subscriber struct{ ch chan EventView }

// subscribe opens a queue of the events to come; false when too many
// streams are open already.
func (f *Feed) subscribe() (*subscriber, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.subs) >= maxSubscribers {
		return nil, false
	}
	s := &subscriber{ch: make(chan EventView, subscriberQ)}
	f.subs[s] = struct{}{}
	return s, true
}

func (f *Feed) unsubscribe(s *subscriber) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subs, s)
}

// bucket counts the events of one minute, named by its number since
// the epoch: a bucket of an older minute counts as empty.
type bucket struct {
	minute int64
	n      int
}

func (b bucket) at(m int64) int {
	if b.minute != m {
		return 0
	}
	return b.n
}

func count(bs *[minutes]bucket, now time.Time) {
	m := minuteOf(now)
	b := &bs[m%minutes]
	if b.minute != m {
		*b = bucket{minute: m}
	}
	b.n++
}

func minuteOf(t time.Time) int64 { return t.Unix() / 60 }

// ring keeps the last cap items.
type ring[T any] struct {
	items []T
	next  int
}

func newRing[T any](n int) ring[T] { return ring[T]{items: make([]T, 0, n)} }

func (r *ring[T]) add(v T) {
	if len(r.items) < cap(r.items) {
		r.items = append(r.items, v)
		return
	}
	r.items[r.next] = v
	r.next = (r.next + 1) % len(r.items)
}

func (r *ring[T]) newestFirst() []T {
	out := make([]T, 0, len(r.items))
	for i := range len(r.items) {
		out = append(out, r.items[(r.next-1-i+len(r.items))%len(r.items)])
	}
	return out
}

func view(e audit.Event) EventView {
	v := EventView{Time: e.Time, Kind: string(e.Kind), Severity: e.Severity.String(), AOR: e.AOR, Tenant: e.Tenant,
		Transport: e.Transport, Code: e.Code, Reason: e.Reason, Core: e.Core, Count: e.Count, Detail: e.Detail}
	if e.Source.IsValid() {
		v.Source = e.Source.String()
	}
	if e.Prefix.IsValid() {
		v.Prefix = e.Prefix.String()
	}
	return v
}

// lost is the record of a lost device, with its cause in words.
func lost(v EventView, e audit.Event) Lost {
	l := Lost{Time: v.Time, Kind: v.Kind, AOR: v.AOR, Tenant: v.Tenant, Source: v.Source, Transport: v.Transport}
	switch e.Kind {
	case audit.Expire:
		l.Cause = "expired: not refreshed in time"
	case audit.FlowDead:
		// FromRegistry lists the AORs the flow took as its Contacts.
		l.Cause, l.Count, l.AORs = "flow dead", e.Count, slices.Clone(e.Contacts[:min(len(e.Contacts), maxLostAORs)])
		if e.Reason != "" {
			l.Cause += ": " + e.Reason
		}
	case audit.Unregister:
		l.Cause = "unregistered (by the phone, or dropped by the core)"
	}
	return l
}
