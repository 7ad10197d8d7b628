package admin

import (
	"crypto/subtle"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The page, its script and its style: embedded, so the dashboard works
// on an edge with no way out (no CDN, no web fonts).
//
//go:embed static
var static embed.FS

const (
	// snapshotEvery: the stream sends the whole picture this often, so a
	// page that missed events (or the countdowns) is never further off.
	snapshotEvery = time.Second
	// writeWait: a browser that does not read for this long is gone.
	writeWait = 10 * time.Second
	// maxDevices bounds the devices a snapshot lists (by AOR); the count
	// is of all of them.
	maxDevices = 1000
)

// Dashboard is the live device dashboard, by pattern: the page (GET /),
// its files (GET /static/), the event stream (GET /api/stream: a
// snapshot at once and every second, each audit event as it happens)
// and the summary (GET /api/summary). feed must receive every audit
// event. Handler serves these itself, behind the token, and GET /login
// with them, when Deps.Dashboard is set: that is the way to turn the
// dashboard on. Dashboard is for a server that mounts it elsewhere,
// behind an authentication of its own.
func Dashboard(d Deps, feed *Feed) map[string]http.Handler {
	s := &dash{d: d, feed: feed}
	files, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	fileServer := http.StripPrefix("/static/", http.FileServerFS(files))
	return map[string]http.Handler{
		"GET /{$}": secure(http.HandlerFunc(s.page)),
		"GET /static/": secure(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/") { // no directory listings
				writeError(w, 404, "no such file")
				return
			}
			w.Header().Set("Cache-Control", "no-cache")
			fileServer.ServeHTTP(w, r)
		})),
		"GET /api/stream":  http.HandlerFunc(s.stream),
		"GET /api/summary": http.HandlerFunc(s.summaryJSON),
	}
}

// login gives a browser the token as an HttpOnly cookie, which the
// page and its event stream then carry (a browser sends no bearer
// header on a page load or an EventSource). SameSite=Strict keeps other
// sites from using it.
func login(token string) http.Handler {
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Referrer-Policy", "no-referrer")
		if subtle.ConstantTimeCompare([]byte(r.URL.Query().Get("token")), want) != 1 {
			writeError(w, 401, "wrong token (admin.token_file)")
			return
		}
		c := &http.Cookie{Name: "sipedge_token", Value: token, Path: "/", HttpOnly: true,
			SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil}
		if err := c.Valid(); err != nil {
			writeError(w, 500, "the token cannot be a cookie; use one of letters and digits")
			return
		}
		http.SetCookie(w, c)
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, "/", http.StatusSeeOther)
	})
}

// secure sets what a browser needs to run the page and nothing else:
// its own script and style only, no framing, no referrer.
func secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
			"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}

type dash struct {
	d    Deps
	feed *Feed

	// The last snapshot, shared by every open page for a second: each
	// one walks the whole registry under its lock.
	mu     sync.Mutex
	last   Snapshot
	lastAt time.Time
}

// shared is a snapshot at most a second old.
func (s *dash) shared() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := time.Now(); now.Sub(s.lastAt) >= time.Second {
		s.last, s.lastAt = s.snapshot(), now
	}
	return s.last
}

func (s *dash) page(w http.ResponseWriter, _ *http.Request) {
	b, err := static.ReadFile("static/index.html")
	if err != nil {
		writeError(w, 500, err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b)
}

// Snapshot is the whole picture the stream sends: the summary, the
// devices online (at most maxDevices), the bans and the cores.
type Snapshot struct {
	Summary
	Devices []Registration `json:"devices"`
	Bans    []BanView      `json:"bans"`
	Cores   []Core         `json:"cores"`
}

// summary is the feed's summary with the live counts.
func (s *dash) summary() Summary {
	sum := s.feed.summary()
	if s.d.Registry != nil {
		sum.Counts.Devices = s.d.Registry.Len()
	}
	if s.d.Flows != nil {
		sum.Counts.Flows = s.d.Flows.Len()
	}
	if s.d.Limiter != nil {
		sum.Counts.Bans = len(s.d.Limiter.Bans())
	}
	if s.d.Cores != nil {
		countCores(&sum.Counts, s.d.Cores())
	}
	return sum
}

func countCores(c *Counts, cores []Core) {
	c.Cores, c.CoresUp = len(cores), 0
	for _, x := range cores {
		if x.State == "up" {
			c.CoresUp++
		}
	}
}

// snapshot reads each table once, so its lists and counts agree.
func (s *dash) snapshot() Snapshot {
	snap := Snapshot{Summary: s.feed.summary(), Devices: []Registration{}, Bans: []BanView{}, Cores: []Core{}}
	if s.d.Registry != nil {
		for _, b := range s.d.Registry.All() {
			snap.Devices = append(snap.Devices, registration(b, s.d.Flows))
		}
		sortRegistrations(snap.Devices)
		snap.Counts.Devices = len(snap.Devices)
		snap.Devices = snap.Devices[:min(len(snap.Devices), maxDevices)]
	}
	if s.d.Flows != nil {
		snap.Counts.Flows = s.d.Flows.Len()
	}
	if s.d.Limiter != nil {
		for _, b := range s.d.Limiter.Bans() {
			snap.Bans = append(snap.Bans, banView(b))
		}
		snap.Counts.Bans = len(snap.Bans)
	}
	if s.d.Cores != nil {
		snap.Cores = append(snap.Cores, s.d.Cores()...)
		countCores(&snap.Counts, snap.Cores)
	}
	return snap
}

func (s *dash) summaryJSON(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, 200, s.summary())
}

// stream sends server-sent events: "snapshot" at once and every
// snapshotEvery, "audit" for each event, until the browser goes or the
// request ends. A browser that falls behind misses events, never the
// next snapshot.
func (s *dash) stream(w http.ResponseWriter, r *http.Request) {
	sub, ok := s.feed.subscribe()
	if !ok {
		writeError(w, 503, "too many dashboards open")
		return
	}
	defer s.feed.unsubscribe(sub)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // a proxy in front must not hold it back
	w.WriteHeader(200)
	write := func(event string, v any) error {
		b, err := json.Marshal(v) // one line: no newline can end the data field early
		if err != nil {
			return err
		}
		_ = rc.SetWriteDeadline(time.Now().Add(writeWait))
		_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		return err
	}
	if _, err := fmt.Fprint(w, "retry: 2000\n\n"); err != nil {
		return
	}
	if write("snapshot", s.shared()) != nil || rc.Flush() != nil {
		return
	}
	tick := time.NewTicker(snapshotEvery)
	defer tick.Stop()
	for {
		var err error
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			err = write("snapshot", s.shared())
		case e := <-sub.ch:
			err = write("audit", e)
			for n := len(sub.ch); n > 0 && err == nil; n-- { // a burst: one flush
				err = write("audit", <-sub.ch)
			}
		}
		if err != nil || rc.Flush() != nil {
			return
		}
	}
}
