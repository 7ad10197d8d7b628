package expiry

import (
	"sync/atomic"
	"testing"
	"time"
)

type counted struct{ n *atomic.Int64 }

func (c counted) Expire() { c.n.Add(1) }

// Entries come due in the order added, and the queue reuses its space:
// a steady stream keeps it as long as one period's worth.
func TestExpiryOrderAndSpace(t *testing.T) {
	e := New(time.Hour) // the ticker never fires: pop is driven by hand
	defer e.Close()
	var n atomic.Int64
	t0 := time.Now()
	for i := range 1000 {
		e.Add(counted{&n})
		if i%10 == 9 {
			// Everything added up to now comes due an hour on.
			due := e.pop(t0.Add(2*time.Hour), nil)
			for _, d := range due {
				d.tx.Expire()
			}
		}
	}
	if n.Load() != 1000 {
		t.Fatalf("%d expired, want 1000", n.Load())
	}
	if c := cap(e.q); c > 64 {
		t.Fatalf("the queue grew to %d for 10 waiting at a time", c)
	}
	if due := e.pop(time.Now(), nil); len(due) != 0 {
		t.Fatalf("%d due before their time", len(due))
	}
}

func TestExpiryTicks(t *testing.T) {
	e := New(20 * time.Millisecond)
	var n atomic.Int64
	e.Add(counted{&n})
	deadline := time.Now().Add(2 * time.Second)
	for n.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("never expired")
		}
		time.Sleep(5 * time.Millisecond) // polling a counter with a deadline
	}
	e.Close()
	e.Close() // twice is fine
	e.Add(counted{&n})
}
