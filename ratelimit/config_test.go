package ratelimit

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func TestDefaultConfigValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want string // substring of the error
	}{
		{"allow", func(c *Config) { c.Allow = []string{"10.0.0.0/33"} }, `ratelimit.allow: "10.0.0.0/33" is not an address or CIDR`},
		{"allow junk", func(c *Config) { c.Allow = []string{"office"} }, `ratelimit.allow: "office"`},
		{"max_sources", func(c *Config) { c.MaxSources = 0 }, "ratelimit.max_sources: must be >= 1"},
		{"max_aors", func(c *Config) { c.MaxAORs = -1 }, "ratelimit.max_aors: must be >= 1"},
		{"max_bans", func(c *Config) { c.MaxBans = 0 }, "ratelimit.max_bans: must be >= 1"},
		{"binding_weight", func(c *Config) { c.BindingWeight = -1 }, "ratelimit.binding_weight: must be >= 0"},
		{"max_bindings", func(c *Config) { c.MaxBindings = -1 }, "ratelimit.max_bindings: must be >= 0"},
		{"overflow_share", func(c *Config) { c.OverflowShare = 0.5 }, "ratelimit.overflow_share: must be >= 1"},
		{"packet_rate", func(c *Config) { c.PacketRate = 0 }, "ratelimit.packet_rate: must be > 0"},
		{"packet_burst", func(c *Config) { c.PacketBurst = 0 }, "ratelimit.packet_burst: must be >= 1"},
		{"byte_rate", func(c *Config) { c.ByteRate = -5 }, "ratelimit.byte_rate: must be > 0"},
		{"byte_burst", func(c *Config) { c.ByteBurst = 1500 }, "ratelimit.byte_burst: must be >= 65535"},
		{"conn_rate", func(c *Config) { c.ConnRate = 0 }, "ratelimit.conn_rate: must be > 0"},
		{"conn_burst", func(c *Config) { c.ConnBurst = 0 }, "ratelimit.conn_burst: must be >= 1"},
		{"max_conns", func(c *Config) { c.MaxConns = 0 }, "ratelimit.max_conns: must be >= 1"},
		{"request_rate", func(c *Config) { c.RequestRate = 0 }, "ratelimit.request_rate: must be > 0"},
		{"request_burst", func(c *Config) { c.RequestBurst = 0 }, "ratelimit.request_burst: must be >= 1"},
		{"method_rate", func(c *Config) { c.MethodRate = 0 }, "ratelimit.method_rate: must be > 0"},
		{"method_burst", func(c *Config) { c.MethodBurst = 0 }, "ratelimit.method_burst: must be >= 1"},
		{"methods name", func(c *Config) { c.Methods = map[string]Budget{"NOT A METHOD": {1, 1}} }, `ratelimit.methods: "NOT A METHOD" is not a SIP method name`},
		{"methods REGISTER", func(c *Config) { c.Methods = map[string]Budget{"REGISTER": {1, 1}} }, "ratelimit.methods.REGISTER:"},
		{"methods rate", func(c *Config) { c.Methods = map[string]Budget{"INFO": {0, 1}} }, "ratelimit.methods.INFO.rate: must be > 0"},
		{"methods burst", func(c *Config) { c.Methods = map[string]Budget{"INFO": {1, 0}} }, "ratelimit.methods.INFO.burst: must be >= 1"},
		{"methods count", func(c *Config) {
			c.Methods = map[string]Budget{"A": {1, 1}, "B": {1, 1}, "C": {1, 1}, "D": {1, 1}, "E": {1, 1}, "F": {1, 1}}
		}, "ratelimit.methods: names 6 methods, at most 5"},
		{"register_rate", func(c *Config) { c.RegisterRate = 0 }, "ratelimit.register_rate: must be > 0"},
		{"register_burst", func(c *Config) { c.RegisterBurst = 0 }, "ratelimit.register_burst: must be >= 1"},
		{"reply_rate", func(c *Config) { c.ReplyRate = 0 }, "ratelimit.reply_rate: must be > 0"},
		{"reply_burst", func(c *Config) { c.ReplyBurst = -1 }, "ratelimit.reply_burst: must be >= 0"},
		{"retry_after", func(c *Config) { c.RetryAfter = 0 }, "ratelimit.retry_after: must be >= 1s"},
		{"retry_jitter", func(c *Config) { c.RetryJitter = 1 }, "ratelimit.retry_jitter: must be in [0, 1)"},
		{"max_inflight", func(c *Config) { c.MaxInflight = 0 }, "ratelimit.max_inflight: must be >= 1"},
		{"flood_window", func(c *Config) { c.FloodWindow = time.Millisecond }, "ratelimit.flood_window: must be >= 1s"},
		{"ban_time", func(c *Config) { c.BanTime = 0 }, "ratelimit.ban_time: must be >= 1s"},
		{"ban_max", func(c *Config) { c.BanMax = time.Minute }, "ratelimit.ban_max: must be >= ban_time (5m0s)"},
		{"ban_forget", func(c *Config) { c.BanForget = -time.Second }, "ratelimit.ban_forget: must be >= 0s"},
		{"auth_failures", func(c *Config) { c.AuthFailures = 0 }, "ratelimit.auth_failures: must be >= 1"},
		{"aor_auth_failures", func(c *Config) { c.AORAuthFailures = 0 }, "ratelimit.aor_auth_failures: must be >= 1"},
		{"auth_window", func(c *Config) { c.AuthWindow = 0 }, "ratelimit.auth_window: must be >= 1s"},
		{"malformed_limit", func(c *Config) { c.MalformedLimit = 0 }, "ratelimit.malformed_limit: must be >= 1"},
		{"malformed_window", func(c *Config) { c.MalformedWindow = 0 }, "ratelimit.malformed_window: must be >= 1s"},
		{"scanner empty", func(c *Config) { c.ScannerUserAgents = []string{" "} }, "ratelimit.scanner_user_agents: empty pattern"},
		{"scanner long", func(c *Config) { c.ScannerUserAgents = []string{strings.Repeat("x", 65)} }, "ratelimit.scanner_user_agents:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.want)
			}
			if _, err := New(c, nil, Events{}); err == nil {
				t.Fatal("New accepted an invalid config")
			}
		})
	}
}

func TestValidateReportsEveryKey(t *testing.T) {
	c := DefaultConfig()
	c.PacketRate, c.RegisterRate = 0, 0
	err := c.Validate()
	for _, want := range []string{"ratelimit.packet_rate:", "ratelimit.register_rate: must be > 0"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want %q in it", err, want)
		}
	}
}

func TestAllowForms(t *testing.T) {
	l, _ := newLimiter(t, func(c *Config) {
		c.Allow = []string{"192.0.2.7", "::ffff:198.51.100.0/120", "2001:db8:1::/48"}
	}, Events{})
	for _, a := range []string{"192.0.2.7", "::ffff:192.0.2.7", "198.51.100.200", "2001:db8:1:2::3"} {
		if !l.lim.Load().allowed(addr(a).Unmap()) {
			t.Errorf("%s not allowlisted", a)
		}
	}
	for _, a := range []string{"192.0.2.8", "198.51.101.1", "2001:db8:2::1"} {
		if l.lim.Load().allowed(addr(a).Unmap()) {
			t.Errorf("%s allowlisted", a)
		}
	}
}

// TestParsePrefix: CIDRs are masked, bare addresses are single hosts, and
// IPv4-mapped forms become IPv4 (a mapped prefix only from /96).
func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"192.0.2.7", "192.0.2.7/32"},
		{"192.0.2.7/32", "192.0.2.7/32"},
		{"0.0.0.0/0", "0.0.0.0/0"},
		{"2001:db8:1::/48", "2001:db8:1::/48"},
		{"2001:db8:1:2::3/48", "2001:db8:1::/48"},
		{"2001:db8::1", "2001:db8::1/128"},
		{"fe80::1%eth0", "fe80::1/128"},
		{"::ffff:192.0.2.7", "192.0.2.7/32"},
		{"::ffff:192.0.2.7/128", "192.0.2.7/32"},
		{"::ffff:198.51.100.0/120", "198.51.100.0/24"},
		{"::ffff:198.51.100.9/120", "198.51.100.0/24"},
		{"::ffff:0.0.0.0/96", "0.0.0.0/0"},
		{"::ffff:0.0.0.0/95", "::fffe:0:0/95"},
		{"::/0", "::/0"},
	} {
		p, err := ParsePrefix(tc.in)
		if err != nil || p.String() != tc.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tc.in, p, err, tc.want)
		}
	}
	for _, in := range []string{"", "office", "10.0.0.0/33", "10.0.0.1/", "/8", "::ffff:1.2.3.4/129", "fe80::1%eth0/64", "10.0.0.0/8/8", " 10.0.0.1"} {
		if p, err := ParsePrefix(in); err == nil || p.IsValid() {
			t.Errorf("ParsePrefix(%q) = %v, %v; want an error", in, p, err)
		}
	}
}

// readmeTOML is the ```toml block of README.md.
func readmeTOML(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "```toml\n")
	if !ok {
		t.Fatal("README.md has no ```toml block")
	}
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("README.md: unterminated ```toml block")
	}
	return block
}

// TestReadmeDefaults: the annotated [ratelimit] section in README.md
// decodes, with no unknown key, to exactly DefaultConfig.
func TestReadmeDefaults(t *testing.T) {
	var file struct {
		RateLimit Config `toml:"ratelimit"`
	}
	md, err := toml.Decode(readmeTOML(t), &file)
	if err != nil {
		t.Fatal(err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		t.Fatalf("unknown keys in README: %v", und)
	}
	if want := DefaultConfig(); !reflect.DeepEqual(file.RateLimit, want) {
		t.Fatalf("README.md config differs from DefaultConfig:\n got %+v\nwant %+v", file.RateLimit, want)
	}
}

// TestTOMLOverDefaults: a file decoded over the defaults, as the loader
// does, keeps unnamed defaults and decodes durations and integer rates.
func TestTOMLOverDefaults(t *testing.T) {
	file := struct {
		RateLimit Config `toml:"ratelimit"`
	}{DefaultConfig()}
	const src = `
[ratelimit]
allow = ["10.0.0.0/8"]
packet_rate = 100
flood_window = "30s"
scanner_user_agents = []
[ratelimit.methods]
MESSAGE = { rate = 1.5, burst = 5 }
`
	md, err := toml.Decode(src, &file)
	if err != nil {
		t.Fatal(err)
	}
	if len(md.Undecoded()) > 0 {
		t.Fatalf("undecoded: %v", md.Undecoded())
	}
	c := file.RateLimit
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.PacketRate != 100 || c.FloodWindow != 30*time.Second || c.Allow[0] != "10.0.0.0/8" {
		t.Errorf("decoded %v %v %v", c.PacketRate, c.FloodWindow, c.Allow)
	}
	if c.Methods["MESSAGE"] != (Budget{1.5, 5}) || c.Methods["INVITE"] != DefaultConfig().Methods["INVITE"] {
		t.Errorf("methods = %v", c.Methods)
	}
	if len(c.ScannerUserAgents) != 0 {
		t.Errorf("scanner_user_agents = [] kept %v", c.ScannerUserAgents)
	}
	if c.RequestRate != DefaultConfig().RequestRate {
		t.Errorf("request_rate lost its default: %v", c.RequestRate)
	}
}

func TestDecisionReasonStrings(t *testing.T) {
	for d, want := range map[Decision]string{Allow: "allow", Reject: "reject", Drop: "drop", 0: "Decision(0)", 9: "Decision(9)"} {
		if got := d.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", d, got, want)
		}
	}
	seen := map[string]bool{}
	for r := range Reason(NumReasons) {
		s := r.String()
		if s == "" || seen[s] || strings.HasPrefix(s, "Reason(") {
			t.Errorf("Reason %d has name %q (duplicate or missing)", r, s)
		}
		seen[s] = true
	}
	if got, want := Reason(NumReasons).String(), fmt.Sprintf("Reason(%d)", NumReasons); got != want {
		t.Errorf("out of range: %q, want %q", got, want)
	}
	// JSON logs and encoders show names, not numbers.
	b, err := json.Marshal(map[string]any{"d": Drop, "r": ReasonAORAuthFailures})
	if err != nil || string(b) != `{"d":"drop","r":"aor_auth_failures"}` {
		t.Errorf("JSON: %s, %v", b, err)
	}
}
