//go:build interop

package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Registration offload against Kamailio: sipp phones register with
// digest authentication and refresh six times each, 5 s apart; sipedge
// registers them at Kamailio for an hour and answers the refreshes
// itself. Kamailio sees no refresh, every phone gets its 200, and
// Kamailio's location holds every AOR.
func TestInteropOffload(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp")
	const phones, refreshes = 500, 6
	k := startKamailio(t, kamOpts{users: phones})
	dir := t.TempDir()
	users := filepath.Join(dir, "users.csv")
	writeUsers(t, users, 1000, phones)
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	tokenFile := filepath.Join(dir, "admin.token")
	e := startSipedge(t, edgeOpts{mode: "path", upstream: "sip:" + k.addr() + ";transport=udp", level: "info",
		registration: "offload = true\nphone_expires = \"10s\"\ncore_expires = \"1h\"\n",
		extra:        fmt.Sprintf("\n[admin]\nlisten = %q\ntoken_file = %q\n", adminAddr, tokenFile)})
	start := time.Now()
	res := runSipp(t, sippRun{target: e.udp, transport: "u1", csv: users, calls: phones, rate: 100,
		limit: 90 * time.Second, scenario: "register_refresh.xml"})
	took := time.Since(start)
	if res.exit != 0 || res.stat64("SuccessfulCall(C)") != phones {
		t.Fatalf("sipp: exit %d, %d of %d phones through\n%s", res.exit, res.stat64("SuccessfulCall(C)"), phones, tail(res.errors, 20))
	}

	metrics := scrapeMetrics(t, adminAddr, tokenFile)
	sent := float64(phones * (2 + refreshes))
	atCore := metrics["sipedge_register_core_duration_seconds_count"]
	absorbed := metrics["sipedge_register_absorbed_total"]
	t.Logf("%d phones in %v: they sent %.0f REGISTERs; %.0f reached Kamailio (%.1f%%: the first two of each), %.0f answered by sipedge; refreshes at Kamailio: %.0f of %d",
		phones, took.Round(time.Second), sent, atCore, 100*atCore/sent, absorbed, atCore-2*phones, phones*refreshes)
	if absorbed != phones*refreshes || atCore != 2*phones {
		t.Errorf("absorbed %.0f (want %d), at the core %.0f (want %d)", absorbed, phones*refreshes, atCore, 2*phones)
	}
	out, err := runBounded(10*time.Second, k.dir, "kamcmd", "-s", "unix:"+k.ctl, "ul.dump", "brief")
	if n := strings.Count(out, "AoR:"); err != nil || n != phones {
		t.Errorf("Kamailio's location holds %d AORs, want %d: %v\n%s", n, phones, err, tail(out, 10))
	}
}

// scrapeMetrics reads sipedge's metrics, summed over their labels.
func scrapeMetrics(t *testing.T, addr, tokenFile string) map[string]float64 {
	t.Helper()
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	req, _ := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	r, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(io.Reader(r.Body))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			out[name] += m.GetGauge().GetValue() + m.GetCounter().GetValue()
			if h := m.GetHistogram(); h != nil {
				out[name+"_count"] += float64(h.GetSampleCount())
			}
		}
	}
	return out
}
