package edge

import (
	"context"
	"hash/fnv"
	"net/netip"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream"
)

// coreHop sends to a core target from the core-side socket.
func (s *Server) coreHop(t upstream.Target) hop {
	h := hop{client: s.coreClient, transport: t.Transport, dest: t.Addr, sentBy: s.coreAddr, toCore: true}
	if t.Transport == nat.UDP {
		h.local = s.coreAddr
	}
	return h
}

// flowHop sends to an endpoint over the flow it registered on: from the
// listening UDP socket to its public address, or on its own connection.
func (s *Server) flowHop(f nat.FlowKey) hop {
	h := hop{client: s.accessClient, transport: f.Transport, dest: f.Remote, sentBy: s.accessAddr(f)}
	if f.Transport == nat.UDP {
		h.local = f.Local
	}
	return h
}

// accessAddr is the address phones use to reach the edge on flow f.
func (s *Server) accessAddr(f nat.FlowKey) netip.AddrPort {
	if s.advertise.IsValid() {
		return netip.AddrPortFrom(s.advertise, f.Local.Port())
	}
	return f.Local
}

// flowUsable reports whether f can carry a request now: it must be a
// live flow, and a stream flow needs its connection (sipgo would
// otherwise dial the NAT's address).
func (s *Server) flowUsable(f nat.FlowKey) bool {
	if !s.flows.Alive(f) {
		return false // dead, or never registered
	}
	if !f.Transport.Reliable() {
		return true
	}
	c, err := s.accessUA.TransportLayer().GetConnection(f.Transport.String(), f.Remote.String())
	return err == nil && c != nil
}

// isOurs reports whether u names this edge (either side).
func (s *Server) isOurs(u sip.Uri) bool {
	ip, err := netip.ParseAddr(strings.Trim(u.Host, "[]"))
	if err != nil {
		return false
	}
	port := uint16(u.Port)
	if port == 0 {
		port = 5060
		if u.Scheme == "sips" {
			port = 5061
		}
	}
	ap := netip.AddrPortFrom(ip.Unmap(), port)
	if ap == s.coreAddr || s.ownAddrs[ap] {
		return true
	}
	return s.advertise.IsValid() && ip.Unmap() == s.advertise && s.ownPorts[port]
}

// popOwnRoutes removes the Route entries at the top of req that name this
// edge (loose routing, RFC 3261 §16.4) and returns the flow token they
// carried, if any. Two different tokens mean someone stacked a second
// flow into the route (a forged Path): ok is false.
func (s *Server) popOwnRoutes(req *sip.Request) (token string, ok bool) {
	for {
		rt := req.Route()
		if rt == nil || !s.isOurs(rt.Address) {
			return token, true
		}
		if u := rt.Address.User; u != "" {
			if token != "" && token != u {
				return "", false
			}
			token = u
		}
		req.RemoveHeader("Route")
	}
}

// recordRoute adds the edge's two Record-Route entries (RFC 5658): the
// one facing the next hop on top, the one facing the previous hop below.
// The access-side entry carries the endpoint's flow token so in-dialog
// requests from the core come back onto the same flow.
func (s *Server) recordRoute(fwd *sip.Request, flow nat.FlowKey, core hop, towardCore bool) {
	acc := s.accessAddr(flow)
	access := sip.Uri{Scheme: "sip", User: s.signer.Encode(flow), Host: acc.Addr().String(), Port: int(acc.Port()), UriParams: sip.NewParams()}
	if flow.Transport != nat.UDP {
		access.UriParams.Add("transport", strings.ToLower(flow.Transport.String()))
	}
	access.UriParams.Add("lr", "")
	coreSide := sip.Uri{Scheme: "sip", Host: s.coreAddr.Addr().String(), Port: int(s.coreAddr.Port()), UriParams: sip.NewParams()}
	if core.transport != nat.UDP {
		coreSide.UriParams.Add("transport", strings.ToLower(core.transport.String()))
	}
	coreSide.UriParams.Add("lr", "")
	first, second := access, coreSide // the second one ends up on top
	if !towardCore {
		first, second = coreSide, access
	}
	fwd.PrependHeader(&sip.RecordRouteHeader{Address: first})
	fwd.PrependHeader(&sip.RecordRouteHeader{Address: second})
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
func (s *Server) loopDetected(req *sip.Request) bool {
	prefix := loopBranchPrefix(req)
	for _, h := range req.GetHeaders("Via") {
		v, ok := h.(*sip.ViaHeader)
		if !ok || !s.isOurs(sip.Uri{Scheme: "sip", Host: v.Host, Port: v.Port}) {
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
// received), and a random part that
// keeps each transaction's branch unique.
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

// proxyToCore forwards a phone's request (other than REGISTER) to the
// core. Whatever its Route or Request-URI say, access-side requests only
// ever go to the configured core: the edge is no open relay.
func (s *Server) proxyToCore(ctx context.Context, r *Request) error {
	if s.loopDetected(r.Request) {
		return reject(482, "Loop Detected")
	}
	fwd := r.Clone()
	s.popOwnRoutes(fwd)
	inDialog := fwd.To() != nil && fwd.To().Params.Has("tag")
	if !inDialog {
		// A phone has no business pre-loading a route past the edge
		// (Kamailio configs do the same with remove_hf("Route")).
		dropHeaders(fwd, "Route")
	}
	if r.Method == sip.OPTIONS && fwd.Route() == nil && (fwd.Recipient.User == "" || s.isOurs(fwd.Recipient)) {
		reply(s.log, r, 200, "OK", sip.NewHeader("Allow", allowed))
		return nil
	}
	h := s.coreHop(s.upstreams.Pick())
	if dialogCreating(fwd) {
		s.recordRoute(fwd, r.Flow, h, true)
	}
	return s.forward(ctx, r, fwd, h, func(res *sip.Response) {
		if c := res.StatusCode; (c == 401 || c == 403 || c == 407) && hadCredentials(r.Request) {
			s.limiter.AuthFailure(r.Flow.Remote.Addr(), aorOf(r.From().Address))
		}
	})
}

// proxyToEndpoint forwards a request from the core to the endpoint whose
// flow token it carries.
func (s *Server) proxyToEndpoint(ctx context.Context, r *Request) error {
	if s.loopDetected(r.Request) {
		return reject(482, "Loop Detected")
	}
	fwd := r.Clone()
	flow, found, err := s.endpointFlow(fwd)
	if err != nil {
		return err
	}
	if !found {
		if r.Method == sip.OPTIONS {
			reply(s.log, r, 200, "OK", sip.NewHeader("Allow", allowed))
			return nil
		}
		return reject(404, "Not Found")
	}
	h := s.flowHop(flow)
	if dialogCreating(fwd) {
		s.recordRoute(fwd, flow, s.coreHop(s.upstreams.Pick()), false)
	}
	return s.forward(ctx, r, fwd, h, nil)
}

// endpointFlow finds the flow a request from the core is for, from the
// token in a Route (path mode, or the edge's Record-Route) or in the
// Request-URI (rewrite mode, where the endpoint's own Contact is put
// back). It pops the edge's Routes from fwd. found is false when the
// request names no endpoint at all.
func (s *Server) endpointFlow(fwd *sip.Request) (flow nat.FlowKey, found bool, _ *Error) {
	token, ok := s.popOwnRoutes(fwd)
	if !ok {
		s.log.Warn("request with two flow tokens in its route", "method", fwd.Method, "call", callID(fwd))
		return flow, true, reject(403, "Forbidden")
	}
	rewritten := false
	if token == "" && fwd.Recipient.User != "" && s.isOurs(fwd.Recipient) {
		token, rewritten = fwd.Recipient.User, true
	}
	if token == "" {
		return flow, false, nil
	}
	flow, err := s.signer.Decode(token)
	if err != nil {
		s.log.Warn("request with a bad flow token", "method", fwd.Method, "call", callID(fwd))
		return flow, true, reject(403, "Forbidden")
	}
	if rewritten {
		b, ok := s.bindings.ByCore(fwd.Recipient.String())
		var u sip.Uri
		if !ok || b.Flow != flow || sip.ParseUri(b.Contact, &u) != nil {
			return flow, true, reject(404, "Not Found")
		}
		fwd.Recipient = u
	}
	if !s.flowUsable(flow) {
		return flow, true, reject(430, "Flow Failed")
	}
	return flow, true, nil
}

// relayAck forwards an ACK that matches no transaction (the ACK for a
// 2xx, RFC 3261 §16.7 item 4 / §17.1.1.3) statelessly along its route.
func (s *Server) relayAck(req *sip.Request, fromCore bool) {
	fwd := req.Clone()
	var h hop
	if fromCore {
		flow, found, err := s.endpointFlow(fwd)
		if !found || err != nil {
			return
		}
		h = s.flowHop(flow)
	} else {
		s.popOwnRoutes(fwd)
		h = s.coreHop(s.upstreams.Pick())
	}
	if h.prepare(fwd, sip.GenerateBranch()) != nil {
		return
	}
	if err := h.client.WriteRequest(fwd, prebuilt); err != nil {
		s.log.Debug("ACK not relayed", "dst", h.dest, "err", err)
	}
}

// allowed is the Allow header value of the edge's own answers.
const allowed = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK"
