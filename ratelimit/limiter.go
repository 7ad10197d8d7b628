// Package ratelimit protects the edge from abusive sources: per-source
// and per-AOR rate limits, bans with escalation, auth-failure, scanner and
// malformed-message scoring, budgets that grow with the registered
// bindings behind a NAT, and memory bounded whatever the traffic.
//
// It opens no sockets. The socket wrappers call Packet (each UDP datagram)
// and Accept (each connection) before parsing; the SIP stage chain calls
// Request, Inflight, AuthFailure and Malformed after. The caller says
// whether a source is proven (it receives what is sent to it: a
// connection, a registered UDP flow, an echoed nonce): over UDP anyone can
// spoof a victim's address, so only proven sources are ever banned. Time
// comes from an injected clock; the caller runs Sweep on a ticker.
package ratelimit

import (
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	numShards  = 64 // power of two
	shardShift = 64 - 6

	// methodSlots is the per-source method budgets: slot 0 for methods not
	// named in Config.Methods, then one per named method.
	methodSlots = 6

	// floodBreak: over-limit events closer together than this extend one
	// flood streak; a longer pause ends it.
	floodBreak = int64(time.Second)
)

// Events are optional callbacks, for metrics, logs and tests. They are
// called synchronously, without any lock held, so they may call back into
// the Limiter; they must be quick (OnDecision runs for every datagram
// dropped in a flood).
type Events struct {
	// OnDecision is called for every Reject and Drop (Allow is only
	// counted, see Stats). src is the address given, or invalid for
	// Inflight.
	OnDecision func(d Decision, r Reason, src netip.Addr)
	// OnBan is called when a ban starts or is extended, automatically or
	// by Ban. The Ban is a log line's worth: see its LogValue.
	OnBan func(Ban)
	// OnUnban is called when a ban is lifted by Unban (then Until is
	// still ahead) or, from Sweep, once it has expired. Each ban reported
	// to OnBan is reported here once, unless it is extended meanwhile.
	OnUnban func(Ban)
}

// Ban is a banned source or prefix, and why.
type Ban struct {
	Addr   netip.Prefix // a source (/32 or IPv6 /64) or a wider prefix
	Reason Reason
	Since  time.Time // when the ban started (an extension keeps it)
	Until  time.Time // when it ends
	// Count is how many times this prefix has been banned, this one
	// included, as remembered for ban_forget: automatic bans last
	// ban_time * 2^(Count-1), at most ban_max.
	Count int
	// Manual: banned by an operator (Ban), with the Reason given; the
	// evidence below is then zero.
	Manual bool

	// The evidence of an automatic ban: Events offending events within
	// Window.
	//   - ReasonFlood: over-limit events in a streak without a pause of a
	//     second, Window the streak's length, Over the limit the last one
	//     broke (packet_rate, byte_rate, conn_rate, conn_count,
	//     source_rate or method_rate).
	//   - ReasonScanner: 1, the request with the scanner's User-Agent.
	//   - ReasonAuthFailures: the source's failed authentications within
	//     auth_window; ReasonAORAuthFailures: those on the AOR the source
	//     failed on, from any sources.
	//   - ReasonMalformed: malformed messages within malformed_window.
	// The failure and malformed counts are decaying (README), so Events is
	// how many of them the score still held.
	Events int
	Window time.Duration
	Over   Reason
}

// Duration is how long the ban lasts in all, from Since to Until.
func (b Ban) Duration() time.Duration { return b.Until.Sub(b.Since) }

// LogValue makes a Ban one slog group with stable keys: src (the prefix),
// reason, until, for (Duration), count; then manual, or the evidence:
// events, window and, for a flood, over.
func (b Ban) LogValue() slog.Value {
	attrs := make([]slog.Attr, 0, 8)
	attrs = append(attrs,
		slog.String("src", b.Addr.String()),
		slog.String("reason", b.Reason.String()),
		slog.Time("until", b.Until),
		slog.Duration("for", b.Duration()),
		slog.Int("count", b.Count),
	)
	if b.Manual {
		return slog.GroupValue(append(attrs, slog.Bool("manual", true))...)
	}
	attrs = append(attrs, slog.Int("events", b.Events), slog.Duration("window", b.Window))
	if b.Over != ReasonNone {
		attrs = append(attrs, slog.String("over", b.Over.String()))
	}
	return slog.GroupValue(attrs...)
}

// Option configures New beyond Config.
type Option func(*options)

type options struct {
	rnd rand.Source
}

// WithRand makes RetryAfter's jitter come from src (for reproducible
// tests). The Limiter serialises its calls to src.
func WithRand(src rand.Source) Option { return func(o *options) { o.rnd = src } }

// Limiter decides, per source, what the edge lets through. It is safe for
// concurrent use. Memory is bounded by max_sources, max_aors and max_bans
// (plus sources that hold bindings, which the registrar bounds).
type Limiter struct {
	now   func() time.Time
	epoch time.Time
	ev    Events

	// lim is the config in force (see limits for which copy a call
	// reads); reloadMu serialises Reload.
	lim      atomic.Pointer[limits]
	reloadMu sync.Mutex

	seed    uint64
	aorSeed maphash.Seed
	shards  [numShards]shard
	aors    [numShards]aorShard

	tracked  atomic.Int64 // entries in all shards
	bound    atomic.Int64 // of which hold bindings
	aorCount atomic.Int64
	banRecs  atomic.Int64 // ban records in shards (active or history)

	// The budget shared by untracked sources: lock-free for datagrams,
	// under overMu for connections and requests.
	overPkt, overBytes atomic.Int64
	// The budget of datagrams from unproven sources, all together.
	unprovenTat atomic.Int64
	overMu      sync.Mutex
	overEnt     entry
	overReq     reqLimits
	overLim     *limits // what overEnt and overReq are scaled to

	inflight inflight

	wideMu   sync.Mutex
	wideList []wideBan                 // owned under wideMu
	wide     atomic.Pointer[[]wideBan] // immutable snapshot for readers

	overflowHits, aorOverflow, banOverflow atomic.Uint64

	rndMu sync.Mutex
	rnd   rand.Source
}

// entry is one tracked source. All fields are guarded by its shard's
// mutex. It is pointer-free, so the slab of entries is not scanned by the
// garbage collector; the post-parse buckets, which only sources sending
// parsed requests need, are elsewhere (req).
type entry struct {
	pkt, bytes, conn, reply int64 // bucket tats
	auth, malformed         int64 // score tats
	overSince, lastOver     int64 // current flood streak; 0: none
	overN                   int32 // over-limit events in the streak
	bindings                int32
	conns                   int32
	req                     int32 // 1 + index of its reqLimits in shard.reqs; 0: none yet
}

type shard struct {
	mu   sync.Mutex
	idx  map[key]int32 // into ents
	ents []entry
	free []int32
	bans map[key]banRec
	// reqs holds the post-parse buckets of the entries whose req is set
	// (pointer-free, like ents); free slots, zeroed, are listed in reqFree.
	reqs    []reqLimits
	reqFree []int32
	// lim is the config the tats above are scaled to: Reload changes it
	// and rescales them together.
	lim *limits

	counts [numDecisions][NumReasons]atomic.Uint64
	_      [64]byte // keep neighbouring shards' locks off one cache line
}

type aorShard struct {
	mu  sync.Mutex
	m   map[string]aorEntry
	lim *limits // as shard.lim
	_   [64]byte
}

type aorEntry struct {
	// key is the map key, cloned from the caller's string when inserted:
	// assigning to a map with a string key replaces the stored key, so
	// updates go through this copy and never keep a message buffer alive.
	key      string
	register int64 // bucket tat: 0 (full) until its first REGISTER
	auth     int64 // score tat
}

// New builds a Limiter. now is the clock (nil: time.Now).
func New(cfg Config, now func() time.Time, ev Events, opts ...Option) (*Limiter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if now == nil {
		now = time.Now
	}
	lm := newLimits(cfg)
	l := &Limiter{
		now: now,
		// One second back, so that every reading is > 0: a zero tat is
		// always in the past, and a zero lastOver means "none".
		epoch:   now().Add(-time.Second),
		ev:      ev,
		seed:    rand.Uint64(),
		aorSeed: maphash.MakeSeed(),
		rnd:     o.rnd,
		overLim: lm,
	}
	l.lim.Store(lm)
	for i := range l.shards {
		l.shards[i].idx = make(map[key]int32)
		l.shards[i].bans = make(map[key]banRec)
		l.shards[i].lim = lm
		l.aors[i].m = make(map[string]aorEntry)
		l.aors[i].lim = lm
	}
	return l, nil
}

func (l *Limiter) nowNS() int64 { return int64(l.now().Sub(l.epoch)) }

func (l *Limiter) toTime(ns int64) time.Time { return l.epoch.Add(time.Duration(ns)) }

func (l *Limiter) shardOf(k key) *shard {
	h := (k.hi ^ l.seed) * 0x9e3779b97f4a7c15
	h = (h ^ k.lo) * 0xbf58476d1ce4e5b9
	return &l.shards[h>>shardShift]
}

func (l *Limiter) aorShardOf(aor string) *aorShard {
	return &l.aors[maphash.String(l.aorSeed, aor)>>shardShift]
}

// lookup modes.
const (
	find        = iota // never insert
	insert             // insert unless max_sources is reached
	insertBound        // insert whatever the count (the source holds bindings)
)

// lookup returns k's entry, inserting it as mode says. nil means not
// tracked: the caller falls back to the overflow budget (or does nothing).
// sh.mu must be held.
func (l *Limiter) lookup(sh *shard, k key, mode int) *entry {
	if i, ok := sh.idx[k]; ok {
		return &sh.ents[i]
	}
	switch mode {
	case find:
		return nil
	case insert:
		// Read first: at the cap (a spoofed flood), every caller takes
		// this branch, and a read-only check keeps the counter's cache
		// line shared between cores.
		limit := int64(sh.lim.cfg.MaxSources)
		if l.tracked.Load()-l.bound.Load() >= limit {
			l.overflowHits.Add(1)
			return nil
		}
		if l.tracked.Add(1)-l.bound.Load() > limit {
			l.tracked.Add(-1)
			l.overflowHits.Add(1)
			return nil
		}
	default:
		l.tracked.Add(1)
	}
	var i int32
	if n := len(sh.free); n > 0 {
		i = sh.free[n-1]
		sh.free = sh.free[:n-1]
		sh.ents[i] = entry{}
	} else {
		i = int32(len(sh.ents))
		sh.ents = append(sh.ents, entry{})
	}
	sh.idx[k] = i
	return &sh.ents[i]
}

// count records a decision in sh's counters and reports it to OnDecision.
func (l *Limiter) count(sh *shard, d Decision, r Reason, src netip.Addr) {
	sh.counts[d][r].Add(1)
	if d != Allow && l.ev.OnDecision != nil {
		l.ev.OnDecision(d, r, src)
	}
}

func (l *Limiter) emitBan(b Ban) {
	if l.ev.OnBan != nil {
		l.ev.OnBan(b)
	}
}

func noop() {}
