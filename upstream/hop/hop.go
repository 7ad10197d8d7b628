// Package hop is how the edge sends a request one hop on, toward a core
// or a phone: its own Via, the socket to leave from, and sipgo's client
// told the request is complete. Both directions share it, so it knows
// nothing of flows or cores.
package hop

import (
	"context"
	"errors"
	"net/netip"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// Hop is where a forwarded request goes and which edge socket sends it.
type Hop struct {
	Client *sipgo.Client
	// Lean, if set, runs the hop's non-INVITE transactions over UDP in
	// place of Client's (see edge/udptx); INVITE and ACK stay sipgo's.
	Lean      Starter
	Transport string         // "UDP", "TCP", "TLS", "WS" or "WSS"
	Dest      netip.AddrPort // next hop
	Local     netip.AddrPort // socket to leave from: set for UDP, zero for streams
	SentBy    netip.AddrPort // host:port of the edge's Via
	// DestName and SentByHost are Dest and SentBy's address as strings,
	// if the caller has them already; empty, they are written per request.
	DestName, SentByHost string
}

// Starter runs a client transaction for a prepared request to dest.
type Starter interface {
	Start(ctx context.Context, req *sip.Request, dest netip.AddrPort) (sip.ClientTransaction, error)
}

// prebuilt tells sipgo's client the request is complete: with no option it
// would fill in headers the way a UAC does.
func prebuilt(*sipgo.Client, *sip.Request) error { return nil }

// Prepare adds the edge's Via with branch on top of req and points req
// at h.
func (h Hop) Prepare(req *sip.Request, branch string) {
	host := h.SentByHost
	if host == "" {
		host = h.SentBy.Addr().String()
	}
	via := &sip.ViaHeader{
		ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: h.Transport,
		Host: host, Port: int(h.SentBy.Port()), Params: sip.NewParams(),
	}
	via.Params.Add("branch", branch)
	via.Params.Add("rport", "")
	req.PrependHeader(via)
	h.Address(req)
}

// Address points req at h without touching its headers.
func (h Hop) Address(req *sip.Request) {
	req.SetTransport(h.Transport)
	dest := h.DestName
	if dest == "" {
		dest = h.Dest.String()
	}
	req.SetDestination(dest)
	req.Laddr = sip.Addr{}
	if h.Local.IsValid() {
		// Leave from the listening socket, never from an ephemeral one.
		req.Laddr = sip.Addr{IP: h.Local.Addr().AsSlice(), Port: int(h.Local.Port())}
	}
}

// Notifier is a Starter whose transactions can also hand their
// responses to a callback instead of a channel (udptx.Client).
type Notifier interface {
	StartNotify(ctx context.Context, req *sip.Request, dest netip.AddrPort,
		onResponse func(*sip.Response), onEnd sip.FnTxTerminate) (sip.ClientTransaction, error)
}

// CanNotify reports whether StartNotify can run req over this hop: a
// non-INVITE request over UDP, on the edge's own transactions.
func (h Hop) CanNotify(req *sip.Request) bool {
	_, ok := h.Lean.(Notifier)
	return ok && h.lean(req)
}

// StartNotify runs a client transaction for a prepared request whose
// responses and end are handed to the callbacks (see
// udptx.Client.StartNotify). Only where CanNotify says so.
func (h Hop) StartNotify(ctx context.Context, req *sip.Request, onResponse func(*sip.Response), onEnd sip.FnTxTerminate) (sip.ClientTransaction, error) {
	n, ok := h.Lean.(Notifier)
	if !ok || !h.lean(req) {
		return nil, errors.New("hop: no notifying transactions for this request")
	}
	return n.StartNotify(ctx, req, h.Dest, onResponse, onEnd)
}

func (h Hop) lean(req *sip.Request) bool {
	return h.Lean != nil && h.Transport == "UDP" && req.Method != sip.INVITE && req.Method != sip.ACK
}

// Start runs a client transaction for a prepared request.
func (h Hop) Start(ctx context.Context, req *sip.Request) (sip.ClientTransaction, error) {
	if h.lean(req) {
		return h.Lean.Start(ctx, req, h.Dest)
	}
	return h.Client.TransactionRequest(ctx, req, prebuilt)
}

// Write sends a prepared request statelessly (an ACK).
func (h Hop) Write(req *sip.Request) error { return h.Client.WriteRequest(req, prebuilt) }

// Ask runs a non-INVITE transaction of the edge's own (CANCEL, BYE, an
// OPTIONS ping) and returns nil once any response arrives.
func (h Hop) Ask(ctx context.Context, req *sip.Request) error {
	tx, err := h.Start(ctx, req)
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

// AskStatus is Ask returning the first final (or, failing that, any)
// response's status: what a health probe needs.
func (h Hop) AskStatus(ctx context.Context, req *sip.Request) (int, error) {
	tx, err := h.Start(ctx, req)
	if err != nil {
		return 0, err
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode >= 200 {
				return res.StatusCode, nil
			}
		case <-tx.Done():
			if err := tx.Err(); err != nil {
				return 0, err
			}
			return 0, errors.New("no answer")
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}
