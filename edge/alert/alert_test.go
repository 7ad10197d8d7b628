package alert_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/alert"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

const wait = 5 * time.Second

// sink collects alerts.
type sink struct {
	mu     sync.Mutex
	alerts []audit.Event
	got    chan struct{}
}

func newSink() *sink { return &sink{got: make(chan struct{}, 1000)} }

func (s *sink) emit(e audit.Event) {
	s.mu.Lock()
	s.alerts = append(s.alerts, e)
	s.mu.Unlock()
	s.got <- struct{}{}
}

func (s *sink) of(name string) []audit.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []audit.Event
	for _, a := range s.alerts {
		if a.Reason == name {
			out = append(out, a)
		}
	}
	return out
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func src(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// 200 TCP phones registered through the edge go away within 10 s: one
// mass-loss alert, cause "flows died", from their one network.
func TestMassLossThroughTheEdge(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	s := newSink()
	w := alert.New(alert.DefaultConfig(), nil, s.emit)
	e := edgetest.StartWith(t, core.URI("udp"), func(c *edgetest.Config) {
		c.RateLimit.ConnRate, c.RateLimit.ConnBurst, c.RateLimit.MaxConns = 10_000, 10_000, 10_000
		c.RateLimit.RequestRate, c.RateLimit.RequestBurst = 10_000, 10_000
	}, edgetest.Hooks{OnEvent: func(ev registry.Event) { w.Observe(audit.FromRegistry(ev)) }})
	const phones = 200
	var conns []*edgetest.Phone
	for i := range phones {
		p := edgetest.Dial(t, "tcp", e.TCP)
		p.Send(p.Register(edgetest.Reg{User: fmt.Sprintf("p%d", i)}))
		if res := p.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("phone %d: REGISTER got %d", i, res.StatusCode)
		}
		conns = append(conns, p)
	}
	if len(s.of(alert.MassLoss)) != 0 {
		t.Fatal("an alert before any loss")
	}
	for _, p := range conns {
		p.Close()
	}
	deadline := time.After(wait)
	for e.Bindings().Len() > 0 {
		select {
		case <-deadline:
			t.Fatalf("%d bindings still held after the phones went", e.Bindings().Len())
		case <-time.After(10 * time.Millisecond):
		}
	}
	got := s.of(alert.MassLoss)
	if len(got) != 1 {
		t.Fatalf("%d mass-loss alerts for 200 lost phones, want 1: %+v", len(got), got)
	}
	a := got[0]
	if a.Kind != audit.Alert || a.Severity != slog.LevelError || a.Count < 100 ||
		!strings.Contains(a.Detail, "cause: flows died") || !strings.Contains(a.Detail, "127.0.0.0/16") || !strings.Contains(a.Detail, "TCP") {
		t.Errorf("mass-loss alert: %+v", a)
	}
	t.Logf("alert: %s", a.Detail)
}

// Losses spread out, or below the threshold, are no alert; a second wave
// after the window is a second one.
func TestMassLossWindow(t *testing.T) {
	clk := &clock{t: time.Unix(1e9, 0)}
	s := newSink()
	cfg := alert.DefaultConfig()
	cfg.MassLoss, cfg.MassLossWindow = 10, 10*time.Second
	w := alert.New(cfg, clk.now, s.emit)
	lose := func(n int, every time.Duration, kind audit.Kind) {
		for range n {
			w.Observe(audit.Event{Kind: kind, Source: src("198.51.100.1:5060"), Transport: "UDP", AOR: "sip:x@y", Count: 1})
			clk.t = clk.t.Add(every)
		}
	}
	lose(30, 2*time.Second, audit.Expire) // five per window at most
	if n := len(s.of(alert.MassLoss)); n != 0 {
		t.Fatalf("%d alerts for slow losses", n)
	}
	lose(10, 100*time.Millisecond, audit.Expire)
	lose(10, 100*time.Millisecond, audit.Expire) // same window: quiet
	if got := s.of(alert.MassLoss); len(got) != 1 || !strings.Contains(got[0].Detail, "cause: expired") {
		t.Fatalf("alerts: %+v", got)
	}
	clk.t = clk.t.Add(20 * time.Second)
	lose(10, 100*time.Millisecond, audit.Unregister)
	if got := s.of(alert.MassLoss); len(got) != 2 || !strings.Contains(got[1].Detail, "cause: unregistered") {
		t.Fatalf("second wave: %+v", got)
	}
}

// A phone that re-registers with another user agent, and one that
// appears on another network a minute later: one alert each.
func TestUserAgentChangeAndSourceJump(t *testing.T) {
	clk := &clock{t: time.Unix(1e9, 0)}
	s := newSink()
	w := alert.New(alert.DefaultConfig(), clk.now, s.emit)
	reg := func(kind audit.Kind, from, ua string) {
		w.Observe(audit.Event{Kind: kind, AOR: "sip:ann@x.test", Source: src(from), Transport: "UDP", UserAgent: ua,
			Instance: "<urn:uuid:a>", Expires: 3600, Contacts: []string{"sip:ann@10.0.0.2"}})
		clk.t = clk.t.Add(time.Minute)
	}
	reg(audit.Register, "198.51.100.7:5060", "Yealink T46S")
	reg(audit.Refresh, "198.51.100.7:5060", "Yealink T46S")
	reg(audit.Refresh, "198.51.100.9:5062", "Yealink T46S") // same network: no jump
	if len(s.alerts) != 0 {
		t.Fatalf("alerts for a steady phone: %+v", s.alerts)
	}
	reg(audit.Refresh, "198.51.100.7:5060", "friendly-scanner")
	if got := s.of(alert.UserAgentChange); len(got) != 1 || !strings.Contains(got[0].Detail, `"friendly-scanner", before "Yealink T46S"`) {
		t.Errorf("user agent change: %+v", got)
	}
	reg(audit.Refresh, "203.0.113.50:40000", "friendly-scanner")
	if got := s.of(alert.SourceJump); len(got) != 1 || !strings.Contains(got[0].Detail, "from 198.51.100.7 to 203.0.113.50 within 1m0s") {
		t.Errorf("source jump: %+v", got)
	}
	clk.t = clk.t.Add(time.Hour)
	reg(audit.Refresh, "192.0.2.1:5060", "friendly-scanner") // an hour later: travel is possible
	if got := s.of(alert.SourceJump); len(got) != 1 {
		t.Errorf("a move after an hour alerted: %+v", got)
	}
}

func TestAuthFailureBurstAndDuplicates(t *testing.T) {
	clk := &clock{t: time.Unix(1e9, 0)}
	s := newSink()
	cfg := alert.DefaultConfig()
	cfg.AuthFailures, cfg.MaxDevices = 5, 1
	w := alert.New(cfg, clk.now, s.emit)
	for i := range 12 {
		w.Observe(audit.Event{Kind: audit.AuthFailure, AOR: "sip:bob@x.test", Source: src(fmt.Sprintf("203.0.113.%d:5060", i))})
		clk.t = clk.t.Add(time.Second)
	}
	if got := s.of(alert.AuthFailureBurst); len(got) != 1 || got[0].Count != 5 || got[0].AOR != "sip:bob@x.test" {
		t.Errorf("auth failure bursts: %+v", got)
	}
	for i, inst := range []string{"<urn:uuid:1>", "<urn:uuid:1>", "<urn:uuid:2>"} {
		w.Observe(audit.Event{Kind: audit.Register, AOR: "sip:cy@x.test", Instance: inst, Expires: 3600,
			Source: src(fmt.Sprintf("198.51.100.%d:5060", i+1))})
	}
	if got := s.of(alert.DuplicateIdentity); len(got) != 1 || !strings.Contains(got[0].Detail, "2 devices") {
		t.Errorf("duplicate identity: %+v", got)
	}
}

// The webhook gets each alert as JSON, retries a failing receiver, and a
// full queue drops instead of blocking.
func TestWebhook(t *testing.T) {
	var mu sync.Mutex
	var bodies []alert.Payload
	fails := 1
	got := make(chan struct{}, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			w.WriteHeader(503)
			return
		}
		var p alert.Payload
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &p); err != nil || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("webhook body %q: %v", b, err)
		}
		bodies = append(bodies, p)
		got <- struct{}{}
	}))
	defer srv.Close()
	h := alert.NewWebhook(srv.URL, "edge-1", 2, slog.New(slog.DiscardHandler))
	alert.SetBackoff(h, time.Millisecond)
	h.Send(audit.Event{Kind: audit.Register}) // not an alert: ignored
	h.Send(audit.Event{Kind: audit.Alert, Reason: alert.MassLoss, Severity: slog.LevelError, Count: 200, Detail: "200 bindings lost"})
	h.Send(audit.Event{Kind: audit.Alert, Reason: alert.SourceJump, AOR: "sip:a@x", Source: src("192.0.2.1:5060")})
	h.Send(audit.Event{Kind: audit.Alert, Reason: alert.SourceJump}) // queue of 2: dropped
	if h.Dropped.Load() != 1 {
		t.Errorf("dropped %d, want 1", h.Dropped.Load())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.Run(ctx); close(done) }()
	for range 2 {
		select {
		case <-got:
		case <-time.After(wait):
			t.Fatal("webhook not called")
		}
	}
	for deadline := time.Now().Add(wait); h.Sent.Load() < 2 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond) // the count follows the receiver's answer
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 2 || bodies[0].Alert != "mass_loss" || bodies[0].Severity != "ERROR" || bodies[0].Count != 200 ||
		bodies[0].Node != "edge-1" || bodies[1].Source != "192.0.2.1:5060" || h.Sent.Load() != 2 {
		t.Errorf("webhook got %+v (sent %d)", bodies, h.Sent.Load())
	}
}

// A refresh from the same address is the common case the watcher passes
// over quickly; a new user agent on it still alerts.
func TestUserAgentChangeOnSteadyRefresh(t *testing.T) {
	clk := &clock{t: time.Unix(1e9, 0)}
	s := newSink()
	w := alert.New(alert.DefaultConfig(), clk.now, s.emit)
	for i, ua := range []string{"Yealink T46S", "Yealink T46S", "Yealink T46S", "sipvicious"} {
		kind := audit.Refresh
		if i == 0 {
			kind = audit.Register
		}
		w.Observe(audit.Event{Kind: kind, AOR: "sip:bob@x.test", Source: src("198.51.100.7:5060"), Transport: "UDP",
			UserAgent: ua, Expires: 60, Contacts: []string{"sip:bob@10.0.0.3"}})
		clk.t = clk.t.Add(30 * time.Second)
	}
	if got := s.of(alert.UserAgentChange); len(got) != 1 || !strings.Contains(got[0].Detail, `"sipvicious", before "Yealink T46S"`) {
		t.Fatalf("user agent change on a refresh from the same address: %+v", s.alerts)
	}
}

// BenchmarkObserveRefresh is the watcher's share of a plain refresh.
func BenchmarkObserveRefresh(b *testing.B) {
	w := alert.New(alert.DefaultConfig(), time.Now, func(audit.Event) {})
	evs := make([]audit.Event, 2000)
	for i := range evs {
		evs[i] = audit.Event{Kind: audit.Refresh, AOR: fmt.Sprintf("sip:%d@x.test", i), Source: src(fmt.Sprintf("198.51.100.7:%d", 1024+i)),
			Transport: "UDP", UserAgent: "Yealink T46S", Expires: 3600, Contacts: []string{fmt.Sprintf("sip:%d@10.0.0.3", i)}}
		w.Observe(evs[i])
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		w.Observe(evs[i%len(evs)])
	}
}
