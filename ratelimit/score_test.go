package ratelimit

import (
	"testing"
	"time"
)

// N failed authentications in quick succession ban on the N-th, not
// after it; N-1 do not; failures spread thinner than N per window never do.
func TestAuthFailuresBanOnTheNth(t *testing.T) {
	for _, tc := range []struct {
		name    string
		n       int
		spacing time.Duration
		banAt   int // 0: never within 3n failures
	}{
		{"burst", 5, 100 * time.Millisecond, 5},
		{"one-a-second", 5, time.Second, 5},
		{"slower than 5 a minute", 5, 13 * time.Second, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, c := newLimiter(t, func(cfg *Config) { cfg.AuthFailures = tc.n; cfg.AORAuthFailures = 1000 }, Events{})
			src := addr("198.51.100.9")
			got := 0
			for i := 1; i <= 3*tc.n; i++ {
				l.AuthFailure(src, "sip:alice@example.com")
				if l.Banned(src) {
					got = i
					break
				}
				c.Advance(tc.spacing)
			}
			if got != tc.banAt {
				t.Fatalf("banned after %d failures, want %d", got, tc.banAt)
			}
		})
	}
}
