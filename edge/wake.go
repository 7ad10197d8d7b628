package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
)

// Waking sleeping phones (RFC 8599). A phone whose app the OS suspended
// loses its connection or its NAT pinhole; its binding, registered with
// pn-provider and pn-prid, outlives the flow. A request from the core for
// it is held while the edge sends a push; the phone wakes, registers on
// a new flow, and the request goes out on that flow. One push per phone
// however many requests wait; holding is bounded per AOR, in total and
// in time (480 when it runs out).

// Pusher sends push notifications: the push package's senders, adapted.
type Pusher interface {
	// Supports reports whether pushes through provider can be sent.
	Supports(provider string) bool
	// Push asks the phone to wake for a request (method, Call-ID, From).
	Push(ctx context.Context, to registry.Push, method, callID, from string) error
}

// WakeConfig is the edge's part of [push]: how requests wait for a phone.
type WakeConfig struct {
	// Hold is how long a request waits for the phone to register again
	// after its push: then 480 to the core.
	Hold time.Duration `toml:"hold"`
	// MaxPerAOR and Max bound the requests held for one AOR and in all;
	// beyond them, 480 at once.
	MaxPerAOR int `toml:"max_held_per_aor"`
	Max       int `toml:"max_held"`
}

// DefaultWakeConfig holds 20 s, 8 requests an AOR, 10,000 in all.
func DefaultWakeConfig() WakeConfig {
	return WakeConfig{Hold: 20 * time.Second, MaxPerAOR: 8, Max: 10_000}
}

// Validate names every invalid key and why.
func (c WakeConfig) Validate() error {
	var errs []error
	if c.Hold < time.Second || c.Hold > 2*time.Minute {
		errs = append(errs, fmt.Errorf("push.hold: %s is outside 1s..2m", c.Hold))
	}
	if c.MaxPerAOR < 1 || c.MaxPerAOR > 1000 {
		errs = append(errs, fmt.Errorf("push.max_held_per_aor: %d is outside 1..1000", c.MaxPerAOR))
	}
	if c.Max < 1 || c.Max > 1_000_000 {
		errs = append(errs, fmt.Errorf("push.max_held: %d is outside 1..1000000", c.Max))
	}
	return errors.Join(errs...)
}

// errNotWoken is a held request whose phone did not come back in time,
// could not be pushed, or had too many requests waiting already.
var errNotWoken = &Error{Code: 480, Reason: "Temporarily Unavailable"}

// waker holds requests for phones a push must wake first.
type waker struct {
	pusher Pusher
	cfg    WakeConfig
	now    func() time.Time
	events func(audit.Event)
	meter  Meter
	log    *slog.Logger
	fails  onceAWhile // failed pushes, counted

	quit     chan struct{} // closed when the edge drains: every hold ends
	quitOnce sync.Once

	mu    sync.Mutex
	by    map[string]*wake // by AOR and device token: one push per phone
	total int              // requests held
}

// wake is one phone being woken, and the requests waiting for it.
type wake struct {
	key      string
	aor      string
	push     registry.Push
	instance string
	regID    int
	sent     time.Time
	held     int
	done     chan struct{} // closed once woken or failed
	flow     nat.FlowKey   // woken: the flow it registered on
	contact  string        // and its contact there
	err      error         // failed: why
}

func newWaker(p Pusher, cfg WakeConfig, now func() time.Time, events func(audit.Event), meter Meter, log *slog.Logger) *waker {
	return &waker{pusher: p, cfg: cfg, now: now, events: events, meter: meter, log: log, by: make(map[string]*wake),
		quit: make(chan struct{})}
}

// stop ends every hold (480): the edge is draining, and a request that
// waits for a phone would outlive it.
func (w *waker) stop() {
	if w != nil {
		w.quitOnce.Do(func() { close(w.quit) })
	}
}

// wakes reports whether b's phone can be woken by a push.
func (w *waker) wakes(b registry.Binding) bool {
	return w != nil && b.Push.Wakes() && w.pusher.Supports(b.Push.Provider)
}

// hold waits until b's phone registered again, pushing it once, and
// returns its new binding's flow and contact. canceled ends the wait (a
// CANCEL from the core). held is called once the request counts as held.
func (w *waker) hold(ctx context.Context, b registry.Binding, req *sip.Request, canceled <-chan struct{}, held func()) (nat.FlowKey, string, error) {
	key := b.AOR + "\x00" + b.Push.PRID
	select {
	case <-w.quit:
		return nat.FlowKey{}, "", errNotWoken
	default:
	}
	w.mu.Lock()
	k := w.by[key]
	switch {
	case w.total >= w.cfg.Max, k != nil && k.held >= w.cfg.MaxPerAOR:
		w.mu.Unlock()
		w.fails.note(w.log, "requests for sleeping phones refused: too many held", "push")
		return nat.FlowKey{}, "", errNotWoken
	case k == nil:
		k = &wake{key: key, aor: b.AOR, push: b.Push, instance: b.Instance, regID: b.RegID, sent: w.now(), done: make(chan struct{})}
		w.by[key] = k
		from := ""
		if f := req.From(); f != nil {
			from = f.Address.String()
		}
		go w.send(k, string(req.Method), callID(req), from)
	}
	k.held++
	w.total++
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		k.held--
		w.total--
		if k.held == 0 && w.by[k.key] == k {
			delete(w.by, k.key) // nobody waits: the next request pushes again
			w.event(k, "unanswered", w.now().Sub(k.sent))
		}
		w.mu.Unlock()
	}()
	held()

	t := time.NewTimer(w.cfg.Hold)
	defer t.Stop()
	select {
	case <-k.done:
		if k.err != nil {
			return nat.FlowKey{}, "", errNotWoken
		}
		return k.flow, k.contact, nil
	case <-canceled:
		return nat.FlowKey{}, "", errDrop // sipgo answered the CANCEL and the INVITE
	case <-t.C:
	case <-ctx.Done():
	case <-w.quit:
	}
	return nat.FlowKey{}, "", errNotWoken
}

// send pushes k's phone; a failure ends every wait for it at once.
func (w *waker) send(k *wake, method, callID, from string) {
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.Hold)
	defer cancel()
	err := w.pusher.Push(ctx, k.push, method, callID, from)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if w.by[k.key] == k {
			delete(w.by, k.key)
			k.err = err
			close(k.done)
		}
		w.fails.note(w.log, "pushes failed", "provider")
		w.event(k, "failed", 0)
		return
	}
	w.event(k, "sent", 0)
}

// registered hears a binding the core just accepted: a phone being woken
// is back, on b's flow.
func (w *waker) registered(b registry.Binding) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for key, k := range w.by {
		if k.aor != b.AOR {
			continue
		}
		same := k.instance != "" && k.instance == b.Instance && k.regID == b.RegID
		if !same && (b.Push.PRID == "" || b.Push.PRID != k.push.PRID) {
			continue
		}
		k.flow, k.contact = b.Flow, b.Contact
		delete(w.by, key)
		close(k.done)
		w.event(k, "answered", w.now().Sub(k.sent))
	}
}

// event reports a push's fate: sent, answered (the phone registered
// again, took after the push), unanswered (every wait ended first),
// failed. Under mu.
func (w *waker) event(k *wake, what string, took time.Duration) {
	e := audit.Event{Kind: audit.Push, AOR: k.aor, Detail: what, Instance: k.instance, Reason: k.push.Provider}
	if what != "sent" && what != "failed" {
		e.Count = int(took / time.Millisecond)
	}
	if what == "failed" || what == "unanswered" {
		e.Severity = slog.LevelWarn
	}
	w.meter.Pushed(what, took)
	w.events(e)
}
