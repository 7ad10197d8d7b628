package nat

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// KeepaliveMode is how the edge keeps a registered flow open.
type KeepaliveMode string

const (
	// KeepaliveCRLF sends "\r\n\r\n": on UDP one datagram from the
	// listening socket, which nothing answers; it keeps the NAT binding
	// open but proves nothing about the endpoint.
	KeepaliveCRLF KeepaliveMode = "crlf"
	// KeepaliveOptions sends an OPTIONS request over the flow; any
	// response proves the endpoint is there, a timeout counts as a miss.
	KeepaliveOptions KeepaliveMode = "options"
	// KeepaliveOff sends nothing.
	KeepaliveOff KeepaliveMode = "off"
)

// KeepaliveConfig is the keepalive part of the [nat] config section.
type KeepaliveConfig struct {
	Mode KeepaliveMode `toml:"keepalive"`
	// Interval between keepalives on a flow; each is sent after 0.8 to
	// 1.0 times it, at random, so pings spread out.
	Interval time.Duration `toml:"keepalive_interval"`
	// Failures is how many keepalives in a row may go unanswered before
	// the flow is dead.
	Failures int `toml:"keepalive_failures"`
	// MaxPerSecond caps keepalives sent per second over all flows. Those
	// over the cap wait for a later tick, so more than MaxPerSecond ×
	// Interval flows stretch every flow's interval.
	MaxPerSecond int `toml:"keepalive_rate"`
	// FlowTimerUDP is the Flow-Timer (RFC 5626 §4.4.1) the edge grants
	// outbound clients on UDP: how often they must send their own
	// keepalives. FlowTimerStream is the same for TCP, TLS and WebSocket.
	FlowTimerUDP    time.Duration `toml:"flow_timer"`
	FlowTimerStream time.Duration `toml:"flow_timer_stream"`
}

// DefaultKeepaliveConfig sends a CRLF every 25 s (under the 30 s that
// the shortest common NAT UDP timeouts allow), at most 2000 a second.
func DefaultKeepaliveConfig() KeepaliveConfig {
	return KeepaliveConfig{
		Mode:            KeepaliveCRLF,
		Interval:        25 * time.Second,
		Failures:        3,
		MaxPerSecond:    2000,
		FlowTimerUDP:    25 * time.Second,
		FlowTimerStream: 120 * time.Second,
	}
}

// Validate names every invalid key and why.
func (c KeepaliveConfig) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("nat.%s: %s", key, fmt.Sprintf(format, a...)))
	}
	switch c.Mode {
	case KeepaliveCRLF, KeepaliveOptions, KeepaliveOff:
	default:
		bad("keepalive", "%q is not crlf, options or off", c.Mode)
	}
	if c.Interval < time.Second || c.Interval > 10*time.Minute {
		bad("keepalive_interval", "%s is outside 1s..10m", c.Interval)
	}
	if c.Failures < 1 || c.Failures > 100 {
		bad("keepalive_failures", "%d is outside 1..100", c.Failures)
	}
	if c.MaxPerSecond < 1 || c.MaxPerSecond > 1_000_000 {
		bad("keepalive_rate", "%d is outside 1..1000000", c.MaxPerSecond)
	}
	for _, ft := range []struct {
		key string
		d   time.Duration
	}{{"flow_timer", c.FlowTimerUDP}, {"flow_timer_stream", c.FlowTimerStream}} {
		switch {
		case ft.d < time.Second || ft.d > 10*time.Minute:
			// flow_timer_stream is also the stream probe's interval
			bad(ft.key, "%s is outside 1s..10m", ft.d)
		case ft.d%time.Second != 0:
			bad(ft.key, "%s is not a whole number of seconds (Flow-Timer counts seconds)", ft.d)
		}
	}
	return errors.Join(errs...)
}

// Pinger sends one keepalive on a flow; the edge implements it.
//
// For KeepaliveCRLF it writes "\r\n\r\n" (on UDP from the listening
// socket) and returns nil once it is sent: no answer is expected. For
// KeepaliveOptions it runs an OPTIONS transaction over the flow and
// returns nil on any response, an error on timeout. Either way it must
// return promptly once ctx is done.
type Pinger interface {
	Ping(ctx context.Context, k FlowKey, mode KeepaliveMode) error
}

const (
	// pingWorkers bounds the pings of one tick that run at once: enough
	// that a few hundred silent endpoints (each holding a worker for
	// pingTimeout) do not delay everyone else's keepalive.
	pingWorkers = 512
	// pingTimeout bounds one OPTIONS ping (sipgo retransmits it over UDP
	// at 0.5, 1 and 2 s), or half the interval if that is shorter.
	pingTimeout = 4 * time.Second
	// jitterMin and jitterMax bound the random factor applied to the
	// interval, after RFC 5626 §4.4.1.
	jitterMin = 0.8
	jitterMax = 1.0
)

// Keepaliver pings registered flows on a schedule, so their NAT bindings
// stay open and, with OPTIONS, dead endpoints are found. Run drives it
// from a ticker; tests call Tick with a fake clock. It is safe for
// concurrent use.
//
// Flows wait in a min-heap ordered by due time, so a tick costs
// O(due × log n), not O(n). A flow that carried inbound traffic since
// its last ping is not pinged (the traffic already refreshed the NAT
// binding): its ping moves to an interval after that traffic.
type Keepaliver struct {
	cfg   KeepaliveConfig
	flows *FlowTable
	p     Pinger
	now   func() time.Time

	tick sync.Mutex // serialises Tick; guards batch
	// batch is the keys due this tick, reused across ticks.
	batch []FlowKey

	mu     sync.Mutex // guards everything below
	rnd    *rand.Rand
	items  map[FlowKey]*kaItem
	due    kaHeap
	stale  int     // entries in due of unwatched items
	tokens float64 // pings allowed now (token bucket of MaxPerSecond)
	filled int64   // when tokens were last topped up, Unix ns
}

// kaItem is a watched flow. Unwatch only marks it gone: its heap entry
// is dropped when it comes due, or when gone entries make up half the
// heap. That keeps heap entries free of back-pointers, so sifting reads
// and writes only the heap's own array.
type kaItem struct {
	key FlowKey
	// ref is when the flow was last known fresh: its last ping, Watch,
	// or traffic that postponed a ping. Traffic after ref skips a ping.
	ref  int64
	gone bool
}

// kaEntry is a heap entry: an item and its next ping, Unix ns.
type kaEntry struct {
	due int64
	it  *kaItem
}

// NewKeepaliver returns a Keepaliver for flows tracked in flows, which
// it keeps informed (PingSent, Pong, Missed). now nil means time.Now; rnd
// nil means a randomly seeded source. It panics if cfg is invalid (see
// Validate): the config loader has checked it already.
func NewKeepaliver(cfg KeepaliveConfig, flows *FlowTable, p Pinger, now func() time.Time, rnd *rand.Rand) *Keepaliver {
	if err := cfg.Validate(); err != nil {
		panic("nat: NewKeepaliver: " + err.Error())
	}
	if now == nil {
		now = time.Now
	}
	if rnd == nil {
		rnd = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return &Keepaliver{
		cfg:    cfg,
		flows:  flows,
		p:      p,
		now:    now,
		rnd:    rnd,
		items:  make(map[FlowKey]*kaItem),
		tokens: float64(cfg.MaxPerSecond),
		filled: now().UnixNano(),
	}
}

// jitter returns the interval times a random factor in [0.8, 1.0).
// Call with mu held.
func (k *Keepaliver) jitter() int64 {
	f := jitterMin + (jitterMax-jitterMin)*k.rnd.Float64()
	return int64(f * float64(k.cfg.Interval))
}

// Watch starts keeping key open; the first ping is due 0.8 to 1.0
// intervals from now. Watching a watched flow changes nothing. With mode
// off it does nothing.
func (k *Keepaliver) Watch(key FlowKey) {
	if k.cfg.Mode == KeepaliveOff {
		return
	}
	now := k.now().UnixNano()
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.items[key]; ok {
		return
	}
	it := &kaItem{key: key, ref: now}
	k.items[key] = it
	// Append and fix rather than heap.Push, which would box the entry.
	k.due = append(k.due, kaEntry{now + k.jitter(), it})
	heap.Fix(&k.due, len(k.due)-1)
}

// Unwatch stops pinging key.
func (k *Keepaliver) Unwatch(key FlowKey) {
	k.mu.Lock()
	defer k.mu.Unlock()
	it, ok := k.items[key]
	if !ok {
		return
	}
	it.gone = true
	delete(k.items, key)
	if k.stale++; k.stale > 64 && k.stale > len(k.due)/2 {
		live := k.due[:0]
		for _, e := range k.due {
			if !e.it.gone {
				live = append(live, e)
			}
		}
		clear(k.due[len(live):])
		k.due, k.stale = live, 0
		heap.Init(&k.due)
	}
}

// Watching reports whether key is watched.
func (k *Keepaliver) Watching(key FlowKey) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.items[key]
	return ok
}

// Len returns the number of watched flows.
func (k *Keepaliver) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.items)
}

// Tick sends every ping that is due, at most as many as MaxPerSecond
// allows since the last tick (the rest stay due for the next one), and
// returns once they have all finished or ctx is done. Each ping is
// rescheduled when it is taken, whatever its outcome. A failed ping
// counts as a miss; when the flow turns dead (OnDead fires) it is no
// longer watched. Calls to Tick run one at a time.
func (k *Keepaliver) Tick(ctx context.Context) {
	if k.cfg.Mode == KeepaliveOff || ctx.Err() != nil {
		return
	}
	k.tick.Lock()
	defer k.tick.Unlock()
	k.batch = k.take(k.now().UnixNano(), k.batch[:0])
	k.send(ctx, k.batch)
	clear(k.batch) // drop the keys' zone handles
}

// take moves the pings due at now into batch and reschedules them.
func (k *Keepaliver) take(now int64, batch []FlowKey) []FlowKey {
	k.mu.Lock()
	defer k.mu.Unlock()
	rate := float64(k.cfg.MaxPerSecond)
	if now > k.filled {
		k.tokens = min(rate, k.tokens+rate*float64(now-k.filled)/float64(time.Second))
		k.filled = now
	}
	for len(k.due) > 0 && k.due[0].due <= now {
		e := &k.due[0]
		it := e.it
		if it.gone {
			heap.Pop(&k.due)
			k.stale--
			continue
		}
		if k.tokens < 1 {
			break
		}
		j := k.jitter()
		if lastIn, ping := k.flows.pingDue(it.key, it.ref, now, j); !ping {
			// Traffic since the last ping (other than the answer to
			// it) refreshed the binding: count the interval from there.
			it.ref, e.due = lastIn, lastIn+j
			heap.Fix(&k.due, 0)
			continue
		}
		k.tokens--
		it.ref, e.due = now, now+j
		heap.Fix(&k.due, 0)
		batch = append(batch, it.key)
	}
	return batch
}

// send pings every key in batch with up to pingWorkers at once, each
// with its own deadline: an endpoint that never answers holds up one
// worker for pingTimeout, not the tick, and every taken key is pinged.
func (k *Keepaliver) send(ctx context.Context, batch []FlowKey) {
	if len(batch) == 0 {
		return
	}
	timeout := min(k.cfg.Interval/2, pingTimeout)
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range min(pingWorkers, len(batch)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(batch) || ctx.Err() != nil {
					return
				}
				pctx, cancel := context.WithTimeout(ctx, timeout)
				k.ping(ctx, pctx, batch[i])
				cancel()
			}
		})
	}
	wg.Wait()
}

// ping sends one ping, already recorded as sent when it was taken. An
// OPTIONS ping records it again as it leaves, for an accurate RTT.
func (k *Keepaliver) ping(ctx, tctx context.Context, key FlowKey) {
	if k.cfg.Mode == KeepaliveOptions {
		k.flows.PingSent(key)
	}
	err := k.p.Ping(tctx, key, k.cfg.Mode)
	switch {
	case err == nil:
		if k.cfg.Mode == KeepaliveOptions {
			k.flows.Pong(key)
		}
	case ctx.Err() != nil:
		// Shutting down: not the flow's fault.
	case k.flows.Missed(key, k.cfg.Failures):
		k.Unwatch(key)
	}
}

// Run calls Tick on every tick until ctx is done, and returns when the
// last Tick has.
func (k *Keepaliver) Run(ctx context.Context, tick <-chan time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			k.Tick(ctx)
		}
	}
}

// kaHeap is a min-heap of watched flows by due time.
type kaHeap []kaEntry

func (h kaHeap) Len() int           { return len(h) }
func (h kaHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h kaHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *kaHeap) Push(x any)        { *h = append(*h, x.(kaEntry)) }
func (h *kaHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = kaEntry{}
	*h = old[:len(old)-1]
	return e
}
