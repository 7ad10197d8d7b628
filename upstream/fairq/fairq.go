// Package fairq caps the rate of requests toward one destination and
// shares it fairly between their sources: each waiting source is served
// in turn, so one busy source (a flood, an office rebooting) waits for
// its own requests and not for everyone's. Waiting is bounded in time
// and in count; what cannot be served in time is refused at once.
package fairq

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Queue admits at most rate requests per second. Safe for concurrent use.
type Queue struct {
	lim     *rate.Limiter
	maxWait time.Duration
	max     int // waiters held at most: what the rate serves within maxWait

	mu      sync.Mutex
	waiting map[string][]*waiter // by source, oldest first
	ring    []string             // sources with waiters, in serving order
	n       int                  // waiters in all
	serving bool                 // the server goroutine runs
}

type waiter struct {
	ready chan bool // true: admitted; false: pushed out by a fairer claim
	done  bool      // answered (under mu)
}

// New is a queue of perSecond requests a second (bursts of a tenth of a
// second's worth), where a request waits at most maxWait.
func New(perSecond int, maxWait time.Duration) *Queue {
	burst := max(1, perSecond/10)
	return &Queue{lim: rate.NewLimiter(rate.Limit(perSecond), burst), maxWait: maxWait,
		max: max(1, int(float64(perSecond)*maxWait.Seconds())), waiting: make(map[string][]*waiter)}
}

// Take waits for a turn of source's and reports whether it got one
// within the queue's wait: false means the destination is over its
// rate, and the request should not go there now.
func (q *Queue) Take(ctx context.Context, source string) bool {
	q.mu.Lock()
	if q.n == 0 && q.lim.Allow() {
		q.mu.Unlock()
		return true
	}
	if q.n >= q.max && !q.pushOut(source) {
		q.mu.Unlock()
		return false
	}
	w := &waiter{ready: make(chan bool, 1)}
	if len(q.waiting[source]) == 0 {
		q.ring = append(q.ring, source)
	}
	q.waiting[source] = append(q.waiting[source], w)
	q.n++
	if !q.serving {
		q.serving = true
		go q.serve()
	}
	q.mu.Unlock()

	// The queue holds only what its rate serves within maxWait, so the
	// last turn it holds comes right at maxWait: a grace keeps the
	// scheduler's jitter between that turn and this timer from turning a
	// promised turn into a refusal.
	t := time.NewTimer(q.maxWait + q.maxWait/10)
	defer t.Stop()
	select {
	case ok := <-w.ready:
		return ok
	case <-t.C:
	case <-ctx.Done():
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if w.done { // answered meanwhile
		return <-w.ready
	}
	q.remove(source, w)
	return false
}

// pushOut makes room for source when the queue is full: the newest
// waiter of the source holding the most is refused, if that source holds
// more than source would after joining. Under mu.
func (q *Queue) pushOut(source string) bool {
	mine := len(q.waiting[source]) + 1
	var worst string
	for _, s := range q.ring {
		if len(q.waiting[s]) > len(q.waiting[worst]) {
			worst = s
		}
	}
	if len(q.waiting[worst]) <= mine {
		return false
	}
	ws := q.waiting[worst]
	w := ws[len(ws)-1]
	q.remove(worst, w)
	w.done = true
	w.ready <- false
	return true
}

// remove takes w off source's line. Under mu.
func (q *Queue) remove(source string, w *waiter) {
	ws := q.waiting[source]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			q.n--
			break
		}
	}
	if len(ws) > 0 {
		q.waiting[source] = ws
		return
	}
	delete(q.waiting, source)
	for i, s := range q.ring {
		if s == source {
			q.ring = append(q.ring[:i], q.ring[i+1:]...)
			break
		}
	}
}

// serve admits the waiters at the queue's rate, one source after the
// other, and ends when none is left.
func (q *Queue) serve() {
	for {
		r := q.lim.Reserve()
		time.Sleep(r.Delay())
		q.mu.Lock()
		if q.n == 0 {
			// Nobody to give this turn to: give it back.
			r.Cancel()
			q.serving = false
			q.mu.Unlock()
			return
		}
		source := q.ring[0]
		w := q.waiting[source][0]
		q.remove(source, w)
		if len(q.waiting[source]) > 0 { // to the back of the line
			q.ring = append(q.ring[1:], source)
		}
		w.done = true
		w.ready <- true
		if q.n == 0 { // no turn reserved for nobody
			q.serving = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
	}
}
