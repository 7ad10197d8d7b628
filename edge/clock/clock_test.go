package clock

import (
	"testing"
	"time"
)

func TestFakeTickerAndTimer(t *testing.T) {
	start := time.Unix(1000, 0)
	c := NewFake(start)
	tk := c.NewTicker(time.Second)
	fired := make(chan time.Time, 1)
	c.AfterFunc(1500*time.Millisecond, func() { fired <- c.Now() })
	stopped := c.AfterFunc(time.Second, func() { t.Error("stopped timer fired") })
	if !stopped.Stop() {
		t.Fatal("Stop of a pending timer reported false")
	}
	c.Advance(time.Second)
	if got := <-tk.C(); !got.Equal(start.Add(time.Second)) {
		t.Fatalf("tick at %v", got)
	}
	c.Advance(time.Second)
	select {
	case at := <-fired:
		if at.Before(start.Add(1500 * time.Millisecond)) {
			t.Fatalf("timer fired at %v", at)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("timer did not fire")
	}
	if got := <-tk.C(); !got.Equal(start.Add(2 * time.Second)) {
		t.Fatalf("second tick at %v", got)
	}
	// A receiver that falls behind loses ticks, as with time.Ticker.
	c.Advance(5 * time.Second)
	if got := <-tk.C(); !got.Equal(start.Add(3 * time.Second)) {
		t.Fatalf("kept tick at %v", got)
	}
	select {
	case got := <-tk.C():
		t.Fatalf("extra tick %v", got)
	default:
	}
	tk.Stop()
	c.Advance(time.Minute)
	select {
	case got := <-tk.C():
		t.Fatalf("tick after Stop: %v", got)
	default:
	}
	if !c.Now().Equal(start.Add(67 * time.Second)) {
		t.Fatalf("now = %v", c.Now())
	}
}
