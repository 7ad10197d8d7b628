// Package expiry ends things a fixed time after they were added, in the
// order they were added, on one ticker for all of them: where a timer
// each cost an allocation and the runtime's timer heap twice (set and
// stopped) per item. An item ends up to one tick late.
package expiry

import (
	"sync"
	"time"
)

// Queue ends each item a fixed time after it was added. The tick is a
// twentieth of that time, between 10 and 250 ms.
type Queue struct {
	after time.Duration
	mu    sync.Mutex
	q     []expiring // due in order; q[head:] are waiting
	head  int
	// The ticker runs from the first add until close.
	running, closed bool
	stop, done      chan struct{}
}

// Item is what a Queue ends: Expire is called from the Queue's own
// goroutine, one item after the other.
type Item interface{ Expire() }

type expiring struct {
	at time.Time
	tx Item
}

// New is a Queue whose items end after after. Close stops it.
func New(after time.Duration) *Queue {
	return &Queue{after: after, stop: make(chan struct{}), done: make(chan struct{})}
}

// Add schedules tx to expire after the queue's time from now; after
// Close, nothing is.
func (e *Queue) Add(tx Item) {
	at := time.Now().Add(e.after)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	if !e.running {
		e.running = true
		go e.run()
	}
	e.q = append(e.q, expiring{at: at, tx: tx})
}

func (e *Queue) run() {
	defer close(e.done)
	t := time.NewTicker(min(max(e.after/20, 10*time.Millisecond), 250*time.Millisecond))
	defer t.Stop()
	var due []expiring
	for {
		select {
		case <-e.stop:
			return
		case now := <-t.C:
			due = e.pop(now, due[:0])
			for i := range due {
				due[i].tx.Expire()
				due[i] = expiring{}
			}
		}
	}
}

// pop appends the entries due at now to dst and removes them.
func (e *Queue) pop(now time.Time, dst []expiring) []expiring {
	e.mu.Lock()
	defer e.mu.Unlock()
	i := e.head
	for i < len(e.q) && !e.q[i].at.After(now) {
		dst = append(dst, e.q[i])
		e.q[i] = expiring{}
		i++
	}
	e.head = i
	// Reuse the front of the slice once half of it is spent.
	if e.head > len(e.q)/2 {
		n := copy(e.q, e.q[e.head:])
		clear(e.q[n:])
		e.q, e.head = e.q[:n], 0
	}
	return dst
}

// Len is how many items wait.
func (e *Queue) Len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.q) - e.head
}

// Close stops the ticker; what is waiting never expires.
func (e *Queue) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	running := e.running
	e.mu.Unlock()
	close(e.stop)
	if running {
		<-e.done
	}
}
