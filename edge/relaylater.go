package edge

import (
	"context"
	"errors"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/upstream"
	"github.com/sipedge/sipedge/upstream/hop"
)

// errLater is what a handler returns when the request goes on without
// the goroutine that took it: its end comes through Request.finish,
// called once, from wherever the answer is read.
var errLater = errors.New("edge: answered later")

// canLater reports whether fwd can be forwarded over l without a
// goroutine waiting for the answers: every core it may try is reached
// over UDP on the edge's own transactions.
func canLater(l leg, fwd *sip.Request) bool {
	if !l.CanNotify(fwd) {
		return false
	}
	for _, h := range l.alts {
		if !h.CanNotify(fwd) {
			return false
		}
	}
	return true
}

// forwardLater is forward for a non-INVITE request where canLater
// holds, with the same outcome, but nobody waits: the cores' answers
// are relayed on the goroutine that reads them (the core side's read
// loop), and done gets what forward would have returned. Waking a
// worker for each answer was, with the audit writer's wake-ups, most
// of what running the edge on one thread saved (a sixth of its CPU per
// registration). An error returned here comes before anything was sent,
// and done is not called.
func (rl *relay) forwardLater(r *Request, fwd *sip.Request, l leg, onResponse func(*sip.Response), done func(error)) error {
	stampVia(fwd.Via(), r.Flow.Remote)
	if err := decMaxForwards(fwd); err != nil {
		return err
	}
	release := func() {}
	if l.admit != nil {
		rel, err := l.admit()
		if err != nil {
			rel()
			return err
		}
		release = rel
	}
	f := &later{rl: rl, r: r, fwd: fwd, l: l, hops: []hop.Hop{l.Hop}, onResponse: onResponse, done: done, release: release, alarm: &alarm{}}
	if l.report != nil {
		f.hops = append(f.hops, l.alts...)
	}
	f.alarm.f.Store(f)
	f.mu.Lock()
	f.budget = time.AfterFunc(rl.timeout, f.alarm.timedOut)
	f.mu.Unlock()
	f.next(0)
	return nil
}

// alarm is what a later's timers hold of it: nothing once it ended. A
// stopped timer can stay in the runtime's timer heap until it would have
// fired (up to core.timeout): holding the later itself, it kept the
// request, its forwarded copy and the datagram behind both for that long.
type alarm struct {
	f atomic.Pointer[later]
}

func (a *alarm) timedOut() {
	if f := a.f.Load(); f != nil {
		f.timedOut()
	}
}

// tryTimedOut is the per-try timeout of try i.
func (a *alarm) tryTimedOut(i int) func() {
	return func() {
		if f := a.f.Load(); f != nil {
			f.tryTimedOut(i)
		}
	}
}

// later is one request forwarded by forwardLater: each try's answers,
// end and timers come as calls, from the read loop or a timer.
type later struct {
	rl         *relay
	r          *Request
	fwd        *sip.Request
	l          leg
	hops       []hop.Hop // l's first, then (with failover) its alternatives
	onResponse func(*sip.Response)
	done       func(error)
	release    func()

	mu        sync.Mutex
	try       int                   // the hop being tried (-1: between tries)
	tx        sip.ClientTransaction // its transaction, once Start returned
	started   time.Time
	committed bool // a response came that ends the trying: relayed from this try on
	ended     bool // nothing more is relayed or tried
	finished  bool // done was called
	last      error
	misses    []tryMiss
	tryTimer  *time.Timer
	budget    *time.Timer
	alarm     *alarm // what the timers call
}

// tryMiss is a try that got no answer, reported to the pool once
// another core answered (see failover).
type tryMiss struct {
	i       int
	started time.Time
	err     error
}

// next tries the hops from i on until one takes the request; with none
// left, the request ends as unreachable. Called without mu.
func (f *later) next(i int) {
	for ; i < len(f.hops); i++ {
		h := f.hops[i]
		req := f.fwd
		if i > 0 {
			req = f.fwd.Clone() // a retry's copy, less the first try's Via
			req.RemoveHeader("Via")
		}
		h.Prepare(req, loopBranch(f.r.Request))
		f.mu.Lock()
		if f.ended {
			f.mu.Unlock()
			return
		}
		f.try, f.tx, f.started = i, nil, time.Now()
		f.mu.Unlock()
		tx, err := h.StartNotify(context.Background(), req,
			func(res *sip.Response) { f.response(i, res) },
			func(_ string, err error) { f.txEnded(i, err) })
		if err != nil {
			if upstream.IsCertError(err) {
				f.rl.badCert.noteErr(f.rl.log, "a core's TLS certificate failed verification; trying the next core", "core.tls_ca, core.tls_server_name", h.Dest, err)
			}
			if f.l.report == nil {
				f.rl.log.Warn("next hop unreachable", "dst", h.Dest, "toward", f.l.toward, "method", f.r.Method, "err", err)
			}
			f.mu.Lock()
			f.misses = append(f.misses, tryMiss{i, f.started, err})
			f.last = err
			f.mu.Unlock()
			continue
		}
		f.mu.Lock()
		if f.try == i && !f.ended {
			f.tx = tx
			if f.l.report != nil && !f.committed {
				f.tryTimer = time.AfterFunc(f.l.tryTimeout, f.alarm.tryTimedOut(i))
			}
		}
		f.mu.Unlock()
		return
	}
	if f.l.report != nil {
		f.rl.noCore.note(f.rl.log, "requests no core took (each tried in turn): answered 503", "core.upstreams, core.try_timeout")
	}
	f.end(f.l.unreachable(f.lastErr()))
}

func (f *later) lastErr() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// response is a response to try i, on the read loop.
func (f *later) response(i int, res *sip.Response) {
	f.mu.Lock()
	if f.ended || f.try != i {
		f.mu.Unlock()
		return // to a try given up: that transaction is over for the edge
	}
	if !f.committed {
		if f.tryTimer != nil {
			f.tryTimer.Stop()
		}
		if f.l.report != nil {
			f.l.report(i, f.started, res.StatusCode, nil)
			for _, m := range f.misses {
				f.l.report(m.i, m.started, 0, m.err)
			}
			f.misses = nil
			if res.StatusCode == 503 && i < len(f.hops)-1 {
				f.try, f.last = -1, errors.New("503 from the core")
				f.mu.Unlock()
				f.rl.log.Debug("core did not take the request, trying the next", "dst", f.hops[i].Dest, "method", f.r.Method, "err", f.last)
				f.next(i + 1)
				return
			}
		}
		f.committed = true
	}
	if res.StatusCode == 100 {
		f.mu.Unlock()
		return // hop by hop
	}
	final := res.StatusCode >= 200
	f.ended = f.ended || final
	f.mu.Unlock()
	res.RemoveHeader("Via") // the edge's own
	if !f.relay(res) {
		return
	}
	if final {
		f.end(nil)
	}
}

// relay hands res to onResponse and on to the phone, on the read loop:
// a panic there ends the request with a 500, not the edge.
func (f *later) relay(res *sip.Response) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			f.rl.log.Error("panic in handler", "method", f.r.Method, "panic", p, "stack", string(debug.Stack()))
			f.mu.Lock()
			f.ended = true
			f.mu.Unlock()
			f.end(reject(500, "Server Internal Error"))
			ok = false
		}
	}()
	if f.onResponse != nil {
		f.onResponse(res)
	}
	send(f.rl.log, f.r, res)
	return true
}

// tryTimedOut is try i getting no response within the per-try timeout:
// the next core is tried.
func (f *later) tryTimedOut(i int) {
	f.mu.Lock()
	if f.ended || f.try != i || f.committed {
		f.mu.Unlock()
		return
	}
	f.misses = append(f.misses, tryMiss{i, f.started, errNoAnswer})
	f.try, f.last = -1, errNoAnswer
	tx := f.tx
	f.mu.Unlock()
	if tx != nil {
		tx.Terminate()
	}
	f.rl.log.Debug("core did not take the request, trying the next", "dst", f.hops[i].Dest, "method", f.r.Method, "err", errNoAnswer)
	f.next(i + 1)
}

// txEnded is try i's transaction ending (Timer F, the edge closing, or
// terminated by the edge: then the try is over already).
func (f *later) txEnded(i int, err error) {
	f.mu.Lock()
	if f.ended || f.try != i {
		f.mu.Unlock()
		return
	}
	if !f.committed && f.l.report != nil {
		// No answer from this core: the next one (as failover does).
		if err == nil {
			err = errNoAnswer
		}
		f.misses = append(f.misses, tryMiss{i, f.started, err})
		f.try, f.last = -1, err
		f.mu.Unlock()
		f.next(i + 1)
		return
	}
	f.ended = true
	f.mu.Unlock()
	if errors.Is(err, sip.ErrTransactionTimeout) {
		f.end(reject(408, "Request Timeout"))
		return
	}
	f.rl.log.Warn("next hop failed", "dst", f.hops[i].Dest, "toward", f.l.toward, "method", f.r.Method, "err", err)
	f.end(f.l.unreachable(err))
}

// timedOut is the forward's own deadline passing without a final answer.
func (f *later) timedOut() {
	f.mu.Lock()
	if f.ended {
		f.mu.Unlock()
		return
	}
	f.ended = true
	tx, committed := f.tx, f.committed || f.l.report == nil
	f.mu.Unlock()
	if tx != nil {
		tx.Terminate()
	}
	if committed {
		f.rl.log.Warn("no final answer", "dst", f.l.Dest, "toward", f.l.toward, "method", f.r.Method, "timeout", f.rl.timeout)
		f.end(reject(408, "Request Timeout"))
		return
	}
	f.rl.noCore.note(f.rl.log, "requests no core took (each tried in turn): answered 503", "core.upstreams, core.try_timeout")
	f.end(f.l.unreachable(errNoAnswer))
}

// end finishes the request with err (nil: a final response was
// relayed), once: whoever comes second finds it finished.
func (f *later) end(err error) {
	f.mu.Lock()
	if f.finished {
		f.mu.Unlock()
		return
	}
	f.finished, f.ended = true, true
	if f.tryTimer != nil {
		f.tryTimer.Stop()
	}
	f.budget.Stop()
	f.alarm.f.Store(nil) // a stopped timer may linger: see alarm
	f.mu.Unlock()
	f.release()
	f.done(err)
}
