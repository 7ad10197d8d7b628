package edge

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream"
)

// Request is one inbound request as it moves through the stage chain:
// parsed once by the parse stage, read by every stage after it.
type Request struct {
	*sip.Request // the server transaction's request: read it, never forward it
	Tx           sip.ServerTransaction
	Flow         nat.FlowKey // transport, local socket and source it came on

	UserAgent string // User-Agent, "" if absent
	// AOR is a REGISTER's To as an address-of-record ("" otherwise).
	AOR string
	// Register is the parsed REGISTER, or RegisterErr why it did not
	// parse (answered by the registrar, after the limits).
	Register    *registerRequest
	RegisterErr *Error
	// NAT is what a REGISTER's path says about NAT (observe stage).
	NAT nat.Evidence

	// headClean: the bytes it was parsed from passed cleanHead.
	headClean bool
	// finish, if set, ends the request later, from any goroutine: a
	// handler that returns errLater calls it once with what it would
	// have returned (see relay.forwardLater). Set for the edge's own
	// UDP transactions only.
	finish func(error)
	// detach, if set, says the request is being handled on a read loop:
	// a handler hands what may wait to it (a worker runs it, and finish
	// ends the request with what it returns) and returns its errLater.
	detach func(func() error) error

	proof  int8         // whether the source proved itself: 0 not worked out yet, 1 yes, -1 no (Server.proven)
	creds  int8         // whether it carries credentials: 0 not looked yet, 1 yes, -1 no (credentials)
	status atomic.Int32 // the final status sent, once sent (send)
}

// Handler handles a request. A returned error becomes the SIP response
// (see respond); nil means a response was sent.
type Handler func(ctx context.Context, r *Request) error

// Stage wraps a handler with one concern (sanity, limits, ...).
type Stage func(next Handler) Handler

// chain builds stages around h; the first stage runs first.
func chain(h Handler, stages ...Stage) Handler {
	for i := len(stages) - 1; i >= 0; i-- {
		h = stages[i](h)
	}
	return h
}

// Error is a SIP failure to answer with.
type Error struct {
	Code    int
	Reason  string
	Headers []sip.Header
}

func (e *Error) Error() string { return strconv.Itoa(e.Code) + " " + e.Reason }

func reject(code int, reason string, hdrs ...sip.Header) *Error {
	return &Error{Code: code, Reason: reason, Headers: hdrs}
}

var (
	// errDrop ends a request with no answer at all (floods, scanners, bans).
	errDrop = errors.New("dropped without answer")
	// errOverLimit is a plausible client over a limit: 503, come back later.
	errOverLimit = errors.New("over a limit")
	// errFlowFailed is a flow that cannot carry the request (RFC 5626 §5.3).
	errFlowFailed = errors.New("flow failed")
)

// responder is the one place where an outcome becomes a SIP response.
type responder struct {
	log *slog.Logger
	// retryAfter is what a client over a limit is told (the limiter's,
	// jittered).
	retryAfter func() time.Duration
}

// statusOf maps an error to the answer, or nil for none at all.
func (rs responder) statusOf(r *Request, err error) *Error {
	var se *Error
	var down *upstream.Unreachable
	switch {
	case errors.As(err, &se):
		return se
	case errors.Is(err, errDrop):
		return nil
	case errors.Is(err, errOverLimit), errors.Is(err, upstream.ErrBusy):
		return reject(503, "Service Unavailable", retryAfter(rs.retryAfter()))
	case errors.As(err, &down):
		return reject(503, "Service Unavailable", retryAfter(down.RetryAfter))
	case errors.Is(err, errFlowFailed):
		return reject(430, "Flow Failed")
	}
	rs.log.Error("request failed", "method", r.Method, "src", r.Flow.Remote, "err", err)
	return reject(500, "Server Internal Error")
}

// respond answers r according to err.
func (rs responder) respond(r *Request, err error) {
	if se := rs.statusOf(r, err); se != nil {
		reply(rs.log, r, se.Code, se.Reason, se.Headers...)
	}
}

func retryAfter(d time.Duration) sip.Header {
	return sip.NewHeader("Retry-After", strconv.Itoa(int(d/time.Second)))
}

// reply answers r from the edge itself, symmetric to its source (RFC 3581).
func reply(log *slog.Logger, r *Request, code int, reason string, hdrs ...sip.Header) {
	if r.IsAck() {
		return // ACK is never answered
	}
	res := sip.NewResponseFromRequest(r.Request, code, reason, nil)
	res.SipVersion = "SIP/2.0" // sipgo copies the request's, even an unsupported one
	stampVia(res.Via(), r.Flow.Remote)
	for _, h := range hdrs {
		res.AppendHeader(h)
	}
	send(log, r, res)
}

// send delivers res over the flow r came on.
func send(log *slog.Logger, r *Request, res *sip.Response) {
	if res.StatusCode >= 200 {
		r.status.CompareAndSwap(0, int32(res.StatusCode))
	}
	res.SetDestination(nameOf(r.Flow.Remote, r.Request.Source()))
	if err := r.Tx.Respond(res); err != nil {
		log.Debug("response not sent", "status", res.StatusCode, "src", r.Flow.Remote, "err", err)
	}
}

// nameOf is ap as a string: name, the same address written already (a
// request's source), if it is that; else a new one.
func nameOf(ap netip.AddrPort, name string) string {
	if p, err := netip.ParseAddrPort(name); err == nil && p == ap {
		return name
	}
	return ap.String()
}

// keyed is a connection that knows its flow: nat's stream wrapper, under
// sipgo's TCP and WS connections.
type keyed interface{ Key() nat.FlowKey }

// flowOf reads the flow a request came on from the socket wrappers the
// edge gave sipgo: the stream connection's own key, or the UDP socket's
// address and the datagram's source.
func flowOf(req *sip.Request, tx sip.ServerTransaction) (nat.FlowKey, error) {
	var conn sip.Connection
	if stx, ok := tx.(*sip.ServerTx); ok {
		conn = stx.Connection()
	}
	switch c := conn.(type) {
	case *sip.TCPConnection:
		if k, ok := c.Conn.(keyed); ok {
			return k.Key(), nil
		}
	case *sip.WSConnection:
		if k, ok := c.Conn.(keyed); ok {
			return k.Key(), nil
		}
	case *sip.UDPConnection:
		if u, ok := c.PacketConn.(*udpSocket); ok {
			src, err := netip.ParseAddrPort(req.Source())
			if err != nil {
				return nat.FlowKey{}, err
			}
			return nat.FlowKey{Transport: nat.UDP, Local: u.local, Remote: unmap(src)}, nil
		}
	}
	return nat.FlowKey{}, errors.New("request on a socket the edge did not wrap")
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// onceAWhile counts a repeated problem and logs it at most once a minute,
// with how many times it happened since: an attacker cannot fill the log.
type onceAWhile struct {
	n    atomic.Int64
	last atomic.Int64 // Unix ns of the last line
}

// noteErr is note at error level, with the latest case's address and
// error.
func (o *onceAWhile) noteErr(log *slog.Logger, msg, key string, dst netip.AddrPort, err error) {
	if n, due := o.count(); due {
		log.Error(msg, "count", n, "dst", dst, "err", err, "see", key)
	}
}

func (o *onceAWhile) note(log *slog.Logger, msg string, key string) {
	if n, due := o.count(); due {
		log.Warn(msg, "count", n, "see", key)
	}
}

// count counts one more case and says whether a line is due: the first
// in a minute.
func (o *onceAWhile) count() (n int64, due bool) {
	n = o.n.Add(1)
	now := time.Now().UnixNano()
	last := o.last.Load()
	return n, now-last >= int64(time.Minute) && o.last.CompareAndSwap(last, now)
}
