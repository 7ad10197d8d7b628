package edge

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strconv"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/nat"
)

// Request is one inbound request as it moves through the stage chain.
type Request struct {
	*sip.Request // the server transaction's request: read it, never forward it
	Tx           sip.ServerTransaction
	Flow         nat.FlowKey // transport, local socket and source it came on
}

// Handler handles a request. A returned *Error becomes the SIP response;
// any other error becomes 500. Returning nil means a response was sent.
type Handler func(ctx context.Context, r *Request) error

// Stage wraps a handler with one concern (sanity, limits, NAT, ...).
type Stage func(next Handler) Handler

// chain builds stages around h; the first stage runs first.
func chain(h Handler, stages ...Stage) Handler {
	for i := len(stages) - 1; i >= 0; i-- {
		h = stages[i](h)
	}
	return h
}

// Error is a SIP failure to answer with. Stages return it; one place,
// respondError, turns it into a response.
type Error struct {
	Code    int
	Reason  string
	Headers []sip.Header
}

func (e *Error) Error() string { return strconv.Itoa(e.Code) + " " + e.Reason }

func reject(code int, reason string, hdrs ...sip.Header) *Error {
	return &Error{Code: code, Reason: reason, Headers: hdrs}
}

// respondError is the one place where an error becomes a SIP response.
func respondError(log *slog.Logger, r *Request, err error) {
	var se *Error
	if !errors.As(err, &se) {
		log.Error("request failed", "method", r.Method, "src", r.Flow.Remote, "err", err)
		se = reject(500, "Server Internal Error")
	}
	reply(log, r, se.Code, se.Reason, se.Headers...)
}

// reply answers r from the edge itself, symmetric to its source (RFC 3581).
func reply(log *slog.Logger, r *Request, code int, reason string, hdrs ...sip.Header) {
	if r.IsAck() {
		return // ACK is never answered
	}
	res := sip.NewResponseFromRequest(r.Request, code, reason, nil)
	stampVia(res.Via(), r.Flow.Remote)
	for _, h := range hdrs {
		res.AppendHeader(h)
	}
	send(log, r, res)
}

// send delivers res over the flow r came on.
func send(log *slog.Logger, r *Request, res *sip.Response) {
	res.SetDestination(r.Flow.Remote.String())
	if err := r.Tx.Respond(res); err != nil {
		log.Debug("response not sent", "status", res.StatusCode, "src", r.Flow.Remote, "err", err)
	}
}

// flowOf derives the flow key of a request from its server transaction.
func flowOf(req *sip.Request, tx sip.ServerTransaction) (nat.FlowKey, error) {
	tp, err := nat.ParseTransport(req.Transport())
	if err != nil {
		return nat.FlowKey{}, err
	}
	src, err := netip.ParseAddrPort(req.Source())
	if err != nil {
		return nat.FlowKey{}, err
	}
	k := nat.FlowKey{Transport: tp, Remote: unmap(src)}
	if stx, ok := tx.(*sip.ServerTx); ok && stx.Connection() != nil {
		if la, err := netip.ParseAddrPort(stx.Connection().LocalAddr().String()); err == nil {
			k.Local = unmap(la)
		}
	}
	if !k.Local.IsValid() {
		return k, errors.New("local address of the flow is unknown")
	}
	return k, nil
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
