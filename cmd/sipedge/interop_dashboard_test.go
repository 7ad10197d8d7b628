//go:build interop

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/admin/dashtest"
)

// The dashboard of the built binary in headless Chromium: 20 sipp
// phones register through sipedge at Kamailio, and an operator's browser
// (logged in with /login?token=) shows each of them as the API lists
// them, the counters, and unbans with a click. The screenshot goes to
// $SIPEDGE_ARTIFACTS (default: the test's temp dir).
//
// Needs kamailio, kamcmd, sipp and chromium (Debian: kamailio,
// sip-tester, chromium).
func TestInteropDashboard(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp")
	dashtest.NeedChromium(t)
	const phones = 20
	k := startKamailio(t, kamOpts{users: 100})
	dir := t.TempDir()
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	tokenFile := filepath.Join(dir, "admin.token")
	e := startSipedge(t, edgeOpts{mode: "path", upstream: "sip:" + k.addr() + ";transport=udp", level: "info",
		extra: fmt.Sprintf("\n[admin]\nlisten = %q\ntoken_file = %q\n", adminAddr, tokenFile)})
	res := runSipp(t, sippRun{target: e.udp, transport: "u1", csv: filepath.Join(interopDir, "users.csv"),
		calls: phones, rate: 50, limit: 30 * time.Second})
	if res.exit != 0 || res.stat64("SuccessfulCall(C)") != phones {
		t.Fatalf("sipp: exit %d, %d registered\n%s", res.exit, res.stat64("SuccessfulCall(C)"), tail(res.errors, 20))
	}
	raw, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(raw))

	dashtest.Check(t, "http://"+adminAddr, token, phones)
	if strings.Contains(e.p.log(), token) {
		t.Error("sipedge logged the admin token")
	}
}
