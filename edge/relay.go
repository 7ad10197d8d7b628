package edge

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/upstream"
	"github.com/sipedge/sipedge/upstream/hop"
)

// inviteTimeout bounds an INVITE transaction (RFC 3261 Timer C is > 3 min).
const inviteTimeout = 3 * time.Minute

// leg is one way onward: a hop, and what it means when it fails.
type leg struct {
	hop.Hop
	toward string // "core" or "phone", for the log
	// admit takes a slot before sending (the cores' in-flight cap); nil
	// admits everything.
	admit func() (release func(), err error)
	// unreachable is the answer when the hop cannot be reached at all.
	unreachable func(err error) error
	// Toward the cores: the next ones to try, in order, when a try gets
	// no answer within tryTimeout, a 503, or cannot be sent; report
	// tells the pool how try i, sent at started, went (status 0: none).
	alts       []hop.Hop
	tryTimeout time.Duration
	report     func(i int, started time.Time, status int, err error)
}

// relay is the proxy mechanics both directions share: one forwarded
// transaction with its responses relayed back, CANCEL passed on, 2xx
// retransmissions relayed, ACKs for 2xx passed statelessly, and the
// edge's own short transactions that clean up after them.
type relay struct {
	log      *slog.Logger
	timeout  time.Duration // a non-INVITE transaction's budget
	self     *self
	followUp sync.WaitGroup // CANCELs and hang-ups sent after their request ended
	noCore   onceAWhile     // requests no core took, counted
	badCert  onceAWhile     // cores whose TLS certificate failed verification
}

// forward sends fwd (a clone of r's request, already adapted) over l and
// relays every response back on r's flow. onResponse may look at and
// adapt each response (provisional and final) first. For INVITE, a CANCEL from upstream is passed on at once
// and 2xx retransmissions keep being relayed after forward returns.
func (rl *relay) forward(ctx context.Context, r *Request, fwd *sip.Request, l leg, onResponse func(*sip.Response)) error {
	stampVia(fwd.Via(), r.Flow.Remote)
	if err := decMaxForwards(fwd); err != nil {
		return err
	}
	if l.admit != nil {
		release, err := l.admit()
		defer release()
		if err != nil {
			return err
		}
	}
	if l.report != nil {
		return rl.failover(ctx, r, fwd, l, onResponse)
	}
	l.Prepare(fwd, loopBranch(r.Request))
	timeout := rl.timeout
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
				rl.followUp.Go(func() {
					<-sent
					if !notSent.Load() {
						rl.cancelBranch(fwd, l.Hop)
					}
				})
			}
		})
		if !live {
			return nil // canceled already; sipgo has answered
		}
	}
	tx, err := l.Start(ctx, fwd)
	if err != nil {
		notSent.Store(true)
		close(sent)
		rl.log.Warn("next hop unreachable", "dst", l.Dest, "toward", l.toward, "method", r.Method, "err", err)
		return l.unreachable(err)
	}
	close(sent)
	if fwd.IsInvite() {
		// RFC 6026: 2xx retransmissions are relayed, not absorbed.
		tx.OnRetransmission(func(res *sip.Response) { send(rl.log, r, stripTopVia(res)) })
	}
	keepTx, err := rl.relayResponses(ctx, r, fwd, l, tx, &canceled, onResponse, nil)
	if !keepTx {
		tx.Terminate()
	}
	if errors.Is(err, errTimerC) {
		rl.log.Warn("no final answer", "dst", l.Dest, "toward", l.toward, "method", r.Method, "timeout", timeout)
		if fwd.IsInvite() && canceled.CompareAndSwap(false, true) {
			rl.followUp.Go(func() { rl.cancelBranch(fwd, l.Hop) }) // Timer C: end the branch too
		}
		return reject(408, "Request Timeout")
	}
	return err
}

// errTimerC is the forward's own deadline passing without a final answer.
var errTimerC = errors.New("no final answer in time")

// failover forwards a request to the cores in l's order: a try that
// cannot be sent, gets no response within l.tryTimeout, or gets 503
// moves the request on to the next core, with a new branch; the first
// other response, provisional or final, commits it to that core (RFC
// 3263 §4.3). An INVITE is committed too once the phone cancels it:
// the CANCEL goes to the core trying it.
//
// A core's silence counts against its health only once another core
// answered the same request: when none does, the edge itself may be the
// one in trouble (a flood using its CPU), and marking every core down
// would turn slowness into refusals. Health probes decide then.
func (rl *relay) failover(ctx context.Context, r *Request, fwd *sip.Request, l leg, onResponse func(*sip.Response)) error {
	invite := fwd.IsInvite()
	timeout := rl.timeout
	if invite {
		timeout = inviteTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The branch a CANCEL from the phone goes to: the try in progress.
	var branch struct {
		sync.Mutex
		req      *sip.Request
		hop      hop.Hop
		canceled bool
	}
	canceledCh := make(chan struct{})
	canceled := new(atomic.Bool)
	if invite {
		// sipgo answers a CANCEL (200) and the INVITE (487) upstream by
		// itself; the edge's job is to cancel its branch downstream.
		live := r.Tx.OnCancel(func(*sip.Request) {
			branch.Lock()
			defer branch.Unlock()
			if branch.canceled {
				return
			}
			branch.canceled = true
			canceled.Store(true)
			close(canceledCh)
			if req, h := branch.req, branch.hop; req != nil {
				rl.followUp.Go(func() { rl.cancelBranch(req, h) })
			}
		})
		if !live {
			return nil // canceled already; sipgo has answered
		}
	}
	hops := append([]hop.Hop{l.Hop}, l.alts...)
	var last error
	var misses []tryMiss
	for i, h := range hops {
		req := fwd
		if i > 0 {
			// Only a retry pays for a copy: the first try's, less its Via.
			req = fwd.Clone()
			req.RemoveHeader("Via")
		}
		h.Prepare(req, loopBranch(r.Request))
		branch.Lock()
		if branch.canceled {
			branch.Unlock()
			return nil // canceled between tries: nothing to cancel downstream
		}
		branch.req, branch.hop = req, h
		started := time.Now()
		tx, err := h.Start(ctx, req)
		if err != nil {
			branch.req = nil
		}
		branch.Unlock()
		if err != nil {
			if upstream.IsCertError(err) {
				// Never silently accepted: an error, and the next core.
				rl.badCert.noteErr(rl.log, "a core's TLS certificate failed verification; trying the next core", "core.tls_ca, core.tls_server_name", h.Dest, err)
			}
			misses = append(misses, tryMiss{i, started, err})
			last = err
			continue
		}
		if invite {
			// RFC 6026: 2xx retransmissions are relayed, not absorbed.
			tx.OnRetransmission(func(res *sip.Response) { send(rl.log, r, stripTopVia(res)) })
		}
		first, err := firstResponse(ctx, tx, l.tryTimeout, canceledCh)
		if errors.Is(err, errCanceled) {
			err, first = nil, nil // the phone gave up: this core gets the CANCEL and answers it
		} else if err != nil {
			misses = append(misses, tryMiss{i, started, err})
		} else {
			l.report(i, started, first.StatusCode, nil)
			for _, m := range misses {
				l.report(m.i, m.started, 0, m.err)
			}
			misses = nil
		}
		if err != nil || (first != nil && first.StatusCode == 503 && i < len(hops)-1) {
			branch.Lock()
			branch.req = nil // unanswered, or refused: nothing to cancel there
			branch.Unlock()
			tx.Terminate()
			if err == nil {
				err = errors.New("503 from the core")
			}
			rl.log.Debug("core did not take the request, trying the next", "dst", h.Dest, "method", r.Method, "err", err)
			last = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		l.Hop = h
		keepTx, err := rl.relayResponses(ctx, r, req, l, tx, canceled, onResponse, first)
		if !keepTx {
			tx.Terminate()
		}
		if errors.Is(err, errTimerC) {
			rl.log.Warn("no final answer", "dst", h.Dest, "toward", l.toward, "method", r.Method, "timeout", timeout)
			if invite {
				branch.Lock()
				if !branch.canceled {
					branch.canceled = true
					canceled.Store(true)
					rl.followUp.Go(func() { rl.cancelBranch(req, h) }) // Timer C: end the branch too
				}
				branch.Unlock()
			}
			return reject(408, "Request Timeout")
		}
		return err
	}
	if canceled.Load() {
		return nil
	}
	rl.noCore.note(rl.log, "requests no core took (each tried in turn): answered 503", "core.upstreams, core.try_timeout")
	return l.unreachable(last)
}

// errNoAnswer is a try at one core that got no response in time;
// errCanceled one the phone canceled while it waited.
var (
	errNoAnswer = errors.New("no answer within the per-try timeout")
	errCanceled = errors.New("canceled by the phone")
)

// firstResponse waits up to d for tx's first response, or until
// canceled is closed.
func firstResponse(ctx context.Context, tx sip.ClientTransaction, d time.Duration, canceled <-chan struct{}) (*sip.Response, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case res := <-tx.Responses():
		return res, nil
	case <-tx.Done():
		if err := tx.Err(); err != nil {
			return nil, err
		}
		return nil, errNoAnswer
	case <-canceled:
		return nil, errCanceled
	case <-t.C:
		return nil, errNoAnswer
	case <-ctx.Done():
		return nil, errNoAnswer
	}
}

// relayResponses relays tx's responses back on r's flow until the final
// one. keepTx says the transaction must stay (an INVITE's 2xx: its
// retransmission hook stays live until Timer M).
func (rl *relay) relayResponses(ctx context.Context, r *Request, fwd *sip.Request, l leg, tx sip.ClientTransaction,
	canceled *atomic.Bool, onResponse func(*sip.Response), first *sip.Response) (keepTx bool, _ error) {
	responses := tx.Responses()
	for {
		var res *sip.Response
		if first != nil {
			res, first = first, nil
		} else {
			select {
			case res = <-responses:
			case <-tx.Done():
				if errors.Is(tx.Err(), sip.ErrTransactionTimeout) {
					return false, reject(408, "Request Timeout")
				}
				if canceled.Load() {
					return false, nil // sipgo already answered 487
				}
				rl.log.Warn("next hop failed", "dst", l.Dest, "toward", l.toward, "method", r.Method, "err", tx.Err())
				return false, l.unreachable(tx.Err())
			case <-ctx.Done():
				return false, errTimerC
			}
		}
		if res.StatusCode == 100 {
			continue // hop by hop
		}
		out := res
		if fwd.IsInvite() {
			// sipgo keeps an INVITE's response: it ACKs it and hands its
			// retransmissions on. A non-INVITE's is the edge's alone.
			out = stripTopVia(res)
		} else {
			res.RemoveHeader("Via") // the edge's own
		}
		if onResponse != nil {
			onResponse(out)
		}
		send(rl.log, r, out)
		if res.StatusCode < 200 {
			continue
		}
		if fwd.IsInvite() && res.StatusCode < 300 {
			if canceled.Load() {
				// Upstream already got 487; the call the callee just
				// answered must not stay up (RFC 3261 §16.7 item 5 note).
				rl.followUp.Go(func() { rl.hangUp(fwd, res, l.Hop) })
			}
			return true, nil
		}
		return false, nil
	}
}

// decMaxForwards counts this hop (RFC 3261 §16.6 item 3).
func decMaxForwards(fwd *sip.Request) *Error {
	if mf := fwd.MaxForwards(); mf != nil {
		if mf.Val() == 0 {
			return reject(483, "Too Many Hops")
		}
		mf.Dec()
		return nil
	}
	mf := sip.MaxForwardsHeader(70)
	fwd.AppendHeader(&mf)
	return nil
}

// ack relays an ACK for a 2xx statelessly over h (RFC 3261 §16.7 item 4).
func (rl *relay) ack(fwd *sip.Request, h hop.Hop) {
	if decMaxForwards(fwd) != nil {
		return
	}
	h.Prepare(fwd, sip.GenerateBranch())
	if err := h.Write(fwd); err != nil {
		rl.log.Debug("ACK not relayed", "dst", h.Dest, "err", err)
	}
}

// cancelBranch sends CANCEL for the forwarded INVITE fwd (RFC 3261 §9.1:
// same Request-URI, Call-ID, From, To, CSeq number, top Via and Route).
func (rl *relay) cancelBranch(fwd *sip.Request, h hop.Hop) {
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
	h.Address(c)
	ctx, cancel := context.WithTimeout(context.Background(), rl.timeout)
	defer cancel()
	if err := h.Ask(ctx, c); err != nil {
		rl.log.Debug("CANCEL unanswered", "dst", h.Dest, "err", err)
	}
}

// hangUp acknowledges a 2xx that arrived after the INVITE was canceled
// and ends that dialog at once with BYE.
func (rl *relay) hangUp(fwd *sip.Request, res *sip.Response, h hop.Hop) {
	rl.log.Info("callee answered a canceled call: hanging up", "call", callID(fwd))
	contact := res.Contact()
	if contact == nil {
		return
	}
	// The route set toward the callee is the Record-Route above the edge's
	// own entries, reversed (RFC 3261 §12.1.2).
	var routes []sip.Uri
	for _, rr := range res.GetHeaders("Record-Route") {
		u := rr.(*sip.RecordRouteHeader).Address
		if rl.self.isOurs(u) {
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
		mf := sip.MaxForwardsHeader(70)
		r.AppendHeader(&mf)
		h.Prepare(r, sip.GenerateBranch())
		return r
	}
	_ = h.Write(build(sip.ACK, fwd.CSeq().SeqNo))
	ctx, cancel := context.WithTimeout(context.Background(), rl.timeout)
	defer cancel()
	_ = h.Ask(ctx, build(sip.BYE, fwd.CSeq().SeqNo+1)) // best effort: the call was never up upstream
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
