package ratelimit

import (
	"testing"
	"time"
)

// answer takes and gives back n slots, as n requests the core answered.
func answer(t *testing.T, l *Limiter, n int) {
	t.Helper()
	for i := range n {
		release, ok := l.Inflight()
		if !ok {
			t.Fatalf("slot %d refused with none taken", i)
		}
		release()
	}
}

// fill takes slots until one is refused and says how many it got; it
// gives them back.
func fill(l *Limiter) int {
	var taken []func()
	for {
		release, ok := l.Inflight()
		if !ok {
			break
		}
		taken = append(taken, release)
	}
	for _, release := range taken {
		release()
	}
	return len(taken)
}

// second is a second in which the core answers n requests, ended by the
// maintenance loop's look; it says how many slots are then to be had.
func second(t *testing.T, l *Limiter, c *clock, n int) int {
	t.Helper()
	answer(t, l, n)
	c.Advance(time.Second)
	l.Sweep()
	return fill(l)
}

func TestInflightFollowsTheCorePace(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) { c.MaxInflight, c.InflightTime = 10, 500*time.Millisecond }, Events{})
	l.Sweep() // the first look only starts the count
	if n := fill(l); n != 10 {
		t.Fatalf("before any pace: %d slots, want max_inflight 10", n)
	}
	// The fill's own 10 slots were given back too: 10 + 50 answers in 1 s.
	if n := second(t, l, c, 50); n != 30 {
		t.Fatalf("at 60 answers/s and inflight_time 0.5 s: %d slots, want 30", n)
	}
	if s := l.Stats(); s.InflightLimit != 30 || s.Inflight != 0 {
		t.Fatalf("stats %+v", s)
	}

	// The best second counts: a stall of the core does not lower the cap
	// while it is one of the last paceSeconds looks, and then it goes
	// back to max_inflight. (The fill's 30 answers made the second after
	// it 30/s: a cap of 15.)
	for i := range paceSeconds - 1 {
		c.Advance(time.Second)
		l.Sweep()
		if n := l.Stats().InflightLimit; n != 30 {
			t.Fatalf("%d s into a stall: limit %d, want 30", i+1, n)
		}
	}
	c.Advance(time.Second)
	l.Sweep()
	if n := l.Stats().InflightLimit; n != 15 {
		t.Fatalf("once the best second is gone: limit %d, want 15", n)
	}
	c.Advance(time.Second)
	l.Sweep()
	if n := fill(l); n != 10 {
		t.Fatalf("after the stall: %d slots, want 10", n)
	}
}

func TestInflightPaceBounded(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) { c.MaxInflight = 10 }, Events{})
	l.Sweep()
	// A core answering 5,000/s: 5,000 allowed by the pace.
	if n := second(t, l, c, 5000); n != 100 {
		t.Fatalf("%d slots, want ten times max_inflight", n)
	}
	// A reload to a smaller max_inflight lowers the bound at once.
	cfg := DefaultConfig()
	cfg.MaxInflight = 2
	if err := l.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if n := fill(l); n != 20 {
		t.Fatalf("after the reload: %d slots, want 20", n)
	}
}

func TestInflightTimeZeroKeepsTheFixedCap(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) { c.MaxInflight, c.InflightTime = 10, 0 }, Events{})
	l.Sweep()
	if n := second(t, l, c, 1000); n != 10 {
		t.Fatalf("%d slots, want max_inflight 10", n)
	}
}

// TestInflightPaceIsTheCoresNotTheSenders: requests refused for the cap
// are not answers; a flood held at the cap does not raise it.
func TestInflightPaceIsTheCoresNotTheSenders(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) { c.MaxInflight = 10 }, Events{})
	l.Sweep()
	var held []func()
	for range 10 { // a core that answers nothing
		release, _ := l.Inflight()
		held = append(held, release)
	}
	for range 10 {
		for range 1000 {
			if _, ok := l.Inflight(); ok {
				t.Fatal("over the cap")
			}
		}
		c.Advance(time.Second)
		l.Sweep()
	}
	if s := l.Stats(); s.InflightLimit != 10 {
		t.Fatalf("limit %d after a flood at a silent core, want 10", s.InflightLimit)
	}
	for _, release := range held {
		release()
	}
}

// TestInflightPaceBetweenLooks: a rate that rises between two looks of
// the maintenance loop is followed at once, not a second later.
func TestInflightPaceBetweenLooks(t *testing.T) {
	l, c := newLimiter(t, func(c *Config) { c.MaxInflight = 10 }, Events{})
	l.Sweep()
	answer(t, l, 50)
	c.Advance(50 * time.Millisecond)
	if n := fill(l); n != 10 {
		t.Fatalf("50 ms after the look (too soon to tell): %d slots, want 10", n)
	}
	// 60 answers (the fill's 10 too) in 0.5 s: 120/s, bounded to 100.
	c.Advance(450 * time.Millisecond)
	if n := fill(l); n != 100 {
		t.Fatalf("half a second at 120/s: %d slots, want 100", n)
	}
	if s := l.Stats(); s.InflightLimit != 10 {
		t.Fatalf("the limit as of the last look moved before the next: %d", s.InflightLimit)
	}
}
