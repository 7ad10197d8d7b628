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
	// TLS toward cores reached with sips: or transport=tls. TLSCA is a
	// PEM file of the CAs to trust ("": the system's); TLSServerName the
	// name their certificates must carry ("": the address dialled, which
	// then needs an IP SAN); TLSCert and TLSKey an optional client
	// certificate. A certificate that fails verification fails that try:
	// logged, and the request moves to the next core.
	TLSCA         string `toml:"tls_ca"`
	TLSServerName string `toml:"tls_server_name"`
	TLSCert       string `toml:"tls_cert"`
	TLSKey        string `toml:"tls_key"`

	// HealthInterval is how often every core is probed; 0 turns probing
	// off, and then only forwarding results move a core up or down.
	HealthInterval time.Duration `toml:"health_interval"`
	// HealthTimeout is how long a probe waits for an answer: below
	// HealthInterval, so rounds do not overlap.
	HealthTimeout time.Duration `toml:"health_timeout"`
	// UpAfter and DownAfter are how many results in a row (probes or
	// forwarded requests) bring a core back up or take it down: one lost
	// datagram should not fail a core over.
	UpAfter   int `toml:"up_after"`
	DownAfter int `toml:"down_after"`
	// TryTimeout is how long one core may take to answer before the
	// request moves on to the next: the phone's patience (Timeout) is
	// shared by every core tried. See PerTryTimeout.
	TryTimeout time.Duration `toml:"try_timeout"`

	// An upstream may name a host (sip:core.example.net): it is resolved
	// by RFC 3263 (NAPTR, SRV, then A/AAAA) into targets, and Refresh
	// keeps the answer current.
	//
	// DNSServers are the servers asked, "ip:port" or "ip" (port 53);
	// empty means those of /etc/resolv.conf, or 127.0.0.1:53.
	DNSServers []string `toml:"dns_servers"`
	// DNSRefreshMin floors the TTLs: a name is asked again no sooner,
	// and the refresher looks this often; 0 means 5s.
	DNSRefreshMin time.Duration `toml:"dns_refresh_min"`
	// DNSGrace is how long a name that stops resolving keeps its last
	// good answer after that answer's TTL; 0 means 5m.
	DNSGrace time.Duration `toml:"dns_grace"`
}

// PerTryTimeout is how long one core gets: TryTimeout, but never more
// than the whole Timeout. A try_timeout at or above timeout means one
// core per request, failover only on errors that come quickly.
func (c Config) PerTryTimeout() time.Duration { return min(c.TryTimeout, c.Timeout) }

// DefaultConfig is a core on 127.0.0.1:5070 reached from 127.0.0.1:5062.
func DefaultConfig() Config {
	return Config{
		Listen:        "127.0.0.1:5062",
		Upstreams:     []string{"sip:127.0.0.1:5070;transport=udp"},
		Mode:          ModePath,
		Timeout:       8 * time.Second,
		RetryAfter:    30 * time.Second,
		KeyFile:       "var/flow.key",
		KeyGrace:      2 * time.Hour,
		Trusted:       []string{},
		DNSServers:    []string{},
		DNSRefreshMin: 5 * time.Second,
		DNSGrace:      5 * time.Minute,

		HealthInterval: 5 * time.Second,
		HealthTimeout:  2 * time.Second,
		UpAfter:        2,
		DownAfter:      2,
		TryTimeout:     2 * time.Second,
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
	// No upstreams is valid here: tenants may bring their own
	// (edge.ValidateTenants says when none is anywhere).
	seen := make(map[string]bool, len(c.Upstreams))
	for _, u := range c.Upstreams {
		e, err := parseUpstream(u, 0)
		switch {
		case err != nil:
			bad("upstreams", "%v", err)
		case seen[e.key()]:
			bad("upstreams", "%q is listed twice", u)
		}
		seen[e.key()] = true
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("tls_cert", "tls_cert and tls_key go together")
	}
	for _, s := range c.DNSServers {
		if _, err := parseDNSServer(s); err != nil {
			bad("dns_servers", "%q is not IP:port", s)
		}
	}
	if c.DNSRefreshMin != 0 && (c.DNSRefreshMin < time.Second || c.DNSRefreshMin > time.Hour) {
		bad("dns_refresh_min", "%s is neither 0 (5s) nor within 1s..1h", c.DNSRefreshMin)
	}
	if c.DNSGrace != 0 && (c.DNSGrace < time.Second || c.DNSGrace > 24*time.Hour) {
		bad("dns_grace", "%s is neither 0 (5m) nor within 1s..24h", c.DNSGrace)
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
	if c.HealthInterval != 0 && (c.HealthInterval < time.Second || c.HealthInterval > 5*time.Minute) {
		bad("health_interval", "%s is neither 0 (no probing) nor within 1s..5m", c.HealthInterval)
	}
	if c.HealthTimeout < 100*time.Millisecond || c.HealthTimeout > time.Minute {
		bad("health_timeout", "%s is outside 100ms..1m", c.HealthTimeout)
	} else if c.HealthInterval > 0 && c.HealthTimeout >= c.HealthInterval {
		bad("health_timeout", "%s must be below health_interval (%s)", c.HealthTimeout, c.HealthInterval)
	}
	if c.UpAfter < 1 || c.UpAfter > 100 {
		bad("up_after", "%d is outside 1..100", c.UpAfter)
	}
	if c.DownAfter < 1 || c.DownAfter > 100 {
		bad("down_after", "%d is outside 1..100", c.DownAfter)
	}
	// Not checked against timeout: PerTryTimeout caps it, and a timeout
	// shortened alone (tests do) should not need try_timeout too.
	if c.TryTimeout < 100*time.Millisecond || c.TryTimeout > 32*time.Second {
		bad("try_timeout", "%s is outside 100ms..32s", c.TryTimeout)
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
