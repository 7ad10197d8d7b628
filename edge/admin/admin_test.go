package admin_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/admin"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

const (
	wait  = 5 * time.Second
	token = "0123456789abcdef-test-token"
)

type rig struct {
	srv    *httptest.Server
	e      *edgetest.Edge
	ready  bool
	reload error
}

func start(t *testing.T) *rig { return startWith(t, nil) }

// startWith is start with the dashboard on, fed by feed, when feed is
// not nil: every event of the edge reaches it, as in cmd/sipedge.
func startWith(t *testing.T, feed *admin.Feed) *rig {
	t.Helper()
	core := upstreamtest.Start(t, upstreamtest.Options{})
	var hooks edgetest.Hooks
	if feed != nil {
		hooks = edgetest.Hooks{OnEvent: func(e registry.Event) { feed.Emit(audit.FromRegistry(e)) }, Events: feed.Emit,
			RateLimit: ratelimit.Events{
				OnBan:   func(b ratelimit.Ban) { feed.Emit(audit.FromBan(b, false)) },
				OnUnban: func(b ratelimit.Ban) { feed.Emit(audit.FromBan(b, true)) }}}
	}
	g := &rig{e: edgetest.StartWith(t, core.URI("udp"), nil, hooks), ready: true}
	h := admin.Handler(admin.Deps{Token: token, Registry: g.e.Bindings(), Flows: g.e.Flows(), Limiter: g.e.Limiter(),
		Cores:     func() []admin.Core { return []admin.Core{{Target: core.URI("udp"), State: "up"}} },
		Config:    func() any { return map[string]string{"mode": "path"} },
		Reload:    func() error { return g.reload },
		Ready:     func() bool { return g.ready },
		Dashboard: feed})
	g.srv = httptest.NewServer(h)
	t.Cleanup(g.srv.Close)
	for i, network := range []string{"udp", "udp", "tcp"} {
		to := g.e.UDP
		if network == "tcp" {
			to = g.e.TCP
		}
		p := edgetest.Dial(t, network, to)
		p.Send(p.Register(edgetest.Reg{User: fmt.Sprintf("user%d", i), Extra: "User-Agent: Phone/" + network}))
		if res := p.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("REGISTER got %d", res.StatusCode)
		}
	}
	return g
}

// call sends a request with tok ("" none) and decodes the JSON answer.
func (g *rig) call(t *testing.T, method, path, tok, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, g.srv.URL+path, strings.NewReader(body))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: %q: %v", method, path, raw, err)
		}
	}
	return res.StatusCode
}

func TestTokenRequired(t *testing.T) {
	g := start(t)
	for _, path := range []string{"/api/registrations", "/api/flows", "/api/bans", "/api/cores", "/api/config"} {
		for _, tok := range []string{"", "wrong-token-of-some-length", token + "x"} {
			var e struct{ Error string }
			if code := g.call(t, "GET", path, tok, "", &e); code != 401 || e.Error == "" {
				t.Errorf("GET %s with token %q: %d %q, want 401 with a JSON error", path, tok, code, e.Error)
			}
		}
		if code := g.call(t, "GET", path, token, "", nil); code != 200 {
			t.Errorf("GET %s with the token: %d", path, code)
		}
	}
	if code := g.call(t, "POST", "/api/reload", "", "", nil); code != 401 {
		t.Errorf("reload without the token: %d", code)
	}
	// Orchestrators probe without a token.
	if code := g.call(t, "GET", "/healthz", "", "", nil); code != 200 {
		t.Errorf("healthz: %d", code)
	}
	if code := g.call(t, "GET", "/readyz", "", "", nil); code != 200 {
		t.Errorf("readyz: %d", code)
	}
	g.ready = false
	if code := g.call(t, "GET", "/readyz", "", "", nil); code != 503 {
		t.Errorf("readyz while not serving: %d, want 503", code)
	}
	var e struct{ Error string }
	if code := g.call(t, "GET", "/nothing", "", "", &e); code != 404 || e.Error == "" {
		t.Errorf("unknown path: %d %q", code, e.Error)
	}
}

func TestRegistrationsFilterAndPages(t *testing.T) {
	g := start(t)
	var p admin.Page[admin.Registration]
	if code := g.call(t, "GET", "/api/registrations", token, "", &p); code != 200 || p.Total != 3 || len(p.Items) != 3 {
		t.Fatalf("all: %d %+v", code, p)
	}
	r := p.Items[0]
	if r.AOR != "sip:user0@example.com" || r.Transport != "UDP" || r.UserAgent != "Phone/udp" || r.Source == "" || r.Expires.Before(time.Now()) {
		t.Errorf("first registration: %+v", r)
	}
	for q, want := range map[string]int{"?transport=tcp": 1, "?aor=user1": 1, "?user_agent=phone/UDP": 2,
		"?source=127.0.0.1": 3, "?source=10.": 0, "?tenant=": 3, "?tenant=acme": 0} {
		p = admin.Page[admin.Registration]{}
		if g.call(t, "GET", "/api/registrations"+q, token, "", &p); p.Total != want {
			t.Errorf("%s: %d registrations, want %d", q, p.Total, want)
		}
	}
	p = admin.Page[admin.Registration]{}
	g.call(t, "GET", "/api/registrations?limit=1&offset=1", token, "", &p)
	if p.Total != 3 || p.Offset != 1 || len(p.Items) != 1 || p.Items[0].AOR != "sip:user1@example.com" {
		t.Errorf("page 2 of 1: %+v", p)
	}
	for _, q := range []string{"?limit=0", "?limit=x", "?offset=-1"} {
		var e struct{ Error string }
		if code := g.call(t, "GET", "/api/registrations"+q, token, "", &e); code != 400 || e.Error == "" {
			t.Errorf("%s: %d %q", q, code, e.Error)
		}
	}
	var flows admin.Page[admin.Flow]
	if g.call(t, "GET", "/api/flows", token, "", &flows); flows.Total != 3 {
		t.Errorf("flows: %+v", flows)
	}
}

func TestBanAndUnban(t *testing.T) {
	g := start(t)
	var b admin.BanView
	if code := g.call(t, "POST", "/api/bans", token, `{"prefix":"203.0.113.0/24","duration":"10m"}`, &b); code != 201 ||
		b.Prefix != "203.0.113.0/24" || b.Reason != "manual" || time.Until(b.Until) > 10*time.Minute {
		t.Fatalf("ban: %d %+v", code, b)
	}
	if !g.e.Limiter().Banned(netipAddr("203.0.113.9")) {
		t.Error("the limiter does not ban 203.0.113.9")
	}
	var list admin.Page[admin.BanView]
	if g.call(t, "GET", "/api/bans", token, "", &list); list.Total != 1 {
		t.Errorf("bans: %+v", list)
	}
	for _, body := range []string{`{"prefix":"nonsense"}`, `{"prefix":"1.2.3.4","duration":"-1s"}`, `not json`} {
		var e struct{ Error string }
		if code := g.call(t, "POST", "/api/bans", token, body, &e); code != 400 || e.Error == "" {
			t.Errorf("POST %s: %d %q", body, code, e.Error)
		}
	}
	if code := g.call(t, "DELETE", "/api/bans?prefix=203.0.113.0/24", token, "", nil); code != 200 {
		t.Errorf("unban: %d", code)
	}
	if code := g.call(t, "DELETE", "/api/bans?prefix=203.0.113.0/24", token, "", nil); code != 404 {
		t.Errorf("unban twice: %d, want 404", code)
	}
	if g.e.Limiter().Banned(netipAddr("203.0.113.9")) {
		t.Error("still banned after unban")
	}
}

func TestCoresConfigReload(t *testing.T) {
	g := start(t)
	var cores admin.Page[admin.Core]
	if g.call(t, "GET", "/api/cores", token, "", &cores); cores.Total != 1 || cores.Items[0].State != "up" {
		t.Errorf("cores: %+v", cores)
	}
	var cfg map[string]string
	if g.call(t, "GET", "/api/config", token, "", &cfg); cfg["mode"] != "path" {
		t.Errorf("config: %v", cfg)
	}
	if code := g.call(t, "POST", "/api/reload", token, "", nil); code != 200 {
		t.Errorf("reload: %d", code)
	}
	g.reload = errors.New("access.udp: bad")
	var e struct{ Error string }
	if code := g.call(t, "POST", "/api/reload", token, "", &e); code != 422 || !strings.Contains(e.Error, "access.udp") {
		t.Errorf("refused reload: %d %q", code, e.Error)
	}
}

func TestTokenFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", "admin.token")
	tok, err := admin.LoadOrCreateToken(p)
	if err != nil || len(tok) < 32 {
		t.Fatalf("created %q, %v", tok, err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("token file mode: %v %v", st, err)
	}
	if again, _ := admin.LoadOrCreateToken(p); again != tok {
		t.Error("the token changed on the second load")
	}
	os.WriteFile(p, []byte("short\n"), 0o600)
	if _, err := admin.LoadOrCreateToken(p); err == nil {
		t.Error("a short token was accepted")
	}
	c := admin.Config{Listen: "192.0.2.1:8060", TokenFile: p}
	if err := c.Validate([]string{"192.0.2.1:5060"}); err == nil {
		t.Error("admin on an access address passed")
	}
	if err := c.Validate([]string{"0.0.0.0:5060"}); err == nil {
		t.Error("admin beside a wildcard access listener passed")
	}
	if err := (admin.Config{Listen: "127.0.0.1:8060", TokenFile: p}).Validate([]string{"0.0.0.0:5060"}); err != nil {
		t.Errorf("loopback admin: %v", err)
	}
}

func netipAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// The dashboard's cookie may read from any page, but change something
// only from the dashboard's own: another site (or another port on this
// host) cannot ban or unban with it. A ban must be JSON.
func TestCookieCannotChangeFromElsewhere(t *testing.T) {
	g := start(t)
	do := func(method, path, body string, hdr map[string]string) int {
		req, _ := http.NewRequest(method, g.srv.URL+path, strings.NewReader(body))
		req.AddCookie(&http.Cookie{Name: "sipedge_token", Value: token})
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}

	if code := do("GET", "/api/bans", "", map[string]string{"Sec-Fetch-Site": "cross-site"}); code != 200 {
		t.Errorf("GET with the cookie: %d", code)
	}
	for _, hdr := range []map[string]string{{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "http://127.0.0.1:1"}, {}} {
		hdr["Content-Type"] = "application/json"
		if code := do("POST", "/api/bans", `{"prefix":"0.0.0.0/0"}`, hdr); code != 401 {
			t.Errorf("POST with the cookie from %v: %d, want 401", hdr, code)
		}
	}
	if code := do("DELETE", "/api/bans?prefix=1.2.3.4", "", map[string]string{"Sec-Fetch-Site": "cross-site"}); code != 401 {
		t.Errorf("DELETE with the cookie from another site: %d", code)
	}
	same := map[string]string{"Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}
	if code := do("POST", "/api/bans", `{"prefix":"203.0.113.9"}`, same); code != 201 {
		t.Errorf("POST from the dashboard itself: %d", code)
	}
	if code := do("POST", "/api/bans", `{"prefix":"203.0.113.8"}`, map[string]string{"Sec-Fetch-Site": "same-origin", "Content-Type": "text/plain"}); code != 415 {
		t.Errorf("a text/plain ban: %d, want 415", code)
	}

}
