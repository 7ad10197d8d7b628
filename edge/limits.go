package edge

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"sync"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// This file connects the rate limiter to the edge: before parsing in the
// socket wrappers, after parsing as a stage, around the core round trip,
// and from the registrar (auth failures, bindings per source).

// errDrop ends a request with no answer at all (floods, scanners, bans).
var errDrop = errors.New("dropped without answer")

// sanity checks a request and counts malformed ones against the source.
func (s *Server) sanity(next Handler) Handler {
	return func(ctx context.Context, r *Request) error {
		if err := checkSanity(r.Request); err != nil {
			if err.Code == 400 {
				s.limiter.Malformed(r.Flow.Remote.Addr())
			}
			return err
		}
		return next(ctx, r)
	}
}

// limit applies the per-source, per-AOR and per-method limits and the
// scanner and ban checks to a parsed request from a phone.
func (s *Server) limit(next Handler) Handler {
	return func(ctx context.Context, r *Request) error {
		aor := ""
		if r.Method == sip.REGISTER {
			aor = aorOf(r.To().Address) // sanity guarantees a To
			// A phone refreshing its own binding is not charged the AOR's
			// budget: otherwise anyone naming its AOR could lock it out.
			if s.bindings.HasAORFrom(aor, r.Flow.Remote.Addr()) {
				aor = ""
			}
		}
		ua := ""
		if h := r.GetHeader("User-Agent"); h != nil {
			ua = h.Value()
		}
		switch d, reason := s.limiter.Request(r.Flow.Remote.Addr(), string(r.Method), aor, ua); d {
		case ratelimit.Allow:
			return next(ctx, r)
		case ratelimit.Reject:
			s.log.Debug("request limited", "src", r.Flow.Remote, "method", r.Method, "reason", reason)
			return s.busy()
		case ratelimit.Drop:
			return errDrop
		default:
			return errDrop // an unknown decision never lets traffic through
		}
	}
}

// busy is the 503 for a plausible client that is over a limit.
func (s *Server) busy() *Error {
	return reject(503, "Service Unavailable", sip.NewHeader("Retry-After", strconv.Itoa(int(s.limiter.RetryAfter().Seconds()))))
}

// hadCredentials reports whether a request carried an answer to a
// challenge, so a 401/403/407 to it is a failed authentication.
func hadCredentials(req *sip.Request) bool {
	return req.GetHeader("Authorization") != nil || req.GetHeader("Proxy-Authorization") != nil
}

// connLimits tracks the connection slots the limiter granted, to give
// them back when each connection closes, by flow key. Should two open
// connections ever share one (the kernel allows it only across network
// namespaces or after a TIME_WAIT reuse), each close gives back one slot
// and the flow dies only with the last.
type connLimits struct {
	mu   sync.Mutex
	open map[nat.FlowKey][]func() // release funcs of the open connections, oldest first
}

func (c *connLimits) add(k nat.FlowKey, release func()) {
	c.mu.Lock()
	if c.open == nil {
		c.open = make(map[nat.FlowKey][]func())
	}
	c.open[k] = append(c.open[k], release)
	c.mu.Unlock()
}

// done releases one connection's slot and reports whether another
// connection with the same key is still open.
func (c *connLimits) done(k nat.FlowKey) (othersOpen bool) {
	c.mu.Lock()
	rs := c.open[k]
	var release func()
	if len(rs) > 0 {
		release, rs = rs[0], rs[1:]
	}
	if len(rs) == 0 {
		delete(c.open, k)
	} else {
		c.open[k] = rs
	}
	c.mu.Unlock()
	if release != nil {
		release()
	}
	return len(rs) > 0
}

// streamHooks observes one access stream listener.
func (s *Server) streamHooks() nat.StreamHooks {
	return nat.StreamHooks{
		Accept: func(k nat.FlowKey) bool {
			d, release := s.limiter.Accept(k.Remote.Addr())
			if d != ratelimit.Allow {
				release()
				return false
			}
			s.conns.add(k, release)
			return true
		},
		OnRead: s.refresh,
		OnPong: s.flows.Pong,
		OnClose: func(k nat.FlowKey, why string) {
			if s.conns.done(k) {
				return // a newer connection carries this flow now
			}
			s.flows.Closed(k, why) // unknown flows are ignored
		},
	}
}

// updateSourceBindings tells the limiter how many bindings a source
// holds, so an office behind one address gets a budget to match.
func (s *Server) updateSourceBindings(src netip.Addr) {
	s.limiter.SetBindings(src, s.bindings.CountSource(src))
}
