package fairq

import (
	"context"
	"sync"
	"testing"
	"time"
)

// A source that floods the queue waits for its own requests: another
// source's few are served in turn, and the flood is refused beyond what
// the rate serves within the wait.
func TestFairShare(t *testing.T) {
	q := New(50, time.Second) // holds 50 waiters
	ctx := context.Background()
	for q.lim.Allow() { // spend the burst: everyone waits from here
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int{}
	take := func(src string) {
		defer wg.Done()
		if q.Take(ctx, src) {
			mu.Lock()
			got[src]++
			mu.Unlock()
		}
	}
	for range 200 {
		wg.Add(1)
		go take("flood")
	}
	// Wait until the flood fills the queue, then the office comes.
	deadline := time.Now().Add(5 * time.Second)
	for {
		q.mu.Lock()
		n := q.n
		q.mu.Unlock()
		if n >= q.max || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	for range 10 {
		wg.Add(1)
		go take("office")
	}
	wg.Wait()
	if got["office"] != 10 {
		t.Errorf("office got %d of 10 turns beside a flood (flood got %d)", got["office"], got["flood"])
	}
	if got["flood"] > 60 {
		t.Errorf("flood got %d turns in about a second at 50/s", got["flood"])
	}
	t.Logf("turns: %v", got)
}

// Under the rate nobody waits.
func TestUnderRate(t *testing.T) {
	q := New(1000, time.Second)
	for range 50 {
		if !q.Take(context.Background(), "a") {
			t.Fatal("refused under the rate")
		}
	}
}

// A cancelled request leaves the line.
func TestCancel(t *testing.T) {
	q := New(1, 10*time.Second)
	for q.lim.Allow() {
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool)
	go func() { done <- q.Take(ctx, "a") }()
	for {
		q.mu.Lock()
		n := q.n
		q.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if <-done {
		t.Fatal("a cancelled request was admitted")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n != 0 || len(q.ring) != 0 || len(q.waiting) != 0 {
		t.Fatalf("left behind: n=%d ring=%v", q.n, q.ring)
	}
}
