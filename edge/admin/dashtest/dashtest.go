//go:build interop

// Package dashtest drives the admin dashboard in headless Chromium, as an
// operator's browser would, for the interop tests: the in-process one in
// edge/admin and the one of the built binary in cmd/sipedge. A missing
// chromium skips the test, or fails it under CI=true.
package dashtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/sipedge/sipedge/edge/admin"
)

// banPrefix is what Check bans through the API and unbans on the page
// (TEST-NET-3: no phone is there).
const banPrefix = "203.0.113.0/24"

// wait bounds each step in the browser.
const wait = 20 * time.Second

// Check opens the dashboard at base (http://IP:port of the admin
// listener) with token, as a browser does (GET /login?token=), and
// checks it against the JSON API: want device rows, the same devices as
// /api/registrations, the counters; then bans banPrefix through the API,
// unbans it with the page's button and sees it gone from /api/bans. It
// saves a full-page screenshot in $SIPEDGE_ARTIFACTS (default: the
// test's temp dir) and returns its path.
func Check(t *testing.T, base, token string, want int) string {
	t.Helper()
	ctx := browser(t)
	api := &apiClient{t: t, base: base, token: token,
		c: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}}
	defer api.c.CloseIdleConnections()
	problems := watchConsole(t, ctx)
	var sum admin.Summary
	if code := api.call("GET", "/api/summary", "", &sum); code != 200 {
		t.Fatalf("GET %s/api/summary: %d: the admin listener serves no dashboard (is admin.Deps.Dashboard set?)", base, code)
	}
	// Every registration reached the feed (the audit events are wired to it).
	if sum.Counts.Registrations < want {
		t.Errorf("the summary counts %d registrations this hour, want at least %d", sum.Counts.Registrations, want)
	}

	step(t, ctx, "log in", chromedp.Navigate(base+"/login?token="+url.QueryEscape(token)))
	if loc := run(t, ctx, "location", chromedp.Location()); loc != base+"/" {
		t.Fatalf("after /login the browser is at %q, want %s/", redact(loc, token), base)
	}
	step(t, ctx, "the stream is live", poll(`document.querySelector('#status').dataset.state === 'live'`))
	step(t, ctx, fmt.Sprintf("%d device rows", want),
		poll(fmt.Sprintf(`document.querySelectorAll('#devices tbody tr[data-aor]').length === %d`, want)))
	if html := run(t, ctx, "page source", chromedp.OuterHTML(chromedp.CSS("html"))); strings.Contains(html, token) {
		t.Error("the page holds the token")
	}

	// The rows are the API's registrations, in its order.
	var regs admin.Page[admin.Registration]
	api.call("GET", "/api/registrations?limit=10000", "", &regs)
	rows := run(t, ctx, "device rows", chromedp.Evaluate[[]row](`[...document.querySelectorAll('#devices tbody tr[data-aor]')].map(tr => ({
		aor: tr.dataset.aor, contact: tr.dataset.contact,
		source: tr.querySelector('.source').textContent, transport: tr.querySelector('.transport').textContent,
		ua: tr.querySelector('.ua').textContent, nat: tr.querySelector('.nat').textContent,
		expires: tr.querySelector('.expires').textContent}))`))
	if regs.Total != want || len(rows) != len(regs.Items) {
		t.Fatalf("the API has %d registrations, the page %d rows; want %d", regs.Total, len(rows), want)
	}
	for i, r := range regs.Items {
		got := rows[i]
		if got.AOR != r.AOR || got.Contact != r.Contact || got.Source != r.Source || got.Transport != r.Transport ||
			got.UA != r.UserAgent || got.NAT != r.NAT || !strings.Contains(got.Expires, ":") {
			t.Errorf("row %d: %+v, the API has %+v", i, got, r)
		}
	}

	// The counters are the API's.
	var flows admin.Page[admin.Flow]
	api.call("GET", "/api/flows?limit=1", "", &flows)
	var cores admin.Page[admin.Core]
	api.call("GET", "/api/cores", "", &cores)
	up := 0
	for _, c := range cores.Items {
		if c.State == "up" {
			up++
		}
	}
	var bans admin.Page[admin.BanView]
	api.call("GET", "/api/bans", "", &bans)
	step(t, ctx, "counters", counters(map[string]string{"count-devices": fmt.Sprint(regs.Total),
		"count-flows": fmt.Sprint(flows.Total), "count-bans": fmt.Sprint(bans.Total), "count-cores": fmt.Sprintf("%d/%d", up, cores.Total)}))
	step(t, ctx, "registrations this hour", poll(fmt.Sprintf(`Number(document.getElementById('count-regs-hour').textContent) >= %d`,
		sum.Counts.Registrations)))
	step(t, ctx, "core rows", poll(fmt.Sprintf(`document.querySelectorAll('#cores tbody tr').length === %d`, cores.Total)))

	// A ban made through the API shows up; its Unban button lifts it.
	var ban admin.BanView
	if code := api.call("POST", "/api/bans", fmt.Sprintf(`{"prefix":%q,"duration":"10m"}`, banPrefix), &ban); code != 201 {
		t.Fatalf("POST /api/bans: %d %+v", code, ban)
	}
	banRow := fmt.Sprintf(`#bans tbody tr[data-prefix=%q]`, banPrefix)
	step(t, ctx, "the ban's row", chromedp.WaitVisible(chromedp.CSS(banRow)))
	step(t, ctx, "ban counter", counters(map[string]string{"count-bans": fmt.Sprint(bans.Total + 1)}))
	shot := screenshot(t, ctx)
	step(t, ctx, "click Unban", chromedp.Click(chromedp.CSS(banRow+" button.unban")))
	step(t, ctx, "the ban's row gone", chromedp.WaitNotPresent(chromedp.CSS(banRow)))
	for deadline := time.Now().Add(wait); banned(api); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s after Unban: the API still lists it", banPrefix)
		}
	}
	step(t, ctx, "ban counter back", counters(map[string]string{"count-bans": fmt.Sprint(bans.Total)}))
	step(t, ctx, "unban message", poll(fmt.Sprintf(`document.getElementById('bans-msg').textContent === %q`, "unbanned "+banPrefix)))
	for _, p := range problems() {
		t.Errorf("browser console: %s", p)
	}
	return shot
}

// banned reports whether the API lists banPrefix.
func banned(api *apiClient) bool {
	var bans admin.Page[admin.BanView]
	api.call("GET", "/api/bans?limit=10000", "", &bans)
	for _, b := range bans.Items {
		if b.Prefix == banPrefix {
			return true
		}
	}
	return false
}

// row is a device row as the page shows it.
type row struct {
	AOR       string `json:"aor"`
	Contact   string `json:"contact"`
	Source    string `json:"source"`
	Transport string `json:"transport"`
	UA        string `json:"ua"`
	NAT       string `json:"nat"`
	Expires   string `json:"expires"`
}

// NeedChromium returns the browser's path; when there is none it skips
// the test, or fails it under CI=true. Check calls it; a test calls it
// first too when it has much to start before.
func NeedChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "missing chromium (Debian package: chromium)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// browser starts headless Chromium, closed when the test ends.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := NeedChromium(t)
	// As root in a container: no sandbox, no GPU, /dev/shm may be small.
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1400, 1000))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cctx, c := context.WithTimeout(ctx, 10*time.Second)
		defer c()
		_ = chromedp.Cancel(cctx)
		cancel()
		cancelAlloc() // waits for the browser process to end
	})
	// The first run starts the browser, with no deadline: one would stop it.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return ctx
}

// watchConsole collects the page's exceptions and console errors; call
// the func it returns to stop and read them.
func watchConsole(t *testing.T, ctx context.Context) func() []string {
	cctx, stop := context.WithCancel(ctx)
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	msgs := chromedp.Console(cctx)
	go func() {
		defer close(done)
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.IsException() || m.Type == chromedp.ConsoleError {
				mu.Lock()
				got = append(got, m.String())
				mu.Unlock()
			}
		}
	}()
	var once sync.Once
	read := func() []string {
		once.Do(func() { stop(); <-done })
		mu.Lock()
		defer mu.Unlock()
		return got
	}
	t.Cleanup(func() { read() })
	return read
}

func step(t *testing.T, ctx context.Context, what string, a chromedp.Action[chromedp.Void]) {
	t.Helper()
	run(t, ctx, what, a)
}

// run runs a with a deadline; a failure stops the test.
func run[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	v, err := chromedp.Run(sctx, a)
	if err != nil {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		state, _ := chromedp.Run(dctx, chromedp.Evaluate[string](`JSON.stringify({status: document.querySelector('#status')?.textContent,
			devices: document.querySelectorAll('#devices tbody tr').length, body: document.body?.innerText.slice(0, 2000)})`))
		t.Fatalf("browser: %s: %v\npage: %s", what, err, state)
	}
	return v
}

// poll waits until the JavaScript expression is true.
func poll(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(wait))
}

// counters waits until each element (by id) shows its text.
func counters(want map[string]string) chromedp.Action[chromedp.Void] {
	var conds []string
	for id, text := range want {
		conds = append(conds, fmt.Sprintf(`document.getElementById(%q).textContent === %q`, id, text))
	}
	return poll(strings.Join(conds, " && "))
}

func screenshot(t *testing.T, ctx context.Context) string {
	t.Helper()
	png := run(t, ctx, "screenshot", chromedp.FullScreenshot(100))
	dir := os.Getenv("SIPEDGE_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
	path, err := filepath.Abs(filepath.Join(dir, "dashboard-"+name+".png"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("dashboard screenshot: %s", path)
	return path
}

// apiClient calls the JSON API with the bearer token.
type apiClient struct {
	t     *testing.T
	base  string
	token string
	c     *http.Client
}

func (a *apiClient) call(method, path, body string, out any) int {
	a.t.Helper()
	req, err := http.NewRequest(method, a.base+path, strings.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := a.c.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(res.Body)
	if err := json.Unmarshal(b.Bytes(), out); err != nil {
		a.t.Fatalf("%s %s: %d %q: %v", method, path, res.StatusCode, b.String(), err)
	}
	return res.StatusCode
}

// redact keeps the token out of the test log.
func redact(s, token string) string { return strings.ReplaceAll(s, token, "REDACTED") }
