package upstream

import (
	"errors"
	"math"
	"math/rand/v2"
	"time"
)

// ErrNoCore means no core is up: the request is refused at once (503)
// rather than sent where nothing answers.
var ErrNoCore = errors.New("upstream: no core is up")

// Order returns the targets that are up, for a request keyed by key (an
// AOR): the best priority first and, within a priority, by weighted
// rendezvous hashing. The same key lands on the same core while that
// core is up, so refreshes reach the core that holds the binding; when
// it goes down only its keys move, and they move back when it returns.
// Keys spread over a priority's targets in proportion to their weights,
// an overloaded target counting a tenth of its own. The rest of the
// slice is where to fail over to, in turn. Nil when none is up.
//
// The hash is fixed, not seeded per process, so every edge and every
// restart sends a key to the same core.
func (p *Pool) Order(key string) []Target { return p.AppendOrder(nil, key) }

// AppendOrder appends Order(key) to dst and returns the extended slice:
// with a dst of room enough (a buffer a caller keeps), it allocates
// nothing.
func (p *Pool) AppendOrder(dst []Target, key string) []Target {
	s := p.set.Load()
	var buf [8]ranked // a few cores: ranking stays on the stack
	r := buf[:0]
	hk := hashString(key)
	for i := range s.targets {
		if score, up := s.score(i, hk); up {
			r = append(r, ranked{i: i, prio: s.targets[i].Priority, score: score})
		}
	}
	if len(r) == 0 {
		return dst
	}
	// Insertion sort: a handful of elements, and sort.Slice would
	// allocate.
	for j := 1; j < len(r); j++ {
		for k := j; k > 0 && r[k].before(r[k-1]); k-- {
			r[k], r[k-1] = r[k-1], r[k]
		}
	}
	if cap(dst)-len(dst) < len(r) {
		dst = append(make([]Target, 0, len(dst)+len(r)), dst...)
	}
	for _, x := range r {
		dst = append(dst, s.targets[x.i])
	}
	return dst
}

// PickFor is Order(key)'s first target, without allocating. When none
// is up it returns an *Unreachable wrapping ErrNoCore, with a
// RetryAfter jittered ±25% around core.retry_after so refused phones do
// not all come back in the same second.
func (p *Pool) PickFor(key string) (Target, error) {
	s := p.set.Load()
	best := ranked{i: -1}
	hk := hashString(key)
	for i := range s.targets {
		if score, up := s.score(i, hk); up {
			if c := (ranked{i: i, prio: s.targets[i].Priority, score: score}); best.i < 0 || c.before(best) {
				best = c
			}
		}
	}
	if best.i < 0 {
		return Target{}, &Unreachable{RetryAfter: jitter(s.retryAfter, rand.IntN), Err: ErrNoCore}
	}
	return s.targets[best.i], nil
}

type ranked struct {
	i     int // index in the set
	prio  int
	score float64
}

// before is the order of preference: better priority, then higher
// score, then the one listed first (a tie is all but impossible).
func (a ranked) before(b ranked) bool {
	if a.prio != b.prio {
		return a.prio < b.prio
	}
	if a.score != b.score {
		return a.score > b.score
	}
	return a.i < b.i
}

// score is target i's rendezvous score for the key hashed to hk, and
// whether it is up at all. With u uniform in (0,1) from the pair's
// hash, weight / -ln(u) is the highest for a target with probability
// proportional to its weight (weighted highest-random-weight hashing).
func (s *poolSet) score(i int, hk uint64) (float64, bool) {
	st := s.health[i].load()
	if st == StateDown {
		return 0, false
	}
	w := float64(s.targets[i].Weight)
	if st == StateOverloaded {
		w /= overloadShare
	}
	h := mix(hk ^ s.hashes[i])
	u := (float64(h>>11) + 0.5) / (1 << 53) // strictly inside (0,1)
	return w / -math.Log(u), true
}

// hashString is FNV-1a, byte by byte so a string costs no allocation.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix is the SplitMix64 finaliser: FNV alone leaves its low-entropy
// input visible in the high bits, and rendezvous needs every bit of the
// pair's hash to look independent.
func mix(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// jitter is d ±25% in whole seconds (Retry-After has no finer unit), at
// least one; intN is rand.IntN, injected for tests.
func jitter(d time.Duration, intN func(int) int) time.Duration {
	sec := d.Seconds()
	lo := max(1, int(math.Ceil(sec*0.75)))
	hi := max(lo, int(math.Floor(sec*1.25)))
	return time.Duration(lo+intN(hi-lo+1)) * time.Second
}
