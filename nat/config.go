package nat

import (
	"errors"
	"fmt"
)

// Config is the [nat] config section: keepalives, the flow table and the
// limits on stream connections.
type Config struct {
	KeepaliveConfig
	StreamLimits
	// MaxFlows caps the flow table; a REGISTER on a new flow beyond it
	// still works but its flow is not kept alive.
	MaxFlows int `toml:"max_flows"`
}

// DefaultConfig is DefaultKeepaliveConfig, DefaultStreamLimits and a
// table of a million flows.
func DefaultConfig() Config {
	return Config{KeepaliveConfig: DefaultKeepaliveConfig(), StreamLimits: DefaultStreamLimits(), MaxFlows: 1_000_000}
}

// Validate names every invalid key and why.
func (c Config) Validate() error {
	var errs []error
	if c.MaxFlows < 1 {
		errs = append(errs, fmt.Errorf("nat.max_flows: %d is below 1", c.MaxFlows))
	}
	if err := c.StreamLimits.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("nat.%w", err))
	}
	return errors.Join(append(errs, c.KeepaliveConfig.Validate())...)
}

// StreamProbe is the keepalive config for stream (TCP, TLS, WebSocket)
// flows. A stream flow's close is seen at once, but a connection a NAT or
// a dead phone dropped silently is not: one silent for the stream flow
// timer gets an OPTIONS over it (phones' own CRLF or SIP traffic
// postpones it), and keepalive_failures unanswered ones kill it. With
// keepalive off it stays off. The probe of a valid Config is valid.
func (c Config) StreamProbe() KeepaliveConfig {
	p := c.KeepaliveConfig
	if p.Mode != KeepaliveOff {
		p.Mode = KeepaliveOptions
	}
	p.Interval = c.FlowTimerStream
	return p
}
