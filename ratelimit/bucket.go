package ratelimit

import (
	"encoding/binary"
	"math"
	"net/netip"
	"sync/atomic"
	"time"
)

// Every budget is GCRA (virtual scheduling): one int64 per limit, the
// "theoretical arrival time" (tat) in nanoseconds since an epoch (the
// Limiter's, or the Unix epoch for a Rate). A bucket whose tat is not after
// now is full, which is also its zero value, so an idle bucket can be
// dropped without losing anything. That holds for the limits checked
// before parsing (datagrams, bytes, connections) and the reply budget,
// which with the two scores are the six tats of a source's 80-byte entry;
// for the post-parse limits (post.go); and for Rate. Compared with
// x/time/rate (80 bytes and a mutex per Limiter), a limit is 8 bytes under
// the lock of what holds it, which matters on the per-datagram path and
// for the max_sources entries a spoofed flood fills. Bindings scale a
// budget by a factor f given per call: each unit costs step/f while the
// tolerance stays burst*step, so the rate and burst grow by f, a full
// bucket refills in the same time, and a change of f keeps the fill level
// as a fraction of the burst (the debt, tat-now, is unchanged) with
// nothing to rebuild. rate_test.go checks the decisions against
// x/time/rate.

// maxDebt bounds a bucket's tolerance and the cost of one charge, so that
// tats cannot overflow whatever the configured rate and burst.
const maxDebt = float64(maxBan)

// bucket holds the constants of one budget.
type bucket struct {
	step float64 // ns per unit at factor 1 (1/rate)
	tol  int64   // debt allowed, ns: burst units at factor 1
}

// newBucket is a budget of burst units refilled at rate per second. A
// full bucket always admits one unit (burst >= 1, f >= 1): step and tol
// are clamped together at maxDebt.
func newBucket(rate float64, burst int) bucket {
	step := min(float64(time.Second)/rate, maxDebt)
	return bucket{step: step, tol: int64(min(step*float64(burst), maxDebt))}
}

// next charges n units at factor f (f >= 1 multiplies both rate and burst:
// each unit costs step/f while the tolerance stays burst*step). It returns
// the new tat and whether it is within the burst; the caller commits it.
func (b bucket) next(tat, now int64, n, f float64) (int64, bool) {
	c := b.step * n / f
	if c > maxDebt { // more than any tolerance
		return tat, false
	}
	tat = max(tat, now) + int64(c)
	return tat, tat-now <= b.tol
}

// take charges and commits if within the burst.
func (b bucket) take(tat *int64, now int64, n, f float64) bool {
	t, ok := b.next(*tat, now, n, f)
	if ok {
		*tat = t
	}
	return ok
}

// takeAtomic is take on a shared tat, without a lock.
func (b bucket) takeAtomic(tat *atomic.Int64, now int64, n, f float64) bool {
	for {
		old := tat.Load()
		t, ok := b.next(old, now, n, f)
		if !ok {
			return false
		}
		if tat.CompareAndSwap(old, t) {
			return true
		}
	}
}

// score counts events that decay: limit events within window reach it.
// One event is forgiven every window/limit.
type score struct {
	step float64 // ns per event at factor 1
	tol  int64   // window, ns
}

func newScore(limit int, window time.Duration) score {
	return score{step: float64(window) / float64(limit), tol: int64(window)}
}

// add records an event at factor f (the limit becomes limit*f) and
// reports whether the limit is reached: the score leaks one event per
// window/limit, so a burst of limit events hits on the limit-th (the
// score passes limit-1 events' worth), and a steady rate above limit per
// window hits sooner or later. The score never exceeds the limit, so it
// always decays to zero within one window.
func (s score) add(tat *int64, now int64, f float64) bool {
	step := int64(math.Ceil(s.step / f))
	t := min(max(*tat, now)+step, now+s.tol)
	*tat = t
	return t-now > s.tol-step
}

// count is how many events the score holds at now (at factor f): what
// add reached, for a ban's evidence.
func (s score) count(tat, now int64, f float64) int32 {
	step := int64(math.Ceil(s.step / f))
	return int32(min((max(tat-now, 0)+step-1)/step, math.MaxInt32))
}

// key identifies a source: an IPv4 address, or the /64 of an IPv6 one.
// It is pointer-free (unlike netip.Addr), so maps of keys are not scanned
// by the garbage collector.
type key struct{ hi, lo uint64 }

// v4Tag marks an IPv4 key as in ::ffff:a.b.c.d; IPv6 keys have lo == 0.
const v4Tag = 0xffff << 32

// keyOf returns the key of a, and a unmapped and without zone. IPv4-mapped
// IPv6 addresses count as IPv4.
func keyOf(a netip.Addr) (key, netip.Addr, bool) {
	a = a.Unmap()
	switch {
	case a.Is4():
		b := a.As4()
		return key{lo: v4Tag | uint64(binary.BigEndian.Uint32(b[:]))}, a, true
	case a.Is6():
		b := a.As16()
		return key{hi: binary.BigEndian.Uint64(b[:8])}, a.WithZone(""), true
	}
	return key{}, a, false
}

// prefix is the key as an address prefix: /32 or /64.
func (k key) prefix() netip.Prefix {
	if k.hi == 0 && k.lo>>32 == 0xffff {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(k.lo))
		return netip.PrefixFrom(netip.AddrFrom4(b), 32)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], k.hi)
	return netip.PrefixFrom(netip.AddrFrom16(b), 64)
}

// prefixKey is the key of a normalised prefix that names exactly one
// source (IPv4 /32, or IPv6 /64 and longer, which widens to the /64).
func prefixKey(p netip.Prefix) (key, bool) {
	a := p.Addr()
	if a.Is4() && p.Bits() == 32 || a.Is6() && p.Bits() >= 64 {
		k, _, ok := keyOf(a)
		return k, ok
	}
	return key{}, false
}

// SourcePrefix is what a source is tracked and banned as: the IPv4 address
// itself (/32), or the /64 holding an IPv6 address. Callers that count
// bindings for SetBindings should count them per SourcePrefix.
func SourcePrefix(a netip.Addr) netip.Prefix {
	k, _, ok := keyOf(a)
	if !ok {
		return netip.Prefix{}
	}
	return k.prefix()
}
