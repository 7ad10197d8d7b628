// Package audit is sipedge's record of what happened: one JSON line per
// event an operator would want to know about (a phone registered, a
// flow died, a source was banned, a core went down), with the same
// fields every time. Credentials never reach it: events carry only what
// is listed here, and Authorization values are not among it.
package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/ratelimit"
	"gopkg.in/natefinch/lumberjack.v2"
)

// Kind names an event; the names are the "event" field of each line.
type Kind string

const (
	Register     Kind = "register"     // a new binding
	Refresh      Kind = "refresh"      // the same binding, a new expiry
	Unregister   Kind = "unregister"   // removed by the phone or dropped by the core
	Expire       Kind = "expire"       // its expiry passed
	FlowDead     Kind = "flow_dead"    // a flow died and took its bindings
	FlowMoved    Kind = "flow_moved"   // a binding moved to another flow
	FlowRecover  Kind = "flow_recover" // a UDP flow came back from its token
	Rejected     Kind = "rejected"     // a REGISTER answered with an error
	Challenged   Kind = "challenged"   // the core asked for credentials
	AuthFailure  Kind = "auth_failure" // credentials the core refused
	Ban          Kind = "ban"
	Unban        Kind = "unban"
	CoreUp       Kind = "core_up"
	CoreDown     Kind = "core_down"
	CoreOverload Kind = "core_overloaded"
	ModeChange   Kind = "mode_change" // draining, standby, active, survival
	// CoreRepopulate: a core may have lost bindings the edge holds; their
	// next refreshes tell it again (started, progress, done).
	CoreRepopulate Kind = "core_repopulate"
	// Push: a sleeping phone woken for a request (detail: sent, answered,
	// unanswered, failed).
	Push         Kind = "push"
	ConfigReload Kind = "config_reload" // SIGHUP or the admin API
	// KeepaliveAdapted: a NAT forgot a mapping between keepalives, so its
	// flows get a shorter interval.
	KeepaliveAdapted Kind = "keepalive_adapted"
	Alert            Kind = "alert"   // an anomaly (see Severity)
	Summary          Kind = "summary" // repeated problems, counted over a window
)

// Event is one audit record. Zero fields are left out of the line.
type Event struct {
	Time      time.Time
	Kind      Kind
	Severity  slog.Level // Info unless said otherwise
	AOR       string
	Tenant    string
	Source    netip.AddrPort
	Transport string
	Contacts  []string
	Expires   int // seconds granted
	UserAgent string
	Instance  string
	Code      int          // the SIP response code
	Reason    string       // why: a rejection's reason phrase, a flow's death, a ban's reason
	Auth      string       // "none", "challenged", "accepted", "failed"
	NAT       string       // the NAT evidence
	Core      string       // core_* events: the core
	Prefix    netip.Prefix // ban, unban: the source or network
	Count     int          // how many: bindings a flow took along, problems in a summary
	Detail    string       // anything else, in words
}

// Log writes events as JSON lines. Safe for concurrent use.
type Log struct {
	mu   sync.Mutex // one line at a time
	line []byte     // the line being built, reused (written at once)
	w    io.Writer
	node string
	now  func() time.Time

	// Async: lines wait in pending (queued of them, at most queue) for
	// the writer goroutine; past that they are dropped and counted,
	// never waited for (a stalled disk or pipe must not hold up SIP).
	pending []byte
	queued  int
	queue   int
	wake    chan struct{} // the first line of a burst wakes the writer
	stop    chan struct{}
	done    chan struct{}
	closing sync.Once
	dropped atomic.Uint64
}

// Async makes Emit queue events (at most queue) for a goroutine of the
// log's own to write; Close writes what is queued and stops it.
// Emit formats the line itself and the writer wakes once per burst,
// flushEvery after its first line, to write the lines together: no
// write per line (at thousands of registrations a second that was a
// tenth of the edge's CPU) and no goroutine woken per event (a fifth).
func (a *Log) Async(queue int) *Log {
	a.queue = max(queue, 1)
	a.wake, a.stop, a.done = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	go a.writer()
	return a
}

func (a *Log) writer() {
	defer close(a.done)
	var told uint64
	var spare []byte
	flush := time.NewTimer(flushEvery)
	flush.Stop()
	for stopping := false; !stopping; {
		select {
		case <-a.wake:
			flush.Reset(flushEvery)
			select {
			case <-flush.C:
			case <-a.stop:
				stopping = true
			}
		case <-a.stop:
			stopping = true
		}
		a.mu.Lock()
		b := a.pending
		a.pending, a.queued = spare[:0], 0
		a.mu.Unlock()
		if n := a.dropped.Load(); n > told {
			b = a.appendLine(b, Event{Time: a.now(), Kind: Summary, Severity: slog.LevelWarn, Count: int(n - told),
				Detail: "audit events dropped: the log could not keep up"})
			told = n
		}
		writeLines(a.w, b)
		spare = b
	}
}

// writeLines writes b, whole lines, in writes of at most writeChunk
// bytes: a rotating file refuses a write larger than itself, and
// rotates only between writes.
func writeLines(w io.Writer, b []byte) {
	for len(b) > 0 {
		n := len(b)
		if n > writeChunk {
			n = bytes.LastIndexByte(b[:writeChunk], '\n') + 1
			if n == 0 { // one line longer than a chunk: whole
				n = bytes.IndexByte(b, '\n') + 1
			}
			if n == 0 {
				n = len(b)
			}
		}
		_, _ = w.Write(b[:n])
		b = b[n:]
	}
}

const writeChunk = 64 << 10

// flushEvery is how late an audit line may reach the file.
const flushEvery = 100 * time.Millisecond

// Close writes the queued events and stops the writer (Async only).
func (a *Log) Close() {
	if a.stop == nil {
		return
	}
	a.closing.Do(func() { close(a.stop) })
	<-a.done
}

// Dropped is how many events a full queue dropped.
func (a *Log) Dropped() uint64 { return a.dropped.Load() }

// Config is the [audit] section.
type Config struct {
	// File is where events go: "" for standard output, else a path,
	// rotated when it reaches MaxSizeMB, keeping MaxFiles old ones.
	File      string `toml:"file"`
	MaxSizeMB int    `toml:"max_size_mb"`
	MaxFiles  int    `toml:"max_files"`
	// Node names this edge in every line ("": the host name).
	Node string `toml:"node"`
}

// Validate names every invalid key and why.
func (c Config) Validate() error {
	var errs []error
	if c.MaxSizeMB < 1 || c.MaxSizeMB > 100_000 {
		errs = append(errs, fmt.Errorf("audit.max_size_mb: %d is outside 1..100000", c.MaxSizeMB))
	}
	if c.MaxFiles < 1 || c.MaxFiles > 10_000 { // 0 would keep every file (lumberjack)
		errs = append(errs, fmt.Errorf("audit.max_files: %d is outside 1..10000", c.MaxFiles))
	}
	return errors.Join(errs...)
}

// DefaultConfig writes to standard output, files of 100 MB, 10 kept.
func DefaultConfig() Config { return Config{MaxSizeMB: 100, MaxFiles: 10} }

// Output opens where cfg says events go. The caller closes it.
func (c Config) Output(stdout io.Writer) io.WriteCloser {
	if c.File == "" {
		return nopCloser{stdout}
	}
	return &lumberjack.Logger{Filename: c.File, MaxSize: c.MaxSizeMB, MaxBackups: c.MaxFiles}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// New writes events to w, naming node in each; now is the clock.
func New(w io.Writer, node string, now func() time.Time) *Log {
	if now == nil {
		now = time.Now
	}
	return &Log{w: w, node: node, now: now}
}

// Emit writes e as one line, or queues it (Async).
func (a *Log) Emit(e Event) {
	if e.Time.IsZero() {
		e.Time = a.now()
	}
	a.mu.Lock()
	if a.stop == nil {
		a.line = a.appendLine(a.line[:0], e)
		_, _ = a.w.Write(a.line)
		a.mu.Unlock()
		return
	}
	if a.queued >= a.queue {
		a.mu.Unlock()
		a.dropped.Add(1)
		return
	}
	a.pending = a.appendLine(a.pending, e)
	a.queued++
	first := a.queued == 1
	a.mu.Unlock()
	if first {
		select {
		case a.wake <- struct{}{}:
		default: // the writer has been woken already
		}
	}
}

// appendLine appends e to b as one JSON line: time, level and event
// first, then the fields that are set, as slog's JSON handler wrote
// them (appended by hand: slog's handler was most of the log's cost).
func (a *Log) appendLine(b []byte, e Event) []byte {
	b = append(b, `{"time":"`...)
	b = e.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":`...)
	b = appendJSONString(b, e.Severity.String())
	b = append(b, `,"event":`...)
	b = appendJSONString(b, string(e.Kind))
	str := func(k, v string) {
		if v != "" {
			b = append(b, ',', '"')
			b = append(b, k...)
			b = append(b, '"', ':')
			b = appendJSONString(b, v)
		}
	}
	num := func(k string, v int) {
		if v != 0 {
			b = append(b, ',', '"')
			b = append(b, k...)
			b = append(b, '"', ':')
			b = strconv.AppendInt(b, int64(v), 10)
		}
	}
	str("node", a.node)
	str("aor", e.AOR)
	str("tenant", e.Tenant)
	if e.Source.IsValid() {
		b = append(b, `,"source":"`...)
		b = e.Source.AppendTo(b)
		b = append(b, '"')
	}
	str("transport", e.Transport)
	if len(e.Contacts) > 0 {
		b = append(b, `,"contacts":[`...)
		for i, c := range e.Contacts {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, c)
		}
		b = append(b, ']')
	}
	num("expires", e.Expires)
	str("user_agent", e.UserAgent)
	str("instance", e.Instance)
	num("code", e.Code)
	str("reason", e.Reason)
	str("auth", e.Auth)
	str("nat", e.NAT)
	str("core", e.Core)
	if e.Prefix.IsValid() {
		b = append(b, `,"prefix":"`...)
		b = e.Prefix.AppendTo(b)
		b = append(b, '"')
	}
	num("count", e.Count)
	str("detail", e.Detail)
	return append(b, '}', '\n')
}

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced, U+2028 and U+2029
// escaped (what slog's JSON handler does). Events carry strings from
// the wire (a User-Agent, a reason phrase): none may break a line.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// Redact drops the password a URI's user part may carry
// (sip:user:password@host), and shortens a push device token (pn-prid):
// a Contact must not put them in the log, the API or the dashboard.
func Redact(uri string) string {
	uri = redactPRID(uri)
	at := strings.IndexByte(uri, '@')
	if at < 0 {
		return uri
	}
	scheme := strings.IndexByte(uri, ':')
	if scheme < 0 || scheme > at {
		return uri
	}
	if pw := strings.IndexByte(uri[scheme+1:at], ':'); pw >= 0 {
		return uri[:scheme+1+pw] + uri[at:]
	}
	return uri
}

// redactPRID shortens an RFC 8599 device token (pn-prid) to its first
// four characters: enough to tell devices apart, useless to push with.
func redactPRID(uri string) string {
	i := indexFold(uri, "pn-prid=")
	if i < 0 {
		return uri
	}
	start := i + len("pn-prid=")
	end := start + strings.IndexAny(uri[start:]+";", ";>?&")
	keep := min(end, start+4)
	return uri[:keep] + "…" + redactPRID(uri[end:])
}

// indexFold is strings.Index for an ASCII sub in any case, at a byte
// offset of s itself (strings.ToLower(s) may be longer than s).
func indexFold(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return i
		}
	}
	return -1
}

// FromRegistry is the audit event of a registry change.
func FromRegistry(e registry.Event) Event {
	b := e.Binding
	out := Event{AOR: b.AOR, Tenant: b.Tenant, Source: b.Flow.Remote, Instance: b.Instance,
		UserAgent: b.UserAgent, NAT: b.NAT.String(), Auth: e.Auth}
	if b.Flow.Valid() {
		out.Transport = b.Flow.Transport.String()
	}
	if b.Contact != "" {
		out.Contacts = []string{Redact(b.Contact)}
	}
	if !b.Expires.IsZero() && !b.Updated.IsZero() {
		out.Expires = int(b.Expires.Sub(b.Updated).Round(time.Second) / time.Second)
	}
	switch e.Kind {
	case registry.Registered:
		out.Kind, out.Code = Register, 200
	case registry.Refreshed:
		out.Kind, out.Code = Refresh, 200
	case registry.Moved:
		out.Kind, out.Code = FlowMoved, 200
		out.Detail = "from " + e.Old.Flow.Transport.String() + " " + e.Old.Flow.Remote.String()
	case registry.Unregistered:
		out.Kind, out.Code, out.Expires = Unregister, 200, 0
	case registry.Expired:
		out.Kind, out.Expires = Expire, 0
	case registry.FlowDead:
		out = Event{Kind: FlowDead, Source: e.Flow.Remote, Transport: e.Flow.Transport.String(), Reason: e.Why, Count: len(e.Removed)}
		for _, r := range e.Removed {
			out.Contacts = append(out.Contacts, r.AOR)
		}
		if len(e.Removed) > 0 {
			out.AOR, out.Tenant = e.Removed[0].AOR, e.Removed[0].Tenant
		}
	case registry.Recovered:
		out = Event{Kind: FlowRecover, Source: e.Flow.Remote, Transport: e.Flow.Transport.String()}
	}
	return out
}

// FromBan is the audit event of a ban starting or being extended
// (lifted false), or ending.
func FromBan(b ratelimit.Ban, lifted bool) Event {
	e := Event{Kind: Ban, Severity: slog.LevelWarn, Prefix: b.Addr, Reason: b.Reason.String(), Count: b.Count,
		Detail: "until " + b.Until.UTC().Format(time.RFC3339)}
	if lifted {
		e.Kind, e.Severity, e.Detail = Unban, slog.LevelInfo, ""
	}
	return e
}
