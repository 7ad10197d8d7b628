// Package upstream is the core side of the edge: which cores there are,
// how healthy each is, which one takes a request, which sources count as
// a core, and sending a request to one. It knows nothing of phones'
// flows.
package upstream

import (
	"errors"
	"fmt"
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

	// key is URI's text, made once: it names the target across reloads
	// and in Report without building a string per call.
	key string
}

func (t Target) String() string { return t.URI.String() }

// id is what a target is known by: the same URI is the same core.
func (t Target) id() string {
	if t.key != "" {
		return t.key
	}
	return t.URI.String()
}

// ParseTarget parses a SIP URI naming a core by IP address. Host names
// need RFC 3263 resolution, which a later change adds. Without
// ;priority= the priority is 0 here; a Pool gives such a target its
// position in the list instead.
func ParseTarget(s string) (Target, error) { return parseTarget(s, 0) }

// parseTarget parses the target at position pos of core.upstreams.
func parseTarget(s string, pos int) (Target, error) {
	var u sip.Uri
	if err := sip.ParseUri(strings.TrimSpace(s), &u); err != nil {
		return Target{}, fmt.Errorf("upstream %q: %w", s, err)
	}
	if u.Scheme != "sip" && u.Scheme != "sips" {
		return Target{}, fmt.Errorf("upstream %q: scheme must be sip or sips", s)
	}
	ip, err := netip.ParseAddr(strings.Trim(u.Host, "[]"))
	if err != nil {
		return Target{}, fmt.Errorf("upstream %q: host must be an IP address", s)
	}
	tp := "UDP"
	if u.Scheme == "sips" {
		tp = "TLS"
	}
	if v, ok := u.UriParams.Get("transport"); ok {
		tp = strings.ToUpper(v)
	}
	if tp != "UDP" && tp != "TCP" && tp != "TLS" {
		return Target{}, fmt.Errorf("upstream %q: transport must be udp, tcp or tls", s)
	}
	port := u.Port
	if port == 0 {
		port = 5060
		if tp == "TLS" {
			port = 5061
		}
	}
	t := Target{Transport: tp, Addr: netip.AddrPortFrom(ip.Unmap(), uint16(port)), Priority: pos, Weight: 1}
	var kept sip.HeaderParams
	for _, kv := range u.UriParams {
		switch strings.ToLower(kv.K) {
		case "priority":
			if t.Priority, err = strconv.Atoi(kv.V); err != nil || t.Priority < 0 || t.Priority > maxPriority {
				return Target{}, fmt.Errorf("upstream %q: priority must be an integer 0..%d", s, maxPriority)
			}
		case "weight":
			if t.Weight, err = strconv.Atoi(kv.V); err != nil || t.Weight < 1 || t.Weight > maxWeight {
				return Target{}, fmt.Errorf("upstream %q: weight must be an integer 1..%d", s, maxWeight)
			}
		default:
			kept = append(kept, kv)
		}
	}
	u.UriParams = kept
	t.URI = u
	t.key = u.String()
	return t, nil
}

// Pool is the set of configured cores, their health, and the sources
// trusted to speak for them. Reload replaces the set at once; readers
// see one set or the other, never a mix. Health belongs to the Pool, not
// to a set, so a reload, the prober and the forwarders share it.
type Pool struct {
	set atomic.Pointer[poolSet]
	mu  sync.Mutex // serialises Reload

	onChange  func(Target, State)
	newTicker func(time.Duration) (<-chan time.Time, func())
	// afterRound, when set (by tests), runs after each probe round of
	// Probe: a round's end is otherwise invisible.
	afterRound func()
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

	replaced chan struct{} // closed when a Reload replaces this set
}

// Option changes how a Pool reports and keeps time.
type Option func(*Pool)

// WithOnChange has f called on every change of a target's state, after
// the change and with no lock held, so f may call back into the Pool.
// Calls may come from several goroutines at once (forwarders, the
// prober); whoever needs the latest state asks State.
func WithOnChange(f func(Target, State)) Option { return func(p *Pool) { p.onChange = f } }

// WithTicker makes Probe's ticks come from newTicker instead of the
// system clock; it returns the tick channel and a stop function.
func WithTicker(newTicker func(d time.Duration) (<-chan time.Time, func())) Option {
	return func(p *Pool) { p.newTicker = newTicker }
}

func systemTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// NewPool builds the pool [core] describes. Every target starts up: the
// first requests go out before the first probe has answered.
func NewPool(cfg Config, opts ...Option) (*Pool, error) {
	p := &Pool{newTicker: systemTicker}
	for _, o := range opts {
		o(p)
	}
	if err := p.Reload(cfg); err != nil {
		return nil, err
	}
	return p, nil
}

// Reload replaces the targets, the trusted sources and the health
// settings with cfg's, for the requests forwarded from now on; a cfg in
// error changes nothing. A target that stays (same URI, priority and
// weight aside) keeps its health; a new one starts up.
func (p *Pool) Reload(cfg Config) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.set.Load()
	set, err := newPoolSet(cfg, old)
	if err != nil {
		return err
	}
	p.set.Store(set)
	if old != nil {
		close(old.replaced)
	}
	return nil
}

func newPoolSet(cfg Config, old *poolSet) (*poolSet, error) {
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("core.upstreams: no upstream configured")
	}
	p := &poolSet{
		upAfter: max(1, cfg.UpAfter), downAfter: max(1, cfg.DownAfter),
		interval: max(0, cfg.HealthInterval), timeout: cfg.HealthTimeout,
		retryAfter: cfg.RetryAfter, replaced: make(chan struct{}),
	}
	// Validate keeps these sane; a Config built by hand gets sane ones.
	if p.timeout <= 0 {
		p.timeout = DefaultConfig().HealthTimeout
	}
	if p.interval > 0 && p.timeout > p.interval {
		p.timeout = p.interval
	}
	for i, s := range cfg.Upstreams {
		t, err := parseTarget(s, i)
		if err != nil {
			return nil, fmt.Errorf("core.upstreams: %w", err)
		}
		if p.index(t.key) >= 0 {
			return nil, fmt.Errorf("core.upstreams: %q is listed twice", s)
		}
		h := &health{}
		if old != nil {
			if j := old.index(t.key); j >= 0 {
				h = old.health[j]
			}
		}
		if i > 0 && t.Priority < p.targets[p.primary].Priority {
			p.primary = i
		}
		p.targets = append(p.targets, t)
		p.health = append(p.health, h)
		p.hashes = append(p.hashes, mix(hashString(t.key)))
		p.trusted = append(p.trusted, netip.PrefixFrom(t.Addr.Addr(), t.Addr.Addr().BitLen()))
	}
	for _, s := range cfg.Trusted {
		pf, err := parsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("core.trusted: %q: %w", s, err)
		}
		p.trusted = append(p.trusted, pf)
	}
	return p, nil
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
	return s.targets[s.primary]
}

// Targets returns a copy of the configured targets, in configured order.
func (p *Pool) Targets() []Target { return append([]Target(nil), p.set.Load().targets...) }

// Trusts reports whether src may send requests to the core side: it is
// a core, or inside core.trusted. A core that is down is still trusted:
// health says where to send, not who may speak.
func (p *Pool) Trusts(src netip.Addr) bool {
	src = src.Unmap()
	for _, pf := range p.set.Load().trusted {
		if pf.Contains(src) {
			return true
		}
	}
	return false
}
