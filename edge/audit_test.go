package edge_test

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// auditRig is an edge whose every event reaches an audit log in memory,
// put together the way cmd/sipedge does.
type auditRig struct {
	e   *edgetest.Edge
	mu  sync.Mutex
	buf bytes.Buffer
}

func (g *auditRig) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.buf.Write(p)
}

func (g *auditRig) text() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.buf.String()
}

// lines are the events logged so far, decoded.
func (g *auditRig) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(g.text()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("audit line is not JSON: %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// waitFor returns the first event of kind whose fields include want,
// waiting for it up to the test deadline.
func (g *auditRig) waitFor(t *testing.T, kind audit.Kind, want map[string]any) map[string]any {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		for _, m := range g.lines(t) {
			if m["event"] != string(kind) {
				continue
			}
			ok := true
			for k, v := range want {
				ok = ok && reflect.DeepEqual(m[k], v)
			}
			if ok {
				return m
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event with %v in:\n%s", kind, want, g.text())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func startAudited(t *testing.T, core string, mutate func(*edgetest.Config)) *auditRig {
	g := &auditRig{}
	log := audit.New(g, "edge-1", nil)
	g.e = edgetest.StartWith(t, core, mutate, edgetest.Hooks{
		Events:    log.Emit,
		OnEvent:   func(e registry.Event) { log.Emit(audit.FromRegistry(e)) },
		RateLimit: ratelimit.Events{OnBan: func(b ratelimit.Ban) { log.Emit(audit.FromBan(b, false)) }, OnUnban: func(b ratelimit.Ban) { log.Emit(audit.FromBan(b, true)) }},
	})
	return g
}

// exactly checks that m has these fields and no others besides time,
// level and event.
func exactly(t *testing.T, m map[string]any, want map[string]any) {
	t.Helper()
	got := map[string]any{}
	for k, v := range m {
		if k != "time" && k != "level" && k != "event" {
			got[k] = v
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s event:\n got %v\nwant %v", m["event"], got, want)
	}
	if _, err := time.Parse(time.RFC3339Nano, m["time"].(string)); err != nil {
		t.Errorf("%s event: time %v", m["event"], m["time"])
	}
}

// Challenge, authenticated registration and a wrong password, each an
// event with its exact fields, and no credential anywhere in the log.
func TestAuditAuthEvents(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{Users: map[string]string{"alice": "s3cret-pw"}})
	g := startAudited(t, core.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", g.e.UDP)
	src := phone.Local.String()
	contact := "sip:alice@" + src + ";transport=udp"
	const ua = "User-Agent: Yealink SIP-T46S"

	phone.Send(phone.Register(edgetest.Reg{User: "alice", CSeq: 1, Extra: ua}))
	res := phone.MustRecvResponse(wait)
	chal, err := digest.ParseChallenge(res.GetHeader("WWW-Authenticate").Value())
	if err != nil {
		t.Fatal(err)
	}
	exactly(t, g.waitFor(t, audit.Challenged, nil), map[string]any{"node": "edge-1", "aor": "sip:alice@example.com",
		"source": src, "transport": "UDP", "contacts": []any{contact}, "code": 401.0, "reason": "Unauthorized",
		"auth": "challenged", "user_agent": "Yealink SIP-T46S"})

	cred, err := digest.Digest(chal, digest.Options{Method: "REGISTER", URI: "sip:example.com", Username: "alice", Password: "s3cret-pw"})
	if err != nil {
		t.Fatal(err)
	}
	phone.Send(phone.Register(edgetest.Reg{User: "alice", CSeq: 2, Extra: ua + "\nAuthorization: " + cred.String()}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("authenticated REGISTER got %d", res.StatusCode)
	}
	exactly(t, g.waitFor(t, audit.Register, nil), map[string]any{"node": "edge-1", "aor": "sip:alice@example.com",
		"source": src, "transport": "UDP", "contacts": []any{contact}, "expires": 3600.0, "code": 200.0,
		"auth": "accepted", "user_agent": "Yealink SIP-T46S", "nat": "private-contact"})

	wrong := *cred
	wrong.Response = strings.Repeat("0", 32)
	phone.Send(phone.Register(edgetest.Reg{User: "alice", CSeq: 3, Extra: ua + "\nAuthorization: " + wrong.String()}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("wrong password got %d", res.StatusCode)
	}
	exactly(t, g.waitFor(t, audit.AuthFailure, nil), map[string]any{"node": "edge-1", "aor": "sip:alice@example.com",
		"source": src, "transport": "UDP", "contacts": []any{contact}, "code": 403.0, "reason": "Forbidden",
		"auth": "failed", "user_agent": "Yealink SIP-T46S"})

	log := g.text()
	for _, secret := range []string{"s3cret-pw", chal.Nonce, cred.Response, "Digest", "response="} {
		if strings.Contains(log, secret) {
			t.Errorf("the audit log holds %q:\n%s", secret, log)
		}
	}
}

// Refresh, unregister, the edge's own refusals, a dead flow, a ban and
// an unban, and the start of a drain.
func TestAuditLifecycleEvents(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{})
	g := startAudited(t, core.URI("udp"), func(c *edgetest.Config) { c.Registration.Domains = []string{"example.com"} })
	phone := edgetest.Dial(t, "udp", g.e.UDP)
	src := phone.Local.String()
	contact := "sip:bob@" + src + ";transport=udp"
	reg := func(r edgetest.Reg, want int) {
		t.Helper()
		phone.Send(phone.Register(r))
		if res := phone.MustRecvResponse(wait); res.StatusCode != want {
			t.Fatalf("REGISTER got %d, want %d", res.StatusCode, want)
		}
	}
	reg(edgetest.Reg{User: "bob", CSeq: 1}, 200)
	reg(edgetest.Reg{User: "bob", CSeq: 2, Expires: "600"}, 200)
	exactly(t, g.waitFor(t, audit.Refresh, nil), map[string]any{"node": "edge-1", "aor": "sip:bob@example.com",
		"source": src, "transport": "UDP", "contacts": []any{contact}, "expires": 600.0, "code": 200.0,
		"auth": "none", "nat": "private-contact"})
	reg(edgetest.Reg{User: "bob", CSeq: 3, Expires: "0"}, 200)
	exactly(t, g.waitFor(t, audit.Unregister, nil), map[string]any{"node": "edge-1", "aor": "sip:bob@example.com",
		"source": src, "transport": "UDP", "contacts": []any{contact}, "code": 200.0,
		"auth": "none", "nat": "private-contact"})

	reg(edgetest.Reg{User: "bob", CSeq: 4, Expires: "10"}, 423)
	exactly(t, g.waitFor(t, audit.Rejected, map[string]any{"code": 423.0}), map[string]any{"node": "edge-1",
		"aor": "sip:bob@example.com", "source": src, "transport": "UDP", "contacts": []any{contact}, "code": 423.0,
		"reason": "Interval Too Brief", "auth": "none"})
	reg(edgetest.Reg{User: "bob", Domain: "elsewhere.test", CallID: "elsewhere"}, 403)
	g.waitFor(t, audit.Rejected, map[string]any{"code": 403.0, "reason": "Domain Not Served", "aor": "sip:bob@elsewhere.test"})

	// A TCP phone that goes away takes its binding along.
	tcp := edgetest.Dial(t, "tcp", g.e.TCP)
	tcp.Send(tcp.Register(edgetest.Reg{User: "cy"}))
	if res := tcp.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("TCP REGISTER got %d", res.StatusCode)
	}
	tcp.Close()
	dead := g.waitFor(t, audit.FlowDead, nil)
	exactly(t, dead, map[string]any{"node": "edge-1", "aor": "sip:cy@example.com", "source": tcp.Local.String(),
		"transport": "TCP", "contacts": []any{"sip:cy@example.com"}, "reason": dead["reason"], "count": 1.0})
	if dead["reason"] == "" {
		t.Error("flow_dead without a reason")
	}

	g.e.Limiter().Ban(netip.MustParsePrefix("198.51.100.7/32"), ratelimit.ReasonManual, time.Hour)
	ban := g.waitFor(t, audit.Ban, nil)
	exactly(t, ban, map[string]any{"node": "edge-1", "prefix": "198.51.100.7/32", "reason": "manual", "count": 1.0, "detail": ban["detail"]})
	if ban["level"] != "WARN" || !strings.HasPrefix(ban["detail"].(string), "until ") {
		t.Errorf("ban event: %v", ban)
	}
	g.e.Limiter().Unban(netip.MustParsePrefix("198.51.100.7/32"))
	exactly(t, g.waitFor(t, audit.Unban, nil), map[string]any{"node": "edge-1", "prefix": "198.51.100.7/32", "reason": "manual", "count": 1.0})

	g.e.Stop()
	exactly(t, g.waitFor(t, audit.ModeChange, map[string]any{"detail": "draining"}), map[string]any{"node": "edge-1", "detail": "draining"})
}

// A core's refusal other than a challenge is recorded as the core's.
func TestAuditCoreRefusal(t *testing.T) {
	core := upstreamtest.Start(t, upstreamtest.Options{Refuse: 480})
	g := startAudited(t, core.URI("udp"), nil)
	phone := edgetest.Dial(t, "udp", g.e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "dee"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 480 {
		t.Fatalf("got %d", res.StatusCode)
	}
	m := g.waitFor(t, audit.Rejected, nil)
	if m["code"] != 480.0 || m["detail"] != "by the core" || m["aor"] != "sip:dee@example.com" {
		t.Errorf("rejected event: %v", m)
	}
	_ = sip.REGISTER
}
