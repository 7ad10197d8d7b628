// Package alert watches the audit events for what an operator must hear
// about at once: many phones lost together, a phone that suddenly speaks
// with another user agent or from another network, a burst of failed
// passwords on one account, one identity on more devices than policy
// allows. Each alert is itself an audit event (kind "alert", Reason the
// alert's name), so it reaches the log, the metrics and the dashboard;
// a webhook may receive it too. Watching costs a map lookup per event
// and bounded memory.
package alert

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sipedge/sipedge/edge/audit"
)

// Alert names, the Reason of each alert event.
const (
	MassLoss          = "mass_loss"
	UserAgentChange   = "user_agent_change"
	SourceJump        = "source_jump"
	AuthFailureBurst  = "auth_failure_burst"
	DuplicateIdentity = "duplicate_identity"
)

// Config is the [alerts] section.
type Config struct {
	// MassLoss alerts when this many bindings are lost within
	// MassLossWindow (0: off).
	MassLoss       int           `toml:"mass_loss"`
	MassLossWindow time.Duration `toml:"mass_loss_window"`
	// SourceJumpWithin: a phone (same AOR and instance, or contact) that
	// registers from another network (another /16, or /48 for IPv6)
	// sooner than this after its last registration has not travelled:
	// someone else has its credentials, or its traffic is being moved.
	// There is no geography here (no GeoIP database), only networks.
	// 0: off.
	SourceJumpWithin time.Duration `toml:"source_jump_within"`
	// AuthFailures failed authentications of one AOR within
	// AuthFailureWindow alert (0: off).
	AuthFailures      int           `toml:"auth_failures"`
	AuthFailureWindow time.Duration `toml:"auth_failure_window"`
	// MaxDevices is how many devices (instances, or contacts) one AOR
	// may have registered at once before it is a duplicate identity
	// (0: off).
	MaxDevices int `toml:"max_devices"`
	// UserAgentChange alerts when an AOR's phone re-registers with
	// another user agent than before.
	UserAgentChange bool `toml:"user_agent_change"`
	// Webhook, if set, receives each alert as a JSON POST; WebhookQueue
	// alerts wait at most (more are dropped and counted).
	Webhook      string `toml:"webhook"`
	WebhookQueue int    `toml:"webhook_queue"`
	// MaxAORs bounds the per-AOR memory (last source, user agent,
	// failures); the oldest entries go first.
	MaxAORs int `toml:"max_aors"`
}

// DefaultConfig: 100 bindings lost in 10 s, a jump within 5 minutes, 10
// failures in a minute, user agent changes, no device limit.
func DefaultConfig() Config {
	return Config{MassLoss: 100, MassLossWindow: 10 * time.Second, SourceJumpWithin: 5 * time.Minute,
		AuthFailures: 10, AuthFailureWindow: time.Minute, UserAgentChange: true, WebhookQueue: 256, MaxAORs: 100_000}
}

// Validate names every invalid key and why.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("alerts.%s: %s", key, fmt.Sprintf(format, a...)))
	}
	if c.MassLoss < 0 {
		bad("mass_loss", "%d is negative", c.MassLoss)
	}
	if c.MassLoss > 0 && (c.MassLossWindow < time.Second || c.MassLossWindow > time.Hour) {
		bad("mass_loss_window", "%s is outside 1s..1h", c.MassLossWindow)
	}
	if c.SourceJumpWithin < 0 || c.SourceJumpWithin > 24*time.Hour {
		bad("source_jump_within", "%s is outside 0..24h", c.SourceJumpWithin)
	}
	if c.AuthFailures < 0 {
		bad("auth_failures", "%d is negative", c.AuthFailures)
	}
	if c.AuthFailures > 0 && (c.AuthFailureWindow < time.Second || c.AuthFailureWindow > 24*time.Hour) {
		bad("auth_failure_window", "%s is outside 1s..24h", c.AuthFailureWindow)
	}
	if c.MaxDevices < 0 {
		bad("max_devices", "%d is negative", c.MaxDevices)
	}
	if c.Webhook != "" && !strings.HasPrefix(c.Webhook, "http://") && !strings.HasPrefix(c.Webhook, "https://") {
		bad("webhook", "is not an http(s) URL") // not quoted: it may carry a key
	}
	if c.WebhookQueue < 1 || c.WebhookQueue > 100_000 {
		bad("webhook_queue", "%d is outside 1..100000", c.WebhookQueue)
	}
	if c.MaxAORs < 100 {
		bad("max_aors", "%d is below 100", c.MaxAORs)
	}
	return errors.Join(errs...)
}

// Watcher turns audit events into alerts. Safe for concurrent use.
type Watcher struct {
	cfg  Config
	now  func() time.Time
	emit func(audit.Event) // where alerts go (the audit log, the metrics, ...)

	mu    sync.Mutex
	lost  []loss // bindings lost within the mass-loss window, oldest first
	quiet time.Time
	aors  map[string]*aorState
	order []string // AORs by first sight, to bound aors
}

// loss is one lost binding, with what groups it.
type loss struct {
	at        time.Time
	cause     string // "flows died", "expired", "unregistered"
	network   string
	transport string
}

// aorState is what the watcher remembers of one AOR.
type aorState struct {
	devices  map[string]device // by instance, or contact
	failures []time.Time
	ua       string
}

type device struct {
	src         netip.Addr
	seen, until time.Time // until: its registration's end
}

// New watches with cfg; alerts go to emit.
func New(cfg Config, now func() time.Time, emit func(audit.Event)) *Watcher {
	if now == nil {
		now = time.Now
	}
	return &Watcher{cfg: cfg, now: now, emit: emit, aors: make(map[string]*aorState)}
}

// Observe looks at one audit event (not at alerts).
func (w *Watcher) Observe(e audit.Event) {
	if e.Kind == audit.Alert {
		return
	}
	var out []audit.Event
	w.mu.Lock()
	now := w.now()
	switch e.Kind {
	case audit.Register, audit.Refresh, audit.FlowMoved:
		out = w.registered(e, now)
	case audit.Unregister, audit.Expire:
		w.forget(e)
		cause := "unregistered"
		if e.Kind == audit.Expire {
			cause = "expired"
		}
		out = w.lose(now, loss{at: now, cause: cause, network: network(e.Source.Addr()), transport: e.Transport}, 1)
	case audit.FlowDead:
		out = w.lose(now, loss{at: now, cause: "flows died", network: network(e.Source.Addr()), transport: e.Transport}, max(e.Count, 1))
	case audit.AuthFailure:
		out = w.failed(e, now)
	}
	w.mu.Unlock()
	for _, a := range out {
		a.Time = now
		w.emit(a)
	}
}

// lose notes n bindings lost, and alerts once per window when they add
// up to a mass loss.
func (w *Watcher) lose(now time.Time, l loss, n int) []audit.Event {
	if w.cfg.MassLoss == 0 {
		return nil
	}
	for range n {
		if len(w.lost) >= 4*w.cfg.MassLoss { // enough to decide; bounded
			w.lost = w.lost[1:]
		}
		w.lost = append(w.lost, l)
	}
	cut := now.Add(-w.cfg.MassLossWindow)
	i := sort.Search(len(w.lost), func(i int) bool { return w.lost[i].at.After(cut) })
	w.lost = w.lost[i:]
	if len(w.lost) < w.cfg.MassLoss || now.Before(w.quiet) {
		return nil
	}
	w.quiet = now.Add(w.cfg.MassLossWindow) // one alert per window
	causes, nets, tps := map[string]int{}, map[string]int{}, map[string]int{}
	for _, x := range w.lost {
		causes[x.cause]++
		nets[x.network]++
		tps[x.transport]++
	}
	cause := top(causes)
	e := audit.Event{Kind: audit.Alert, Severity: slog.LevelError, Reason: MassLoss, Count: len(w.lost),
		Detail: fmt.Sprintf("%d bindings lost within %s; cause: %s; networks: %s; transports: %s; likely: %s",
			len(w.lost), w.cfg.MassLossWindow, spread(causes), spread(nets), spread(tps), likely(cause, len(nets), len(tps)))}
	w.lost = w.lost[:0]
	return []audit.Event{e}
}

// likely says in words what usually makes phones go together this way.
func likely(cause string, networks, transports int) string {
	switch {
	case cause == "flows died" && networks == 1:
		return "a NAT or link at one site (keepalives unanswered there)"
	case cause == "flows died":
		return "the network toward the phones, or keepalives not reaching them"
	case cause == "expired":
		return "phones stopped refreshing: the network, the core refusing them, or this edge unreachable"
	case cause == "unregistered" && transports == 1 && networks > 1:
		return "the core dropping bindings, or a mass provisioning change"
	}
	return "phones unregistering themselves (a restart or a provisioning push)"
}

// registered checks a phone's registration for a new user agent, a jump
// between networks and more devices than allowed.
func (w *Watcher) registered(e audit.Event, now time.Time) []audit.Event {
	if e.AOR == "" {
		return nil
	}
	st := w.state(e.AOR)
	id := e.Instance
	if id == "" && len(e.Contacts) > 0 {
		id = userOf(e.Contacts[0])
	}
	src := e.Source.Addr()
	life := time.Duration(e.Expires) * time.Second
	if life <= 0 {
		life = time.Hour
	}
	// Most events are a device refreshing from where it was, as it was:
	// nothing to tell, only its times to move on.
	if d, known := st.devices[id]; known && d.src == src && (!w.cfg.UserAgentChange || e.UserAgent == "" || e.UserAgent == st.ua) {
		d.seen, d.until = now, now.Add(life)
		st.devices[id] = d
		return nil
	}
	var out []audit.Event
	alert := func(name string, sev slog.Level, detail string) {
		out = append(out, audit.Event{Kind: audit.Alert, Severity: sev, Reason: name, AOR: e.AOR, Tenant: e.Tenant,
			Source: e.Source, Transport: e.Transport, UserAgent: e.UserAgent, Instance: e.Instance, Detail: detail})
	}
	if w.cfg.UserAgentChange && e.UserAgent != "" {
		if st.ua != "" && st.ua != e.UserAgent {
			alert(UserAgentChange, slog.LevelWarn, fmt.Sprintf("user agent %q, before %q", e.UserAgent, st.ua))
		}
		st.ua = e.UserAgent
	}
	if prev, ok := st.devices[id]; ok && w.cfg.SourceJumpWithin > 0 && src.IsValid() && prev.src.IsValid() &&
		prefixOf(prev.src) != prefixOf(src) && now.Sub(prev.seen) < w.cfg.SourceJumpWithin {
		alert(SourceJump, slog.LevelWarn, fmt.Sprintf("from %s to %s within %s", prev.src, src, now.Sub(prev.seen).Round(time.Second)))
	}
	_, known := st.devices[id]
	st.devices[id] = device{src: src, seen: now, until: now.Add(life)}
	for k, d := range st.devices { // a device whose flow died and never came back
		if d.until.Before(now) {
			delete(st.devices, k)
		}
	}
	if !known && w.cfg.MaxDevices > 0 && len(st.devices) > w.cfg.MaxDevices {
		alert(DuplicateIdentity, slog.LevelWarn, fmt.Sprintf("%d devices registered, at most %d allowed", len(st.devices), w.cfg.MaxDevices))
	}
	return out
}

// forget drops a device that is no longer registered.
func (w *Watcher) forget(e audit.Event) {
	st := w.aors[e.AOR]
	if st == nil {
		return
	}
	id := e.Instance
	if id == "" && len(e.Contacts) > 0 {
		id = userOf(e.Contacts[0])
	}
	delete(st.devices, id)
}

// failed counts an authentication failure of an AOR, and alerts when
// they burst (once per window).
func (w *Watcher) failed(e audit.Event, now time.Time) []audit.Event {
	if w.cfg.AuthFailures == 0 || e.AOR == "" {
		return nil
	}
	st := w.state(e.AOR)
	cut := now.Add(-w.cfg.AuthFailureWindow)
	i := sort.Search(len(st.failures), func(i int) bool { return st.failures[i].After(cut) })
	st.failures = append(st.failures[i:], now)
	if len(st.failures) != w.cfg.AuthFailures {
		return nil // at the threshold once; the limiter bans beyond it
	}
	return []audit.Event{{Kind: audit.Alert, Severity: slog.LevelWarn, Reason: AuthFailureBurst, AOR: e.AOR, Tenant: e.Tenant,
		Source: e.Source, Count: len(st.failures),
		Detail: fmt.Sprintf("%d failed authentications within %s, the last from %s", len(st.failures), w.cfg.AuthFailureWindow, e.Source.Addr())}}
}

// state is aor's entry, made if needed; the oldest go beyond MaxAORs.
func (w *Watcher) state(aor string) *aorState {
	if st := w.aors[aor]; st != nil {
		return st
	}
	for len(w.aors) >= w.cfg.MaxAORs && len(w.order) > 0 {
		delete(w.aors, w.order[0])
		w.order = w.order[1:]
	}
	st := &aorState{devices: make(map[string]device)}
	w.aors[aor] = st
	w.order = append(w.order, aor)
	return st
}

// network is the network a source belongs to, for jumps and grouping:
// its /16 (IPv4) or /48 (IPv6).
func network(a netip.Addr) string {
	if !a.IsValid() {
		return "?"
	}
	return prefixOf(a).String()
}

// prefixOf is network's prefix, to compare without writing it.
func prefixOf(a netip.Addr) netip.Prefix {
	bits := 16
	if a.Is6() && !a.Is4In6() {
		bits = 48
	}
	p, _ := a.Unmap().Prefix(bits)
	return p
}

// userOf is a contact URI without its parameters: the device's name
// when it has no instance.
func userOf(contact string) string {
	if i := strings.IndexByte(contact, ';'); i >= 0 {
		return contact[:i]
	}
	return contact
}

// top is the key with the highest count.
func top(m map[string]int) string {
	best, n := "", -1
	for k, v := range m {
		if v > n || v == n && k < best {
			best, n = k, v
		}
	}
	return best
}

// spread is "a 80, b 20" for the three largest, then "+N more".
func spread(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	var b strings.Builder
	for i, k := range keys {
		if i == 3 {
			fmt.Fprintf(&b, ", +%d more", len(keys)-3)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, m[k])
	}
	return b.String()
}
