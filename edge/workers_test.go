package edge

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A handler runs to its end before do returns, however many run at once
// and whether a worker waited for it or a new one started.
func TestWorkersRunEveryJob(t *testing.T) {
	w := newWorkers(time.Minute)
	var ran atomic.Int64
	var wg sync.WaitGroup
	release := make(chan struct{})
	const n = 200
	for i := range n {
		wg.Go(func() {
			done := false
			w.do(func() {
				if i%2 == 0 {
					<-release // half of them hold their worker for a while
				}
				ran.Add(1)
				done = true
			})
			if !done {
				t.Error("do returned before its handler ended")
			}
		})
	}
	close(release)
	wg.Wait()
	if got := ran.Load(); got != n {
		t.Fatalf("%d handlers ran, want %d", got, n)
	}
	// Idle workers take the next jobs: a second wave reuses them.
	for range n {
		w.do(func() { ran.Add(1) })
	}
	if got := ran.Load(); got != 2*n {
		t.Fatalf("%d handlers ran, want %d", got, 2*n)
	}
}
