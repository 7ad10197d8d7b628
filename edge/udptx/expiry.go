package udptx

import (
	"sync"
	"time"
)

// expiry ends transactions a fixed time after they were answered (Timer
// J on the server side, K on the client side), in the order they were
// answered: one ticker for all of them, where a timer each cost an
// allocation and a goroutine per transaction. A transaction ends up to
// one tick late.
type expiry struct {
	after time.Duration
	mu    sync.Mutex
	q     []expiring // due in order; q[head:] are waiting
	head  int
	// The ticker runs from the first add until close.
	running, closed bool
	stop, done      chan struct{}
}

type expiring struct {
	at time.Time
	tx interface{ expire() }
}

func newExpiry(after time.Duration) *expiry {
	return &expiry{after: after, stop: make(chan struct{}), done: make(chan struct{})}
}

// add schedules tx to expire after e.after from now; after close,
// nothing is.
func (e *expiry) add(tx interface{ expire() }) {
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

func (e *expiry) run() {
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
				due[i].tx.expire()
				due[i] = expiring{}
			}
		}
	}
}

// pop appends the entries due at now to dst and removes them.
func (e *expiry) pop(now time.Time, dst []expiring) []expiring {
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

// close stops the ticker; what is waiting is dropped with the table.
func (e *expiry) close() {
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
