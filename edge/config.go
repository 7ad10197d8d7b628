package edge

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream"
)

// Mode says how the core learns to reach an endpoint through the edge.
type Mode string

const (
	// ModePath adds a Path header (RFC 3327) with the flow token.
	ModePath Mode = "path"
	// ModeRewrite replaces each Contact with one at the edge, for cores
	// without Path support.
	ModeRewrite Mode = "rewrite"
)

// AccessConfig is the Internet side: where phones connect.
type AccessConfig struct {
	UDP       []string `toml:"udp"`
	TCP       []string `toml:"tcp"`
	TLS       []string `toml:"tls"`
	WS        []string `toml:"ws"`
	WSS       []string `toml:"wss"`
	TLSCert   string   `toml:"tls_cert"`
	TLSKey    string   `toml:"tls_key"`
	Advertise string   `toml:"advertise"`
}

// CoreConfig is the core side: where the registrar lives.
type CoreConfig struct {
	Listen     string        `toml:"listen"`
	Upstreams  []string      `toml:"upstreams"`
	Mode       Mode          `toml:"mode"`
	Timeout    time.Duration `toml:"timeout"`
	RetryAfter time.Duration `toml:"retry_after"`
	KeyFile    string        `toml:"key_file"`
	// Trusted lists the CIDRs allowed to send requests to the core side,
	// besides the upstreams' own addresses (a core cluster, say).
	Trusted []string `toml:"trusted"`
}

// RegistrationConfig bounds what a REGISTER may ask for.
type RegistrationConfig struct {
	Domains     []string      `toml:"domains"`
	MinExpires  time.Duration `toml:"min_expires"`
	MaxExpires  time.Duration `toml:"max_expires"`
	MaxContacts int           `toml:"max_contacts"`
}

// NATConfig is the [nat] section: keepalives and the flow table.
type NATConfig struct {
	nat.KeepaliveConfig
	// MaxFlows caps the flow table; a REGISTER on a new flow beyond it
	// still works but its flow is not kept alive.
	MaxFlows int `toml:"max_flows"`
}

// Config is everything the edge needs from the config file.
type Config struct {
	Access       AccessConfig       `toml:"access"`
	Core         CoreConfig         `toml:"core"`
	Registration RegistrationConfig `toml:"registration"`
	NAT          NATConfig          `toml:"nat"`
	RateLimit    ratelimit.Config   `toml:"ratelimit"`
}

// DefaultConfig works on one machine: phones on 127.0.0.1:5060, a core on
// 127.0.0.1:5070.
func DefaultConfig() Config {
	return Config{
		Access: AccessConfig{
			UDP: []string{"127.0.0.1:5060"},
			TCP: []string{"127.0.0.1:5060"},
		},
		Core: CoreConfig{
			Listen:     "127.0.0.1:5062",
			Upstreams:  []string{"sip:127.0.0.1:5070;transport=udp"},
			Mode:       ModePath,
			Timeout:    8 * time.Second,
			RetryAfter: 30 * time.Second,
			KeyFile:    "var/flow.key",
		},
		Registration: RegistrationConfig{
			MinExpires:  60 * time.Second,
			MaxExpires:  time.Hour,
			MaxContacts: 10,
		},
		NAT:       NATConfig{KeepaliveConfig: nat.DefaultKeepaliveConfig(), MaxFlows: 1_000_000},
		RateLimit: ratelimit.DefaultConfig(),
	}
}

// Validate names the first invalid key and why.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, a...)))
	}
	lists := []struct {
		key   string
		addrs []string
	}{
		{"access.udp", c.Access.UDP}, {"access.tcp", c.Access.TCP}, {"access.tls", c.Access.TLS},
		{"access.ws", c.Access.WS}, {"access.wss", c.Access.WSS},
	}
	total, wildcard := 0, false
	for _, l := range lists {
		for _, a := range l.addrs {
			ap, err := netip.ParseAddrPort(a)
			if err != nil {
				bad(l.key, "%q is not IP:port", a)
			}
			wildcard = wildcard || ap.Addr().IsUnspecified()
		}
		total += len(l.addrs)
	}
	if c.Access.Advertise != "" {
		if a, err := netip.ParseAddr(c.Access.Advertise); err != nil || a.IsUnspecified() {
			bad("access.advertise", "%q is not an IP address", c.Access.Advertise)
		}
	} else if wildcard {
		// Via and Record-Route toward phones need a real address.
		bad("access.advertise", "required when listening on 0.0.0.0 or [::]: the address phones reach")
	}
	if total == 0 {
		bad("access", "no listener configured")
	}
	if (len(c.Access.TLS) > 0 || len(c.Access.WSS) > 0) && (c.Access.TLSCert == "" || c.Access.TLSKey == "") {
		bad("access.tls_cert", "tls and wss listeners need tls_cert and tls_key")
	}
	if ap, err := netip.ParseAddrPort(c.Core.Listen); err != nil {
		bad("core.listen", "%q is not IP:port", c.Core.Listen)
	} else if ap.Addr().IsUnspecified() {
		bad("core.listen", "%q: Path and Record-Route point here, so it must be a real address", c.Core.Listen)
	}
	if len(c.Core.Upstreams) == 0 {
		bad("core.upstreams", "at least one core registrar is needed")
	}
	if c.Core.Mode != ModePath && c.Core.Mode != ModeRewrite {
		bad("core.mode", "%q is neither \"path\" nor \"rewrite\"", c.Core.Mode)
	}
	if c.Core.Timeout < 500*time.Millisecond || c.Core.Timeout > 32*time.Second {
		bad("core.timeout", "%s is outside 500ms..32s", c.Core.Timeout)
	}
	if c.Core.RetryAfter < time.Second || c.Core.RetryAfter > time.Hour {
		bad("core.retry_after", "%s is outside 1s..1h", c.Core.RetryAfter)
	}
	for _, p := range c.Core.Trusted {
		if _, err := parsePrefix(p); err != nil {
			bad("core.trusted", "%q is not a CIDR or address", p)
		}
	}
	for _, u := range c.Core.Upstreams {
		if _, err := upstream.ParseTarget(u); err != nil {
			bad("core.upstreams", "%v", err)
		}
	}
	if c.Core.KeyFile == "" {
		bad("core.key_file", "must name a file")
	}
	r := c.Registration
	if r.MinExpires < time.Second {
		bad("registration.min_expires", "%s is below 1s", r.MinExpires)
	}
	if r.MaxExpires < r.MinExpires {
		bad("registration.max_expires", "%s is below min_expires %s", r.MaxExpires, r.MinExpires)
	}
	if r.MaxContacts < 1 {
		bad("registration.max_contacts", "%d is below 1", r.MaxContacts)
	}
	if c.NAT.MaxFlows < 1 {
		bad("nat.max_flows", "%d is below 1", c.NAT.MaxFlows)
	}
	errs = append(errs, c.NAT.KeepaliveConfig.Validate(), c.RateLimit.Validate())
	return errors.Join(errs...)
}

// parsePrefix accepts "10.0.0.0/8" or a single address; IPv4-mapped
// IPv6 forms become IPv4, as sources are compared unmapped.
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked(), nil
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}
