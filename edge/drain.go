package edge

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/nat"
)

// drain is the server's way out: it counts requests in flight and, once
// closed, turns REGISTERs and new dialogs away (503 with a spread
// Retry-After) while requests inside dialogs still pass, so calls can
// end.
type drain struct {
	cfg DrainConfig

	mu      sync.Mutex
	closed  bool
	n       int           // requests in flight
	idle    chan struct{} // gets a token when n drops to 0 after close
	hurryCh chan struct{}
	hurried sync.Once
}

func newDrain(cfg DrainConfig) *drain {
	return &drain{cfg: cfg, idle: make(chan struct{}, 1), hurryCh: make(chan struct{})}
}

// enter admits r unless the edge is draining and r would start something
// new; an admitted request must leave.
func (d *drain) enter(r *sip.Request) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed && startsSomething(r) {
		return false
	}
	d.n++
	return true
}

func (d *drain) leave() {
	d.mu.Lock()
	d.n--
	if d.n == 0 && d.closed {
		select {
		case d.idle <- struct{}{}:
		default:
		}
	}
	d.mu.Unlock()
}

// startsSomething: a REGISTER, or a request outside any dialog.
func startsSomething(r *sip.Request) bool {
	to := r.To()
	return r.Method == sip.REGISTER || to == nil || !to.Params.Has("tag")
}

// draining reports whether the drain has started.
func (d *drain) draining() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// close starts the drain.
func (d *drain) close() {
	d.mu.Lock()
	d.closed = true
	if d.n == 0 {
		select {
		case d.idle <- struct{}{}:
		default:
		}
	}
	d.mu.Unlock()
}

// wait returns once no request is in flight, or ctx ends.
func (d *drain) wait(ctx context.Context) bool {
	for {
		d.mu.Lock()
		n := d.n
		d.mu.Unlock()
		if n == 0 {
			return true
		}
		select {
		case <-d.idle:
		case <-ctx.Done():
			return false
		}
	}
}

// hurry cuts the drain short (a second SIGTERM).
func (d *drain) hurry() { d.hurried.Do(func() { close(d.hurryCh) }) }

// retryAfter is RetryAfter ±50%, whole seconds.
func (d *drain) retryAfter() time.Duration { return spread(d.config().RetryAfter) }

func (d *drain) config() DrainConfig {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

func (d *drain) setConfig(c DrainConfig) {
	d.mu.Lock()
	d.cfg = c
	d.mu.Unlock()
}

// closeSpread closes conns one by one, in random order, at even steps
// over the first three quarters of over (the last at three quarters), so
// their reconnects reach the next process spread out rather than at
// once; when ctx ends, the rest close at once. It returns when all are
// closed.
func closeSpread(ctx context.Context, clk clock.Clock, conns []*nat.Conn, over time.Duration) {
	rand.Shuffle(len(conns), func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
	step := time.Duration(0)
	if len(conns) > 0 {
		step = over * 3 / 4 / time.Duration(len(conns))
	}
	for _, c := range conns {
		if step > 0 && ctx.Err() == nil {
			next := make(chan struct{})
			t := clk.AfterFunc(step, func() { close(next) })
			select {
			case <-next:
			case <-ctx.Done():
				t.Stop()
			}
		}
		_ = c.CloseGently(closeLinger)
	}
}

// closeLinger is how long a drained connection is still read after its
// half-close: the phone's REGISTER already on its way must not turn the
// close into a reset.
const closeLinger = 300 * time.Millisecond
