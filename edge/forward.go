package edge

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/nat"
)

// inviteTimeout bounds an INVITE transaction (RFC 3261 Timer C is > 3 min).
const inviteTimeout = 3 * time.Minute

// prebuilt tells sipgo's client the request is complete: with no option it
// would fill in headers the way a UAC does.
func prebuilt(*sipgo.Client, *sip.Request) error { return nil }

// hop is where a forwarded request goes and which edge socket sends it.
type hop struct {
	client    *sipgo.Client
	transport nat.Transport
	dest      netip.AddrPort
	local     netip.AddrPort // socket to leave from: set for UDP, zero for streams
	sentBy    netip.AddrPort // host:port of the edge's Via
	toCore    bool
}

// prepare decrements Max-Forwards, adds the edge's Via with the given
// branch and points fwd at h.
func (h hop) prepare(fwd *sip.Request, branch string) *Error {
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
		ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: h.transport.String(),
		Host: h.sentBy.Addr().String(), Port: int(h.sentBy.Port()), Params: sip.NewParams(),
	}
	via.Params.Add("branch", branch)
	via.Params.Add("rport", "")
	fwd.PrependHeader(via)
	h.address(fwd)
	return nil
}

// address points a request at h without touching its headers.
func (h hop) address(req *sip.Request) {
	req.SetTransport(h.transport.String())
	req.SetDestination(h.dest.String())
	req.Laddr = sip.Addr{}
	if h.local.IsValid() {
		// Leave from the listening socket, never from an ephemeral one.
		req.Laddr = sip.Addr{IP: h.local.Addr().AsSlice(), Port: int(h.local.Port())}
	}
}

// failed is the answer when h could not be reached at all.
func (s *Server) failed(h hop) *Error {
	if h.toCore {
		return coreDown(s.cfg.Core.RetryAfter)
	}
	return reject(430, "Flow Failed")
}

// forward sends fwd (a clone of r's request, already adapted) over h and
// relays every response back on r's flow. onFinal may adapt the final
// response first. For INVITE, a CANCEL from upstream is passed on at once
// and 2xx retransmissions keep being relayed after the handler returns.
func (s *Server) forward(ctx context.Context, r *Request, fwd *sip.Request, h hop, onFinal func(*sip.Response)) error {
	branch := loopBranch(r.Request)
	stampVia(fwd.Via(), r.Flow.Remote)
	if err := h.prepare(fwd, branch); err != nil {
		return err
	}
	if h.toCore {
		release, ok := s.limiter.Inflight()
		if !ok {
			return s.busy() // the core already has all it should carry
		}
		defer release()
	}
	timeout := s.cfg.Core.Timeout
	if fwd.IsInvite() {
		timeout = inviteTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var canceled, notSent atomic.Bool
	sent := make(chan struct{}) // closed once the INVITE has gone out (or failed to)
	if fwd.IsInvite() {
		// sipgo answers a CANCEL (200) and the INVITE (487) upstream by
		// itself; the edge's job is to cancel its branch downstream, as
		// soon as that branch exists. Hooked before sending, so a CANCEL
		// right behind the INVITE is not missed.
		live := r.Tx.OnCancel(func(*sip.Request) {
			if canceled.CompareAndSwap(false, true) {
				s.background(func() {
					<-sent
					if !notSent.Load() {
						s.cancelBranch(fwd, h)
					}
				})
			}
		})
		if !live {
			return nil // canceled already; sipgo has answered
		}
	}
	tx, err := h.client.TransactionRequest(ctx, fwd, prebuilt)
	if err != nil {
		notSent.Store(true)
		close(sent)
		s.log.Warn("next hop unreachable", "dst", h.dest, "core", h.toCore, "method", r.Method, "err", err)
		return s.failed(h)
	}
	close(sent)
	if fwd.IsInvite() {
		// RFC 6026: 2xx retransmissions are relayed, not absorbed.
		tx.OnRetransmission(func(res *sip.Response) { send(s.log, r, stripTopVia(res)) })
	}
	keepTx := false
	defer func() {
		if !keepTx {
			tx.Terminate()
		}
	}()
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode == 100 {
				continue // hop by hop
			}
			out := stripTopVia(res)
			if res.StatusCode >= 200 && onFinal != nil {
				onFinal(out)
			}
			send(s.log, r, out)
			if res.StatusCode < 200 {
				continue
			}
			if fwd.IsInvite() && res.StatusCode < 300 {
				if canceled.Load() {
					// Upstream already got 487; the call the callee just
					// answered must not stay up (RFC 3261 §16.7 item 5 note).
					s.background(func() { s.hangUp(fwd, res, h) })
				}
				keepTx = true // its retransmission hook stays live until Timer M
			}
			return nil
		case <-tx.Done():
			if errors.Is(tx.Err(), sip.ErrTransactionTimeout) {
				return reject(408, "Request Timeout")
			}
			if canceled.Load() {
				return nil // sipgo already answered 487
			}
			s.log.Warn("next hop failed", "dst", h.dest, "core", h.toCore, "method", r.Method, "err", tx.Err())
			return s.failed(h)
		case <-ctx.Done():
			s.log.Warn("no final answer", "dst", h.dest, "core", h.toCore, "method", r.Method, "timeout", timeout)
			if fwd.IsInvite() && canceled.CompareAndSwap(false, true) {
				s.background(func() { s.cancelBranch(fwd, h) }) // Timer C: end the branch too
			}
			return reject(408, "Request Timeout")
		}
	}
}

// cancelBranch sends CANCEL for the forwarded INVITE fwd (RFC 3261 §9.1:
// same Request-URI, Call-ID, From, To, CSeq number, top Via and Route).
func (s *Server) cancelBranch(fwd *sip.Request, h hop) {
	c := sip.NewRequest(sip.CANCEL, *fwd.Recipient.Clone())
	c.AppendHeader(fwd.Via().Clone())
	for _, rt := range fwd.GetHeaders("Route") {
		c.AppendHeader(sip.HeaderClone(rt))
	}
	mf := sip.MaxForwardsHeader(70)
	c.AppendHeader(&mf)
	c.AppendHeader(sip.HeaderClone(fwd.From()))
	c.AppendHeader(sip.HeaderClone(fwd.To()))
	c.AppendHeader(sip.HeaderClone(fwd.CallID()))
	c.AppendHeader(&sip.CSeqHeader{SeqNo: fwd.CSeq().SeqNo, MethodName: sip.CANCEL})
	c.SetBody(nil)
	h.address(c)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Core.Timeout)
	defer cancel()
	if err := h.ask(ctx, c); err != nil {
		s.log.Debug("CANCEL unanswered", "dst", h.dest, "err", err)
	}
}

// ask runs a non-INVITE transaction of the edge's own over h and returns
// nil once any response arrives.
func (h hop) ask(ctx context.Context, req *sip.Request) error {
	tx, err := h.client.TransactionRequest(ctx, req, prebuilt)
	if err != nil {
		return err
	}
	defer tx.Terminate()
	select {
	case <-tx.Responses():
		return nil
	case <-tx.Done():
		if err := tx.Err(); err != nil {
			return err
		}
		return errors.New("no answer")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// hangUp acknowledges a 2xx that arrived after the INVITE was canceled
// and ends that dialog at once with BYE.
func (s *Server) hangUp(fwd *sip.Request, res *sip.Response, h hop) {
	s.log.Info("callee answered a canceled call: hanging up", "call", callID(fwd))
	contact := res.Contact()
	if contact == nil {
		return
	}
	// The route set toward the callee is the Record-Route above the edge's
	// own entries, reversed (RFC 3261 §12.1.2).
	var routes []sip.Uri
	for _, rr := range res.GetHeaders("Record-Route") {
		u := rr.(*sip.RecordRouteHeader).Address
		if s.isOurs(u) {
			break
		}
		routes = append([]sip.Uri{u}, routes...)
	}
	build := func(m sip.RequestMethod, seq uint32) *sip.Request {
		r := sip.NewRequest(m, *contact.Address.Clone())
		for _, u := range routes {
			r.AppendHeader(&sip.RouteHeader{Address: u})
		}
		r.AppendHeader(sip.HeaderClone(fwd.From()))
		r.AppendHeader(sip.HeaderClone(res.To()))
		r.AppendHeader(sip.HeaderClone(fwd.CallID()))
		r.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: m})
		r.SetBody(nil)
		if h.prepare(r, sip.GenerateBranch()) != nil {
			return nil
		}
		return r
	}
	if ack := build(sip.ACK, fwd.CSeq().SeqNo); ack != nil {
		_ = h.client.WriteRequest(ack, prebuilt)
	}
	bye := build(sip.BYE, fwd.CSeq().SeqNo+1)
	if bye == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Core.Timeout)
	defer cancel()
	_ = h.ask(ctx, bye) // best effort: the call was never up upstream
}

// stripTopVia returns a copy of res without the edge's own Via.
func stripTopVia(res *sip.Response) *sip.Response {
	out := res.Clone()
	out.RemoveHeader("Via")
	return out
}

func callID(m sip.Message) string {
	if h := m.CallID(); h != nil {
		return h.Value()
	}
	return ""
}

// coreDown is the answer when no core can take the request.
func coreDown(retryAfter time.Duration) *Error {
	return reject(503, "Service Unavailable", sip.NewHeader("Retry-After", strconv.Itoa(int(retryAfter/time.Second))))
}
