package upstream

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
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

// Config is the [core] section: where the cores are and how the edge
// talks to them.
type Config struct {
	// Listen is the edge's own core-side socket (UDP and TCP): Path and
	// Record-Route point here, and only cores may send to it.
	Listen     string        `toml:"listen"`
	Upstreams  []string      `toml:"upstreams"`
	Mode       Mode          `toml:"mode"`
	Timeout    time.Duration `toml:"timeout"`
	RetryAfter time.Duration `toml:"retry_after"`
	KeyFile    string        `toml:"key_file"`
	// KeyGrace is how long tokens sealed with the previous key still open
	// after `sipedge rotate-key`: longer than the longest registration,
	// so every phone re-registers under the new key first.
	KeyGrace time.Duration `toml:"key_grace"`
	// Trusted lists the CIDRs allowed to send requests to the core side,
	// besides the upstreams' own addresses (a core cluster, say).
	Trusted []string `toml:"trusted"`
}

// DefaultConfig is a core on 127.0.0.1:5070 reached from 127.0.0.1:5062.
func DefaultConfig() Config {
	return Config{
		Listen:     "127.0.0.1:5062",
		Upstreams:  []string{"sip:127.0.0.1:5070;transport=udp"},
		Mode:       ModePath,
		Timeout:    8 * time.Second,
		RetryAfter: 30 * time.Second,
		KeyFile:    "var/flow.key",
		KeyGrace:   2 * time.Hour,
	}
}

// Validate names every invalid key and why.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("core.%s: %s", key, fmt.Sprintf(format, a...)))
	}
	if ap, err := netip.ParseAddrPort(c.Listen); err != nil {
		bad("listen", "%q is not IP:port", c.Listen)
	} else if ap.Addr().IsUnspecified() {
		bad("listen", "%q: Path and Record-Route point here, so it must be a real address", c.Listen)
	}
	if len(c.Upstreams) == 0 {
		bad("upstreams", "at least one core registrar is needed")
	}
	for _, u := range c.Upstreams {
		if _, err := ParseTarget(u); err != nil {
			bad("upstreams", "%v", err)
		}
	}
	if c.Mode != ModePath && c.Mode != ModeRewrite {
		bad("mode", "%q is neither \"path\" nor \"rewrite\"", c.Mode)
	}
	if c.Timeout < 500*time.Millisecond || c.Timeout > 32*time.Second {
		bad("timeout", "%s is outside 500ms..32s", c.Timeout)
	}
	if c.RetryAfter < time.Second || c.RetryAfter > time.Hour {
		bad("retry_after", "%s is outside 1s..1h", c.RetryAfter)
	}
	for _, p := range c.Trusted {
		if _, err := parsePrefix(p); err != nil {
			bad("trusted", "%q is not a CIDR or address", p)
		}
	}
	if c.KeyFile == "" {
		bad("key_file", "must name a file")
	}
	if c.KeyGrace < 0 || c.KeyGrace > 30*24*time.Hour {
		bad("key_grace", "%s is outside 0..720h", c.KeyGrace)
	}
	return errors.Join(errs...)
}

// parsePrefix accepts "10.0.0.0/8" or a single address; IPv4-mapped
// IPv6 forms become IPv4, as sources are compared unmapped. (ratelimit
// has the same for its allowlist; the two packages import nothing of
// each other.)
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
