package nat

import (
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func TestConfigDefaults(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if want := (Config{KeepaliveConfig: DefaultKeepaliveConfig(), StreamLimits: DefaultStreamLimits(), MaxFlows: 1_000_000}); c != want {
		t.Errorf("defaults = %+v, want %+v", c, want)
	}
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	c.MaxFlows = 0
	if err := c.Validate(); err == nil || err.Error() != "nat.max_flows: 0 is below 1" {
		t.Errorf("Validate() = %v, want nat.max_flows: 0 is below 1", err)
	}
	// The keepalive keys are checked too, every problem reported.
	c.Interval = 0
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "nat.max_flows: 0 is below 1") || !strings.Contains(err.Error(), "nat.keepalive_interval: 0s is outside") {
		t.Errorf("Validate() = %v, want both max_flows and keepalive_interval named", err)
	}
}

// The [nat] section's keys, as a config file spells them.
func TestConfigTOML(t *testing.T) {
	const file = `
[nat]
keepalive = "options"
keepalive_interval = "30s"
keepalive_failures = 5
keepalive_rate = 500
flow_timer = "20s"
flow_timer_stream = "90s"
max_flows = 1000
`
	var f struct {
		NAT Config `toml:"nat"`
	}
	md, err := toml.Decode(file, &f)
	if err != nil {
		t.Fatal(err)
	}
	if u := md.Undecoded(); len(u) != 0 {
		t.Errorf("undecoded keys %v", u)
	}
	want := Config{
		KeepaliveConfig: KeepaliveConfig{
			Mode:            KeepaliveOptions,
			Interval:        30 * time.Second,
			Failures:        5,
			MaxPerSecond:    500,
			FlowTimerUDP:    20 * time.Second,
			FlowTimerStream: 90 * time.Second,
		},
		MaxFlows: 1000,
	}
	if f.NAT != want {
		t.Errorf("decoded %+v, want %+v", f.NAT, want)
	}
}

func TestStreamProbe(t *testing.T) {
	for _, tc := range []struct {
		mode, want KeepaliveMode
		stream     time.Duration
	}{
		{KeepaliveCRLF, KeepaliveOptions, 120 * time.Second},
		{KeepaliveOptions, KeepaliveOptions, time.Second},
		{KeepaliveOff, KeepaliveOff, 10 * time.Minute},
	} {
		c := DefaultConfig()
		c.Mode, c.FlowTimerStream = tc.mode, tc.stream
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		got := c.StreamProbe()
		want := c.KeepaliveConfig
		want.Mode, want.Interval = tc.want, tc.stream
		if got != want {
			t.Errorf("mode %s: StreamProbe() = %+v, want %+v", tc.mode, got, want)
		}
		if err := got.Validate(); err != nil {
			t.Errorf("mode %s: the probe of a valid config is invalid: %v", tc.mode, err)
		}
	}
}
