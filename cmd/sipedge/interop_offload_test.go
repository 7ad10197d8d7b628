//go:build interop

package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
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

// Offload at office scale against Kamailio: 2,000 sipp phones, each on a
// socket of its own behind one address (an office NAT: one source, 2,000
// ports), register with digest authentication through sipedge (offload
// on, phones granted 60 s ±10%, the core an hour) and refresh five times
// each at the interval the edge's 200 grants (3 s before it runs out),
// answering the edge's OPTIONS keepalives meanwhile: five minutes in all.
//
// Counted: every REGISTER the phones sent (sipp's own per-message
// counts, retransmissions included, the challenged first one included)
// against what reached the core, as sipedge counts its core round trips
// and as Kamailio counts the REGISTERs it received. Asserted: no refresh
// reaches the core (at most 5% of the refreshes may), so the core's
// share of everything the phones sent is no more than the first
// registration's two REGISTERs per phone plus 5%; every phone got a 200
// to each of its REGISTERs with credentials (no failed phone, the
// expected number of 200s, no 401 to a refresh); the
// rate limiter refused nothing; Kamailio's location holds every AOR,
// with sipedge's Path.
//
// The first registration costs the core two REGISTERs per phone
// whatever the edge does, so over five minutes of 60 s refreshes (seven
// REGISTERs per phone) the core's share is 2/7 at best; it falls to 5%
// only once a phone has refreshed 38 times, about 40 minutes. The test
// logs the share measured and the share over one core registration (an
// hour: 2 REGISTERs of 2 + 3600/57).
//
// The rate limiter keeps its defaults, as an operator serving offices
// behind NATs would: the budgets of a source grow with the bindings it
// holds (binding_weight 0.5, up to max_bindings 1000: 501 times an
// unknown source's), so the office's first registrations, at 100 phones
// a second, open the way for the next ones.
func TestInteropOffloadScale(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp")
	const (
		phones    = 2000
		refreshes = 5
		early     = 3   // seconds before the granted expiry
		rate      = 100 // new phones a second
	)
	k := startKamailio(t, kamOpts{users: phones, shmMB: 512})
	dir := t.TempDir()
	users := filepath.Join(dir, "users.csv")
	writeUsers(t, users, 1000, phones)
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	tokenFile := filepath.Join(dir, "admin.token")
	e := startSipedge(t, edgeOpts{mode: "path", upstream: "sip:" + k.addr() + ";transport=udp", level: "info",
		registration: "offload = true\nphone_expires = \"60s\"\ncore_expires = \"1h\"\n",
		extra:        fmt.Sprintf("\n[admin]\nlisten = %q\ntoken_file = %q\n", adminAddr, tokenFile)})

	// Longest run: the last phone starts after phones/rate s and refreshes
	// refreshes times at most 66-early s apart.
	limit := time.Duration(phones/rate)*time.Second + refreshes*(66-early)*time.Second + 30*time.Second
	start := time.Now()
	res := runSipp(t, sippRun{target: e.udp, transport: "un", csv: users, calls: phones, rate: rate,
		limit: limit, scenario: "register_refresh_granted.xml",
		args: []string{"-aa", "-l", strconv.Itoa(phones), "-max_socket", "5000", "-buff_size", strconv.Itoa(4 << 20),
			"-key", "expires", "3600", "-set", "refreshes", strconv.Itoa(refreshes), "-set", "early", strconv.Itoa(early), "-trace_counts"}})
	took := time.Since(start)
	counts := sippCounts(t, res.dir)

	ok, failed := res.stat64("SuccessfulCall(C)"), res.stat64("FailedCall(C)")
	sent, retrans := sum(counts, "_REGISTER_Sent"), sum(counts, "_REGISTER_Retrans")
	all := sent + retrans
	// Element 0 of the scenario is the first REGISTER, 1 its 401; every
	// other REGISTER carries credentials; a 401 to one of those (a
	// challenge again) would be another element's.
	first, oks := counts["0_REGISTER_Sent"], sum(counts, "_200_Recv")
	authed, rechallenged := sent-first, sum(counts, "_401_Recv")-counts["1_401_Recv"]
	wantAuthed := int64(phones * (1 + refreshes))
	okCounts := first == phones && authed == wantAuthed && oks == wantAuthed && rechallenged == 0

	metrics := scrapeMetrics(t, adminAddr, tokenFile)
	atCore := int64(metrics["sipedge_register_core_duration_seconds_count"])
	absorbed := int64(metrics["sipedge_register_absorbed_total"])
	kamRegs, kerr := kamStat(k, "rcv_requests_register")
	firsts := int64(2 * phones)
	refreshesSent := all - firsts
	share := float64(atCore) / float64(all)
	perPhoneHour := 2 + 3600.0/(60-early)
	t.Logf("%d phones for %v: sipp %d successful, %d failed; they sent %d REGISTERs (%d new, %d retransmitted), got %d 200s to %d REGISTERs with credentials",
		phones, took.Round(time.Second), ok, failed, all, sent, retrans, oks, authed)
	t.Logf("at the core: %d REGISTERs by sipedge's count, %d by Kamailio's (%v); sipedge answered %d itself",
		atCore, kamRegs, kerr, absorbed)
	t.Logf("absorption: the core saw %.1f%% of the phones' REGISTERs (%d of %d; the first registrations alone are %d, %.1f%%); "+
		"of the %d refreshes %d reached the core (%.2f%%); over one core registration (1 h) a phone sends %.0f REGISTERs and the core sees 2 (%.1f%%)",
		100*share, atCore, all, firsts, 100*float64(firsts)/float64(all),
		refreshesSent, atCore-firsts, 100*float64(atCore-firsts)/float64(refreshesSent), perPhoneHour, 100*2/perPhoneHour)
	t.Logf("rate limiter: %.0f allowed, %.0f refused; sources %.0f", metrics["sipedge_limiter_allowed_total"],
		metrics["sipedge_limiter_decisions_total"], metrics["sipedge_limiter_sources"])

	if res.exit != 0 || failed != 0 || ok != phones {
		t.Errorf("sipp: exit %d, %d of %d phones through every refresh, %d failed\n%s", res.exit, ok, phones, failed, sippErrors(res.errors, 20))
	}
	if !okCounts {
		t.Errorf("sipp's counts: %d first REGISTERs (want %d), %d with credentials (want %d), %d 200s (want %d), %d challenged again (want 0): %v",
			first, phones, authed, wantAuthed, oks, wantAuthed, rechallenged, counts)
	}
	if atCore-firsts > refreshesSent/20 {
		t.Errorf("%d of the %d refreshes reached the core, want at most 5%%", atCore-firsts, refreshesSent)
	}
	if float64(atCore) > float64(firsts)+0.05*float64(all) {
		t.Errorf("the core saw %d of %d REGISTERs, more than the first registrations (%d) and 5%%", atCore, all, firsts)
	}
	if kerr != nil || kamRegs != atCore {
		t.Errorf("Kamailio received %d REGISTERs (%v), sipedge counts %d round trips to it", kamRegs, kerr, atCore)
	}
	if n := metrics["sipedge_limiter_decisions_total"]; n != 0 {
		t.Errorf("the rate limiter refused %.0f requests or packets of the office", n)
	}
	// ul.dump of 2,000 AORs is more than kamcmd's binrpc reply can hold
	// ("Internal error creating aor struct"): the location's own count,
	// then each AOR looked up.
	if n, err := kamStat(k, "location_users"); err != nil || n != phones {
		t.Errorf("Kamailio's location holds %d AORs, want %d: %v", n, phones, err)
	}
	missing := 0
	for u := 1000; u < 1000+phones; u++ {
		out, err := runBounded(10*time.Second, k.dir, "kamcmd", "-s", "unix:"+k.ctl, "ul.lookup", "location", fmt.Sprintf("%d@%s", u, realm))
		if err != nil || !strings.Contains(out, fmt.Sprintf("AoR: %d\n", u)) || !strings.Contains(out, e.core) {
			if missing++; missing <= 5 {
				t.Errorf("Kamailio's location for %d (want its contact with sipedge's Path %s): %v\n%s", u, e.core, err, tail(out, 10))
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d AORs missing from Kamailio's location or without sipedge's Path", missing, phones)
	}
}

// sippCounts reads the last row of sipp's -trace_counts file (written in
// its working directory dir): per scenario element, messages sent,
// received, retransmitted, timed out, unexpected.
func sippCounts(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*_counts.csv"))
	if len(files) != 1 {
		t.Fatalf("sipp's counts file in %s: found %v", dir, files)
	}
	row := lastStat(files[0])
	out := make(map[string]int64, len(row))
	for col, v := range row {
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && col != "" {
			out[col] = n
		}
	}
	return out
}

// kamStat reads one of Kamailio's statistics (kamcmd stats.get_statistics).
func kamStat(k *kamailio, name string) (int64, error) {
	out, err := runBounded(10*time.Second, k.dir, "kamcmd", "-s", "unix:"+k.ctl, "stats.get_statistics", name)
	if err != nil {
		return 0, fmt.Errorf("kamcmd stats.get_statistics %s: %v: %s", name, err, out)
	}
	_, v, ok := strings.Cut(strings.TrimSpace(out), " = ")
	if !ok {
		return 0, fmt.Errorf("kamcmd stats.get_statistics %s: %q", name, out)
	}
	return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
}
