// Package admin is sipedge's operator interface over HTTP: the JSON API
// (registrations, flows, bans, cores, the running config, reload), the
// Prometheus metrics, the live dashboard, and liveness and readiness for
// orchestrators. It listens on its own address, 127.0.0.1 by default and
// never on the access side, and every path but /healthz, /readyz and
// /login wants the bearer token from the token file (or the cookie that
// /login sets, for browsers).
package admin

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// Config is the [admin] section.
type Config struct {
	// Listen is the admin HTTP address; "" turns the admin side off.
	Listen string `toml:"listen"`
	// TokenFile holds the bearer token; created with a random one (0600)
	// when missing. `sipedge ctl` reads it too.
	TokenFile string `toml:"token_file"`
}

// DefaultConfig listens on 127.0.0.1:8060 with the token in var/.
func DefaultConfig() Config { return Config{Listen: "127.0.0.1:8060", TokenFile: "var/admin.token"} }

// Validate names every invalid key and why. access are the access
// listeners' addresses: the admin side is never on one of their IPs
// (unless loopback, which phones do not reach).
func (c Config) Validate(access []string) error {
	if c.Listen == "" {
		return nil
	}
	ap, err := netip.ParseAddrPort(c.Listen)
	if err != nil {
		return fmt.Errorf("admin.listen: %q is not IP:port", c.Listen)
	}
	if c.TokenFile == "" {
		return errors.New("admin.token_file: must name a file")
	}
	if ap.Addr().IsLoopback() {
		return nil
	}
	for _, a := range access {
		if p, err := netip.ParseAddrPort(a); err == nil && (p.Addr() == ap.Addr() || p.Addr().IsUnspecified() || ap.Addr().IsUnspecified()) {
			return fmt.Errorf("admin.listen: %s is on the access side (%s): the admin API must not face phones", c.Listen, a)
		}
	}
	return nil
}

// LoadOrCreateToken reads the token file, or creates it with a random
// token readable by its owner only.
func LoadOrCreateToken(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		tok := strings.TrimSpace(string(b))
		if len(tok) < 16 {
			return "", fmt.Errorf("admin.token_file: %s holds fewer than 16 characters", path)
		}
		return tok, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(raw[:])
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return "", err
	}
	return tok, f.Close()
}

// Core is one core as the API shows it.
type Core struct {
	Tenant string `json:"tenant"`
	Target string `json:"target"`
	State  string `json:"state"`
}

// Deps are what the API reads and acts on. Any but Token may be nil:
// its endpoints then answer 404.
type Deps struct {
	Token    string // required
	Log      *slog.Logger
	Registry *registry.Registry
	Flows    *nat.FlowTable
	Limiter  *ratelimit.Limiter
	Cores    func() []Core
	Metrics  http.Handler
	// Config is the running configuration with its secrets removed.
	Config func() any
	// Reload applies the config file again, as SIGHUP does.
	Reload func() error
	// Ready reports whether the edge serves phones (started, not
	// draining, holding its access address).
	Ready func() bool
	// Extra are more handlers, by pattern, each behind the token.
	Extra map[string]http.Handler
	// Dashboard, if set, turns on the live dashboard (see Dashboard),
	// fed by this feed, and GET /login, which gives a browser the token
	// as a cookie.
	Dashboard *Feed
}

// Handler is the admin HTTP handler.
func Handler(d Deps) http.Handler {
	if d.Log == nil {
		d.Log = slog.Default()
	}
	a := &api{d: d}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	mux.HandleFunc("GET /readyz", a.ready)
	authed := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, a.auth(h)) }
	authed("GET /api/registrations", a.registrations)
	authed("GET /api/flows", a.flows)
	authed("GET /api/bans", a.bans)
	authed("POST /api/bans", a.ban)
	authed("DELETE /api/bans", a.unban)
	authed("GET /api/cores", a.cores)
	authed("GET /api/config", a.config)
	authed("POST /api/reload", a.reload)
	if d.Metrics != nil {
		mux.Handle("GET /metrics", a.auth(d.Metrics.ServeHTTP))
	}
	extra := d.Extra
	if d.Dashboard != nil {
		extra = maps.Clone(extra)
		if extra == nil {
			extra = map[string]http.Handler{}
		}
		maps.Copy(extra, Dashboard(d, d.Dashboard))
		// Not behind the token: it is where a browser shows the token.
		mux.Handle("GET /login", login(d.Token))
	}
	for p, h := range extra {
		mux.Handle(p, a.auth(h.ServeHTTP))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { writeError(w, 404, "no such endpoint") })
	return mux
}

type api struct{ d Deps }

// auth wants "Authorization: Bearer TOKEN" (or, for the dashboard's
// page and event stream, which browsers cannot give headers, the
// token in a cookie it set).
func (a *api) auth(h http.HandlerFunc) http.Handler {
	want := []byte(a.d.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			// A browser sends the cookie to this host from any page, on
			// any port: a change made with it must come from the
			// dashboard's own page.
			if c, err := r.Cookie("sipedge_token"); err == nil && (r.Method == http.MethodGet || sameOrigin(r)) {
				got, ok = c.Value, true
			}
		}
		if !ok || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sipedge"`)
			writeError(w, 401, "a valid bearer token is needed (admin.token_file)")
			return
		}
		h(w, r)
	})
}

// sameOrigin reports whether a browser says r comes from a page of this
// listener itself (Sec-Fetch-Site, or an Origin naming this host:port).
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		return site == "same-origin"
	}
	o := r.Header.Get("Origin")
	return o != "" && (o == "http://"+r.Host || o == "https://"+r.Host)
}

func (a *api) ready(w http.ResponseWriter, _ *http.Request) {
	if a.d.Ready != nil && !a.d.Ready() {
		writeJSON(w, 503, map[string]string{"status": "not ready"})
		return
	}
	writeJSON(w, 200, map[string]string{"status": "ready"})
}

// Registration is a binding as the API shows it.
type Registration struct {
	AOR         string    `json:"aor"`
	Tenant      string    `json:"tenant,omitempty"`
	Contact     string    `json:"contact"`
	Transport   string    `json:"transport"`
	Source      string    `json:"source"`
	Local       string    `json:"local"`
	UserAgent   string    `json:"user_agent,omitempty"`
	Instance    string    `json:"instance,omitempty"`
	RegID       int       `json:"reg_id,omitempty"`
	NAT         string    `json:"nat"`
	Expires     time.Time `json:"expires"`
	Updated     time.Time `json:"updated"`
	FlowSince   time.Time `json:"flow_since"`
	CoreContact string    `json:"core_contact,omitempty"`
	// Push is the RFC 8599 provider that can wake the phone ("": none).
	Push string `json:"push,omitempty"`
	// Keepalive is what keeps the flow open in auto mode: "options" (the
	// phone answers them), "crlf" (it does not), "" (not known yet).
	Keepalive string `json:"keepalive,omitempty"`
}

// Page is one page of a list.
type Page[T any] struct {
	Total  int `json:"total"`
	Offset int `json:"offset"`
	Items  []T `json:"items"`
}

func (a *api) registrations(w http.ResponseWriter, r *http.Request) {
	if a.d.Registry == nil {
		writeError(w, 404, "no registry")
		return
	}
	q := r.URL.Query()
	match := func(b registry.Binding) bool {
		return (q.Get("aor") == "" || strings.Contains(b.AOR, q.Get("aor"))) &&
			(q.Get("source") == "" || strings.HasPrefix(b.Flow.Remote.String(), q.Get("source"))) &&
			(q.Get("user_agent") == "" || strings.Contains(strings.ToLower(b.UserAgent), strings.ToLower(q.Get("user_agent")))) &&
			(q.Get("transport") == "" || strings.EqualFold(b.Flow.Transport.String(), q.Get("transport"))) &&
			(!q.Has("tenant") || b.Tenant == q.Get("tenant"))
	}
	var out []Registration
	for _, b := range a.d.Registry.All() {
		if match(b) {
			out = append(out, registration(b, a.d.Flows))
		}
	}
	sortRegistrations(out)
	page(w, r, out)
}

// registration is b as the API shows it, with what keeps its flow open
// (flows may be nil).
func registration(b registry.Binding, flows *nat.FlowTable) Registration {
	r := Registration{AOR: b.AOR, Tenant: b.Tenant, Contact: audit.Redact(b.Contact), Transport: b.Flow.Transport.String(),
		Source: b.Flow.Remote.String(), Local: b.Flow.Local.String(), UserAgent: b.UserAgent, Instance: b.Instance,
		RegID: b.RegID, NAT: b.NAT.String(), Expires: b.Expires, Updated: b.Updated, FlowSince: b.FlowSince,
		CoreContact: audit.Redact(b.CoreContact), Push: b.Push.Provider}
	if flows != nil {
		if f, ok := flows.Get(b.Flow); ok {
			r.Keepalive = string(f.Keepalive)
		}
	}
	return r
}

func sortRegistrations(rs []Registration) {
	slices.SortFunc(rs, func(x, y Registration) int { return strings.Compare(x.AOR+x.Contact, y.AOR+y.Contact) })
}

// Flow is a flow as the API shows it.
type Flow struct {
	Transport string    `json:"transport"`
	Local     string    `json:"local"`
	Remote    string    `json:"remote"`
	Created   time.Time `json:"created"`
	LastIn    time.Time `json:"last_in"`
	LastPing  time.Time `json:"last_ping,omitzero"`
	LastPong  time.Time `json:"last_pong,omitzero"`
	RTTMillis float64   `json:"rtt_ms,omitempty"`
	Misses    int       `json:"misses,omitempty"`
	Keepalive string    `json:"keepalive,omitempty"`
}

func (a *api) flows(w http.ResponseWriter, r *http.Request) {
	if a.d.Flows == nil {
		writeError(w, 404, "no flow table")
		return
	}
	var out []Flow
	for _, f := range a.d.Flows.Snapshot() {
		out = append(out, Flow{Transport: f.Key.Transport.String(), Local: f.Key.Local.String(), Remote: f.Key.Remote.String(),
			Created: f.Created, LastIn: f.LastIn, LastPing: f.LastPing, LastPong: f.LastPong,
			RTTMillis: float64(f.RTT) / float64(time.Millisecond), Misses: f.Misses, Keepalive: string(f.Keepalive)})
	}
	slices.SortFunc(out, func(x, y Flow) int { return strings.Compare(x.Remote, y.Remote) })
	page(w, r, out)
}

// BanView is a ban as the API shows it.
type BanView struct {
	Prefix string    `json:"prefix"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
	Until  time.Time `json:"until"`
	Count  int       `json:"count"`
	Manual bool      `json:"manual,omitempty"`
}

func (a *api) bans(w http.ResponseWriter, r *http.Request) {
	if a.d.Limiter == nil {
		writeError(w, 404, "no limiter")
		return
	}
	var out []BanView
	for _, b := range a.d.Limiter.Bans() {
		out = append(out, banView(b))
	}
	page(w, r, out)
}

func banView(b ratelimit.Ban) BanView {
	return BanView{Prefix: b.Addr.String(), Reason: b.Reason.String(), Since: b.Since, Until: b.Until, Count: b.Count, Manual: b.Manual}
}

// BanRequest is the body of POST /api/bans.
type BanRequest struct {
	Prefix   string `json:"prefix"`   // an address or CIDR
	Duration string `json:"duration"` // Go duration; "": the escalated ban_time
}

func (a *api) ban(w http.ResponseWriter, r *http.Request) {
	if a.d.Limiter == nil {
		writeError(w, 404, "no limiter")
		return
	}
	if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); strings.TrimSpace(ct) != "application/json" {
		writeError(w, 415, "the body must be application/json")
		return
	}
	var req BanRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
		writeError(w, 400, "body: "+err.Error())
		return
	}
	p, err := ratelimit.ParsePrefix(req.Prefix)
	if err != nil {
		writeError(w, 400, fmt.Sprintf("prefix %q is not an address or CIDR", req.Prefix))
		return
	}
	var d time.Duration
	if req.Duration != "" {
		if d, err = time.ParseDuration(req.Duration); err != nil || d <= 0 {
			writeError(w, 400, fmt.Sprintf("duration %q is not a positive Go duration", req.Duration))
			return
		}
	}
	a.d.Limiter.Ban(p, ratelimit.ReasonManual, d)
	for _, b := range a.d.Limiter.Bans() {
		if b.Addr.Contains(p.Addr()) {
			writeJSON(w, 201, banView(b))
			return
		}
	}
	writeError(w, 409, "not banned: the prefix is in the allowlist")
}

func (a *api) unban(w http.ResponseWriter, r *http.Request) {
	if a.d.Limiter == nil {
		writeError(w, 404, "no limiter")
		return
	}
	p, err := ratelimit.ParsePrefix(r.URL.Query().Get("prefix"))
	if err != nil {
		writeError(w, 400, "?prefix= must be an address or CIDR")
		return
	}
	if !a.d.Limiter.Unban(p) {
		writeError(w, 404, "no ban on "+p.String())
		return
	}
	writeJSON(w, 200, map[string]string{"unbanned": p.String()})
}

func (a *api) cores(w http.ResponseWriter, r *http.Request) {
	if a.d.Cores == nil {
		writeError(w, 404, "no cores")
		return
	}
	page(w, r, a.d.Cores())
}

func (a *api) config(w http.ResponseWriter, _ *http.Request) {
	if a.d.Config == nil {
		writeError(w, 404, "no config")
		return
	}
	writeJSON(w, 200, a.d.Config())
}

func (a *api) reload(w http.ResponseWriter, _ *http.Request) {
	if a.d.Reload == nil {
		writeError(w, 404, "reload is not available")
		return
	}
	if err := a.d.Reload(); err != nil {
		writeError(w, 422, "reload refused, the running config stays: "+err.Error())
		return
	}
	writeJSON(w, 200, map[string]string{"status": "reloaded"})
}

// page writes items[offset:offset+limit] (?offset=, ?limit=, default
// 100, at most 10000).
func page[T any](w http.ResponseWriter, r *http.Request, items []T) {
	q := r.URL.Query()
	offset, limit := 0, 100
	var err error
	if v := q.Get("offset"); v != "" {
		if offset, err = strconv.Atoi(v); err != nil || offset < 0 {
			writeError(w, 400, "offset must be a non-negative integer")
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > 10000 {
			writeError(w, 400, "limit must be an integer 1..10000")
			return
		}
	}
	p := Page[T]{Total: len(items), Offset: offset, Items: []T{}}
	if offset < len(items) {
		p.Items = items[offset:min(len(items), offset+limit)]
	}
	writeJSON(w, 200, p)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
