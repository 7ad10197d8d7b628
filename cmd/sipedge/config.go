package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/sipedge/sipedge/edge"
	"github.com/sipedge/sipedge/edge/admin"
	"github.com/sipedge/sipedge/edge/alert"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/push"
	"github.com/sipedge/sipedge/edge/state"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream"
)

// fileConfig is the TOML file: each section belongs to the package that
// uses it and validates it, plus the process-wide [log].
type fileConfig struct {
	Access       edge.AccessConfig       `toml:"access"`
	Core         upstream.Config         `toml:"core"`
	Registration edge.RegistrationConfig `toml:"registration"`
	NAT          nat.Config              `toml:"nat"`
	RateLimit    ratelimit.Config        `toml:"ratelimit"`
	State        state.Config            `toml:"state"`
	Drain        edge.DrainConfig        `toml:"drain"`
	Survival     edge.SurvivalConfig     `toml:"survival"`
	Log          logConfig               `toml:"log"`
	Tenants      []edge.TenantConfig     `toml:"tenant"`
	Admin        admin.Config            `toml:"admin"`
	Audit        audit.Config            `toml:"audit"`
	Alerts       alert.Config            `toml:"alerts"`
	Push         pushConfig              `toml:"push"`
}

// pushConfig is [push]: the push services' credentials (push.Config)
// and how long requests wait for a woken phone (edge.WakeConfig).
type pushConfig struct {
	push.Config
	edge.WakeConfig
}

type logConfig struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

func defaultConfig() fileConfig {
	return fileConfig{
		Access:       edge.DefaultAccessConfig(),
		Core:         upstream.DefaultConfig(),
		Registration: edge.DefaultRegistrationConfig(),
		NAT:          nat.DefaultConfig(),
		RateLimit:    ratelimit.DefaultConfig(),
		State:        state.DefaultConfig(),
		Drain:        edge.DefaultDrainConfig(),
		Log:          logConfig{Level: "info", Format: "text"},
		Admin:        admin.DefaultConfig(),
		Audit:        audit.DefaultConfig(),
		Alerts:       alert.DefaultConfig(),
		Push:         pushConfig{push.DefaultConfig(), edge.DefaultWakeConfig()},
	}
}

func (c fileConfig) validate() error {
	return errors.Join(c.Access.Validate(), c.Core.Validate(), c.Registration.Validate(),
		c.NAT.Validate(), c.RateLimit.Validate(), c.State.Validate(), c.Drain.Validate(), c.Survival.Validate(), c.Log.validate(),
		edge.ValidateTenants(c.Tenants, c.Core, c.Registration), c.Admin.Validate(c.accessAddrs()), c.Audit.Validate(), c.Alerts.Validate(),
		c.Push.Config.Validate(), c.Push.WakeConfig.Validate())
}

// accessAddrs are every access listener's address.
func (c fileConfig) accessAddrs() []string {
	a := c.Access
	return slices.Concat(a.UDP, a.TCP, a.TLS, a.WS, a.WSS)
}

// redacted is the config as the admin API shows it: secrets blanked.
func (c fileConfig) redacted() fileConfig {
	if c.State.Redis.Password != "" {
		c.State.Redis.Password = "(redacted)"
	}
	if c.Alerts.Webhook != "" { // its URL may carry a key
		c.Alerts.Webhook = "(redacted)"
	}
	if c.Push.GatewayURL != "" { // so may this one
		c.Push.GatewayURL = "(redacted)"
	}
	return c
}

// edge is what the edge server reads of the file.
func (c fileConfig) edge() edge.Config {
	return edge.Config{Access: c.Access, Registration: c.Registration, Core: c.Core, NAT: c.NAT, Drain: c.Drain, Survival: c.Survival,
		Wake: c.Push.WakeConfig, Tenants: c.Tenants}
}

func (l logConfig) validate() error {
	var errs []error
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level: %q is not debug, info, warn or error", l.Level))
	}
	if l.Format != "text" && l.Format != "json" {
		errs = append(errs, fmt.Errorf("log.format: %q is not text or json", l.Format))
	}
	return errors.Join(errs...)
}

// loadConfig reads path over the defaults, strictly: unknown keys, syntax
// errors (with line and column) and invalid values are all errors.
// An empty path means the built-in defaults.
func loadConfig(path string) (fileConfig, error) {
	cfg := defaultConfig()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return cfg, err
		}
		md, err := toml.Decode(string(data), &cfg)
		if err != nil {
			var pe toml.ParseError
			if errors.As(err, &pe) {
				return cfg, fmt.Errorf("%s:%d:%d: %s", path, pe.Position.Line, pe.Position.Col, pe.Message)
			}
			return cfg, fmt.Errorf("%s: %w", path, err)
		}
		if und := md.Undecoded(); len(und) > 0 {
			keys := make([]string, len(und))
			for i, k := range und {
				keys[i] = k.String()
			}
			return cfg, fmt.Errorf("%s: unknown key %s", path, strings.Join(keys, ", "))
		}
	}
	if err := cfg.validate(); err != nil {
		if path == "" {
			path = "built-in defaults"
		}
		return cfg, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}
