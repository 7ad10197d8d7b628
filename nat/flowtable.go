package nat

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// FlowState is what the edge believes about a flow's path.
type FlowState uint8

const (
	// FlowAlive: traffic or a keepalive answer proved the path works.
	FlowAlive FlowState = iota + 1
	// FlowSuspect: at least one keepalive went unanswered since.
	FlowSuspect
	// FlowDead: too many keepalives went unanswered, or the connection
	// closed. Traffic on the flow does not revive it (Touch ignores a
	// dead flow); only a new registration on it does (Seen).
	FlowDead
)

var flowStateNames = [...]string{FlowAlive: "alive", FlowSuspect: "suspect", FlowDead: "dead"}

func (s FlowState) String() string {
	if s >= FlowAlive && s <= FlowDead {
		return flowStateNames[s]
	}
	return fmt.Sprintf("FlowState(%d)", uint8(s))
}

// Flow is a copy of what a FlowTable knows about one flow. Times come
// from the table's clock, without a monotonic reading; a zero time means
// never.
type Flow struct {
	Key      FlowKey
	Created  time.Time
	LastIn   time.Time     // last inbound traffic (Seen, Touch)
	LastPing time.Time     // last keepalive sent (PingSent)
	LastPong time.Time     // last keepalive answered (Pong)
	RTT      time.Duration // of the last answered keepalive
	State    FlowState
	Misses   int // keepalives unanswered in a row
	// Keepalive is what keeps it open in auto mode: KeepaliveOptions
	// once the endpoint answered one, KeepaliveCRLF once it was found
	// not to; "" until known (or in the other modes).
	Keepalive KeepaliveMode
}

// FlowEvents are optional callbacks of a FlowTable. They run on the
// goroutine that caused the event, with no lock held, so they may call
// back into the table (for example Remove).
type FlowEvents struct {
	// OnDead is called once each time a flow becomes dead: why is
	// "keepalive" for too many missed keepalives, or the reason given to
	// Closed.
	OnDead func(k FlowKey, why string)
}

// FlowStats are a FlowTable's counters.
type FlowStats struct {
	Flows   int    // flows tracked now
	Refused uint64 // new flows not tracked because the table was full
}

// flowEntry is a Flow without its key, with times as Unix nanoseconds
// (0 = never): 48 bytes and no pointers, to keep the table small and
// cheap for the garbage collector.
type flowEntry struct {
	created, lastIn, lastPing, lastPong int64
	rtt                                 time.Duration
	misses                              int32
	state                               FlowState
	keepalive                           kaKind // auto mode: what keeps it open (kaUnknown: not known yet)
}

// FlowTable tracks flows (RFC 5626 §3.3): when each last carried traffic
// and how it answers keepalives. It is safe for concurrent use.
//
// Only Seen creates entries, and the edge calls it only when the core
// accepted a registration on the flow; Touch, which runs for every
// inbound packet before any authentication, refreshes known flows and
// never creates one, so spoofed sources cannot add entries. The table is
// bounded all the same, because registrations are what it holds: many
// accepted registrations from many sources, or one account registering
// from ever new addresses, would otherwise grow memory without limit. At
// max entries a new flow is therefore not tracked (Stats counts it as
// refused) while known flows carry on. Sweep frees the entries of flows
// gone quiet, so they cannot keep the table full for longer than the
// sweep's idle time.
//
// One mutex guards the map: Seen or Touch on a known flow is a lookup and
// a store, tens of nanoseconds, which measured fast enough not to need
// sharding (see BenchmarkFlowTableSeen).
type FlowTable struct {
	max     int
	now     func() time.Time
	ev      FlowEvents
	refused atomic.Uint64

	mu sync.Mutex
	m  map[FlowKey]flowEntry
}

// NewFlowTable returns a table of at most max flows that reads time from
// now (nil means time.Now). max below 1 is an error.
func NewFlowTable(max int, now func() time.Time, ev FlowEvents) (*FlowTable, error) {
	if max < 1 {
		return nil, fmt.Errorf("nat: flow table size %d is below 1", max)
	}
	if now == nil {
		now = time.Now
	}
	return &FlowTable{max: max, now: now, ev: ev, m: make(map[FlowKey]flowEntry)}, nil
}

func (t *FlowTable) nanos() int64 { return t.now().UnixNano() }

// Seen records a registration on k, which is inbound traffic too: it
// creates the flow if the table has room, or refreshes it, and makes it
// alive again if it was suspect or dead. It does not allocate for a
// known flow.
func (t *FlowTable) Seen(k FlowKey) {
	now := t.nanos()
	t.mu.Lock()
	e, ok := t.m[k]
	if !ok {
		if len(t.m) >= t.max {
			t.mu.Unlock()
			t.refused.Add(1)
			return
		}
		e.created = now
	}
	e.lastIn = max(e.lastIn, now) // concurrent callers may arrive out of order
	e.state, e.misses = FlowAlive, 0
	t.m[k] = e
	t.mu.Unlock()
}

// Adopt tracks k as alive, created at created, if the table does not
// know it and has room, and reports whether k is tracked now. It is how
// a flow the process never saw comes back: from the store at start, or
// from its authenticated token after a restart without state. created is
// the flow's first life, the time its tokens carry, so they stay current.
func (t *FlowTable) Adopt(k FlowKey, created time.Time) bool {
	now := t.nanos()
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.m[k]; ok {
		return true
	}
	if len(t.m) >= t.max {
		t.refused.Add(1)
		return false
	}
	t.m[k] = flowEntry{created: min(created.UnixNano(), now), lastIn: now, state: FlowAlive}
	return true
}

// Touch records inbound traffic on k if k is a known flow that is not
// dead, in one step (no check-then-act against a concurrent removal),
// and reports whether it was. Traffic never creates a flow here, nor
// revives a dead one: only a new registration does (Seen).
func (t *FlowTable) Touch(k FlowKey) bool {
	now := t.nanos()
	t.mu.Lock()
	e, ok := t.m[k]
	if ok && e.state != FlowDead {
		e.lastIn = max(e.lastIn, now)
		e.state, e.misses = FlowAlive, 0
		t.m[k] = e
	}
	t.mu.Unlock()
	return ok
}

// PingSent records that a keepalive was sent on k. Unknown flows are
// ignored, here and in Pong and Missed.
func (t *FlowTable) PingSent(k FlowKey) {
	now := t.nanos()
	t.mu.Lock()
	if e, ok := t.m[k]; ok {
		e.lastPing = now
		t.m[k] = e
	}
	t.mu.Unlock()
}

// Pong records that a keepalive on k was answered: the round trip since
// the last PingSent becomes its RTT and the flow is alive again.
func (t *FlowTable) Pong(k FlowKey) {
	now := t.nanos()
	t.mu.Lock()
	if e, ok := t.m[k]; ok {
		if e.lastPing != 0 && now >= e.lastPing {
			e.rtt = time.Duration(now - e.lastPing)
		}
		e.lastPong = now
		e.state, e.misses = FlowAlive, 0
		t.m[k] = e
	}
	t.mu.Unlock()
}

// SetKeepalive records what keeps k open (auto mode).
func (t *FlowTable) SetKeepalive(k FlowKey, m KeepaliveMode) {
	t.mu.Lock()
	if e, ok := t.m[k]; ok {
		e.keepalive = kindOf(m)
		t.m[k] = e
	}
	t.mu.Unlock()
}

// Missed records that a keepalive on k went unanswered. The flow becomes
// suspect, and dead at the limit-th miss in a row (a limit below 1 counts
// as 1), when OnDead(k, "keepalive") fires. It reports whether the flow
// is dead now.
func (t *FlowTable) Missed(k FlowKey, limit int) (dead bool) {
	t.mu.Lock()
	e, ok := t.m[k]
	if !ok {
		t.mu.Unlock()
		return false
	}
	wasDead := e.state == FlowDead
	e.misses++
	switch {
	case wasDead:
	case int(e.misses) >= max(limit, 1):
		e.state = FlowDead
	default:
		e.state = FlowSuspect
	}
	t.m[k] = e
	t.mu.Unlock()
	if e.state == FlowDead && !wasDead && t.ev.OnDead != nil {
		t.ev.OnDead(k, "keepalive")
	}
	return e.state == FlowDead
}

// Closed marks k dead at once because its connection closed or failed;
// OnDead(k, why) fires unless it was dead already.
func (t *FlowTable) Closed(k FlowKey, why string) {
	t.mu.Lock()
	e, ok := t.m[k]
	fire := ok && e.state != FlowDead
	if fire {
		e.state = FlowDead
		t.m[k] = e
	}
	t.mu.Unlock()
	if fire && t.ev.OnDead != nil {
		t.ev.OnDead(k, why)
	}
}

// Get returns what the table knows about k.
func (t *FlowTable) Get(k FlowKey) (Flow, bool) {
	t.mu.Lock()
	e, ok := t.m[k]
	t.mu.Unlock()
	if !ok {
		return Flow{}, false
	}
	return e.flow(k), true
}

// Alive reports whether k is tracked and not dead.
func (t *FlowTable) Alive(k FlowKey) bool {
	t.mu.Lock()
	e, ok := t.m[k]
	t.mu.Unlock()
	return ok && e.state != FlowDead
}

// pingDue is the Keepaliver's check and PingSent in one lookup. If k
// carried inbound traffic after since, other than the answer to a ping,
// and after now-fresh, it returns that traffic's time and ping false: the
// traffic kept the NAT binding open. Otherwise it records a ping sent at
// now and returns ping true, with the time of the ping before for
// unping. Unknown flows always get pinged.
func (t *FlowTable) pingDue(k FlowKey, since, now, fresh int64) (lastIn, prevPing int64, ping bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[k]
	if !ok {
		return 0, 0, true
	}
	if e.lastIn > max(since, e.lastPong, now-fresh) {
		return e.lastIn, 0, false
	}
	prevPing, e.lastPing = e.lastPing, now
	t.m[k] = e
	return e.lastIn, prevPing, true
}

// unping takes back the ping that pingDue recorded at now and the rate
// cap then held back, unless another ping was recorded since.
func (t *FlowTable) unping(k FlowKey, now, prevPing int64) {
	t.mu.Lock()
	if e, ok := t.m[k]; ok && e.lastPing == now {
		e.lastPing = prevPing
		t.m[k] = e
	}
	t.mu.Unlock()
}

// Remove forgets k.
func (t *FlowTable) Remove(k FlowKey) {
	t.mu.Lock()
	delete(t.m, k)
	t.mu.Unlock()
}

// Len returns the number of flows tracked.
func (t *FlowTable) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// Stats returns the table's counters.
func (t *FlowTable) Stats() FlowStats {
	return FlowStats{Flows: t.Len(), Refused: t.refused.Load()}
}

// Snapshot returns every flow, in no particular order.
func (t *FlowTable) Snapshot() []Flow {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Flow, 0, len(t.m))
	for k, e := range t.m {
		out = append(out, e.flow(k))
	}
	return out
}

// Sweep removes the flows that neither carried traffic nor answered a
// keepalive for idle, dead or alive, unless keep(k) says otherwise (nil
// keeps nothing), and returns how many it removed. The edge keeps the
// flows it has registrations on, since a registered UDP flow pinged with
// CRLF may stay quiet for long. keep runs with no lock held, so it may
// take other locks; a flow that becomes active meanwhile stays.
//
// Finding candidates holds the table's lock for one pass over the map
// (about a millisecond per 100,000 flows).
func (t *FlowTable) Sweep(idle time.Duration, keep func(FlowKey) bool) int {
	cutoff := t.nanos() - int64(idle)
	var stale []FlowKey
	t.mu.Lock()
	for k, e := range t.m {
		if e.active() < cutoff {
			stale = append(stale, k)
		}
	}
	t.mu.Unlock()
	removed := 0
	for _, k := range stale {
		if keep != nil && keep(k) {
			continue
		}
		t.mu.Lock()
		if e, ok := t.m[k]; ok && e.active() < cutoff { // check again: it may have moved on
			delete(t.m, k)
			removed++
		}
		t.mu.Unlock()
	}
	return removed
}

// active is when the flow last showed any sign of life.
func (e flowEntry) active() int64 { return max(e.created, e.lastIn, e.lastPong) }

func (e flowEntry) flow(k FlowKey) Flow {
	return Flow{
		Key:       k,
		Created:   timeOf(e.created),
		LastIn:    timeOf(e.lastIn),
		LastPing:  timeOf(e.lastPing),
		LastPong:  timeOf(e.lastPong),
		RTT:       e.rtt,
		State:     e.state,
		Misses:    int(e.misses),
		Keepalive: e.keepalive.mode(),
	}
}

func timeOf(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// kaKind is a KeepaliveMode in a byte, for the flow table's entries.
type kaKind uint8

const (
	kaUnknown kaKind = iota
	kaOptions
	kaCRLF
)

func kindOf(m KeepaliveMode) kaKind {
	switch m {
	case KeepaliveOptions:
		return kaOptions
	case KeepaliveCRLF:
		return kaCRLF
	}
	return kaUnknown
}

func (k kaKind) mode() KeepaliveMode {
	switch k {
	case kaOptions:
		return KeepaliveOptions
	case kaCRLF:
		return KeepaliveCRLF
	}
	return ""
}
