//go:build interop

package admin_test

import (
	"fmt"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/sipedge/sipedge/edge/admin"
	"github.com/sipedge/sipedge/edge/admin/dashtest"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/edgetest"
)

// The dashboard in headless Chromium, in process: 20 phones register
// with an edge whose events feed the dashboard, one more comes and
// goes, an alert fires; the page must show what the API shows.
//
//	go test -tags interop -count=1 -run TestInteropDashboardInProcess -v ./edge/admin/
func TestInteropDashboardInProcess(t *testing.T) {
	dashtest.NeedChromium(t)
	const phones = 20
	feed := admin.NewFeed(nil)
	g := startWith(t, feed) // user0..user2 registered
	register := func(p *edgetest.Phone, user string, cseq int, expires string) {
		t.Helper()
		p.Send(p.Register(edgetest.Reg{User: user, CSeq: cseq, Expires: expires, Extra: "User-Agent: Yealink SIP-T46U 108.86.0.45"}))
		if res := p.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("REGISTER %s (expires %q): %d", user, expires, res.StatusCode)
		}
	}
	for i := 3; i < phones; i++ {
		register(edgetest.DialFrom(t, "udp", netip.AddrFrom4([4]byte{127, 0, 1, byte(i)}), g.e.UDP), fmt.Sprintf("user%d", i), 1, "")
	}
	leaver := edgetest.DialFrom(t, "udp", netip.MustParseAddr("127.0.2.1"), g.e.UDP)
	register(leaver, "leaver", 1, "")
	register(leaver, "leaver", 2, "0") // a lost device: unregistered
	feed.Emit(audit.Event{Kind: audit.Alert, Severity: slog.LevelWarn, Reason: "user_agent_change", AOR: "sip:user7@example.com",
		Detail: "was Yealink SIP-T46U 108.86.0.45, now friendly-scanner"})

	dashtest.Check(t, g.srv.URL, token, phones)
}
