// Package upstream knows the core registrars sipedge forwards to: their
// addresses and transports, and which one to use next.
package upstream

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/nat"
)

// Target is one core registrar or proxy.
type Target struct {
	URI       sip.Uri        // as configured, e.g. sip:10.0.0.5:5060;transport=tcp
	Transport nat.Transport  // UDP, TCP or TLS toward the core
	Addr      netip.AddrPort // resolved address
}

func (t Target) String() string { return t.URI.String() }

// ParseTarget parses a SIP URI naming a core by IP address. Host names
// would need RFC 3263 resolution, which a later change adds.
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
	tp := nat.UDP
	if u.Scheme == "sips" {
		tp = nat.TLS
	}
	if v, ok := u.UriParams.Get("transport"); ok {
		if tp, err = nat.ParseTransport(v); err != nil {
			return Target{}, fmt.Errorf("upstream %q: %w", s, err)
		}
	}
	if tp != nat.UDP && tp != nat.TCP && tp != nat.TLS {
		return Target{}, fmt.Errorf("upstream %q: transport must be udp, tcp or tls", s)
	}
	port := u.Port
	if port == 0 {
		port = 5060
		if tp == nat.TLS {
			port = 5061
		}
	}
	return Target{URI: u, Transport: tp, Addr: netip.AddrPortFrom(ip.Unmap(), uint16(port))}, nil
}

// Pool is the ordered set of configured cores.
type Pool struct {
	targets []Target
}

// NewPool parses every URI; the first is the primary.
func NewPool(uris []string) (*Pool, error) {
	if len(uris) == 0 {
		return nil, errors.New("no upstream configured")
	}
	p := &Pool{}
	for _, s := range uris {
		t, err := ParseTarget(s)
		if err != nil {
			return nil, err
		}
		p.targets = append(p.targets, t)
	}
	return p, nil
}

// Pick returns the target for the next request. Failover among targets
// is future work; today it is always the primary.
func (p *Pool) Pick() Target { return p.targets[0] }

// Targets returns a copy of the configured targets.
func (p *Pool) Targets() []Target { return append([]Target(nil), p.targets...) }
