// Package state keeps registration state across restarts: the bindings
// the core accepted (with what their flows need to come back) and the
// ban list with its escalation history. A Store holds it; a Writer feeds
// it from the registry's and the limiter's events in batches, off the
// hot path.
package state

import (
	"fmt"
	"time"

	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/ratelimit"
)

// Store is where state outlives the process. Implementations are safe
// for one writer and are not shared between processes unless they say
// so.
type Store interface {
	// Load returns everything saved, and when it was last written.
	Load() (Snapshot, error)
	// Write applies one batch, all or nothing.
	Write(Batch) error
	Close() error
	// String names the store for logs (a file, a server).
	String() string
}

// Snapshot is the saved state.
type Snapshot struct {
	Saved    time.Time // when the last batch was written; zero if never
	Bindings []registry.Binding
	Bans     []ratelimit.Ban // the limiter's BanHistory
}

// Batch is one write: bindings put and deleted (by AOR and ID), and the
// whole ban history when it changed.
type Batch struct {
	Saved   time.Time
	Put     []registry.Binding
	Delete  []registry.Binding
	Bans    []ratelimit.Ban
	BansSet bool // Bans replaces the stored history (nil: none left)
	// Full marks a batch that is the whole state rather than a change:
	// Put holds every binding, Bans (with BansSet) every ban, and a
	// binding not in Put is gone. Only Redis.Follow makes them, after
	// each (re)subscription; a Store's Write ignores the flag.
	Full bool
}

// Config is the [state] section.
type Config struct {
	// Backend is where state is kept: "bbolt" (a file in Dir, this edge
	// alone) or "redis" (shared by several edges).
	Backend string `toml:"backend"`
	// Dir holds the state file (sipedge.db); empty keeps state in memory
	// only, lost at exit. bbolt only.
	Dir string `toml:"dir"`
	// EdgeID names this edge in the shared change feed (redis); empty
	// means the host name.
	EdgeID string      `toml:"edge_id"`
	Redis  RedisConfig `toml:"redis"`
	// FlushInterval is how often changes are written: the durability
	// window, since a crash loses at most the changes of the last one.
	FlushInterval time.Duration `toml:"flush_interval"`
}

// DefaultConfig keeps state in var/ (beside the default key file),
// written every second.
func DefaultConfig() Config {
	return Config{Backend: "bbolt", Dir: "var", FlushInterval: time.Second, Redis: DefaultRedisConfig()}
}

// Validate reports what is wrong with c.
func (c Config) Validate() error {
	if c.FlushInterval < 10*time.Millisecond || c.FlushInterval > time.Minute {
		return &ConfigError{Key: "flush_interval", Msg: c.FlushInterval.String() + " is outside 10ms..1m"}
	}
	switch c.Backend {
	case "bbolt":
	case "redis":
		return c.Redis.Validate()
	default:
		return &ConfigError{Key: "backend", Msg: fmt.Sprintf("%q is not bbolt or redis", c.Backend)}
	}
	return nil
}

// ConfigError is a bad [state] key.
type ConfigError struct{ Key, Msg string }

func (e *ConfigError) Error() string { return "state." + e.Key + ": " + e.Msg }
