//go:build interop

package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// What an operator sees of phones sipp registers through the binary
// against Kamailio: `sipedge ctl` lists them and bans and unbans, the
// metrics count them, the audit log records each step without a
// credential.
func TestInteropObserve(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp")
	const phones = 20
	k := startKamailio(t, kamOpts{users: 100})
	dir := t.TempDir()
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	tokenFile := filepath.Join(dir, "admin.token")
	auditFile := filepath.Join(dir, "audit.log")
	e := startSipedge(t, edgeOpts{mode: "path", upstream: "sip:" + k.addr() + ";transport=udp", level: "info",
		extra: fmt.Sprintf("\n[admin]\nlisten = %q\ntoken_file = %q\n\n[audit]\nfile = %q\nnode = \"edge-a\"\n", adminAddr, tokenFile, auditFile)})
	res := runSipp(t, sippRun{target: e.udp, transport: "u1", csv: filepath.Join(interopDir, "users.csv"),
		calls: phones, rate: 50, limit: 30 * time.Second})
	if res.exit != 0 || res.stat64("SuccessfulCall(C)") != phones {
		t.Fatalf("sipp: exit %d, %d registered\n%s", res.exit, res.stat64("SuccessfulCall(C)"), tail(res.errors, 20))
	}

	ctl := func(args ...string) (string, error) {
		return runBounded(30*time.Second, ".", append([]string{e.bin, "ctl", "-config", e.cfg}, args...)...)
	}
	out, err := ctl("regs")
	if err != nil || !strings.Contains(out, fmt.Sprintf("(%d of %d)", phones, phones)) || !strings.Contains(out, "sip:1000@") {
		t.Fatalf("ctl regs: %v\n%s", err, out)
	}
	t.Logf("sipedge ctl regs (head):\n%s", firstLines(out, 4))
	out, err = ctl("-json", "regs", "1003")
	var page struct {
		Total int
		Items []struct{ AOR, Transport, Source string }
	}
	if err != nil || json.Unmarshal([]byte(out), &page) != nil || page.Total != 1 || page.Items[0].Transport != "UDP" {
		t.Errorf("ctl -json regs 1003: %v %+v\n%s", err, page, out)
	}
	for _, step := range []struct {
		args []string
		want string
	}{
		{[]string{"ban", "203.0.113.7", "10m"}, "banned 203.0.113.7/32 (manual)"},
		{[]string{"bans"}, "203.0.113.7/32"},
		{[]string{"unban", "203.0.113.7"}, "unbanned: 203.0.113.7/32"},
		{[]string{"cores"}, "default"},
		{[]string{"reload"}, "reloaded"},
	} {
		out, err := ctl(step.args...)
		if err != nil || !strings.Contains(out, step.want) {
			t.Errorf("ctl %s: %v\n%s", strings.Join(step.args, " "), err, out)
		}
	}
	if out, err := ctl("bans"); err != nil || strings.Contains(out, "203.0.113.7") {
		t.Errorf("ctl bans after unban: %v\n%s", err, out)
	}
	wrong := filepath.Join(dir, "wrong.token")
	os.WriteFile(wrong, []byte("not-the-token-not-the-token\n"), 0o600)
	if out, err := runBounded(30*time.Second, ".", e.bin, "ctl", "-config", e.cfg, "-token-file", wrong, "regs"); err == nil || !strings.Contains(out, "401") {
		t.Errorf("ctl with a wrong token: %v\n%s", err, out)
	}

	// The metrics, scraped as Prometheus does, with the token.
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	token, _ := os.ReadFile(tokenFile)
	req, _ := http.NewRequest("GET", "http://"+adminAddr+"/metrics", nil)
	if r, err := client.Do(req); err != nil || r.StatusCode != 401 {
		t.Errorf("metrics without the token: %v %v", r, err)
	} else {
		r.Body.Close()
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	r, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(r.Body)
	r.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	sum := func(name string) (n float64) {
		for _, m := range fams[name].GetMetric() {
			n += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
		return n
	}
	if got := sum("sipedge_bindings"); got != phones {
		t.Errorf("sipedge_bindings = %v, want %d", got, phones)
	}
	if fams["sipedge_register_core_duration_seconds"] == nil || fams["sipedge_core_up"] == nil {
		t.Error("core round trip or core health missing from the metrics")
	}
	t.Logf("metrics: %d families; sipedge_requests_total %v, sipedge_events_total %v", len(fams), sum("sipedge_requests_total"), sum("sipedge_events_total"))

	// The audit log: a challenge and a registration per phone, a ban, an
	// unban and a reload, and no credential.
	raw, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		count[m["event"].(string)]++
		if m["event"] == "config_reload" && (m["reason"] != "applied" || !strings.HasPrefix(fmt.Sprint(m["detail"]), "changed ")) {
			t.Errorf("config_reload event: %s", l)
		}
		if m["event"] == "register" && (m["auth"] != "accepted" || m["code"] != 200.0 || m["transport"] != "UDP" || m["expires"] == nil) {
			t.Errorf("register event: %s", l)
		}
		if m["node"] != "edge-a" {
			t.Errorf("audit line without the node: %s", l)
		}
	}
	if count["register"] != phones || count["challenged"] < phones || count["ban"] != 1 || count["unban"] != 1 || count["config_reload"] != 1 {
		t.Errorf("audit events %v", count)
	}
	for _, secret := range []string{"pw1000", "response=", "nonce="} {
		if strings.Contains(string(raw), secret) {
			t.Errorf("the audit log holds %q", secret)
		}
	}
	t.Logf("audit events: %v", count)
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}
