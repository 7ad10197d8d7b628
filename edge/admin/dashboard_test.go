package admin_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/admin"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/edgetest"
)

// get fetches path with the bearer token tok ("" none), with client
// (nil: the default one), and returns the answer and its body.
func (g *rig) get(t *testing.T, client *http.Client, path, tok string) (*http.Response, string) {
	t.Helper()
	if client == nil {
		client = http.DefaultClient
	}
	req, _ := http.NewRequest("GET", g.srv.URL+path, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func TestDashboardNeedsTheToken(t *testing.T) {
	g := startWith(t, admin.NewFeed(nil))
	for path, ctype := range map[string]string{"/": "text/html", "/static/app.js": "text/javascript",
		"/static/app.css": "text/css", "/api/summary": "application/json"} {
		for _, tok := range []string{"", "wrong-token-of-some-length"} {
			if res, _ := g.get(t, nil, path, tok); res.StatusCode != 401 {
				t.Errorf("GET %s with token %q: %d, want 401", path, tok, res.StatusCode)
			}
		}
		res, body := g.get(t, nil, path, token)
		if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), ctype) {
			t.Errorf("GET %s: %d %q", path, res.StatusCode, res.Header.Get("Content-Type"))
		}
		if strings.Contains(body, token) {
			t.Errorf("GET %s: the token is in the answer", path)
		}
	}
	res, body := g.get(t, nil, "/", token)
	if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("page CSP %q", csp)
	}
	// Nothing from elsewhere: no CDN, no web font.
	if strings.Contains(body, "http://") || strings.Contains(body, "https://") {
		t.Errorf("the page loads something from another site:\n%s", body)
	}
	for _, id := range []string{`id="devices"`, `id="count-devices"`, `id="count-bans"`, `id="bans"`, `id="cores"`, `id="chart"`, `id="lost"`, `id="alerts"`} {
		if !strings.Contains(body, id) {
			t.Errorf("the page lacks %s", id)
		}
	}
	if res, _ := g.get(t, nil, "/static/", token); res.StatusCode != 404 {
		t.Errorf("directory listing: %d, want 404", res.StatusCode)
	}
	req, _ := http.NewRequest("GET", g.srv.URL+"/api/stream", nil)
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != 401 {
		t.Errorf("stream without the token: %v %v", res, err)
	} else {
		res.Body.Close()
	}

	// Without Deps.Dashboard there is neither page nor login.
	plain := start(t)
	for _, path := range []string{"/", "/login?token=" + token, "/api/summary"} {
		if res, _ := plain.get(t, nil, path, token); res.StatusCode != 404 {
			t.Errorf("no dashboard: GET %s: %d, want 404", path, res.StatusCode)
		}
	}
}

func TestDashboardLogin(t *testing.T) {
	g := startWith(t, admin.NewFeed(nil))
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer noFollow.CloseIdleConnections()
	for _, wrong := range []string{"", "wrong-token-of-some-length", token + "x"} {
		res, body := g.get(t, noFollow, "/login?token="+wrong, "")
		var e struct{ Error string }
		if res.StatusCode != 401 || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" || len(res.Cookies()) != 0 {
			t.Errorf("login with %q: %d %q cookies %v", wrong, res.StatusCode, body, res.Cookies())
		}
	}
	res, _ := g.get(t, noFollow, "/login?token="+token, "")
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/" {
		t.Fatalf("login: %d to %q", res.StatusCode, res.Header.Get("Location"))
	}
	cs := res.Cookies()
	if len(cs) != 1 || cs[0].Name != "sipedge_token" || cs[0].Value != token || !cs[0].HttpOnly ||
		cs[0].SameSite != http.SameSiteStrictMode || cs[0].Path != "/" {
		t.Fatalf("cookie: %+v", cs)
	}

	// A browser: log in, land on the page, and use the API with the cookie.
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	defer browser.CloseIdleConnections()
	res, body := g.get(t, browser, "/login?token="+token, "")
	if res.StatusCode != 200 || res.Request.URL.Path != "/" || !strings.Contains(body, `id="devices"`) {
		t.Fatalf("after login: %d at %s", res.StatusCode, res.Request.URL)
	}
	if strings.Contains(body, token) {
		t.Error("the page holds the token")
	}
	var sum admin.Summary
	res, body = g.get(t, browser, "/api/summary", "")
	if res.StatusCode != 200 || json.Unmarshal([]byte(body), &sum) != nil || sum.Counts.Devices != 3 || sum.Counts.Cores != 1 ||
		sum.Counts.CoresUp != 1 || len(sum.Minutes) != 60 || sum.Counts.Registrations != 3 {
		t.Errorf("summary with the cookie: %d %+v", res.StatusCode, sum.Counts)
	}
	if res, _ = g.get(t, browser, "/api/registrations", ""); res.StatusCode != 200 {
		t.Errorf("the API with the cookie: %d", res.StatusCode)
	}
}

// sse reads server-sent events.
type sse struct{ sc *bufio.Scanner }

func newSSE(r io.Reader) *sse {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	return &sse{sc: sc}
}

// next is the next event and its data.
func (s *sse) next() (event, data string, err error) {
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case line == "" && (event != "" || data != ""):
			return event, data, nil
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data += strings.TrimPrefix(line, "data: ")
		}
	}
	if s.sc.Err() != nil {
		return "", "", s.sc.Err()
	}
	return "", "", io.EOF
}

// until reads events until one of kind that match accepts (its data).
func (s *sse) until(t *testing.T, kind string, match func(data string) bool) string {
	t.Helper()
	for {
		ev, data, err := s.next()
		if err != nil {
			t.Fatalf("waiting for a %s event: %v", kind, err)
		}
		if ev == kind && match(data) {
			return data
		}
	}
}

func TestDashboardStream(t *testing.T) {
	feed := admin.NewFeed(nil)
	g := startWith(t, feed)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", g.srv.URL+"/api/stream", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	s := newSSE(res.Body)

	// First a snapshot of everything.
	ev, data, err := s.next()
	var snap admin.Snapshot
	if err != nil || ev != "snapshot" || json.Unmarshal([]byte(data), &snap) != nil {
		t.Fatalf("first event: %q %v", ev, err)
	}
	if len(snap.Devices) != 3 || snap.Counts.Devices != 3 || snap.Devices[0].AOR != "sip:user0@example.com" ||
		len(snap.Cores) != 1 || snap.Counts.CoresUp != 1 || len(snap.Minutes) != 60 || snap.Counts.Registrations != 3 {
		t.Errorf("snapshot: %+v", snap)
	}

	// Then each event as it happens: an alert, a new phone.
	feed.Emit(audit.Event{Kind: audit.Alert, Severity: slog.LevelError, Reason: "mass_loss", Count: 120, Detail: "120 bindings lost in 10s"})
	var e admin.EventView
	json.Unmarshal([]byte(s.until(t, "audit", func(d string) bool { return strings.Contains(d, `"alert"`) })), &e)
	if e.Kind != "alert" || e.Reason != "mass_loss" || e.Severity != "ERROR" || e.Count != 120 || e.Time.IsZero() {
		t.Errorf("alert event: %+v", e)
	}
	p := edgetest.Dial(t, "udp", g.e.UDP)
	p.Send(p.Register(edgetest.Reg{User: "late", Extra: "User-Agent: Late/1"}))
	if r := p.MustRecvResponse(wait); r.StatusCode != 200 {
		t.Fatalf("REGISTER: %d", r.StatusCode)
	}
	json.Unmarshal([]byte(s.until(t, "audit", func(d string) bool { return strings.Contains(d, "late@") })), &e)
	if e.Kind != "register" || e.AOR != "sip:late@example.com" || e.Transport != "UDP" || e.Source != p.Local.String() {
		t.Errorf("register event: %+v", e)
	}
	// And the next snapshot (within a second) shows it, and the alert.
	json.Unmarshal([]byte(s.until(t, "snapshot", func(d string) bool { return strings.Contains(d, "late@") })), &snap)
	if snap.Counts.Devices != 4 || len(snap.Alerts) != 1 || snap.Alerts[0].Type != "mass_loss" {
		t.Errorf("later snapshot: %+v", snap.Counts)
	}

	// The stream ends when the browser goes.
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for feed.Subscribers() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the stream did not end within 5s of the client leaving")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
