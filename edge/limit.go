package edge

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/ratelimit"
)

// limit applies the per-source, per-AOR and per-method limits and the
// scanner and ban checks to a parsed request from a phone.
type limit struct {
	log      *slog.Logger
	limiter  *ratelimit.Limiter
	registry *registry.Registry
}

func (l limit) wrap(next Handler) Handler {
	return func(ctx context.Context, r *Request) error {
		aor := r.AOR
		// A phone refreshing its own binding is not charged the AOR's
		// budget: otherwise anyone naming its AOR could lock it out.
		if aor != "" && l.registry.HasAORFrom(aor, r.Flow.Remote.Addr()) {
			aor = ""
		}
		switch d, reason := l.limiter.Request(r.Flow.Remote.Addr(), string(r.Method), aor, r.UserAgent); d {
		case ratelimit.Allow:
			return next(ctx, r)
		case ratelimit.Reject:
			l.log.Debug("request limited", "src", r.Flow.Remote, "method", r.Method, "reason", reason)
			return errOverLimit
		case ratelimit.Drop:
			return errDrop
		default:
			return errDrop // an unknown decision never lets traffic through
		}
	}
}

// ackAllowed applies the limits to an ACK from a phone, which gets no
// answer either way.
func (l limit) ackAllowed(src netip.AddrPort) bool {
	d, _ := l.limiter.Request(src.Addr(), string(sip.ACK), "", "")
	return d == ratelimit.Allow
}

// hadCredentials reports whether a request carried an answer to a
// challenge, so a 401/403/407 to it is a failed authentication.
func hadCredentials(req *sip.Request) bool {
	return req.GetHeader("Authorization") != nil || req.GetHeader("Proxy-Authorization") != nil
}

// authFailed scores a failed authentication against the source.
func authFailed(limiter *ratelimit.Limiter, r *Request, code int, aor string) {
	if (code == 401 || code == 403 || code == 407) && hadCredentials(r.Request) {
		limiter.AuthFailure(r.Flow.Remote.Addr(), aor)
	}
}
