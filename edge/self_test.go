package edge

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/sipwire"
	"github.com/sipedge/sipedge/upstream"
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

// The 200 goes to the phone without the edge's Path, whatever the core
// put above it: the flow token never reaches the phone.
func TestRestoreReplyDropsOurPath(t *testing.T) {
	const token = "TOKEN"
	res := sip.NewResponse(200, "OK")
	res.AppendHeader(sip.NewHeader("Path", "<sip:other@192.0.2.9;lr>"))
	res.AppendHeader(sip.NewHeader("Path", "<sip:"+token+"@127.0.0.1:5070;lr;ob>"))
	res.AppendHeader(sip.NewHeader("Path", "<sip:below@192.0.2.8;lr>"))
	(&registrar{}).restoreReply(&registerRequest{}, upstream.ModePath, token, nil, res)
	if out := res.String(); strings.Contains(out, token) {
		t.Fatalf("the edge's token reached the phone:\n%s", out)
	}
	if !strings.Contains(res.String(), "sip:below@") {
		t.Errorf("a Path below ours went too:\n%s", res.String())
	}
}
