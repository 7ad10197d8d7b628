package edge

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sipedge/sipedge/upstream"
)

// TenantConfig is one [[tenant]] block: a customer's domains and the
// cores that serve them. A REGISTER's To domain picks its tenant; the
// tenant's name is sealed into the flow tokens its cores are given, so a
// core reaches only its own tenant's phones. What a block leaves out
// comes from [core] and [registration], which are themselves the default
// tenant (when [core] upstreams is not empty): it serves
// registration.domains, or every domain no block claims if that is empty.
type TenantConfig struct {
	Name    string   `toml:"name"`
	Domains []string `toml:"domains"`
	// Upstreams are this tenant's cores, as in [core].
	Upstreams []string `toml:"upstreams"`
	// Trusted are further sources allowed to send this tenant's requests
	// to the core side ([core] trusted is the default tenant's only).
	Trusted []string      `toml:"trusted"`
	Mode    upstream.Mode `toml:"mode"` // "": [core] mode
	// Registration limits; zero: [registration]'s.
	MinExpires  time.Duration `toml:"min_expires"`
	MaxExpires  time.Duration `toml:"max_expires"`
	MaxContacts int           `toml:"max_contacts"`
	// Offload and its intervals and rates; absent: [registration]'s.
	Offload        *bool         `toml:"offload"`
	PhoneExpires   time.Duration `toml:"phone_expires"`
	CoreExpires    time.Duration `toml:"core_expires"`
	CoreRate       int           `toml:"core_rate"`
	RepopulateRate int           `toml:"repopulate_rate"`
}

// tenantName keeps names short and printable: they appear in logs and
// metrics, and are sealed into every token.
var tenantName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,31}$`)

// Core is [core] as this tenant's pool sees it: its upstreams, trusted
// sources and mode.
func (t TenantConfig) Core(base upstream.Config) upstream.Config {
	c := base
	c.Upstreams, c.Trusted = t.Upstreams, t.Trusted
	if c.Trusted == nil {
		c.Trusted = []string{}
	}
	if t.Mode != "" {
		c.Mode = t.Mode
	}
	return c
}

// Registration is [registration] as this tenant sees it.
func (t TenantConfig) Registration(base RegistrationConfig) RegistrationConfig {
	r := base
	r.Domains = t.Domains
	if t.MinExpires != 0 {
		r.MinExpires = t.MinExpires
	}
	if t.MaxExpires != 0 {
		r.MaxExpires = t.MaxExpires
	}
	if t.MaxContacts != 0 {
		r.MaxContacts = t.MaxContacts
	}
	if t.Offload != nil {
		r.Offload = *t.Offload
	}
	if t.PhoneExpires != 0 {
		r.PhoneExpires = t.PhoneExpires
	}
	if t.CoreExpires != 0 {
		r.CoreExpires = t.CoreExpires
	}
	if t.CoreRate != 0 {
		r.CoreRate = t.CoreRate
	}
	if t.RepopulateRate != 0 {
		r.RepopulateRate = t.RepopulateRate
	}
	return r
}

// ValidateTenants checks the [[tenant]] blocks against [core] and
// [registration]: names and domains unique, each block valid as the
// sections it overrides.
func ValidateTenants(ts []TenantConfig, core upstream.Config, reg RegistrationConfig) error {
	var errs []error
	if len(ts) == 0 && len(core.Upstreams) == 0 {
		errs = append(errs, errors.New("core.upstreams: at least one core registrar is needed (or a [[tenant]])"))
	}
	names := map[string]bool{}
	domains := map[string]string{}
	for _, d := range reg.Domains {
		domains[strings.ToLower(d)] = "registration.domains"
	}
	for i, t := range ts {
		where := fmt.Sprintf("tenant[%d]", i)
		if t.Name != "" {
			where = fmt.Sprintf("tenant %q", t.Name)
		}
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%s: %s", where, fmt.Sprintf(format, a...)))
		}
		switch {
		case !tenantName.MatchString(t.Name):
			bad("name must be 1 to 32 of a-z, 0-9, '_', '.', '-', starting with a letter or digit")
		case names[t.Name]:
			bad("name is used twice")
		case t.Name == "default":
			bad(`name "default" is the [core] tenant's, as logs and metrics show it`)
		}
		names[t.Name] = true
		if len(t.Domains) == 0 {
			bad("domains: a tenant needs at least one")
		}
		for _, d := range t.Domains {
			d = strings.ToLower(d)
			if other, ok := domains[d]; ok {
				bad("domain %q is already %s's", d, other)
			}
			domains[d] = where
		}
		if len(t.Upstreams) == 0 {
			bad("upstreams: a tenant needs at least one core")
		}
		for _, err := range []error{t.Core(core).Validate(), t.Registration(reg).Validate()} {
			if err != nil {
				bad("%v", err)
			}
		}
	}
	return errors.Join(errs...)
}

// tenant is one set of domains with its cores: the way there, and what
// a REGISTER may ask for.
type tenant struct {
	name   string // "": the default tenant
	pool   *upstream.Pool
	mode   upstream.Mode
	policy atomic.Pointer[regPolicy] // replaced whole by a reload
	// leg is the way to the tenant's cores for a request keyed by AOR.
	leg   func(key string) (leg, error)
	probe upstream.ProbeFunc // health checks of its cores
	watch *coreWatch         // survival, re-population, core_rate
	// retryAfter is what phones refused for a busy core are told (±50%).
	retryAfter time.Duration
}

// tenants finds a request's tenant: by domain for what phones send, by
// source for what cores send.
type tenants struct {
	all      []*tenant // the default first, if there is one
	byDomain map[string]*tenant
	dflt     *tenant // nil: a domain no tenant claims is refused
	names    []string
}

func (ts *tenants) add(t *tenant, domains []string) {
	ts.all = append(ts.all, t)
	ts.names = append(ts.names, t.name)
	if t.name == "" {
		ts.dflt = t
		return
	}
	for _, d := range domains {
		ts.byDomain[strings.ToLower(d)] = t
	}
}

// forDomain is the tenant serving domain (lower case), or nil.
func (ts *tenants) forDomain(domain string) *tenant {
	if t := ts.byDomain[domain]; t != nil {
		return t
	}
	return ts.dflt
}

// named is the tenant called name, or nil.
func (ts *tenants) named(name string) *tenant {
	for _, t := range ts.all {
		if t.name == name {
			return t
		}
	}
	return nil
}

// trusts reports whether src may send to the core side: some tenant's
// core, or a source a tenant trusts.
func (ts *tenants) trusts(src netip.Addr) bool {
	for _, t := range ts.all {
		if t.pool.Trusts(src) {
			return true
		}
	}
	return false
}

// trusting are the names of the tenants whose cores src may speak for.
func (ts *tenants) trusting(src netip.Addr) []string {
	if len(ts.all) == 1 {
		if ts.all[0].pool.Trusts(src) {
			return ts.names
		}
		return nil
	}
	var out []string
	for _, t := range ts.all {
		if t.pool.Trusts(src) {
			out = append(out, t.name)
		}
	}
	return out
}

// newTenants makes the default tenant ([core], if it has upstreams) and
// one per [[tenant]] block, each with its forwarder.
func newTenants(cfg Config, d Deps, fd upstream.ForwarderDeps) (*tenants, error) {
	ts := &tenants{byDomain: make(map[string]*tenant)}
	make1 := func(name string, core upstream.Config, reg RegistrationConfig, pool *upstream.Pool) error {
		fwd, err := upstream.NewForwarder(core, pool, fd)
		if err != nil {
			return err
		}
		t := &tenant{name: name, pool: pool, mode: core.Mode, probe: coreProbe(fwd), retryAfter: core.RetryAfter}
		t.policy.Store(newRegPolicy(reg))
		t.leg = coreLeg(core, pool, fwd)
		t.watch = newCoreWatch(t, d.Registry, cfg.Survival.Grace, d.Clock.Now, d.Events, d.Log)
		pool.OnChange(t.watch.changed)
		ts.add(t, reg.Domains)
		return nil
	}
	if d.Pools.Default != nil {
		if err := make1("", cfg.Core, cfg.Registration, d.Pools.Default); err != nil {
			return nil, err
		}
	}
	for _, tc := range cfg.Tenants {
		if err := make1(tc.Name, tc.Core(cfg.Core), tc.Registration(cfg.Registration), d.Pools.Tenants[tc.Name]); err != nil {
			return nil, err
		}
	}
	return ts, nil
}

// coreLeg is the way to pool's cores for a request keyed by its AOR: the
// cores up, in the pool's order (priority, then the AOR's sticky
// weighted pick); none up is an answer at once (503 with Retry-After).
func coreLeg(core upstream.Config, pool *upstream.Pool, fwd *upstream.Forwarder) func(key string) (leg, error) {
	unreachable := func(err error) error { return fwd.Unreachable(netip.AddrPort{}, err) } // made once, not per request
	return func(key string) (leg, error) {
		targets := pool.Order(key)
		if len(targets) == 0 {
			_, err := pool.PickFor(key)
			return leg{}, err
		}
		l := leg{Hop: fwd.HopTo(targets[0]), toward: "core", admit: fwd.Admit, tryTimeout: core.PerTryTimeout(),
			report: func(i int, started time.Time, status int, err error) {
				pool.ReportTry(targets[i], started, status, err)
			}}
		for _, t := range targets[1:] {
			l.alts = append(l.alts, fwd.HopTo(t))
		}
		l.unreachable = unreachable
		return l, nil
	}
}

// Pools are the cores of every tenant: the default one's ([core]; nil
// when its upstreams are empty) and each [[tenant]]'s, by name.
type Pools struct {
	Default *upstream.Pool
	Tenants map[string]*upstream.Pool
}

// NewPools builds every tenant's pool; opts gives each its options by
// tenant name ("" for the default).
func NewPools(cfg Config, opts func(tenant string) []upstream.Option) (Pools, error) {
	if opts == nil {
		opts = func(string) []upstream.Option { return nil }
	}
	p := Pools{Tenants: make(map[string]*upstream.Pool)}
	var err error
	if len(cfg.Core.Upstreams) > 0 {
		if p.Default, err = upstream.NewPool(cfg.Core, opts("")...); err != nil {
			return p, err
		}
	}
	for _, t := range cfg.Tenants {
		if p.Tenants[t.Name], err = upstream.NewPool(t.Core(cfg.Core), opts(t.Name)...); err != nil {
			return p, fmt.Errorf("tenant %q: %w", t.Name, err)
		}
	}
	return p, nil
}

// Reload gives each pool its part of cfg: cores, trusted sources and
// health settings. Tenants added or removed wait for a restart.
func (p Pools) Reload(cfg Config) error {
	var errs []error
	if p.Default != nil && len(cfg.Core.Upstreams) > 0 {
		errs = append(errs, p.Default.Reload(cfg.Core))
	}
	for _, t := range cfg.Tenants {
		if pool := p.Tenants[t.Name]; pool != nil {
			if err := pool.Reload(t.Core(cfg.Core)); err != nil {
				errs = append(errs, fmt.Errorf("tenant %q: %w", t.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}
