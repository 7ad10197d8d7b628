package edge

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
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
			aor = aorOf(r.To())
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

// aorOf normalises a To URI into an AOR the way the registrar does.
func aorOf(to *sip.ToHeader) string {
	if to == nil {
		return ""
	}
	host := strings.ToLower(to.Address.Host)
	if to.Address.User == "" {
		return to.Address.Scheme + ":" + host
	}
	return to.Address.Scheme + ":" + to.Address.User + "@" + host
}

// hadCredentials reports whether a request carried an answer to a
// challenge, so a 401/403/407 to it is a failed authentication.
func hadCredentials(req *sip.Request) bool {
	return req.GetHeader("Authorization") != nil || req.GetHeader("Proxy-Authorization") != nil
}

// connLimits tracks the connection slots the limiter granted, to give
// them back when the connection closes. Keyed by transport and remote
// address: on a wildcard listener the connection's local address is only
// known after Accept.
type connLimits struct {
	releases sync.Map // connKey -> func()
}

type connKey struct {
	tp     nat.Transport
	remote netip.AddrPort
}

// streamHooks observes one access stream listener.
func (s *Server) streamHooks(tp nat.Transport) nat.StreamHooks {
	return nat.StreamHooks{
		Accept: func(remote netip.AddrPort) bool {
			d, release := s.limiter.Accept(remote.Addr())
			if d != ratelimit.Allow {
				release()
				return false
			}
			s.conns.releases.Store(connKey{tp, unmap(remote)}, release)
			return true
		},
		OnRead: s.refresh,
		OnPong: s.flows.Pong,
		OnClose: func(k nat.FlowKey, why string) {
			if release, ok := s.conns.releases.LoadAndDelete(connKey{k.Transport, k.Remote}); ok {
				release.(func())()
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
