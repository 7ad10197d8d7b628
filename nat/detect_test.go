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
		callID   string
		want     Evidence
	}{
		{"public phone, no NAT", UDP, HostPort{"203.0.113.9", 40123}, []HostPort{{"203.0.113.9", 40123}}, "1-2@203.0.113.9", 0},
		{"home router", UDP, HostPort{"192.168.1.20", 5060}, []HostPort{{"192.168.1.20", 5060}}, "1-2@192.168.1.20",
			ViaAddrDiffers | ViaPortDiffers | PrivateContact},
		{"carrier-grade NAT", UDP, HostPort{"100.72.1.5", 5060}, []HostPort{{"100.72.1.5", 5060}}, "",
			ViaAddrDiffers | ViaPortDiffers | PrivateContact},
		{"SIP ALG rewrote addresses, not ports", UDP, HostPort{"203.0.113.9", 5060}, []HostPort{{"203.0.113.9", 5060}}, "",
			ViaPortDiffers | ContactPortDiffers | ALGSuspected},
		{"TCP ports do not count", TCP, HostPort{"203.0.113.9", 5060}, []HostPort{{"203.0.113.9", 5060}}, "", 0},
		{"host name in Via", TCP, HostPort{"phone.invalid", 0}, []HostPort{{"203.0.113.9", 0}}, "", ViaAddrDiffers},
		{"no port means 5060", UDP, HostPort{"203.0.113.9", 0}, nil, "", ViaPortDiffers},
		// Linux's nf_nat_sip rewrites Via and Contact, ports included, and
		// leaves the Call-ID sipp and many phones build from their address.
		{"SIP ALG rewrote addresses and ports", UDP, HostPort{"203.0.113.9", 40123}, []HostPort{{"203.0.113.9", 40123}},
			"1-4711@192.168.1.20", ALGSuspected},
		{"Call-ID with port", UDP, HostPort{"203.0.113.9", 40123}, []HostPort{{"203.0.113.9", 40123}}, "abc@10.0.0.7:5060", ALGSuspected},
		{"Call-ID with a public address", UDP, HostPort{"203.0.113.9", 40123}, []HostPort{{"203.0.113.9", 40123}}, "abc@198.51.100.1", 0},
		{"Call-ID with loopback", UDP, HostPort{"203.0.113.9", 40123}, []HostPort{{"203.0.113.9", 40123}}, "abc@127.0.0.1", 0},
		{"random Call-ID", UDP, HostPort{"203.0.113.9", 40123}, []HostPort{{"203.0.113.9", 40123}}, "f81d4fae7dec11d0", 0},
		{"private Call-ID, private Contact: no ALG", UDP, HostPort{"192.168.1.20", 5060}, []HostPort{{"192.168.1.20", 5060}},
			"x@192.168.1.20", ViaAddrDiffers | ViaPortDiffers | PrivateContact},
	}
	for _, tc := range cases {
		got := Detect(src, tc.tp, tc.via, tc.contacts, tc.callID)
		if got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
		if got.BehindNAT() != (tc.want != 0) {
			t.Errorf("%s: BehindNAT = %v", tc.name, got.BehindNAT())
		}
	}
}
