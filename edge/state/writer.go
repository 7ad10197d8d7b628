package state

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/ratelimit"
)

// Writer writes the registry's changes and the ban list through to a
// Store in batches, every FlushInterval. Observe and BansChanged only
// note what changed (a map store under a lock); the writes happen on
// Run's goroutine. Safe for concurrent use.
type Writer struct {
	store Store
	log   *slog.Logger
	clk   clock.Clock
	every time.Duration
	bans  func() []ratelimit.Ban // the limiter's BanHistory

	mu      sync.Mutex
	put     map[slot]registry.Binding // the latest state wins
	del     map[slot]registry.Binding
	bansSet bool

	flushMu sync.Mutex  // one flush at a time
	failing bool        // the last write failed (guarded by flushMu)
	failed  int         // writes failed since the last success
	down    atomic.Bool // failing, for readers that must not wait for a flush
	lastLog time.Time
}

// slot names a binding: its AOR and its ID within it.
type slot struct{ aor, id string }

func slotOf(b registry.Binding) slot { return slot{b.AOR, b.ID()} }

// OK reports whether the last write went through (true before any).
func (w *Writer) OK() bool {
	return !w.down.Load()
}

// NewWriter returns a Writer to store. bans lists the ban history to
// save whenever BansChanged was called (nil: bans are not kept).
func NewWriter(store Store, every time.Duration, clk clock.Clock, log *slog.Logger, bans func() []ratelimit.Ban) *Writer {
	return &Writer{store: store, log: log, clk: clk, every: every, bans: bans,
		put: make(map[slot]registry.Binding), del: make(map[slot]registry.Binding)}
}

// Observe notes a registry event (registry.Deps.OnEvent). Bindings on
// stream flows are not kept: their connections die with the process.
func (w *Writer) Observe(e registry.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch e.Kind {
	case registry.Registered, registry.Refreshed:
		w.keep(e.Binding)
	case registry.Moved:
		w.drop(e.Old)
		w.keep(e.Binding)
	case registry.Unregistered, registry.Expired:
		w.drop(e.Binding)
	case registry.FlowDead:
		for _, b := range e.Removed {
			w.drop(b)
		}
	}
}

func (w *Writer) keep(b registry.Binding) {
	if b.Flow.Transport.Reliable() {
		w.drop(b) // it may have moved here from UDP
		return
	}
	k := slotOf(b)
	delete(w.del, k)
	w.put[k] = b
}

func (w *Writer) drop(b registry.Binding) {
	k := slotOf(b)
	delete(w.put, k)
	w.del[k] = b
}

// BansChanged notes that the ban list changed (ratelimit.Events).
func (w *Writer) BansChanged() {
	w.mu.Lock()
	w.bansSet = w.bans != nil
	w.mu.Unlock()
}

// Run flushes every interval until ctx ends, then once more.
func (w *Writer) Run(ctx context.Context) {
	t := w.clk.NewTicker(w.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			w.Flush()
			return
		case <-t.C():
			w.Flush()
		}
	}
}

// Flush writes what changed since the last flush, in one batch. A failed
// write keeps the changes for the next (newer changes to the same
// binding win); failures are logged once a minute, with their count, and
// the recovery once.
func (w *Writer) Flush() error {
	w.flushMu.Lock()
	defer w.flushMu.Unlock()
	w.mu.Lock()
	put, del, bansSet := w.put, w.del, w.bansSet
	if len(put) == 0 && len(del) == 0 && !bansSet {
		w.mu.Unlock()
		return nil
	}
	w.put, w.del, w.bansSet = make(map[slot]registry.Binding), make(map[slot]registry.Binding), false
	w.mu.Unlock()

	b := Batch{Saved: w.clk.Now(), Put: make([]registry.Binding, 0, len(put)), Delete: make([]registry.Binding, 0, len(del))}
	for _, p := range put {
		b.Put = append(b.Put, p)
	}
	for _, d := range del {
		b.Delete = append(b.Delete, d)
	}
	if bansSet {
		b.Bans, b.BansSet = w.bans(), true
	}
	err := w.store.Write(b)
	if err == nil {
		if w.failing {
			w.log.Info("state store writes again", "store", w.store.String(), "failed_writes", w.failed)
		}
		w.failing, w.failed = false, 0
		w.down.Store(false)
		return nil
	}
	w.mu.Lock()
	for k, p := range put {
		if _, newer := w.put[k]; !newer {
			if _, gone := w.del[k]; !gone {
				w.put[k] = p
			}
		}
	}
	for k, d := range del {
		if _, newer := w.put[k]; !newer {
			w.del[k] = d
		}
	}
	w.bansSet = w.bansSet || bansSet
	w.mu.Unlock()
	w.failed++
	if now := w.clk.Now(); !w.failing || now.Sub(w.lastLog) >= time.Minute {
		w.log.Error("state store write failed; changes kept for the next try", "store", w.store.String(), "err", err, "failed_writes", w.failed)
		w.lastLog = now
	}
	w.failing = true
	w.down.Store(true)
	return err
}

// Pending is how many binding changes wait for the next flush.
func (w *Writer) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.put) + len(w.del)
}
