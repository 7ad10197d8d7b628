package upstream

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseTarget(t *testing.T) {
	cases := []struct {
		in   string
		tp   string
		addr string
		bad  bool
	}{
		{in: "sip:127.0.0.1:5070;transport=udp", tp: "UDP", addr: "127.0.0.1:5070"},
		{in: "sip:10.0.0.1", tp: "UDP", addr: "10.0.0.1:5060"},
		{in: "sip:10.0.0.1;transport=TCP", tp: "TCP", addr: "10.0.0.1:5060"},
		{in: "sips:10.0.0.1", tp: "TLS", addr: "10.0.0.1:5061"},
		{in: "sip:[2001:db8::1]:5080;transport=tcp", tp: "TCP", addr: "[2001:db8::1]:5080"},
		{in: "sip:core.example.com", bad: true},
		{in: "tel:+123", bad: true},
		{in: "sip:10.0.0.1;transport=ws", bad: true},
		{in: "sip:10.0.0.1;transport=sctp", bad: true},
		{in: "", bad: true},
	}
	for _, tc := range cases {
		got, err := ParseTarget(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("%q: accepted as %+v", tc.in, got)
			}
			continue
		}
		if err != nil || got.Transport != tc.tp || got.Addr != netip.MustParseAddrPort(tc.addr) {
			t.Errorf("%q: got %+v, %v", tc.in, got, err)
		}
	}
}

func TestPoolPicksPrimary(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Upstreams = []string{"sip:10.0.0.1", "sip:10.0.0.2"}
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p.Pick().Addr.Addr().String() != "10.0.0.1" || len(p.Targets()) != 2 {
		t.Fatal("wrong primary")
	}
	cfg.Upstreams = nil
	if _, err := NewPool(cfg); err == nil {
		t.Fatal("empty pool accepted")
	}
}

// Only the cores and core.trusted may speak for the core side.
func TestPoolTrusts(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Upstreams = []string{"sip:10.0.0.1", "sip:[2001:db8::5]:5070;transport=tcp"}
	cfg.Trusted = []string{"192.0.2.0/24", "::ffff:198.51.100.7"}
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src  string
		want bool
	}{
		{"10.0.0.1", true}, {"::ffff:10.0.0.1", true}, {"10.0.0.2", false},
		{"2001:db8::5", true}, {"2001:db8::6", false},
		{"192.0.2.200", true}, {"192.0.3.1", false},
		{"198.51.100.7", true}, {"198.51.100.8", false},
	} {
		if got := p.Trusts(netip.MustParseAddr(tc.src)); got != tc.want {
			t.Errorf("Trusts(%s) = %v, want %v", tc.src, got, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	bad := DefaultConfig()
	bad.Listen = "0.0.0.0:5062"
	bad.Trusted = []string{"nonsense"}
	bad.Mode = "magic"
	err := bad.Validate()
	for _, key := range []string{"core.listen", "core.trusted", "core.mode"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("error %v does not name %s", err, key)
		}
	}
}

// ;priority and ;weight are the edge's own: parsed, checked, and not
// sent on to the core.
func TestParseTargetPriorityWeight(t *testing.T) {
	got, err := ParseTarget("sip:10.0.0.10:5060;transport=udp;priority=1;weight=3")
	if err != nil {
		t.Fatal(err)
	}
	if got.Priority != 1 || got.Weight != 3 || got.Transport != "UDP" {
		t.Errorf("got priority %d weight %d transport %s", got.Priority, got.Weight, got.Transport)
	}
	if s := got.URI.String(); s != "sip:10.0.0.10:5060;transport=udp" {
		t.Errorf("URI sent on = %q, still carries local params", s)
	}
	if got, err := ParseTarget("sip:10.0.0.10;PRIORITY=7;lr"); err != nil || got.Priority != 7 || got.Weight != 1 || got.String() != "sip:10.0.0.10;lr" {
		t.Errorf("case-insensitive params: %+v, %v", got, err)
	}
	for _, in := range []string{
		"sip:10.0.0.1;priority=-1", "sip:10.0.0.1;priority=x", "sip:10.0.0.1;priority=65536", "sip:10.0.0.1;priority=",
		"sip:10.0.0.1;weight=0", "sip:10.0.0.1;weight=-2", "sip:10.0.0.1;weight=1001", "sip:10.0.0.1;weight=1.5",
	} {
		_, err := ParseTarget(in)
		if err == nil || !strings.Contains(err.Error(), in) {
			t.Errorf("%q: error %v does not name the URI", in, err)
		}
	}
}

// Without ;priority a target's priority is its place in the list, so
// the first listed stays the primary and the next its backup.
func TestPoolDefaultPriorities(t *testing.T) {
	p := newTestPool(t, []string{"sip:10.0.0.1", "sip:10.0.0.2;weight=4", "sip:10.0.0.3;priority=0", "sip:10.0.0.4"})
	var prios, weights []int
	for _, tg := range p.Targets() {
		prios, weights = append(prios, tg.Priority), append(weights, tg.Weight)
	}
	if !slices.Equal(prios, []int{0, 1, 0, 3}) || !slices.Equal(weights, []int{1, 4, 1, 1}) {
		t.Fatalf("priorities %v, weights %v", prios, weights)
	}

	cfg := DefaultConfig()
	cfg.Upstreams = []string{"sip:10.0.0.1;weight=0"}
	if _, err := NewPool(cfg); err == nil || !strings.Contains(err.Error(), "core.upstreams") || !strings.Contains(err.Error(), "sip:10.0.0.1;weight=0") {
		t.Errorf("bad weight: %v", err)
	}
	cfg.Upstreams = []string{"sip:10.0.0.1;priority=1", "sip:10.0.0.1;weight=2"}
	if _, err := NewPool(cfg); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("the same core twice: %v", err)
	}
}

func TestConfigValidateHealth(t *testing.T) {
	def := DefaultConfig()
	if def.HealthInterval != 5*time.Second || def.HealthTimeout != 2*time.Second || def.UpAfter != 2 ||
		def.DownAfter != 2 || def.TryTimeout != 2*time.Second {
		t.Errorf("defaults: %+v", def)
	}
	off := DefaultConfig()
	off.HealthInterval = 0
	off.HealthTimeout = 30 * time.Second // unused with probing off, but in range
	if err := off.Validate(); err != nil {
		t.Errorf("probing off rejected: %v", err)
	}

	for _, tc := range []struct {
		key string
		set func(*Config)
	}{
		{"core.health_interval", func(c *Config) { c.HealthInterval = 500 * time.Millisecond }},
		{"core.health_interval", func(c *Config) { c.HealthInterval = 6 * time.Minute }},
		{"core.health_timeout", func(c *Config) { c.HealthTimeout = 5 * time.Second }}, // not below the interval
		{"core.health_timeout", func(c *Config) { c.HealthTimeout = 0 }},
		{"core.up_after", func(c *Config) { c.UpAfter = 0 }},
		{"core.up_after", func(c *Config) { c.UpAfter = 101 }},
		{"core.down_after", func(c *Config) { c.DownAfter = 0 }},
		{"core.try_timeout", func(c *Config) { c.TryTimeout = 0 }},
		{"core.try_timeout", func(c *Config) { c.TryTimeout = time.Minute }},
		{"core.upstreams", func(c *Config) { c.Upstreams = []string{"sip:10.0.0.1;priority=high"} }},
		{"core.upstreams", func(c *Config) { c.Upstreams = []string{"sip:10.0.0.1", "sip:10.0.0.1;weight=2"} }},
	} {
		c := DefaultConfig()
		tc.set(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%+v: error %v does not name %s", c, err, tc.key)
		}
	}

	// A try_timeout above timeout is capped, not an error: one core then
	// gets the whole timeout.
	c := DefaultConfig()
	c.Timeout = time.Second
	if err := c.Validate(); err != nil || c.PerTryTimeout() != time.Second {
		t.Errorf("try_timeout over timeout: %v, per try %s", err, c.PerTryTimeout())
	}
	if got := DefaultConfig().PerTryTimeout(); got != 2*time.Second {
		t.Errorf("default per try %s", got)
	}
}

// newTestPool is a pool of ups with the default [core] otherwise.
func newTestPool(t testing.TB, ups []string, opts ...Option) *Pool {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Upstreams = ups
	p, err := NewPool(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
