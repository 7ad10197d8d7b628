// Package upstream is the core side of the edge: which cores there are,
// how healthy each is, which one takes a request, which sources count as
// a core, and sending a request to one. It knows nothing of phones'
// flows.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
)

const (
	maxPriority = 65535
	maxWeight   = 1000
)

// Target is one core registrar or proxy.
type Target struct {
	// URI is as configured less ;priority and ;weight, which are the
	// edge's own: requests go to this URI and never carry them onward.
	URI       sip.Uri
	Transport string         // "UDP", "TCP" or "TLS" toward the core (sipgo's names)
	Addr      netip.AddrPort // resolved address
	// Priority orders the cores, lower first: a target is used only while
	// every better one is down. Without ;priority= it is the target's
	// position in core.upstreams, so the first listed is the primary and
	// the next its backup.
	Priority int
	// Weight is the target's share of the keys among the targets of its
	// priority (;weight=, default 1).
	Weight int

	// Name is the host name in core.upstreams this target was resolved
	// from; empty for a target by address.
	Name string

	// key is URI's text, made once: it names the target across reloads
	// and in Report without building a string per call. A resolved
	// target's adds its transport and address.
	key string
}

// String is the URI; a resolved target's, with its transport and
// address.
func (t Target) String() string {
	if t.Name != "" {
		return t.id()
	}
	return t.URI.String()
}

// id is what a target is known by: the same URI is the same core.
func (t Target) id() string {
	if t.key != "" {
		return t.key
	}
	return t.URI.String()
}

// ParseTarget parses a SIP URI naming a core by IP address. A URI
// naming a host is no target but a name a Pool resolves (RFC 3263), and
// an error here. Without ;priority= the priority is 0 here; a Pool gives
// such a target its position in the list instead.
func ParseTarget(s string) (Target, error) { return parseTarget(s, 0) }

// parseTarget parses the target at position pos of core.upstreams.
func parseTarget(s string, pos int) (Target, error) {
	e, err := parseUpstream(s, pos)
	if err != nil {
		return Target{}, err
	}
	if e.name != nil {
		return Target{}, fmt.Errorf("upstream %q: host must be an IP address (a name is resolved by a Pool)", s)
	}
	return e.target, nil
}

// upstreamEntry is one item of core.upstreams: a target by address, or
// a name that expands into targets when resolved.
type upstreamEntry struct {
	target Target    // when name is nil
	name   *nameSpec // when the host is a name
}

// key names the entry: its URI's text less ;priority and ;weight.
func (e upstreamEntry) key() string {
	if e.name != nil {
		return e.name.key
	}
	return e.target.key
}

// nameSpec is a core.upstreams entry naming a host.
type nameSpec struct {
	uri       sip.Uri // as configured less ;priority and ;weight
	key       string  // uri's text
	host      string  // lower case
	port      int     // explicit port; 0 for RFC 3263's NAPTR and SRV
	transport string  // explicit ;transport=, or "" for any
	sips      bool
	base      int // ;priority=, or the position in core.upstreams
	weight    int // ;weight=, default 1: the weight without SRV
}

// parseUpstream parses the entry at position pos of core.upstreams.
func parseUpstream(s string, pos int) (upstreamEntry, error) {
	var u sip.Uri
	if err := sip.ParseUri(strings.TrimSpace(s), &u); err != nil {
		return upstreamEntry{}, fmt.Errorf("upstream %q: %w", s, err)
	}
	if u.Scheme != "sip" && u.Scheme != "sips" {
		return upstreamEntry{}, fmt.Errorf("upstream %q: scheme must be sip or sips", s)
	}
	host := strings.Trim(u.Host, "[]")
	ip, err := netip.ParseAddr(host)
	named := err != nil
	if named && !isHostName(host) {
		return upstreamEntry{}, fmt.Errorf("upstream %q: host must be an IP address or a host name", s)
	}
	explicit := ""
	tp := "UDP"
	if u.Scheme == "sips" {
		tp = "TLS"
	}
	if v, ok := u.UriParams.Get("transport"); ok {
		tp = strings.ToUpper(v)
		explicit = tp
	}
	if tp != "UDP" && tp != "TCP" && tp != "TLS" {
		return upstreamEntry{}, fmt.Errorf("upstream %q: transport must be udp, tcp or tls", s)
	}
	port := u.Port
	if port == 0 && !named {
		port = 5060
		if tp == "TLS" {
			port = 5061
		}
	}
	t := Target{Transport: tp, Priority: pos, Weight: 1}
	if !named {
		t.Addr = netip.AddrPortFrom(ip.Unmap(), uint16(port))
	}
	var kept sip.HeaderParams
	for _, kv := range u.UriParams {
		switch strings.ToLower(kv.K) {
		case "priority":
			if t.Priority, err = strconv.Atoi(kv.V); err != nil || t.Priority < 0 || t.Priority > maxPriority {
				return upstreamEntry{}, fmt.Errorf("upstream %q: priority must be an integer 0..%d", s, maxPriority)
			}
		case "weight":
			if t.Weight, err = strconv.Atoi(kv.V); err != nil || t.Weight < 1 || t.Weight > maxWeight {
				return upstreamEntry{}, fmt.Errorf("upstream %q: weight must be an integer 1..%d", s, maxWeight)
			}
		default:
			kept = append(kept, kv)
		}
	}
	u.UriParams = kept
	if named {
		return upstreamEntry{name: &nameSpec{
			uri: u, key: u.String(), host: strings.ToLower(host), port: port,
			transport: explicit, sips: u.Scheme == "sips", base: t.Priority, weight: t.Weight,
		}}, nil
	}
	t.URI = u
	t.key = u.String()
	return upstreamEntry{target: t}, nil
}

// isHostName says whether h is a DNS host name: labels of letters,
// digits and hyphens, the last not all digits (a mistyped address).
func isHostName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i] | 0x20
			if (c < 'a' || c > 'z') && (l[i] < '0' || l[i] > '9') && l[i] != '-' {
				return false
			}
		}
	}
	last := labels[len(labels)-1]
	return strings.Trim(last, "0123456789") != ""
}

// Pool is the set of configured cores, their health, and the sources
// trusted to speak for them. Reload replaces the set at once; readers
// see one set or the other, never a mix. Health belongs to the Pool, not
// to a set, so a reload, the prober and the forwarders share it.
type Pool struct {
	set atomic.Pointer[poolSet]
	mu  sync.Mutex // serialises Reload and the refresher's swaps

	onChange  atomic.Pointer[[]func(Target, State)] // replaced whole by OnChange
	newTicker func(time.Duration) (<-chan time.Time, func())
	log       *slog.Logger
	now       func() time.Time // the clock of DNS expiry; tests set it
	// afterRound, when set (by tests), runs after each probe round of
	// Probe: a round's end is otherwise invisible.
	afterRound func()
	// afterRefresh is afterRound for Refresh.
	afterRefresh func()
}

type poolSet struct {
	targets []Target
	health  []*health      // health[i] is targets[i]'s; shared with the sets before and after
	hashes  []uint64       // hashes[i] mixes targets[i]'s URI, for rendezvous hashing
	primary int            // index of the best-priority target, health aside
	trusted []netip.Prefix // the targets' addresses and core.trusted

	upAfter, downAfter int
	interval, timeout  time.Duration // probing: every, and how long one may take
	retryAfter         time.Duration

	// What the targets are made of: core.upstreams in order, and the
	// current answer for each name (by its key). answers is never
	// changed once the set is stored; a refresh makes a new set.
	entries  []upstreamEntry
	answers  map[string]*answer
	extra    []netip.Prefix // core.trusted
	resolver *Resolver      // nil without names
	refresh  time.Duration  // dns_refresh_min
	grace    time.Duration  // dns_grace

	replaced chan struct{} // closed when a Reload or a refresh replaces this set
}

// Option changes how a Pool reports and keeps time.
type Option func(*Pool)

// WithOnChange has f called on every change of a target's state, after
// the change and with no lock held, so f may call back into the Pool.
// Calls may come from several goroutines at once (forwarders, the
// prober); whoever needs the latest state asks State.
func WithOnChange(f func(Target, State)) Option { return func(p *Pool) { p.OnChange(f) } }

// OnChange adds f to those called on every change of a target's state,
// as WithOnChange does; for parts built after the pool.
func (p *Pool) OnChange(f func(Target, State)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fs := append(append([]func(Target, State){}, *p.onChange.Load()...), f)
	p.onChange.Store(&fs)
}

// WithTicker makes Probe's and Refresh's ticks come from newTicker
// instead of the system clock; it returns the tick channel and a stop
// function.
func WithTicker(newTicker func(d time.Duration) (<-chan time.Time, func())) Option {
	return func(p *Pool) { p.newTicker = newTicker }
}

// WithLogger has the pool say where DNS answers change, fail and
// recover; slog.Default() without.
func WithLogger(l *slog.Logger) Option { return func(p *Pool) { p.log = l } }

func systemTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// NewPool builds the pool [core] describes, resolving the upstreams
// named by host (an error names one that does not resolve). Every
// target starts up: the first requests go out before the first probe
// has answered. Refresh keeps the names' answers current.
func NewPool(cfg Config, opts ...Option) (*Pool, error) {
	p := &Pool{newTicker: systemTicker, now: time.Now}
	p.onChange.Store(&[]func(Target, State){})
	for _, o := range opts {
		o(p)
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	if err := p.Reload(cfg); err != nil {
		return nil, err
	}
	return p, nil
}

// Reload replaces the targets, the trusted sources and the health
// settings with cfg's, for the requests forwarded from now on; a cfg in
// error changes nothing. A target that stays (same URI, priority and
// weight aside) keeps its health; a new one starts up. A name already
// in the pool keeps its answer (Refresh renews it); a new name is
// resolved now, and one that does not resolve is an error.
func (p *Pool) Reload(cfg Config) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.set.Load()
	set, err := newPoolSet(cfg)
	if err != nil {
		return err
	}
	answers := make(map[string]*answer)
	for _, e := range set.entries {
		if e.name == nil {
			continue
		}
		if old != nil && old.answers[e.name.key] != nil {
			answers[e.name.key] = old.answers[e.name.key]
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
		ans, err := set.resolver.resolve(ctx, e.name)
		cancel()
		if err != nil {
			return fmt.Errorf("core.upstreams: %s does not resolve: %w", e.name.key, err)
		}
		answers[e.name.key] = newAnswer(ans, p.now(), set.refresh)
		p.log.Info("upstream: resolved", "name", e.name.key, "targets", len(ans.Targets), "ttl", ans.TTL)
	}
	set.expand(answers, old)
	p.set.Store(set)
	if old != nil {
		close(old.replaced)
	}
	return nil
}

// newPoolSet checks cfg and makes a set of it with no targets yet:
// expand adds them.
func newPoolSet(cfg Config) (*poolSet, error) {
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("core.upstreams: no upstream configured")
	}
	p := &poolSet{
		upAfter: max(1, cfg.UpAfter), downAfter: max(1, cfg.DownAfter),
		interval: max(0, cfg.HealthInterval), timeout: cfg.HealthTimeout,
		retryAfter: cfg.RetryAfter, replaced: make(chan struct{}),
		refresh: cfg.DNSRefreshMin, grace: cfg.DNSGrace,
	}
	// Validate keeps these sane; a Config built by hand gets sane ones.
	if p.timeout <= 0 {
		p.timeout = DefaultConfig().HealthTimeout
	}
	if p.interval > 0 && p.timeout > p.interval {
		p.timeout = p.interval
	}
	if p.refresh <= 0 {
		p.refresh = DefaultDNSRefreshMin
	}
	if p.grace <= 0 {
		p.grace = DefaultDNSGrace
	}
	seen := make(map[string]bool, len(cfg.Upstreams))
	for i, s := range cfg.Upstreams {
		e, err := parseUpstream(s, i)
		if err != nil {
			return nil, fmt.Errorf("core.upstreams: %w", err)
		}
		if seen[e.key()] {
			return nil, fmt.Errorf("core.upstreams: %q is listed twice", s)
		}
		seen[e.key()] = true
		p.entries = append(p.entries, e)
		if e.name != nil && p.resolver == nil {
			if p.resolver, err = NewResolver(cfg.DNSServers); err != nil {
				return nil, err
			}
		}
	}
	for _, s := range cfg.Trusted {
		pf, err := parsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("core.trusted: %q: %w", s, err)
		}
		p.extra = append(p.extra, pf)
	}
	return p, nil
}

// nameShift places a name's SRV priorities inside its own: in a pool
// with names every target's Priority is its entry's priority (;priority=
// or its position in core.upstreams) << 16 | its SRV priority (0 for a
// target by address or without SRV). A pool of addresses only keeps the
// entry's priority as it is.
const nameShift = 16

// expand lays out the set's targets, from its entries and the names'
// answers, in configured order; a target old also has keeps its health.
func (p *poolSet) expand(answers map[string]*answer, old *poolSet) {
	p.answers = answers
	named := false
	for _, e := range p.entries {
		named = named || e.name != nil
	}
	add := func(t Target) {
		if p.index(t.key) >= 0 {
			return
		}
		h := &health{}
		if old != nil {
			if j := old.index(t.key); j >= 0 {
				h = old.health[j]
			}
		}
		if len(p.targets) > 0 && t.Priority < p.targets[p.primary].Priority {
			p.primary = len(p.targets)
		}
		p.targets = append(p.targets, t)
		p.health = append(p.health, h)
		p.hashes = append(p.hashes, mix(hashString(t.key)))
		p.trusted = append(p.trusted, netip.PrefixFrom(t.Addr.Addr(), t.Addr.Addr().BitLen()))
	}
	for _, e := range p.entries {
		if e.name == nil {
			t := e.target
			if named {
				t.Priority <<= nameShift
			}
			add(t)
			continue
		}
		n := e.name
		a := answers[n.key]
		if a == nil {
			continue
		}
		for _, r := range a.targets {
			add(Target{
				URI: n.uri, Transport: r.Transport, Addr: r.Addr, Name: n.host,
				Priority: n.base<<nameShift | min(r.Priority, maxPriority),
				Weight:   r.Weight,
				key:      fmt.Sprintf("%s (%s %s)", n.key, r.Transport, r.Addr),
			})
		}
	}
	p.trusted = append(p.trusted, p.extra...)
}

// index finds the target named key, or -1. Linear: there are a few.
func (s *poolSet) index(key string) int {
	for i := range s.targets {
		if s.targets[i].key == key {
			return i
		}
	}
	return -1
}

// Pick returns the target for the next request that has no key of its
// own: PickFor(""). When no core is up it still returns the primary (the
// best priority, first listed), for callers that cannot take an error;
// PickFor says so instead.
func (p *Pool) Pick() Target {
	if t, err := p.PickFor(""); err == nil {
		return t
	}
	s := p.set.Load()
	if len(s.targets) == 0 {
		return Target{} // every name failed past dns_grace
	}
	return s.targets[s.primary]
}

// Targets returns a copy of the targets, in configured order, a name's
// resolved targets in its place.
func (p *Pool) Targets() []Target { return append([]Target(nil), p.set.Load().targets...) }

// Trusts reports whether src may send requests to the core side: it is
// a core (any address a name resolves to now), or inside core.trusted.
// A core that is down is still trusted: health says where to send, not
// who may speak.
func (p *Pool) Trusts(src netip.Addr) bool {
	src = src.Unmap()
	for _, pf := range p.set.Load().trusted {
		if pf.Contains(src) {
			return true
		}
	}
	return false
}
