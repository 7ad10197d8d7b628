package nat

import (
	"net/netip"
	"testing"
	"unsafe"
)

// A packed key unpacks to the same FlowKey, whatever the address form;
// a key whose local address or zone was never packed is not found.
func TestFlowIDRoundTrip(t *testing.T) {
	if n := unsafe.Sizeof(flowID{}); n != 24 {
		t.Errorf("flowID is %d bytes, want 24", n)
	}
	var ids flowIDs
	local := netip.MustParseAddrPort("192.0.2.10:5060")
	other := netip.MustParseAddrPort("[2001:db8::10]:5060")
	for _, remote := range []string{"198.51.100.7:40000", "[::ffff:198.51.100.7]:40000", "[2001:db8::7]:1", "[fe80::7%eth0]:5060", "[fe80::7%eth1]:5060", "0.0.0.0:0"} {
		for _, l := range []netip.AddrPort{local, other} {
			k := FlowKey{Transport: UDP, Local: l, Remote: netip.MustParseAddrPort(remote)}
			id, ok := ids.pack(k, true)
			if !ok {
				t.Fatalf("pack(%v) failed", k)
			}
			if got := ids.key(id); got != k {
				t.Errorf("key(pack(%v)) = %v", k, got)
			}
			if again, ok := ids.pack(k, false); !ok || again != id {
				t.Errorf("pack(%v) again = %v %v, want %v", k, again, ok, id)
			}
		}
	}
	unknown := FlowKey{Transport: UDP, Local: netip.MustParseAddrPort("192.0.2.99:5060"), Remote: netip.MustParseAddrPort("198.51.100.7:40000")}
	if _, ok := ids.pack(unknown, false); ok {
		t.Errorf("an unknown local address packed without add")
	}
	zoned := FlowKey{Transport: UDP, Local: local, Remote: netip.MustParseAddrPort("[fe80::7%eth9]:5060")}
	if _, ok := ids.pack(zoned, false); ok {
		t.Errorf("an unknown zone packed without add")
	}
	a, _ := ids.pack(FlowKey{Transport: UDP, Local: local, Remote: netip.MustParseAddrPort("[fe80::7%eth0]:5060")}, false)
	b, _ := ids.pack(FlowKey{Transport: UDP, Local: local, Remote: netip.MustParseAddrPort("[fe80::7%eth1]:5060")}, false)
	c, _ := ids.pack(FlowKey{Transport: TCP, Local: local, Remote: netip.MustParseAddrPort("[fe80::7%eth1]:5060")}, false)
	if a == b || b == c {
		t.Errorf("keys differing only in zone or transport packed alike")
	}
}
