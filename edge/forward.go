package edge

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream"
)

// prebuilt tells sipgo's client the request is complete: with no option it
// would fill in headers the way a UAC does.
func prebuilt(*sipgo.Client, *sip.Request) error { return nil }

// forward sends fwd (a clone of r's request, already adapted) to the core
// from the edge's core-side socket and relays every response back over r's
// flow. onFinal may adapt the final response before it is relayed.
func (s *Server) forward(ctx context.Context, r *Request, fwd *sip.Request, t upstream.Target, onFinal func(*sip.Response)) error {
	if mf := fwd.MaxForwards(); mf != nil {
		if mf.Val() == 0 {
			return reject(483, "Too Many Hops")
		}
		mf.Dec()
	} else {
		mf := sip.MaxForwardsHeader(70)
		fwd.AppendHeader(&mf)
	}
	via := &sip.ViaHeader{
		ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: t.Transport.String(),
		Host: s.coreAddr.Addr().String(), Port: int(s.coreAddr.Port()), Params: sip.NewParams(),
	}
	via.Params.Add("branch", sip.GenerateBranch())
	via.Params.Add("rport", "")
	fwd.PrependHeader(via)
	fwd.SetTransport(t.Transport.String())
	fwd.SetDestination(t.Addr.String())
	fwd.Laddr = sip.Addr{}
	if t.Transport == nat.UDP {
		// Leave from the core-side listener, never from an ephemeral socket.
		fwd.Laddr = sip.Addr{IP: s.coreAddr.Addr().AsSlice(), Port: int(s.coreAddr.Port())}
	}

	ctx, cancel := context.WithTimeout(ctx, s.cfg.Core.Timeout)
	defer cancel()
	tx, err := s.coreClient.TransactionRequest(ctx, fwd, prebuilt)
	if err != nil {
		s.log.Warn("core unreachable", "core", t, "method", r.Method, "err", err)
		return coreDown(s.cfg.Core.RetryAfter)
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode == 100 {
				continue // hop by hop; the edge's own 100 is sipgo's business
			}
			out := res.Clone()
			out.RemoveHeader("Via") // ours: the top one
			if res.StatusCode >= 200 && onFinal != nil {
				onFinal(out)
			}
			send(s.log, r, out)
			if res.StatusCode >= 200 {
				return nil
			}
		case <-tx.Done():
			if errors.Is(tx.Err(), sip.ErrTransactionTimeout) {
				return reject(408, "Request Timeout")
			}
			s.log.Warn("core transaction failed", "core", t, "method", r.Method, "err", tx.Err())
			return coreDown(s.cfg.Core.RetryAfter)
		case <-ctx.Done():
			s.log.Warn("core did not answer", "core", t, "method", r.Method, "timeout", s.cfg.Core.Timeout)
			return reject(408, "Request Timeout")
		}
	}
}

// coreDown is the answer when no core can take the request.
func coreDown(retryAfter time.Duration) *Error {
	return reject(503, "Service Unavailable", sip.NewHeader("Retry-After", strconv.Itoa(int(retryAfter/time.Second))))
}
