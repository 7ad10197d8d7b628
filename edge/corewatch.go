package edge

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/upstream"
	"github.com/sipedge/sipedge/upstream/fairq"
	"golang.org/x/time/rate"
)

// coreWatch follows a tenant's cores for what its REGISTERs need beyond
// health: whether none is up and since when (survival), whether they may
// have lost bindings the edge answers refreshes for (re-population), and
// how many REGISTERs each may be sent (core_rate).
type coreWatch struct {
	tenant   string
	pool     *upstream.Pool
	registry *registry.Registry
	grace    time.Duration // [survival] grace; 0: off
	now      func() time.Time
	events   func(audit.Event)
	log      *slog.Logger
	policy   func() RegistrationConfig

	mu        sync.Mutex
	down      map[string]bool // cores last reported down
	downSince time.Time       // every core down since then; zero: one is up
	graceOver bool            // the end of grace was said
	repop     repopulation
	pace      *rate.Limiter           // re-registrations a second
	paced     map[string]time.Time    // bindings let through the pace, by AOR and flow: until when
	gates     map[string]*fairq.Queue // per core, at core_rate
	gateRate  int
}

// pacedFor is how long a binding let through the pace stays let through:
// its REGISTER, the core's challenge, the answer, and their retransmissions.
const pacedFor = 32 * time.Second

// repopulation is one round of telling a core again what it lost.
type repopulation struct {
	active            bool
	started           time.Time
	total             int       // bindings marked
	checked, progress time.Time // last count, last progress event
}

func newCoreWatch(t *tenant, reg *registry.Registry, grace time.Duration, now func() time.Time, events func(audit.Event), log *slog.Logger) *coreWatch {
	return &coreWatch{tenant: t.name, pool: t.pool, registry: reg, grace: grace, now: now, events: events, log: log,
		policy: func() RegistrationConfig { return t.policy.Load().cfg },
		down:   make(map[string]bool), gates: make(map[string]*fairq.Queue), paced: make(map[string]time.Time)}
}

// changed hears a core's change of health (the pool's WithOnChange).
func (w *coreWatch) changed(t upstream.Target, st upstream.State) {
	w.mu.Lock()
	defer w.mu.Unlock()
	id, isDown := t.String(), st == upstream.StateDown
	if w.down[id] == isDown {
		return // up and overloaded are both up
	}
	w.down[id] = isDown
	now := w.now()
	if w.policy().Offload {
		// A core that went down takes its AORs' bindings to another, or
		// to none; one that came back may have restarted empty. Either
		// way the cores must hear every binding again.
		if n := w.registry.ForgetAtCore(w.tenant, ""); n > 0 || w.repop.active {
			w.repopulating(now, n, id, "core "+st.String())
		}
	}
	allDown := len(w.pool.Order("")) == 0
	switch {
	case allDown && w.downSince.IsZero():
		w.downSince, w.graceOver = now, false
		if w.grace > 0 {
			w.event(audit.Event{Kind: audit.ModeChange, Severity: slog.LevelWarn, Reason: "every core is down",
				Detail: fmt.Sprintf("survival: known phones are answered from cache and call each other through the edge for up to %s", w.grace)})
		}
	case !allDown && !w.downSince.IsZero():
		if w.grace > 0 {
			w.event(audit.Event{Kind: audit.ModeChange, Reason: "a core is up", Core: id,
				Detail: fmt.Sprintf("survival ended after %s", now.Sub(w.downSince).Round(time.Second))})
		}
		w.downSince = time.Time{}
	}
}

// lost hears that the core lost n bindings, found out from its answer.
func (w *coreWatch) lost(n int, why string) {
	if n == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.repopulating(w.now(), n, "", why)
}

func (w *coreWatch) repopulating(now time.Time, n int, core, why string) {
	if w.repop.active {
		w.repop.total += n
		return
	}
	w.repop = repopulation{active: true, started: now, total: n, progress: now}
	w.event(audit.Event{Kind: audit.CoreRepopulate, Count: n, Core: core, Reason: why, Detail: "started"})
}

// tick is the maintenance loop's: the end of grace, and the progress of
// re-population (counted at most once a second).
func (w *coreWatch) tick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	if !w.downSince.IsZero() && w.grace > 0 && !w.graceOver && now.Sub(w.downSince) >= w.grace {
		w.graceOver = true
		w.event(audit.Event{Kind: audit.ModeChange, Severity: slog.LevelWarn, Reason: "survival grace over",
			Detail: "every REGISTER gets 503 until a core is up"})
	}
	for k, until := range w.paced {
		if !now.Before(until) {
			delete(w.paced, k)
		}
	}
	if !w.repop.active || !w.downSince.IsZero() || now.Sub(w.repop.checked) < time.Second {
		return
	}
	w.repop.checked = now
	switch left := w.registry.LostAtCore(w.tenant); {
	case left == 0:
		w.repop.active = false
		w.event(audit.Event{Kind: audit.CoreRepopulate, Count: w.repop.total,
			Detail: fmt.Sprintf("done in %s", now.Sub(w.repop.started).Round(time.Second))})
	case now.Sub(w.repop.progress) >= 10*time.Second:
		w.repop.progress = now
		w.event(audit.Event{Kind: audit.CoreRepopulate, Count: left, Detail: "progress: bindings left"})
	}
}

func (w *coreWatch) event(e audit.Event) {
	e.Tenant = w.tenant
	w.log.Info(string(e.Kind), "tenant", w.tenant, "detail", e.Detail, "count", e.Count)
	w.events(e)
}

// surviving reports whether every core is down and the grace runs.
func (w *coreWatch) surviving() bool {
	if w.grace == 0 {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.downSince.IsZero() && w.now().Sub(w.downSince) < w.grace
}

// repopulate reports whether a refresh of binding key (AOR and flow) the
// core may have lost may go to it now, at repopulate_rate; the rest are
// answered from cache and try again with their next refresh. A binding
// let through stays let through for a while: the core restarted, so it
// challenges, and the phone's answer must reach it too.
func (w *coreWatch) repopulate(key string, perSecond int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	if until, ok := w.paced[key]; ok && now.Before(until) {
		return true
	}
	if w.pace == nil || int(w.pace.Limit()) != perSecond {
		w.pace = rate.NewLimiter(rate.Limit(perSecond), max(1, perSecond/10))
	}
	if !w.pace.AllowN(now, 1) {
		return false
	}
	w.paced[key] = now.Add(pacedFor)
	return true
}

// gate is core's queue at perSecond REGISTERs.
func (w *coreWatch) gate(core string, perSecond int) *fairq.Queue {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gateRate != perSecond { // reloaded: new queues
		w.gates, w.gateRate = make(map[string]*fairq.Queue), perSecond
	}
	q := w.gates[core]
	if q == nil {
		q = fairq.New(perSecond, coreQueueWait)
		w.gates[core] = q
	}
	return q
}

// coreQueueWait is how long a REGISTER may wait for its turn at a core
// over core_rate: well inside a phone's first retransmission interval
// over UDP doubling (T1 × 2^n) and its transaction timeout.
const coreQueueWait = time.Second
