package upstream

import (
	"net/netip"
	"testing"

	"github.com/sipedge/sipedge/nat"
)

func TestParseTarget(t *testing.T) {
	cases := []struct {
		in   string
		tp   nat.Transport
		addr string
		bad  bool
	}{
		{in: "sip:127.0.0.1:5070;transport=udp", tp: nat.UDP, addr: "127.0.0.1:5070"},
		{in: "sip:10.0.0.1", tp: nat.UDP, addr: "10.0.0.1:5060"},
		{in: "sip:10.0.0.1;transport=TCP", tp: nat.TCP, addr: "10.0.0.1:5060"},
		{in: "sips:10.0.0.1", tp: nat.TLS, addr: "10.0.0.1:5061"},
		{in: "sip:[2001:db8::1]:5080;transport=tcp", tp: nat.TCP, addr: "[2001:db8::1]:5080"},
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
	p, err := NewPool([]string{"sip:10.0.0.1", "sip:10.0.0.2"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Pick().Addr.Addr().String() != "10.0.0.1" || len(p.Targets()) != 2 {
		t.Fatal("wrong primary")
	}
	if _, err := NewPool(nil); err == nil {
		t.Fatal("empty pool accepted")
	}
}
