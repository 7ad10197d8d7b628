package ratelimit

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// clock is the injected clock: tests move it, nothing sleeps.
type clock struct{ ns atomic.Int64 }

func (c *clock) Now() time.Time          { return t0.Add(time.Duration(c.ns.Load())) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// recorder collects events.
type recorder struct {
	mu        sync.Mutex
	decisions []string
	bans      []Ban
	unbans    []Ban
}

func (r *recorder) events() Events {
	return Events{
		OnDecision: func(d Decision, why Reason, src netip.Addr) {
			r.mu.Lock()
			r.decisions = append(r.decisions, d.String()+" "+why.String()+" "+src.String())
			r.mu.Unlock()
		},
		OnBan: func(b Ban) {
			r.mu.Lock()
			r.bans = append(r.bans, b)
			r.mu.Unlock()
		},
		OnUnban: func(b Ban) {
			r.mu.Lock()
			r.unbans = append(r.unbans, b)
			r.mu.Unlock()
		},
	}
}

func (r *recorder) Bans() []Ban {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Ban(nil), r.bans...)
}

func (r *recorder) Unbans() []Ban {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Ban(nil), r.unbans...)
}

// newLimiter builds a Limiter on a fresh clock from DefaultConfig as
// changed by edit (may be nil).
func newLimiter(t testing.TB, edit func(*Config), ev Events) (*Limiter, *clock) {
	t.Helper()
	cfg := DefaultConfig()
	if edit != nil {
		edit(&cfg)
	}
	c := new(clock)
	l, err := New(cfg, c.Now, ev)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return l, c
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// nthAddr is a distinct IPv4 address in 100.0.0.0/8 for each i < 2^24.
func nthAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{100, byte(i >> 16), byte(i >> 8), byte(i)})
}
