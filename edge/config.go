package edge

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/sipedge/sipedge/ratelimit"
)

// AccessConfig is the [access] section: where phones connect.
type AccessConfig struct {
	UDP       []string `toml:"udp"`
	TCP       []string `toml:"tcp"`
	TLS       []string `toml:"tls"`
	WS        []string `toml:"ws"`
	WSS       []string `toml:"wss"`
	TLSCert   string   `toml:"tls_cert"`
	TLSKey    string   `toml:"tls_key"`
	Advertise string   `toml:"advertise"`
	// Trusted may send out-of-dialog requests without a binding.
	Trusted    []string `toml:"trusted"`
	MaxDialogs int      `toml:"max_dialogs"`
	// HideTopology keeps the core's Vias, Record-Routes and software
	// names from phones.
	HideTopology bool `toml:"hide_topology"`
	// Server is the Server header phones see in answers relayed from the
	// core when hiding ("": none).
	Server string `toml:"server"`
}

// RegistrationConfig is the [registration] section: what a REGISTER may
// ask for.
type RegistrationConfig struct {
	Domains     []string      `toml:"domains"`
	MinExpires  time.Duration `toml:"min_expires"`
	MaxExpires  time.Duration `toml:"max_expires"`
	MaxContacts int           `toml:"max_contacts"`
	// Offload absorbs refreshes: the core is registered for CoreExpires,
	// phones are granted PhoneExpires (±10%, so a mass reboot does not
	// come back in waves), and a refresh that changes nothing (same flow,
	// Call-ID, contacts, a higher CSeq, the core's registration good for
	// a while yet) is answered by the edge. Anything else goes to the
	// core, which authenticates it.
	Offload      bool          `toml:"offload"`
	PhoneExpires time.Duration `toml:"phone_expires"`
	CoreExpires  time.Duration `toml:"core_expires"`
	// CoreRate caps the REGISTERs sent to each core per second (0: no
	// cap), shared fairly between sources; a REGISTER waits at most a
	// second for its turn. Beyond it a refresh the edge can answer from
	// what the core last accepted is answered so, and anything else gets
	// 503 with a spread Retry-After.
	CoreRate int `toml:"core_rate"`
	// RepopulateRate paces telling a core again what it may have lost
	// (it went down, or a 200 left out bindings the edge holds): per
	// tenant, re-registrations per second. Refreshes over it are
	// answered from cache and try again next time.
	RepopulateRate int `toml:"repopulate_rate"`
}

// DefaultAccessConfig has phones on 127.0.0.1:5060, UDP and TCP.
func DefaultAccessConfig() AccessConfig {
	return AccessConfig{UDP: []string{"127.0.0.1:5060"}, TCP: []string{"127.0.0.1:5060"}, MaxDialogs: 100_000, HideTopology: true}
}

// DefaultRegistrationConfig serves any domain, 60 s to 1 h, 10 contacts.
func DefaultRegistrationConfig() RegistrationConfig {
	return RegistrationConfig{MinExpires: 60 * time.Second, MaxExpires: time.Hour, MaxContacts: 10,
		PhoneExpires: 60 * time.Second, CoreExpires: time.Hour, RepopulateRate: 100}
}

// Validate names every invalid key and why.
func (c AccessConfig) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("access.%s: %s", key, fmt.Sprintf(format, a...)))
	}
	lists := []struct {
		key   string
		addrs []string
	}{{"udp", c.UDP}, {"tcp", c.TCP}, {"tls", c.TLS}, {"ws", c.WS}, {"wss", c.WSS}}
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
	if c.Advertise != "" {
		if a, err := netip.ParseAddr(c.Advertise); err != nil || a.IsUnspecified() {
			bad("advertise", "%q is not an IP address", c.Advertise)
		}
	} else if wildcard {
		// Via and Record-Route toward phones need a real address.
		bad("advertise", "required when listening on 0.0.0.0 or [::]: the address phones reach")
	}
	if total == 0 {
		errs = append(errs, errors.New("access: no listener configured"))
	}
	if (len(c.TLS) > 0 || len(c.WSS) > 0) && (c.TLSCert == "" || c.TLSKey == "") {
		bad("tls_cert", "tls and wss listeners need tls_cert and tls_key")
	}
	for _, p := range c.Trusted {
		if _, err := ratelimit.ParsePrefix(p); err != nil {
			bad("trusted", "%q is not a CIDR or address", p)
		}
	}
	if c.MaxDialogs < 1 {
		bad("max_dialogs", "%d is below 1", c.MaxDialogs)
	}
	return errors.Join(errs...)
}

// Validate names every invalid key and why.
func (r RegistrationConfig) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("registration.%s: %s", key, fmt.Sprintf(format, a...)))
	}
	if r.MinExpires < time.Second {
		bad("min_expires", "%s is below 1s", r.MinExpires)
	}
	if r.MaxExpires < r.MinExpires {
		bad("max_expires", "%s is below min_expires %s", r.MaxExpires, r.MinExpires)
	}
	if r.MaxContacts < 1 {
		bad("max_contacts", "%d is below 1", r.MaxContacts)
	}
	if r.PhoneExpires < 10*time.Second || r.PhoneExpires > time.Hour {
		bad("phone_expires", "%s is outside 10s..1h", r.PhoneExpires)
	}
	if r.CoreExpires < 3*r.PhoneExpires || r.CoreExpires > 24*time.Hour {
		bad("core_expires", "%s is not within 3 × phone_expires (%s) .. 24h", r.CoreExpires, r.PhoneExpires)
	}
	if r.CoreRate < 0 || r.CoreRate > 1_000_000 {
		bad("core_rate", "%d is outside 0..1000000", r.CoreRate)
	}
	if r.RepopulateRate < 1 || r.RepopulateRate > 1_000_000 {
		bad("repopulate_rate", "%d is outside 1..1000000", r.RepopulateRate)
	}
	return errors.Join(errs...)
}

// DrainConfig is the [drain] section: how the edge stops (SIGTERM).
type DrainConfig struct {
	// Grace is how long a stop may take: transactions in flight finish,
	// and stream connections are closed spread over it, so their
	// reconnects do not arrive at once. A second SIGTERM ends it at once.
	Grace time.Duration `toml:"grace"`
	// RetryAfter is what REGISTERs and new dialogs are told while
	// draining (503), jittered by ±50% so they do not return together.
	RetryAfter time.Duration `toml:"retry_after"`
}

// DefaultDrainConfig drains for 10 s and sends phones back in 15 to 45 s.
func DefaultDrainConfig() DrainConfig {
	return DrainConfig{Grace: 10 * time.Second, RetryAfter: 30 * time.Second}
}

// Validate names every invalid key and why.
func (c DrainConfig) Validate() error {
	var errs []error
	if c.Grace < 0 || c.Grace > 10*time.Minute {
		errs = append(errs, fmt.Errorf("drain.grace: %s is outside 0..10m", c.Grace))
	}
	if c.RetryAfter < 2*time.Second || c.RetryAfter > time.Hour {
		errs = append(errs, fmt.Errorf("drain.retry_after: %s is outside 2s..1h", c.RetryAfter))
	}
	return errors.Join(errs...)
}

// SurvivalConfig is the [survival] section: a branch that keeps working
// while every core of its tenant is down.
type SurvivalConfig struct {
	// Grace is how long after the last core of a tenant went down the
	// edge keeps answering the refreshes of phones it knows, on their own
	// flows, from what the core last accepted, and routes calls and
	// messages between phones registered here straight over their flows.
	// New phones get 503 meanwhile. 0: off (everything gets 503).
	Grace time.Duration `toml:"grace"`
}

// Validate names every invalid key and why.
func (c SurvivalConfig) Validate() error {
	if c.Grace < 0 || c.Grace > 7*24*time.Hour {
		return fmt.Errorf("survival.grace: %s is outside 0..168h", c.Grace)
	}
	return nil
}
