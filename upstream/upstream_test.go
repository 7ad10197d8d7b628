package upstream

import (
	"net/netip"
	"strings"
	"testing"
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
