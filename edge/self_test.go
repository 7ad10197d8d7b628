package edge

import (
	"net/netip"
	"testing"

	"github.com/sipedge/sipedge/edge/sipwire"
)

// path writes what the URI helpers and sipgo's writer wrote for it
// before it was written by hand.
func TestPathAsURI(t *testing.T) {
	for _, core := range []string{"127.0.0.1:5070", "[2001:db8::1]:5062"} {
		for _, tr := range []string{"UDP", "TCP", "TLS"} {
			s := &self{core: netip.MustParseAddrPort(core)}
			u := uri("tok-EN_1", s.core, tr)
			u.UriParams.Add("lr", "")
			u.UriParams.Add("ob", "")
			if got, want := s.path("tok-EN_1", tr), "<"+sipwire.URI(&u)+">"; got != want {
				t.Errorf("%s %s: %q, want %q", core, tr, got, want)
			}
		}
	}
	s := &self{core: netip.MustParseAddrPort("127.0.0.1:5070")}
	if n := testing.AllocsPerRun(100, func() { _ = s.path("tok", "UDP") }); n != 1 {
		t.Errorf("%v allocations, want 1", n)
	}
}
