// Package upstream is the core side of the edge: which cores there are,
// which sources count as a core, and sending a request to one. It knows
// nothing of phones' flows.
package upstream

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/emiago/sipgo/sip"
)

// Target is one core registrar or proxy.
type Target struct {
	URI       sip.Uri        // as configured, e.g. sip:10.0.0.5:5060;transport=tcp
	Transport string         // "UDP", "TCP" or "TLS" toward the core (sipgo's names)
	Addr      netip.AddrPort // resolved address
}

func (t Target) String() string { return t.URI.String() }

// ParseTarget parses a SIP URI naming a core by IP address. Host names
// need RFC 3263 resolution, which a later change adds.
func ParseTarget(s string) (Target, error) {
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
	return Target{URI: u, Transport: tp, Addr: netip.AddrPortFrom(ip.Unmap(), uint16(port))}, nil
}

// Pool is the ordered set of configured cores and the sources trusted
// to speak for them. Reload replaces both at once; readers see one set
// or the other, never a mix.
type Pool struct {
	set atomic.Pointer[poolSet]
}

type poolSet struct {
	targets []Target
	trusted []netip.Prefix // the targets' addresses and core.trusted
}

// NewPool builds the pool [core] describes; the first upstream is the
// primary.
func NewPool(cfg Config) (*Pool, error) {
	p := &Pool{}
	if err := p.Reload(cfg); err != nil {
		return nil, err
	}
	return p, nil
}

// Reload replaces the targets and the trusted sources with cfg's, for
// the requests forwarded from now on; a cfg in error changes nothing.
func (p *Pool) Reload(cfg Config) error {
	set, err := newPoolSet(cfg)
	if err != nil {
		return err
	}
	p.set.Store(set)
	return nil
}

func newPoolSet(cfg Config) (*poolSet, error) {
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("core.upstreams: no upstream configured")
	}
	p := &poolSet{}
	for _, s := range cfg.Upstreams {
		t, err := ParseTarget(s)
		if err != nil {
			return nil, fmt.Errorf("core.upstreams: %w", err)
		}
		p.targets = append(p.targets, t)
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

// Pick returns the target for the next request. Failover among targets
// is future work; today it is always the primary.
func (p *Pool) Pick() Target { return p.set.Load().targets[0] }

// Targets returns a copy of the configured targets.
func (p *Pool) Targets() []Target { return append([]Target(nil), p.set.Load().targets...) }

// Trusts reports whether src may send requests to the core side: it is
// a core, or inside core.trusted.
func (p *Pool) Trusts(src netip.Addr) bool {
	src = src.Unmap()
	for _, pf := range p.set.Load().trusted {
		if pf.Contains(src) {
			return true
		}
	}
	return false
}
