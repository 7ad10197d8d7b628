package edge

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/dialog"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/edge/sipwire"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// allowed is the Allow header value of the edge's own answers.
const allowed = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK"

// proxy forwards everything but REGISTER: phones' requests to the core
// (whatever their Route says: the edge is no open relay), the core's to
// the flow their signed token names.
type proxy struct {
	log       *slog.Logger
	self      *self
	relay     *relay
	tenants   *tenants // and the way to each one's cores
	flowLeg   func(nat.FlowKey) leg
	usable    func(nat.FlowKey) bool // a live flow, with its connection for streams
	registry  *registry.Registry
	auth      auth
	dialogs   *dialog.Table
	flows     *nat.FlowTable
	tableFull onceAWhile // dialogs refused for a full table, counted
	hide      bool       // topology hiding toward phones
	server    string     // Server header toward phones ("": none)
	// mintSlack is how long before its flow's creation a token may have
	// been minted: the core timeout, plus a second of token resolution.
	mintSlack time.Duration
	peers     atomic.Pointer[[]netip.Prefix] // [access] trusted: may send out of dialog without a binding
	// A token minted since recoverFrom may name a UDP flow this process
	// has no record of: one from before its start (the registry knows
	// when that was) that the state it loaded, if any, did not hold. Such
	// a flow is recovered.
	recoverFrom time.Time
	flowFailed  onceAWhile // 430s toward the core, counted
	waker       *waker     // sleeping phones woken by push (nil: none)
}

// toCore forwards a phone's request to the core, under the border
// policy: out of dialog only from a flow holding a binding (or a trusted
// peer); in dialog only along a dialog this edge saw established, from
// the flow that took part in it, with the route set it established.
func (p *proxy) toCore(ctx context.Context, r *Request) error {
	if p.loopDetected(r.Request) {
		return reject(482, "Loop Detected")
	}
	fwd := r.Clone()
	inDialog := fwd.To() != nil && fwd.To().Params.Has("tag")
	var t *tenant
	if inDialog {
		var peer nat.FlowKey
		if t, peer = p.dialogAllows(r, fwd); t == nil {
			p.log.Debug("in-dialog request outside a known dialog", "src", r.Flow.Remote, "method", r.Method)
			return reject(403, "Forbidden")
		}
		if peer.Valid() { // a call the edge routed alone: to the other phone
			return p.toFlow(ctx, r, fwd, peer, t.name, nil)
		}
	} else {
		// A phone has no business pre-loading a route past the edge
		// (Kamailio configs do the same with remove_hf("Route")).
		dropHeaders(fwd, "Route")
		if r.Method == sip.OPTIONS && (fwd.Recipient.User == "" || p.self.isOurs(fwd.Recipient)) {
			reply(p.log, r, 200, "OK", sip.NewHeader("Allow", allowed))
			return nil
		}
		// The caller's domain picks the tenant, and the flow must hold
		// one of that tenant's bindings: registered-only access, and no
		// way into another tenant's cores.
		if t = p.tenants.forDomain(domainOf(r.From().Address)); t == nil ||
			!p.registry.HasFlowIn(r.Flow, t.name) && !p.peer(r.Flow.Remote.Addr()) {
			return reject(403, "Forbidden")
		}
	}
	l, err := t.leg(aorOf(r.From().Address))
	if err != nil {
		if !inDialog && t.watch.surviving() {
			return p.survive(ctx, r, fwd, t, err)
		}
		return err
	}
	if dialogCreating(fwd) {
		p.self.recordRoute(fwd, r.Flow, t.name, l.Transport, true)
	}
	onResponse := func(res *sip.Response) {
		if res.StatusCode >= 200 {
			p.auth.answered(r, res, aorOf(r.From().Address))
		}
		p.track(r, fwd, res, r.Flow, true)
		if p.hide {
			hideRecordRoute(p.self, res, r.Flow, t.name)
			p.hideHeaders(res)
		}
	}
	if r.finish != nil && canLater(l, fwd) {
		// A non-INVITE over UDP both ways (a BYE, a MESSAGE): the answer
		// is relayed from the core side's read loop; nobody waits here.
		if err := p.relay.forwardLater(r, fwd, l, onResponse, r.finish); err != nil {
			return err
		}
		return errLater
	}
	return p.relay.forward(ctx, r, fwd, l, onResponse)
}

// current reports whether tok was minted for the flow its key names now,
// not for an earlier flow with the same addresses (a NAT mapping reused
// by another device after the first one's flow died). A token may be
// minted up to a core timeout before its flow exists: the REGISTER that
// creates the flow carries it.
func (p *proxy) current(tok nat.Token) bool {
	f, ok := p.flows.Get(tok.Flow)
	return ok && !tok.Minted.Before(f.Created.Add(-p.mintSlack))
}

// setPeers replaces the trusted peers with those of [access] trusted.
func (p *proxy) setPeers(cidrs []string) {
	var peers []netip.Prefix
	for _, c := range cidrs {
		pf, _ := ratelimit.ParsePrefix(c) // validated
		peers = append(peers, pf)
	}
	p.peers.Store(&peers)
}

func (p *proxy) peer(a netip.Addr) bool {
	for _, pf := range *p.peers.Load() {
		if pf.Contains(a) {
			return true
		}
	}
	return false
}

// dialogAllows checks an in-dialog request from a phone and pops the
// edge's own Route entries from fwd: its top Route must be the edge's
// access-side Record-Route with the token of the flow it arrived on, and
// the dialog must be one the edge saw, with the same route set beyond.
// The token's tenant is the dialog's (nil: refused).
func (p *proxy) dialogAllows(r *Request, fwd *sip.Request) (*tenant, nat.FlowKey) {
	var none nat.FlowKey
	top := fwd.Route()
	if top == nil || !p.self.isOurs(top.Address) || top.Address.User == "" {
		return nil, none
	}
	// The top entry is this phone's; a call the edge routed alone between
	// two phones has the other phone's next (unless hidden), and the
	// dialog table knows that flow.
	token := top.Address.User
	p.self.popOwnRoutes(fwd)
	tok, name, err := p.self.open(token, p.tenants.names)
	if err != nil || tok.Flow != r.Flow || !p.current(tok) {
		return nil, none
	}
	t := p.tenants.named(name)
	id, ok := dialogID(fwd)
	if !ok || t == nil {
		return nil, none
	}
	restore, peer, ok := p.dialogs.Allow(id, r.Flow, routeSet(fwd.GetHeaders("Route")))
	if !ok {
		return nil, none
	}
	for i := len(restore) - 1; i >= 0; i-- { // the route the edge hid from the phone
		var u sip.Uri
		if sip.ParseUri(restore[i], &u) == nil {
			fwd.PrependHeader(&sip.RouteHeader{Address: u})
		}
	}
	if fwd.Method == sip.BYE {
		p.dialogs.End(id) // in-dialog requests racing the BYE are refused: the call is over
	}
	return t, peer
}

// track remembers a dialog a response establishes: a dialog-creating
// request answered 2xx, or 1xx with a To-tag (an early dialog), for the
// phone on flow. The phone's route set beyond the edge is the core's
// Record-Route entries: reversed for the caller (the phone sent the
// request), as they are for the callee.
func (p *proxy) track(r *Request, fwd *sip.Request, res *sip.Response, flow nat.FlowKey, callerIsPhone bool) {
	if !dialogCreating(fwd) || res.StatusCode < 101 {
		return
	}
	id, ok := dialogID(res)
	if !ok {
		return
	}
	if res.StatusCode >= 300 {
		p.dialogs.End(id) // the early dialog a 1xx began ends with the failure
		return
	}
	var route []string
	for _, h := range res.GetHeaders("Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok {
			route = append(route, rr.Address.String())
		}
	}
	if callerIsPhone {
		slices.Reverse(route)
	}
	// The phone's route starts with the edge's own pair, which it pops;
	// the rest (the core's entries, and the edge's again when the call
	// spirals to another phone behind it) is the dialog's.
	for len(route) > 0 {
		var u sip.Uri
		if sip.ParseUri(route[0], &u) != nil || !p.self.isOurs(u) {
			break
		}
		route = route[1:]
	}
	if !p.dialogs.Establish(id, dialog.Dialog{Flow: flow, Route: route, Confirmed: res.StatusCode >= 200}) {
		p.tableFull.note(p.log, "dialog table full: in-dialog requests of these dialogs are refused", "max_dialogs")
	}
}

// dialogID is the dialog a message belongs to, if it has both tags.
func dialogID(m sip.Message) (dialog.ID, bool) {
	from, to := m.From(), m.To()
	if from == nil || to == nil {
		return dialog.ID{}, false
	}
	ft, _ := from.Params.Get("tag")
	tt, _ := to.Params.Get("tag")
	if ft == "" || tt == "" {
		return dialog.ID{}, false
	}
	return dialog.NewID(callID(m), ft, tt), true
}

// routeSet is the URIs of Route headers, in order.
func routeSet(hs []sip.Header) []string {
	var out []string
	for _, h := range hs {
		if rt, ok := h.(*sip.RouteHeader); ok {
			out = append(out, rt.Address.String())
		}
	}
	return out
}

// toPhone forwards a request from the core to the endpoint whose flow
// token it carries.
func (p *proxy) toPhone(ctx context.Context, r *Request) error {
	if p.loopDetected(r.Request) {
		return reject(482, "Loop Detected")
	}
	fwd := r.Clone()
	flow, tenant, found, err := p.endpointFlow(fwd, r.Flow.Remote.Addr())
	if errors.Is(err, errFlowFailed) {
		flow, err = p.wake(ctx, r, fwd, flow)
	}
	if errors.Is(err, errFlowFailed) {
		p.flowFailed.note(p.log, "requests from the core for a dead or unknown flow (430)", "flow")
	}
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
		p.self.recordRoute(fwd, flow, tenant.name, tenant.pool.Pick().Transport, false)
	}
	return p.toFlow(ctx, r, fwd, flow, tenant.name, func(res *sip.Response) {
		p.track(r, fwd, res, flow, false)
	})
}

// toFlow forwards fwd to the phone on flow and relays its responses
// back, with onResponse (nil: none) seeing each first. With topology
// hiding the phone sees only the edge: the Vias and every Record-Route
// but the edge's access-side one for flow stay here, and are put back
// on the responses.
func (p *proxy) toFlow(ctx context.Context, r *Request, fwd *sip.Request, flow nat.FlowKey, tenant string, onResponse func(*sip.Response)) error {
	if onResponse == nil {
		onResponse = func(*sip.Response) {}
	}
	if !p.hide {
		return p.relay.forward(ctx, r, fwd, p.flowLeg(flow), onResponse)
	}
	vias := fwd.GetHeaders("Via")
	for i := range vias {
		vias[i] = sip.HeaderClone(vias[i])
	}
	if len(vias) > 0 {
		stampVia(vias[0].(*sip.ViaHeader), r.Flow.Remote)
	}
	rrs := fwd.GetHeaders("Record-Route")
	for i := range rrs {
		rrs[i] = sip.HeaderClone(rrs[i])
	}
	dropHeaders(fwd, "Via")
	hideRecordRoute(p.self, fwd, flow, tenant)
	p.hideHeaders(fwd)
	return p.relay.forward(ctx, r, fwd, p.flowLeg(flow), func(res *sip.Response) {
		dropHeaders(res, "Via")
		for i := len(vias) - 1; i >= 0; i-- {
			res.PrependHeader(sip.HeaderClone(vias[i]))
		}
		if res.GetHeader("Record-Route") != nil { // a UAS copies them into its 1xx and 2xx
			dropHeaders(res, "Record-Route")
			for _, rr := range rrs {
				res.AppendHeader(sip.HeaderClone(rr))
			}
		}
		onResponse(res)
	})
}

// wake holds a request for a phone asleep on dead flow until a push has
// woken it and it registered again, and returns its new flow; without a
// binding there a push can wake, the flow failed (430).
func (p *proxy) wake(ctx context.Context, r *Request, fwd *sip.Request, flow nat.FlowKey) (nat.FlowKey, error) {
	var b registry.Binding
	for _, x := range p.registry.Asleep(flow) {
		if p.waker.wakes(x) {
			b = x
			break
		}
	}
	if b.AOR == "" {
		return flow, errFlowFailed
	}
	canceled := make(chan struct{})
	var once sync.Once
	if !r.Tx.OnCancel(func(*sip.Request) { once.Do(func() { close(canceled) }) }) {
		return flow, errDrop // canceled already: sipgo answered
	}
	held := func() {
		if r.IsInvite() {
			// 100 Trying now rather than from sipgo's Timer_1xx: a
			// retransmission that reaches sipgo before that timer fires
			// stops it, and the transaction then has nothing to resend
			// for the whole hold.
			reply(p.log, r, 100, "Trying")
		}
	}
	woke, contact, err := p.waker.hold(ctx, b, fwd, canceled, held)
	if err != nil {
		return flow, err
	}
	if fwd.Recipient.String() == b.Contact { // the contact as it was on the old flow
		var u sip.Uri
		if sip.ParseUri(contact, &u) == nil {
			fwd.Recipient = u
		}
	}
	return woke, nil
}

// hideRecordRoute keeps only the edge's access-side Record-Route entry
// for the phone's own flow in m: the rest (the core's entries, the
// edge's core-side one, and on a spiral the other phone's) is the
// dialog's, remembered by the dialog table.
func hideRecordRoute(s *self, m interface {
	headered
	RemoveHeader(string) bool
	AppendHeader(sip.Header)
}, flow nat.FlowKey, tenant string) {
	var keep []sip.Header
	for _, h := range headersNamed(m, "Record-Route") {
		rr, ok := h.(*sip.RecordRouteHeader)
		if !ok || rr.Address.User == "" || !s.isOurs(rr.Address) {
			continue
		}
		if tok, err := s.signer.DecodeFor(tenant, rr.Address.User); err == nil && tok.Flow == flow {
			keep = append(keep, sip.HeaderClone(h))
		}
	}
	if len(keep) == len(headersNamed(m, "Record-Route")) {
		return
	}
	dropHeaders(m, "Record-Route")
	for _, h := range keep {
		m.AppendHeader(h)
	}
}

// hideHeaders drops what names the core's software toward a phone, or
// puts the edge's chosen Server in its place.
func (p *proxy) hideHeaders(m interface {
	headered
	RemoveHeader(string) bool
	AppendHeader(sip.Header)
}) {
	for _, name := range []string{"Server", "User-Agent", "Warning"} {
		dropHeaders(m, name)
	}
	if _, ok := m.(*sip.Response); ok && p.server != "" {
		m.AppendHeader(sip.NewHeader("Server", p.server))
	}
}

// ack relays an ACK that matches no transaction (the ACK for a 2xx, RFC
// 3261 §16.7 item 4 / §17.1.1.3) statelessly along its route.
func (p *proxy) ack(req *sip.Request, from nat.FlowKey, fromCore bool) {
	fwd := req.Clone()
	var l leg
	if fromCore {
		flow, _, found, err := p.endpointFlow(fwd, from.Remote.Addr())
		if !found || err != nil {
			return
		}
		l = p.flowLeg(flow)
		if p.hide {
			dropHeaders(fwd, "Via") // the phone sees only the edge
			p.hideHeaders(fwd)
		}
	} else {
		// An ACK for a 2xx is in-dialog: the same policy, and no answer.
		r := &Request{Request: req, Flow: from}
		t, peer := p.dialogAllows(r, fwd)
		switch {
		case t == nil:
			return
		case peer.Valid(): // a call the edge routed alone: to the other phone
			l = p.flowLeg(peer)
			if p.hide {
				dropHeaders(fwd, "Via")
				p.hideHeaders(fwd)
			}
		default:
			var err error
			if l, err = t.leg(aorOf(req.From().Address)); err != nil {
				return // no core up: the ACK has nowhere to go
			}
		}
	}
	p.relay.ack(fwd, l.Hop)
}

// endpointFlow finds the flow a request from the core is for, from the
// token in a Route (path mode, or the edge's Record-Route) or in the
// Request-URI (rewrite mode, where the endpoint's own Contact is put
// back). It pops the edge's Routes from fwd. found is false when the
// request names no endpoint at all. The token must be sealed for a
// tenant whose cores src speaks for: that is the request's tenant.
func (p *proxy) endpointFlow(fwd *sip.Request, src netip.Addr) (flow nat.FlowKey, t *tenant, found bool, _ error) {
	token, ok := p.self.popOwnRoutes(fwd)
	if !ok {
		p.log.Warn("request with two flow tokens in its route", "method", fwd.Method, "call", callID(fwd))
		return flow, nil, true, reject(403, "Forbidden")
	}
	rewritten := false
	if token == "" && fwd.Recipient.User != "" && p.self.isOurs(fwd.Recipient) {
		token, rewritten = fwd.Recipient.User, true
	}
	if token == "" {
		return flow, nil, false, nil
	}
	tok, name, err := p.self.open(token, p.tenants.trusting(src))
	if t = p.tenants.named(name); err != nil || t == nil {
		p.log.Warn("request with a bad flow token, or another tenant's", "method", fwd.Method, "call", callID(fwd), "src", src)
		return flow, nil, true, reject(403, "Forbidden")
	}
	flow = tok.Flow
	if rewritten {
		b, ok := p.registry.ByCore(fwd.Recipient.String())
		var u sip.Uri
		if !ok || b.Flow != flow || sip.ParseUri(b.Contact, &u) != nil {
			return flow, t, true, reject(404, "Not Found")
		}
		fwd.Recipient = u
	}
	if !p.usable(flow) || !p.current(tok) {
		if !p.recover(tok, t.name) {
			return flow, t, true, errFlowFailed // counted by the caller, unless a push wakes the phone
		}
	}
	return flow, t, true, nil
}

// recover brings back the UDP flow tok names if this process cannot know
// its fate: unknown to it, and minted before it started but after the
// state it loaded. The token is authenticated, so only a flow this edge
// registered can come back, and only from the core.
func (p *proxy) recover(tok nat.Token, tenant string) bool {
	if tok.Minted.Before(p.recoverFrom) {
		return false
	}
	if _, known := p.flows.Get(tok.Flow); known {
		return false // its generation decides (current)
	}
	return p.registry.Recover(tok.Flow, tok.Minted, tenant) && p.usable(tok.Flow)
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
	var b [64]byte
	prefix := appendLoopPrefix(b[:0], req)
	for _, h := range req.GetHeaders("Via") {
		v, ok := h.(*sip.ViaHeader)
		if !ok || !p.self.isOurs(sip.Uri{Scheme: "sip", Host: v.Host, Port: v.Port}) {
			continue
		}
		if b, _ := v.Params.Get("branch"); strings.HasPrefix(b, string(prefix)) {
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
	var b [64]byte
	return string(appendRandom(appendLoopPrefix(b[:0], req), 10))
}

// appendLoopPrefix appends the magic cookie and the loop hash of req.
func appendLoopPrefix(dst []byte, req *sip.Request) []byte {
	h := fnv1a(fnvOffset)
	if t := req.To(); t != nil {
		h.field(t.Params.GetOr("tag", ""))
	}
	if f := req.From(); f != nil {
		h.field(f.Params.GetOr("tag", ""))
	}
	h.field(callID(req))
	var u [256]byte
	h.Write(sipwire.AppendURI(u[:0], &req.Recipient))
	h.field("")
	if c := req.CSeq(); c != nil {
		var n [20]byte
		h.Write(strconv.AppendUint(n[:0], uint64(c.SeqNo), 10))
		h.field("")
	}
	// The Route set as received tells the two passes of an in-dialog
	// request between two phones behind this edge apart: same target,
	// tags and CSeq, but each pass has consumed a part of the route.
	for _, name := range [...]string{"Route", "Proxy-Require", "Proxy-Authorization"} {
		for v := range eachHeader(req, name) {
			h.field(v.Value())
		}
	}
	dst = append(dst, "z9hG4bK"...)
	return append(strconv.AppendUint(dst, uint64(h), 36), '.')
}

// appendRandom appends n random letters and digits: what keeps each
// branch unique, not a secret.
func appendRandom(dst []byte, n int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	for n > 0 {
		r := rand.Uint64()
		for i := 0; i < 10 && n > 0; i, n = i+1, n-1 { // 6 bits a letter, 60 of 64
			dst = append(dst, alphabet[(r&63)%uint64(len(alphabet))])
			r >>= 6
		}
	}
	return dst
}

// fnv1a is a 64-bit FNV-1a hash that takes strings as they are:
// hash/fnv takes only []byte, and the copy of each string cost more
// than the hashing.
type fnv1a uint64

const fnvOffset = 14695981039346656037

func (h *fnv1a) WriteString(s string) (int, error) {
	for i := 0; i < len(s); i++ {
		*h = (*h ^ fnv1a(s[i])) * 1099511628211
	}
	return len(s), nil
}

func (h *fnv1a) Write(b []byte) {
	for _, c := range b {
		*h = (*h ^ fnv1a(c)) * 1099511628211
	}
}

// field hashes s and a separator, so that fields cannot run together.
func (h *fnv1a) field(s string) {
	h.WriteString(s)
	h.Write([]byte{0})
}
