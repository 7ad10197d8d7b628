package admin

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/audit"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestFeedKeepsTheLastLostAndAlerts(t *testing.T) {
	f := NewFeed(nil)
	src := netip.MustParseAddrPort("192.0.2.7:5060")
	for i := range 250 {
		f.Emit(audit.Event{Kind: audit.Expire, AOR: fmt.Sprintf("sip:%d@example.com", i), Source: src, Transport: "UDP"})
		f.Emit(audit.Event{Kind: audit.Register, AOR: "sip:other@example.com"}) // not a loss
	}
	for i := range 130 {
		f.Emit(audit.Event{Kind: audit.Alert, Severity: slog.LevelWarn, Reason: "source_jump", Detail: fmt.Sprint(i)})
	}
	s := f.summary()
	if len(s.Lost) != maxLost || s.Lost[0].AOR != "sip:249@example.com" || s.Lost[maxLost-1].AOR != "sip:50@example.com" {
		t.Fatalf("lost: %d, first %+v, last %+v", len(s.Lost), s.Lost[0], s.Lost[len(s.Lost)-1])
	}
	if l := s.Lost[0]; l.Source != "192.0.2.7:5060" || l.Transport != "UDP" || l.Kind != "expire" || l.Cause == "" || l.Time.IsZero() {
		t.Errorf("lost device: %+v", l)
	}
	if len(s.Alerts) != maxAlerts || s.Alerts[0].Detail != "129" || s.Alerts[maxAlerts-1].Detail != "30" {
		t.Fatalf("alerts: %d, first %+v", len(s.Alerts), s.Alerts[0])
	}
	if a := s.Alerts[0]; a.Type != "source_jump" || a.Severity != "WARN" {
		t.Errorf("alert: %+v", a)
	}

	// Each kind of loss says why.
	f = NewFeed(nil)
	var aors []string
	for i := range 1000 { // a trunk's flow: its record keeps a few AORs
		aors = append(aors, fmt.Sprintf("sip:%d@x", i))
	}
	f.Emit(audit.Event{Kind: audit.FlowDead, Reason: "keepalive timeout", AOR: "sip:0@x", Contacts: aors, Count: len(aors)})
	f.Emit(audit.Event{Kind: audit.Unregister, AOR: "sip:c@x"})
	s = f.summary()
	if len(s.Lost) != 2 || s.Lost[1].Cause != "flow dead: keepalive timeout" || len(s.Lost[1].AORs) != maxLostAORs || s.Lost[1].Count != 1000 ||
		s.Lost[0].Kind != "unregister" || s.Lost[0].Cause == "" {
		t.Errorf("lost: %+v", s.Lost)
	}
}

func TestFeedCountsPerMinute(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 3, 1, 10, 0, 30, 0, time.UTC)}
	f := NewFeed(clk.now)
	emit := func(n int, k audit.Kind) {
		for range n {
			f.Emit(audit.Event{Kind: k})
		}
	}
	emit(3, audit.Register)
	emit(2, audit.Refresh)
	emit(1, audit.Rejected)
	emit(1, audit.AuthFailure)
	emit(4, audit.Challenged) // neither
	clk.add(time.Minute)
	emit(1, audit.Register)

	s := f.summary()
	if len(s.Minutes) != minutes {
		t.Fatalf("%d minutes", len(s.Minutes))
	}
	last, prev := s.Minutes[59], s.Minutes[58]
	if last.Registrations != 1 || last.Failures != 0 || !last.Start.Equal(time.Date(2026, 3, 1, 10, 1, 0, 0, time.UTC)) {
		t.Errorf("this minute: %+v", last)
	}
	if prev.Registrations != 5 || prev.Failures != 2 || !prev.Start.Equal(time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("the minute before: %+v", prev)
	}
	if s.Counts.Registrations != 6 || s.Counts.Failures != 2 {
		t.Errorf("hour totals: %+v", s.Counts)
	}

	// 10:00 is the oldest minute shown at 10:59, and gone at 11:00,
	// when its bucket holds 11:00's count.
	clk.add(58 * time.Minute)
	if s = f.summary(); s.Minutes[0].Registrations != 5 || s.Counts.Registrations != 6 {
		t.Errorf("at 10:59: first minute %+v, totals %+v", s.Minutes[0], s.Counts)
	}
	clk.add(time.Minute)
	emit(2, audit.Register)
	s = f.summary()
	if s.Minutes[0].Registrations != 1 || s.Minutes[59].Registrations != 2 || s.Counts.Registrations != 3 || s.Counts.Failures != 0 {
		t.Errorf("at 11:00: first %+v, last %+v, totals %+v", s.Minutes[0], s.Minutes[59], s.Counts)
	}
	clk.add(3 * time.Hour)
	if s = f.summary(); s.Counts.Registrations != 0 || s.Counts.Failures != 0 {
		t.Errorf("three hours later: %+v", s.Counts)
	}
}

// A stream that does not read misses events; Emit, on the SIP path,
// never waits for it.
func TestFeedSlowSubscriberNeverBlocks(t *testing.T) {
	f := NewFeed(nil)
	slow, ok := f.subscribe()
	if !ok {
		t.Fatal("subscribe refused")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 10 * subscriberQ {
			f.Emit(audit.Event{Kind: audit.Register, Count: i})
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Emit blocked on a subscriber that does not read")
	}
	if n := len(slow.ch); n != subscriberQ {
		t.Errorf("queued %d, want %d", n, subscriberQ)
	}
	if e := <-slow.ch; e.Count != 0 || e.Kind != "register" {
		t.Errorf("first queued: %+v", e)
	}

	// The streams open at once are bounded too.
	for range maxSubscribers - 1 {
		if _, ok := f.subscribe(); !ok {
			t.Fatal("refused below the limit")
		}
	}
	if _, ok := f.subscribe(); ok {
		t.Fatalf("stream %d accepted", maxSubscribers+1)
	}
	f.unsubscribe(slow)
	if _, ok := f.subscribe(); !ok {
		t.Error("refused after one closed")
	}
}

func TestFeedNilTakesNothing(t *testing.T) {
	var f *Feed // the edge runs without a dashboard
	f.Emit(audit.Event{Kind: audit.Register})
}

func TestFeedConcurrent(t *testing.T) {
	f := NewFeed(nil)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				f.Emit(audit.Event{Kind: []audit.Kind{audit.Register, audit.Expire, audit.Alert, audit.Rejected}[g], Count: i})
			}
		})
	}
	wg.Go(func() {
		for range 100 {
			s, ok := f.subscribe()
			_ = f.summary()
			if ok {
				f.unsubscribe(s)
			}
		}
	})
	wg.Wait()
	s := f.summary()
	if s.Counts.Registrations != 500 || s.Counts.Failures != 500 || len(s.Lost) != maxLost || len(s.Alerts) != maxAlerts {
		t.Errorf("%+v lost %d alerts %d", s.Counts, len(s.Lost), len(s.Alerts))
	}
}
