package nat

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
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
	// KeepaliveAuto sends OPTIONS, and keeps doing so on each flow whose
	// endpoint answers (its answer is outbound traffic, which refreshes
	// NATs that count only that, and its silence later means the flow
	// died); a flow whose endpoint leaves its first autoProbes OPTIONS
	// unanswered falls back to CRLF, and those misses do not count
	// against it.
	KeepaliveAuto KeepaliveMode = "auto"
)

// autoProbes is how many unanswered OPTIONS make auto mode fall back to
// CRLF on a flow that never answered one.
const autoProbes = 2

// KeepaliveConfig is the keepalive part of the [nat] config section.
type KeepaliveConfig struct {
	Mode KeepaliveMode `toml:"keepalive"`
	// Interval between keepalives on a flow; each is sent after 0.8 to
	// 1.0 times it, at random, so pings spread out.
	Interval time.Duration `toml:"keepalive_interval"`
	// Failures is how many keepalives in a row may go unanswered before
	// the flow is dead.
	Failures int `toml:"keepalive_failures"`
	// MaxPerSecond caps keepalives sent per second over all flows: the
	// caller builds the Keepaliver's RateCap from it. Those over the cap
	// wait for a later tick, so more than MaxPerSecond × Interval flows
	// stretch every flow's interval.
	MaxPerSecond int `toml:"keepalive_rate"`
	// FlowTimerUDP is the Flow-Timer (RFC 5626 §4.4.1) the edge grants
	// outbound clients on UDP: how often they must send their own
	// keepalives. FlowTimerStream is the same for TCP, TLS and WebSocket.
	FlowTimerUDP    time.Duration `toml:"flow_timer"`
	FlowTimerStream time.Duration `toml:"flow_timer_stream"`
}

// DefaultKeepaliveConfig keeps flows open every 25 s (under the 30 s
// that the shortest common NAT UDP timeouts allow) with OPTIONS where the
// phone answers them and CRLF where it does not, at most 2000 a second.
func DefaultKeepaliveConfig() KeepaliveConfig {
	return KeepaliveConfig{
		Mode:            KeepaliveAuto,
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
	case KeepaliveCRLF, KeepaliveOptions, KeepaliveOff, KeepaliveAuto:
	default:
		bad("keepalive", "%q is not auto, crlf, options or off", c.Mode)
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
// socket, see PacketConn.Ping) and returns nil once it is sent: no answer
// is expected. The Keepaliver sends CRLF pings one after another on the
// goroutine that called Tick, with Tick's context and no deadline of
// their own, so such a ping must not block: a single non-blocking write.
// For KeepaliveOptions it runs an OPTIONS transaction over the flow and
// returns nil on any response, an error on timeout; it must return
// promptly once ctx is done.
type Pinger interface {
	Ping(ctx context.Context, k FlowKey, mode KeepaliveMode) error
}

// RateCap bounds how many pings leave per second over all flows.
// ratelimit.Rate implements it; tests may use anything. The Keepaliver
// calls Allow once for each ping it is about to send, with its own lock
// held, so Allow must be quick; a cap shared between Keepalivers must be
// safe for concurrent use.
type RateCap interface{ Allow(now time.Time) bool }

// KeepaliverDeps are what a Keepaliver works with besides its config.
type KeepaliverDeps struct {
	Flows *FlowTable       // required: kept informed (PingSent, Pong, Missed)
	Now   func() time.Time // nil: time.Now
	Rand  *rand.Rand       // nil: randomly seeded
	Cap   RateCap          // nil: no cap (build one from MaxPerSecond)
}

const (
	// pingWorkers bounds the OPTIONS pings of one tick that run at once:
	// enough that a few hundred silent endpoints (each holding a worker
	// for pingTimeout) do not delay everyone else's keepalive.
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
// stay open and, with OPTIONS, dead endpoints are found. The edge's
// maintenance loop calls Tick about once a second; tests call it with a
// fake clock. It is safe for concurrent use.
//
// Flows wait in a min-heap ordered by due time, so a tick costs
// O(due × log n), not O(n). A flow that carried inbound traffic since
// its last ping is not pinged (the traffic already refreshed the NAT
// binding): its ping moves to an interval after that traffic.
type Keepaliver struct {
	cfg   KeepaliveConfig
	flows *FlowTable
	now   func() time.Time
	cap   RateCap // nil: uncapped

	tick sync.Mutex // serialises Tick; guards batch and crlf
	// batch is the keys due this tick, reused across ticks; in auto
	// mode, crlf holds those of them that fell back to CRLF.
	batch, crlf []FlowKey

	mu    sync.Mutex // guards everything below, and calls to cap
	rnd   *rand.Rand
	items map[flowID]*kaItem
	ids   flowIDs // the keys of items, packed
	due   kaHeap
	stale int // entries in due of unwatched items
	// short are the NATs (public addresses) found to forget a mapping
	// sooner than the interval, with the interval their flows get.
	short map[netip.Addr]time.Duration
}

// Shortest interval Shorten goes down to, and how many NATs it keeps.
const (
	minLearnedInterval = 5 * time.Second
	maxShortNATs       = 100_000
)

// kaItem is a watched flow. Unwatch only marks it gone: its heap entry
// is dropped when it comes due, or when gone entries make up half the
// heap. That keeps heap entries free of back-pointers, so sifting reads
// and writes only the heap's own array.
type kaItem struct {
	key flowID
	// ref is when the flow was last known fresh: its last ping, Watch,
	// or traffic that postponed a ping. Traffic after ref skips a ping.
	ref  int64
	gone bool
	// Auto mode: what works on this flow (kaUnknown while probing), and
	// the OPTIONS left unanswered while probing.
	kind   kaKind
	probed int8
}

// kaEntry is a heap entry: an item and its next ping, Unix ns.
type kaEntry struct {
	due int64
	it  *kaItem
}

// NewKeepaliver returns a Keepaliver for the flows it is told to Watch;
// each Tick says what sends the pings. It fails if cfg is invalid (see Validate) or a
// required dependency is missing.
func NewKeepaliver(cfg KeepaliveConfig, d KeepaliverDeps) (*Keepaliver, error) {
	errs := []error{cfg.Validate()}
	if d.Flows == nil {
		errs = append(errs, errors.New("nat: keepaliver: no flow table (KeepaliverDeps.Flows)"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Rand == nil {
		d.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return &Keepaliver{
		cfg:   cfg,
		flows: d.Flows,
		now:   d.Now,
		cap:   d.Cap,
		rnd:   d.Rand,
		items: make(map[flowID]*kaItem),
	}, nil
}

// jitter returns key's interval times a random factor in [0.8, 1.0).
// Call with mu held.
func (k *Keepaliver) jitter(key flowID) int64 {
	f := jitterMin + (jitterMax-jitterMin)*k.rnd.Float64()
	d := k.cfg.Interval
	if len(k.short) > 0 {
		d = k.intervalLocked(k.ids.remote(key).Unmap())
	}
	return int64(f * float64(d))
}

func (k *Keepaliver) intervalLocked(nat netip.Addr) time.Duration {
	if d, ok := k.short[nat]; ok && d < k.cfg.Interval {
		return d
	}
	return k.cfg.Interval
}

// Interval is the keepalive interval of flows from the public address
// nat: the configured one, or shorter if that NAT was found to forget.
func (k *Keepaliver) Interval(nat netip.Addr) time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.intervalLocked(nat.Unmap())
}

// Shorten halves the interval of flows from the public address nat (down
// to 5 s): that NAT forgot a mapping the keepalives were meant to keep,
// so its mappings live shorter than the interval. Flows from it already
// waiting get their next keepalive within the new interval. It returns
// the new interval.
func (k *Keepaliver) Shorten(nat netip.Addr) time.Duration {
	nat = nat.Unmap()
	now := k.now().UnixNano()
	k.mu.Lock()
	defer k.mu.Unlock()
	d := max(k.intervalLocked(nat)/2, min(minLearnedInterval, k.cfg.Interval))
	if k.short == nil {
		k.short = make(map[netip.Addr]time.Duration)
	}
	if _, known := k.short[nat]; !known && len(k.short) >= maxShortNATs {
		for a := range k.short { // full: forget one at random
			delete(k.short, a)
			break
		}
	}
	k.short[nat] = d
	for i := range k.due {
		if it := k.due[i].it; !it.gone && k.ids.remote(it.key).Unmap() == nat {
			k.due[i].due = min(k.due[i].due, now+k.jitter(it.key))
		}
	}
	heap.Init(&k.due)
	return d
}

// Watch starts keeping key open; the first ping is due 0.8 to 1.0
// intervals from now. Watching a watched flow changes nothing. With mode
// off it does nothing.
func (k *Keepaliver) Watch(key FlowKey) { k.watch(key, -1) }

// WatchSoon is Watch with the first ping due at a random time within
// the next within: for flows whose last ping is unknown, such as those
// restored after a restart, spread so they do not all go at once.
func (k *Keepaliver) WatchSoon(key FlowKey, within time.Duration) { k.watch(key, max(within, 1)) }

func (k *Keepaliver) watch(key FlowKey, within time.Duration) {
	now := k.now().UnixNano()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cfg.Mode == KeepaliveOff {
		return
	}
	id, ok := k.ids.pack(key, true)
	if !ok {
		return // 65,536 local addresses or zones: not a real edge
	}
	if _, ok := k.items[id]; ok {
		return
	}
	it := &kaItem{key: id, ref: now}
	k.items[id] = it
	first := k.jitter(id)
	if within > 0 {
		first = k.rnd.Int64N(int64(within))
	}
	// Append and fix rather than heap.Push, which would box the entry.
	k.due = append(k.due, kaEntry{now + first, it})
	heap.Fix(&k.due, len(k.due)-1)
}

// Unwatch stops pinging key.
func (k *Keepaliver) Unwatch(key FlowKey) {
	k.mu.Lock()
	defer k.mu.Unlock()
	id, ok := k.ids.pack(key, false)
	it := k.items[id]
	if !ok || it == nil {
		return
	}
	it.gone = true
	delete(k.items, id)
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
	id, ok := k.ids.pack(key, false)
	return ok && k.items[id] != nil
}

// Len returns the number of watched flows.
func (k *Keepaliver) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.items)
}

// Tick sends every ping that is due and the RateCap allows (the rest
// stay due for the next tick), and returns once they have all finished
// or ctx is done. Each ping is rescheduled when it is taken, whatever its
// outcome. A failed ping counts as a miss; when the flow turns dead
// (OnDead fires) it is no longer watched. Calls to Tick run one at a
// time.
//
// CRLF pings go out one after another on the calling goroutine, without
// allocating; OPTIONS pings, which wait for an answer, run on up to
// pingWorkers goroutines, each with its own deadline.
func (k *Keepaliver) Tick(ctx context.Context, p Pinger) {
	k.tick.Lock()
	defer k.tick.Unlock()
	if k.cfg.Mode == KeepaliveOff || ctx.Err() != nil {
		return
	}
	k.batch, k.crlf = k.take(k.now(), k.batch[:0], k.crlf[:0])
	crlf := k.crlf
	if k.cfg.Mode == KeepaliveCRLF {
		crlf = k.batch
	} else {
		k.sendOptions(ctx, p, k.batch)
	}
	for _, key := range crlf {
		if ctx.Err() != nil {
			break
		}
		k.ping(ctx, ctx, p, key, KeepaliveCRLF)
	}
	clear(k.batch) // drop the keys' zone handles
	clear(k.crlf)
}

// take moves the pings due at now into batch (in auto mode, those of
// flows that fell back to CRLF into crlf) and reschedules them.
func (k *Keepaliver) take(at time.Time, batch, crlf []FlowKey) ([]FlowKey, []FlowKey) {
	now := at.UnixNano()
	k.mu.Lock()
	defer k.mu.Unlock()
	for len(k.due) > 0 && k.due[0].due <= now {
		e := &k.due[0]
		it := e.it
		if it.gone {
			heap.Pop(&k.due)
			k.stale--
			continue
		}
		j := k.jitter(it.key)
		key := k.ids.key(it.key)
		lastIn, prevPing, ping := k.flows.pingDue(key, it.ref, now, j)
		if !ping {
			// Traffic since the last ping (other than the answer to
			// it) refreshed the binding: count the interval from there.
			it.ref, e.due = lastIn, lastIn+j
			heap.Fix(&k.due, 0)
			continue
		}
		if k.cap != nil && !k.cap.Allow(at) {
			// Over the cap: this ping and the rest stay due. Asking
			// only now spends the cap on pings alone, not on flows
			// that traffic postponed.
			k.flows.unping(key, now, prevPing)
			break
		}
		it.ref, e.due = now, now+j
		heap.Fix(&k.due, 0)
		if k.cfg.Mode == KeepaliveAuto && it.kind == kaCRLF {
			crlf = append(crlf, key)
		} else {
			batch = append(batch, key)
		}
	}
	return batch, crlf
}

// sendOptions pings every key in batch with up to pingWorkers at once,
// each with its own deadline: an endpoint that never answers holds up one
// worker for pingTimeout, not the tick, and every taken key is pinged.
func (k *Keepaliver) sendOptions(ctx context.Context, p Pinger, batch []FlowKey) {
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
				k.ping(ctx, pctx, p, batch[i], KeepaliveOptions)
				cancel()
			}
		})
	}
	wg.Wait()
}

// ping sends one ping with the context pctx; ctx is the tick's, whose
// end is shutdown, not the flow's fault. The ping was recorded as sent
// when it was taken; an OPTIONS ping records it again as it leaves, for
// an accurate RTT.
func (k *Keepaliver) ping(ctx, pctx context.Context, p Pinger, key FlowKey, mode KeepaliveMode) {
	if mode == KeepaliveOptions {
		k.flows.PingSent(key)
	}
	err := p.Ping(pctx, key, mode)
	auto := k.cfg.Mode == KeepaliveAuto && mode == KeepaliveOptions
	switch {
	case err == nil:
		if mode == KeepaliveOptions {
			k.flows.Pong(key)
		}
		if auto {
			k.learned(key, true)
		}
	case ctx.Err() != nil:
		// Shutting down: not the flow's fault.
	case auto && k.learned(key, false):
		// Still finding out whether it answers: no miss.
	case k.flows.Missed(key, k.cfg.Failures):
		k.Unwatch(key)
	}
}

// learned records, in auto mode, whether key's endpoint answered an
// OPTIONS. It reports whether a miss was part of the probing (the flow
// never answered: after autoProbes of them it falls back to CRLF), so
// that it does not count against the flow.
func (k *Keepaliver) learned(key FlowKey, answered bool) (probing bool) {
	k.mu.Lock()
	var it *kaItem
	if id, ok := k.ids.pack(key, false); ok {
		it = k.items[id]
	}
	var now KeepaliveMode
	switch {
	case it == nil:
	case answered && it.kind != kaOptions:
		it.kind, now = kaOptions, KeepaliveOptions
	case !answered && it.kind == kaUnknown:
		probing = true
		if it.probed++; it.probed >= autoProbes {
			it.kind, now = kaCRLF, KeepaliveCRLF
		}
	}
	k.mu.Unlock()
	if now != "" {
		k.flows.SetKeepalive(key, now)
	}
	return probing
}

// SetConfig applies cfg and the rate cap (nil: uncapped) from the next
// Tick on. A shorter interval brings every later ping forward to within
// the new one (it may have been shortened for NATs that forget sooner);
// a longer one applies from each flow's next ping. Turned off, it
// forgets every watched flow; turned back on, flows must be watched
// again. An invalid cfg changes nothing.
func (k *Keepaliver) SetConfig(cfg KeepaliveConfig, cap RateCap) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	k.tick.Lock() // Tick and its pings read cfg under this lock
	defer k.tick.Unlock()
	k.mu.Lock()
	defer k.mu.Unlock()
	shorter := cfg.Interval < k.cfg.Interval
	k.cfg, k.cap = cfg, cap
	if shorter {
		now := k.now().UnixNano()
		for i := range k.due {
			k.due[i].due = min(k.due[i].due, now+k.jitter(k.due[i].it.key))
		}
		heap.Init(&k.due)
	}
	if cfg.Mode == KeepaliveOff {
		clear(k.items)
		clear(k.due)
		k.due, k.stale = k.due[:0], 0
	}
	return nil
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
