package nat

import (
	"net/netip"
	"testing"
)

func TestDetect(t *testing.T) {
	src := netip.MustParseAddrPort("203.0.113.9:40123")
	cases := []struct {
		name     string
		tp       Transport
		via      HostPort
		contacts []HostPort
		want     Evidence
	}{
		{"public phone, no NAT", UDP, HostPort{"203.0.113.9", 40123}, []HostPort{{"203.0.113.9", 40123}}, 0},
		{"home router", UDP, HostPort{"192.168.1.20", 5060}, []HostPort{{"192.168.1.20", 5060}},
			ViaAddrDiffers | ViaPortDiffers | PrivateContact},
		{"carrier-grade NAT", UDP, HostPort{"100.72.1.5", 5060}, []HostPort{{"100.72.1.5", 5060}},
			ViaAddrDiffers | ViaPortDiffers | PrivateContact},
		{"SIP ALG rewrote addresses, not ports", UDP, HostPort{"203.0.113.9", 5060}, []HostPort{{"203.0.113.9", 5060}},
			ViaPortDiffers | ContactPortDiffers | ALGSuspected},
		{"TCP ports do not count", TCP, HostPort{"203.0.113.9", 5060}, []HostPort{{"203.0.113.9", 5060}}, 0},
		{"host name in Via", TCP, HostPort{"phone.invalid", 0}, []HostPort{{"203.0.113.9", 0}}, ViaAddrDiffers},
		{"no port means 5060", UDP, HostPort{"203.0.113.9", 0}, nil, ViaPortDiffers},
	}
	for _, tc := range cases {
		got := Detect(src, tc.tp, tc.via, tc.contacts)
		if got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
		if got.BehindNAT() != (tc.want != 0) {
			t.Errorf("%s: BehindNAT = %v", tc.name, got.BehindNAT())
		}
	}
}
