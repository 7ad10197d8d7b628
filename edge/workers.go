package edge

import (
	"sync"
	"time"
)

// workers run request handlers on goroutines that live on between
// requests. sipgo starts a new goroutine for every request it hands
// over, and the edge's chain below it (stages, registrar, relay, sipgo's
// client transaction) is deep enough that each new goroutine grew and
// copied its stack several times: a tenth of the CPU a REGISTER cost.
// A worker's stack has grown already; sipgo's goroutine only waits.
type workers struct {
	jobs    chan *job
	idle    time.Duration // a worker without work this long ends
	pool    sync.Pool     // *job, reused
	quit    chan struct{} // closed: workers end after their job
	running sync.WaitGroup
}

type job struct {
	run  func()
	done chan struct{} // nil: nobody waits (submit)
}

func newWorkers(idle time.Duration) *workers {
	w := &workers{jobs: make(chan *job), idle: idle, quit: make(chan struct{})}
	w.pool.New = func() any { return &job{done: make(chan struct{}, 1)} }
	return w
}

// do runs f on a worker and returns when f has. A panic in f is f's own
// to recover: it would end the process, not the request.
func (w *workers) do(f func()) {
	j := w.pool.Get().(*job)
	j.run = f
	select {
	case w.jobs <- j: // a worker was waiting
	default:
		w.running.Go(func() { w.work(j) })
	}
	<-j.done
	j.run = nil
	w.pool.Put(j)
}

// submit runs f on a worker and returns at once: for the edge's own
// read loops, which must go back to reading.
func (w *workers) submit(f func()) {
	j := &job{run: f}
	select {
	case w.jobs <- j:
	default:
		w.running.Go(func() { w.work(j) })
	}
}

func (w *workers) work(j *job) {
	t := time.NewTimer(w.idle)
	defer t.Stop()
	for {
		j.run()
		if j.done != nil {
			j.done <- struct{}{}
		}
		t.Reset(w.idle)
		select {
		case j = <-w.jobs:
		case <-t.C:
			return
		case <-w.quit:
			return
		}
	}
}

// close ends the workers once their jobs are done; wait waits for that.
func (w *workers) close() { close(w.quit) }
func (w *workers) wait()  { w.running.Wait() }
