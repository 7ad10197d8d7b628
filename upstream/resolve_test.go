package upstream

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeDNS is an in-process DNS server whose zone the test changes.
type fakeDNS struct {
	addr string

	mu      sync.Mutex
	rrs     []dns.RR
	fail    bool // answer SERVFAIL to everything
	queries int
}

func newFakeDNS(t *testing.T, zone ...string) *fakeDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDNS{addr: pc.LocalAddr().String()}
	f.set(t, zone...)
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(f.serve), NotifyStartedFunc: func() { close(started) }}
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return f
}

// set replaces the zone with records in zone-file syntax.
func (f *fakeDNS) set(t *testing.T, zone ...string) {
	t.Helper()
	var rrs []dns.RR
	for _, z := range zone {
		rr, err := dns.NewRR(z)
		if err != nil {
			t.Fatalf("%q: %v", z, err)
		}
		rrs = append(rrs, rr)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rrs = rrs
}

func (f *fakeDNS) setFail(fail bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fail
}

func (f *fakeDNS) serve(w dns.ResponseWriter, r *dns.Msg) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queries++
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	exists := false
	for _, rr := range f.rrs {
		if !strings.EqualFold(rr.Header().Name, q.Name) {
			continue
		}
		exists = true
		if rr.Header().Rrtype == q.Qtype {
			m.Answer = append(m.Answer, rr)
		}
	}
	switch {
	case f.fail:
		m.Answer, m.Rcode = nil, dns.RcodeServerFailure
	case !exists:
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

// syncBuffer is a log destination the refresher writes while the test
// reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// take returns what was logged so far and forgets it.
func (b *syncBuffer) take() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	b.buf.Reset()
	return s
}

// fakeClock is the pool's DNS clock, moved by the test.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func dnsConfig(server string, upstreams ...string) Config {
	cfg := DefaultConfig()
	cfg.Upstreams = upstreams
	cfg.DNSServers = []string{server}
	return cfg
}

// targetsOf names a pool's targets as "TRANSPORT addr prio/weight".
func targetsOf(p *Pool) []string {
	var out []string
	for _, t := range p.Targets() {
		out = append(out, fmt.Sprintf("%s %s %d/%d", t.Transport, t.Addr, t.Priority, t.Weight))
	}
	return out
}

func wantTargets(t *testing.T, p *Pool, want ...string) {
	t.Helper()
	if got := targetsOf(p); !slices.Equal(got, want) {
		t.Fatalf("targets\n%q, want\n%q", got, want)
	}
}

var naptrZone = []string{
	`core.example.net. 60 IN NAPTR 10 50 "s" "SIP+D2T" "" _sip._tcp.core.example.net.`,
	`core.example.net. 60 IN NAPTR 20 50 "s" "SIP+D2U" "" _sip._udp.core.example.net.`,
	`core.example.net. 60 IN NAPTR 5 50 "s" "X-FOO" "" _foo._tcp.core.example.net.`,
	`_sip._tcp.core.example.net. 60 IN SRV 10 3 5070 a.core.example.net.`,
	`_sip._tcp.core.example.net. 60 IN SRV 10 1 5070 b.core.example.net.`,
	`_sip._tcp.core.example.net. 60 IN SRV 20 0 5070 c.core.example.net.`,
	`_sip._udp.core.example.net. 60 IN SRV 10 1 5060 d.core.example.net.`,
	`a.core.example.net. 60 IN A 10.1.0.1`,
	`b.core.example.net. 60 IN A 10.1.0.2`,
	`c.core.example.net. 60 IN A 10.1.0.3`,
	`c.core.example.net. 60 IN AAAA 2001:db8::3`,
	`d.core.example.net. 60 IN A 10.1.0.4`,
}

// NAPTR leads to SRV, SRV to addresses; priorities and weights hold
// over 10,000 keys, and a static target listed after the name comes
// after all of it.
func TestResolveNAPTRWeights(t *testing.T) {
	ns := newFakeDNS(t, naptrZone...)
	p, err := NewPool(dnsConfig(ns.addr, "sip:core.example.net", "sip:10.9.9.9"))
	if err != nil {
		t.Fatal(err)
	}
	wantTargets(t, p,
		"TCP 10.1.0.1:5070 10/3", "TCP 10.1.0.2:5070 10/1",
		"TCP 10.1.0.3:5070 20/1", "TCP [2001:db8::3]:5070 20/1",
		"UDP 10.9.9.9:5060 65536/1")
	ts := p.Targets()
	if ts[0].Name != "core.example.net" || ts[0].URI.String() != "sip:core.example.net" || ts[4].Name != "" {
		t.Errorf("names %q %q, URI %s", ts[0].Name, ts[4].Name, ts[0].URI.String())
	}
	if got := ts[0].String(); got != "sip:core.example.net (TCP 10.1.0.1:5070)" {
		t.Errorf("String() = %q", got)
	}

	const n = 10000
	count := map[string]int{}
	for i := range n {
		key := fmt.Sprintf("sip:user%d@example.com", i)
		pick, err := p.PickFor(key)
		if err != nil {
			t.Fatal(err)
		}
		count[pick.Addr.Addr().String()]++
		if i%1000 == 0 {
			got := addrs(p.Order(key))
			if len(got) != 5 || got[4] != "10.9.9.9" || !slices.Contains(got[2:4], "10.1.0.3") {
				t.Fatalf("Order(%s) = %v", key, got)
			}
		}
	}
	if share := float64(count["10.1.0.1"]) / n; share < 0.72 || share > 0.78 || count["10.1.0.1"]+count["10.1.0.2"] != n {
		t.Fatalf("picks %v: want 3:1 between 10.1.0.1 and 10.1.0.2 only", count)
	}

	// With the best priority down, the next SRV priority; then the static.
	setDown(p, ts[0])
	setDown(p, ts[1])
	if pick, _ := p.PickFor("alice"); pick.Addr.Addr().String() != "10.1.0.3" && pick.Addr.Addr().String() != "2001:db8::3" {
		t.Fatalf("picked %s with priority 10 down", pick)
	}
	setDown(p, ts[2])
	setDown(p, ts[3])
	if pick, _ := p.PickFor("alice"); pick.Addr.Addr().String() != "10.9.9.9" {
		t.Fatalf("picked %s with the name's targets down", pick)
	}

	for _, tc := range []struct {
		src  string
		want bool
	}{{"10.1.0.1", true}, {"2001:db8::3", true}, {"10.9.9.9", true}, {"10.1.0.4", false}} {
		if got := p.Trusts(netip.MustParseAddr(tc.src)); got != tc.want {
			t.Errorf("Trusts(%s) = %v", tc.src, got)
		}
	}
}

// Without NAPTR: SRV per transport; without SRV: A/AAAA on the default
// port; with a port: A/AAAA only.
func TestResolveFallbacks(t *testing.T) {
	ns := newFakeDNS(t,
		`_sip._udp.srv.example.net. 60 IN SRV 0 0 5080 h1.example.net.`,
		`_sip._tcp.srv.example.net. 60 IN SRV 0 5000 5090 h2.example.net.`,
		`srv.example.net. 60 IN A 10.3.0.9`,
		`_sip._tcp.tcponly.example.net. 60 IN SRV 1 2 5090 h2.example.net.`,
		`h1.example.net. 60 IN A 10.3.0.1`,
		`h2.example.net. 60 IN A 10.3.0.2`,
		`plain.example.net. 60 IN A 10.4.0.1`,
		`plain.example.net. 60 IN AAAA 2001:db8::4`,
	)
	for _, tc := range []struct {
		upstream string
		want     []string
	}{
		{"sip:srv.example.net", []string{"UDP 10.3.0.1:5080 0/1"}},
		{"sip:srv.example.net;transport=tcp", []string{"TCP 10.3.0.2:5090 0/1000"}},
		{"sip:tcponly.example.net", []string{"TCP 10.3.0.2:5090 1/2"}},
		{"sip:plain.example.net", []string{"UDP 10.4.0.1:5060 0/1", "UDP [2001:db8::4]:5060 0/1"}},
		{"sips:plain.example.net;weight=7", []string{"TLS 10.4.0.1:5061 0/7", "TLS [2001:db8::4]:5061 0/7"}},
		{"sip:srv.example.net:5070;transport=tcp", []string{"TCP 10.3.0.9:5070 0/1"}},
		{"sip:tcponly.example.net;transport=udp", nil}, // no _sip._udp, no address: does not resolve
	} {
		p, err := NewPool(dnsConfig(ns.addr, tc.upstream))
		if tc.want == nil {
			if err == nil || !strings.Contains(err.Error(), "tcponly.example.net") {
				t.Errorf("%s: error %v", tc.upstream, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.upstream, err)
			continue
		}
		if got := targetsOf(p); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.upstream, got, tc.want)
		}
	}
	a, err := (&Resolver{servers: []string{ns.addr}, timeout: time.Second}).Resolve(context.Background(), "sip:plain.example.net")
	if err != nil || len(a.Targets) != 2 || a.TTL != time.Minute {
		t.Errorf("Resolve: %+v, %v", a, err)
	}
}

// A name that does not resolve at start, or on a reload that adds it,
// is an error naming it; a DNS failure too.
func TestResolveFailsAtStart(t *testing.T) {
	ns := newFakeDNS(t, `ok.example.net. 60 IN A 10.5.0.1`)
	_, err := NewPool(dnsConfig(ns.addr, "sip:ok.example.net", "sip:missing.example.net;transport=tcp"))
	if err == nil || !strings.Contains(err.Error(), "sip:missing.example.net;transport=tcp does not resolve") {
		t.Fatalf("error %v", err)
	}
	p, err := NewPool(dnsConfig(ns.addr, "sip:ok.example.net"))
	if err != nil {
		t.Fatal(err)
	}
	ns.setFail(true)
	// A name already resolved keeps its answer over a reload; a new one
	// must resolve.
	cfg := dnsConfig(ns.addr, "sip:ok.example.net", "sip:10.0.0.1")
	if err := p.Reload(cfg); err != nil {
		t.Fatalf("reload keeping the name: %v", err)
	}
	cfg.Upstreams = append(cfg.Upstreams, "sip:new.example.net")
	if err := p.Reload(cfg); err == nil || !strings.Contains(err.Error(), "sip:new.example.net") || !strings.Contains(err.Error(), "SERVFAIL") {
		t.Fatalf("reload error %v", err)
	}
	wantTargets(t, p, "UDP 10.5.0.1:5060 0/1", "UDP 10.0.0.1:5060 65536/1")
}

// The refresher re-resolves after the TTL (not before), drains a target
// gone from DNS, keeps the health of one that stays, moves Trusts with
// the answers, and keeps the last good answer through a failure until
// dns_grace ends.
func TestRefresh(t *testing.T) {
	ns := newFakeDNS(t,
		`_sip._udp.core.example.net. 30 IN SRV 10 1 5060 a.example.net.`,
		`_sip._udp.core.example.net. 30 IN SRV 10 1 5060 b.example.net.`,
		`a.example.net. 60 IN A 10.6.0.1`,
		`b.example.net. 60 IN A 10.6.0.2`,
	)
	var logs syncBuffer
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	ticks := newFakeTicker()
	cfg := dnsConfig(ns.addr, "sip:core.example.net")
	cfg.DNSGrace = time.Minute
	p, err := NewPool(cfg, WithTicker(ticks.new), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))),
		func(p *Pool) { p.now = clock.Now })
	if err != nil {
		t.Fatal(err)
	}
	refreshed := make(chan struct{}, 1)
	p.afterRefresh = func() { refreshed <- struct{}{} }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Refresh(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	if d := <-ticks.made; d != DefaultDNSRefreshMin {
		t.Fatalf("ticker every %s, want dns_refresh_min", d)
	}
	tick := func(d time.Duration) {
		t.Helper()
		clock.add(d)
		ticks.c <- time.Time{}
		<-refreshed
	}
	a, b := p.Targets()[0], p.Targets()[1]
	p.Report(a, true, true) // overloaded: to be kept across the refresh
	logs.take()

	// Changed in DNS, but the TTL (30s, the SRV's) holds the old answer.
	ns.set(t,
		`_sip._udp.core.example.net. 30 IN SRV 10 1 5060 a.example.net.`,
		`_sip._udp.core.example.net. 30 IN SRV 20 1 5060 c.example.net.`,
		`a.example.net. 60 IN A 10.6.0.1`,
		`c.example.net. 10 IN A 10.6.0.3`,
	)
	tick(29 * time.Second)
	wantTargets(t, p, "UDP 10.6.0.1:5060 10/1", "UDP 10.6.0.2:5060 10/1")
	tick(time.Second)
	wantTargets(t, p, "UDP 10.6.0.1:5060 10/1", "UDP 10.6.0.3:5060 20/1")
	if st, _ := p.State(a); st != StateOverloaded {
		t.Errorf("%s lost its health over the refresh: %s", a, st)
	}
	if _, ok := p.State(b); ok || slices.Contains(addrs(p.Order("alice")), "10.6.0.2") {
		t.Errorf("%s is still in the pool", b)
	}
	p.Report(b, false, false) // a request that left before: ignored
	if p.Trusts(netip.MustParseAddr("10.6.0.2")) || !p.Trusts(netip.MustParseAddr("10.6.0.3")) {
		t.Error("Trusts did not follow the answer")
	}
	if l := logs.take(); !strings.Contains(l, "DNS answer changed") {
		t.Errorf("log %q", l)
	}

	// The new answer's TTL is 10s (c's A), floored to dns_refresh_min...
	ns.setFail(true)
	tick(4 * time.Second)
	if l := logs.take(); l != "" {
		t.Errorf("asked again before the TTL: %q", l)
	}
	// ...then the failure keeps the answer, said once, for dns_grace.
	tick(6 * time.Second)
	wantTargets(t, p, "UDP 10.6.0.1:5060 10/1", "UDP 10.6.0.3:5060 20/1")
	if l := logs.take(); !strings.Contains(l, "keeping its last answer") || !strings.Contains(l, "core.example.net") {
		t.Errorf("log %q", l)
	}
	tick(50 * time.Second) // 10s+50s: grace not over
	wantTargets(t, p, "UDP 10.6.0.1:5060 10/1", "UDP 10.6.0.3:5060 20/1")
	if l := logs.take(); l != "" {
		t.Errorf("logged again: %q", l)
	}
	tick(10 * time.Second)
	wantTargets(t, p)
	if l := logs.take(); !strings.Contains(l, "dropped") {
		t.Errorf("log %q", l)
	}
	if _, err := p.PickFor("alice"); err == nil {
		t.Error("PickFor with no targets")
	}
	if got := p.Pick(); got.Addr.IsValid() {
		t.Errorf("Pick with no targets = %s", got)
	}
	if p.Trusts(netip.MustParseAddr("10.6.0.1")) {
		t.Error("a dropped target is still trusted")
	}

	// DNS back: the targets return, starting up.
	ns.setFail(false)
	tick(5 * time.Second)
	wantTargets(t, p, "UDP 10.6.0.1:5060 10/1", "UDP 10.6.0.3:5060 20/1")
	if st, _ := p.State(a); st != StateUp {
		t.Errorf("returning %s is %s", a, st)
	}
	if l := logs.take(); !strings.Contains(l, "resolves again") {
		t.Errorf("log %q", l)
	}
}

// Refresh waits for a name; a reload that adds one starts its ticker.
func TestRefreshWaitsForNames(t *testing.T) {
	ns := newFakeDNS(t, `a.example.net. 60 IN A 10.7.0.1`)
	ticks := newFakeTicker()
	cfg := dnsConfig(ns.addr, "sip:10.0.0.1")
	cfg.DNSRefreshMin = 2 * time.Second
	p, err := NewPool(cfg, WithTicker(ticks.new))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Refresh(ctx)
	}()
	cfg.Upstreams = append(cfg.Upstreams, "sip:a.example.net")
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if d := <-ticks.made; d != 2*time.Second {
		t.Fatalf("ticker every %s", d)
	}
	cancel()
	<-done
	if d := <-ticks.stopped; d != 2*time.Second {
		t.Fatalf("stopped %s", d)
	}
}

func TestConfigValidateDNS(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Upstreams = []string{"sip:core.example.net", "sips:core.example.net:5071", "sip:10.0.0.1"}
	cfg.DNSServers = []string{"127.0.0.1:5353", "::1"}
	cfg.DNSRefreshMin = 10 * time.Second
	cfg.DNSGrace = time.Hour
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Upstreams = []string{"sip:core.example.net", "sip:core.example.net;weight=2", "sip:10.0.0.300", "sip:bad_host.example"}
	cfg.DNSServers = []string{"dns.example.net"}
	cfg.DNSRefreshMin = time.Millisecond
	cfg.DNSGrace = -time.Second
	err := cfg.Validate()
	for _, want := range []string{"listed twice", "10.0.0.300", "bad_host", "core.dns_servers", "core.dns_refresh_min", "core.dns_grace"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %s", err, want)
		}
	}
	if _, err := ParseTarget("sip:core.example.net"); err == nil {
		t.Error("ParseTarget took a name")
	}
}
