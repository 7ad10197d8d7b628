package edge

import (
	"context"
	"log/slog"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// limit applies the per-source, per-AOR and per-method limits and the
// scanner and ban checks to a parsed request from a phone.
type limit struct {
	log      *slog.Logger
	limiter  *ratelimit.Limiter
	registry *registry.Registry
	proven   func(*Request) bool
}

func (l limit) wrap(next Handler) Handler {
	return func(ctx context.Context, r *Request) error {
		// Only an answer to a challenge from a source that got the
		// challenge spends the AOR's budget: anyone may name an AOR, so
		// requests without credentials (or with credentials a spoofed
		// source could not have been challenged for) are charged to their
		// source alone, and a phone refreshing its own binding to nobody,
		// else anyone could lock the owner out.
		aor := ""
		if r.AOR != "" && r.credentials() && l.proven(r) && !l.registry.HasAORFrom(r.AOR, r.Flow.Remote.Addr()) {
			aor = r.AOR
		}
		// Only a source that proved it receives what is sent to it can
		// earn a ban; a spoofed one is just dropped.
		switch d, reason := l.limiter.Request(r.Flow.Remote.Addr(), string(r.Method), aor, r.UserAgent, l.proven(r)); d {
		case ratelimit.Allow:
			return next(ctx, r)
		case ratelimit.Reject:
			l.log.Debug("request limited", "src", r.Flow.Remote, "method", r.Method, "reason", reason)
			return errOverLimit
		case ratelimit.Drop:
			// Per request, so debug: the limiter counts drops by reason.
			l.log.Debug("request dropped", "src", r.Flow.Remote, "method", r.Method, "reason", reason)
			return errDrop
		default:
			return errDrop // an unknown decision never lets traffic through
		}
	}
}

// ackAllowed applies the limits to an ACK from a phone, which gets no
// answer either way.
func (l limit) ackAllowed(flow nat.FlowKey) bool {
	proven := flow.Transport != nat.UDP || l.registry.HasFlow(flow)
	d, _ := l.limiter.Request(flow.Remote.Addr(), string(sip.ACK), "", "", proven)
	return d == ratelimit.Allow
}

// credentials reports whether r carried an answer to a challenge, so a
// 401/403/407 to it is a failed authentication. Looked up once: the
// limits, the registrar and the audit each ask.
func (r *Request) credentials() bool {
	if r.creds == 0 {
		r.creds = -1
		if headerNamed(r, "Authorization") != nil || headerNamed(r, "Proxy-Authorization") != nil {
			r.creds = 1
		}
	}
	return r.creds > 0
}

// auth watches the answers to requests that may carry credentials: the
// challenges a UDP source is sent (to prove it later), and the failures
// of a proven source (to ban password guessers, never a spoofed victim).
type auth struct {
	limiter *ratelimit.Limiter
	proofs  *proofs
	proven  func(*Request) bool
}

func (a auth) answered(r *Request, res *sip.Response, aor string) {
	code := res.StatusCode
	if code != 401 && code != 403 && code != 407 {
		return
	}
	if code != 403 && r.Flow.Transport == nat.UDP {
		a.proofs.challenged(r.Flow.Remote.Addr(), res)
	}
	if r.credentials() && a.proven(r) {
		a.limiter.AuthFailure(r.Flow.Remote.Addr(), aor)
	}
}
