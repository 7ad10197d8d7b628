package edge

import (
	"context"
	"hash/fnv"
	"log/slog"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// allowed is the Allow header value of the edge's own answers.
const allowed = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK"

// proxy forwards everything but REGISTER: phones' requests to the core
// (whatever their Route says: the edge is no open relay), the core's to
// the flow their signed token names.
type proxy struct {
	log      *slog.Logger
	self     *self
	relay    *relay
	core     func() leg
	flowLeg  func(nat.FlowKey) leg
	usable   func(nat.FlowKey) bool // a live flow, with its connection for streams
	registry *registry.Registry
	limiter  *ratelimit.Limiter
}

// toCore forwards a phone's request to the core.
func (p *proxy) toCore(ctx context.Context, r *Request) error {
	if p.loopDetected(r.Request) {
		return reject(482, "Loop Detected")
	}
	fwd := r.Clone()
	p.self.popOwnRoutes(fwd)
	inDialog := fwd.To() != nil && fwd.To().Params.Has("tag")
	if !inDialog {
		// A phone has no business pre-loading a route past the edge
		// (Kamailio configs do the same with remove_hf("Route")).
		dropHeaders(fwd, "Route")
	}
	if r.Method == sip.OPTIONS && fwd.Route() == nil && (fwd.Recipient.User == "" || p.self.isOurs(fwd.Recipient)) {
		reply(p.log, r, 200, "OK", sip.NewHeader("Allow", allowed))
		return nil
	}
	l := p.core()
	if dialogCreating(fwd) {
		p.self.recordRoute(fwd, r.Flow, l.Transport, true)
	}
	return p.relay.forward(ctx, r, fwd, l, func(res *sip.Response) {
		authFailed(p.limiter, r, res.StatusCode, aorOf(r.From().Address))
	})
}

// toPhone forwards a request from the core to the endpoint whose flow
// token it carries.
func (p *proxy) toPhone(ctx context.Context, r *Request) error {
	if p.loopDetected(r.Request) {
		return reject(482, "Loop Detected")
	}
	fwd := r.Clone()
	flow, found, err := p.endpointFlow(fwd)
	if err != nil {
		return err
	}
	if !found {
		if r.Method == sip.OPTIONS {
			reply(p.log, r, 200, "OK", sip.NewHeader("Allow", allowed))
			return nil
		}
		return reject(404, "Not Found")
	}
	if dialogCreating(fwd) {
		p.self.recordRoute(fwd, flow, p.core().Transport, false)
	}
	return p.relay.forward(ctx, r, fwd, p.flowLeg(flow), nil)
}

// ack relays an ACK that matches no transaction (the ACK for a 2xx, RFC
// 3261 §16.7 item 4 / §17.1.1.3) statelessly along its route.
func (p *proxy) ack(req *sip.Request, fromCore bool) {
	fwd := req.Clone()
	var l leg
	if fromCore {
		flow, found, err := p.endpointFlow(fwd)
		if !found || err != nil {
			return
		}
		l = p.flowLeg(flow)
	} else {
		p.self.popOwnRoutes(fwd)
		l = p.core()
	}
	p.relay.ack(fwd, l.Hop)
}

// endpointFlow finds the flow a request from the core is for, from the
// token in a Route (path mode, or the edge's Record-Route) or in the
// Request-URI (rewrite mode, where the endpoint's own Contact is put
// back). It pops the edge's Routes from fwd. found is false when the
// request names no endpoint at all.
func (p *proxy) endpointFlow(fwd *sip.Request) (flow nat.FlowKey, found bool, _ error) {
	token, ok := p.self.popOwnRoutes(fwd)
	if !ok {
		p.log.Warn("request with two flow tokens in its route", "method", fwd.Method, "call", callID(fwd))
		return flow, true, reject(403, "Forbidden")
	}
	rewritten := false
	if token == "" && fwd.Recipient.User != "" && p.self.isOurs(fwd.Recipient) {
		token, rewritten = fwd.Recipient.User, true
	}
	if token == "" {
		return flow, false, nil
	}
	flow, err := p.self.signer.Decode(token)
	if err != nil {
		p.log.Warn("request with a bad flow token", "method", fwd.Method, "call", callID(fwd))
		return flow, true, reject(403, "Forbidden")
	}
	if rewritten {
		b, ok := p.registry.ByCore(fwd.Recipient.String())
		var u sip.Uri
		if !ok || b.Flow != flow || sip.ParseUri(b.Contact, &u) != nil {
			return flow, true, reject(404, "Not Found")
		}
		fwd.Recipient = u
	}
	if !p.usable(flow) {
		return flow, true, errFlowFailed
	}
	return flow, true, nil
}

// dialogCreating reports whether req may create a dialog and so needs the
// edge in its route set.
func dialogCreating(req *sip.Request) bool {
	switch req.Method {
	case sip.INVITE, sip.SUBSCRIBE, sip.REFER, sip.NOTIFY:
		return req.To() == nil || !req.To().Params.Has("tag")
	}
	return false
}

// loopDetected reports whether req is one the edge already forwarded,
// unchanged (RFC 3261 §16.3 item 4): a Via of the edge's whose branch
// carries the loop hash of req as it arrives now. The same request coming
// back after the core changed its Request-URI (a call between two phones
// behind this edge) is a spiral, and goes on.
func (p *proxy) loopDetected(req *sip.Request) bool {
	prefix := loopBranchPrefix(req)
	for _, h := range req.GetHeaders("Via") {
		v, ok := h.(*sip.ViaHeader)
		if !ok || !p.self.isOurs(sip.Uri{Scheme: "sip", Host: v.Host, Port: v.Port}) {
			continue
		}
		if b, _ := v.Params.Get("branch"); strings.HasPrefix(b, prefix) {
			return true
		}
	}
	return false
}

// loopBranch is the branch of the edge's Via on a request forwarded for
// req: the magic cookie, a hash of what identifies req on this hop
// (RFC 3261 §16.6 item 8: tags, Call-ID, Request-URI as received, CSeq
// number, Proxy-Require, Proxy-Authorization; and the Route set as
// received), and a random part that keeps each transaction's branch
// unique.
func loopBranch(req *sip.Request) string {
	return loopBranchPrefix(req) + sip.GenerateTagN(10)
}

func loopBranchPrefix(req *sip.Request) string {
	h := fnv.New64a()
	write := func(s string) { h.Write([]byte(s)); h.Write([]byte{0}) }
	if t := req.To(); t != nil {
		write(t.Params.GetOr("tag", ""))
	}
	if f := req.From(); f != nil {
		write(f.Params.GetOr("tag", ""))
	}
	write(callID(req))
	write(req.Recipient.String())
	if c := req.CSeq(); c != nil {
		write(strconv.FormatUint(uint64(c.SeqNo), 10))
	}
	// The Route set as received tells the two passes of an in-dialog
	// request between two phones behind this edge apart: same target,
	// tags and CSeq, but each pass has consumed a part of the route.
	for _, name := range []string{"Route", "Proxy-Require", "Proxy-Authorization"} {
		for _, v := range req.GetHeaders(name) {
			write(v.Value())
		}
	}
	return "z9hG4bK" + strconv.FormatUint(h.Sum64(), 36) + "."
}
