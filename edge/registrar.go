package edge

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/edge/sipwire"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream"
)

// defaultExpires is what a registrar grants when the REGISTER names none
// (RFC 3261 §10.2.1.1 leaves it to the registrar; 3600 is the usual value).
const defaultExpires = 3600

// registrar handles REGISTER: it checks it, tells the core how to reach
// the endpoint back through this flow, forwards it, and hands what the
// core accepted to the registry.
type registrar struct {
	tenants   *tenants                            // the REGISTER's domain picks one: its cores, mode and policy
	flowTime  struct{ udp, stream time.Duration } // Flow-Timer for outbound clients
	now       func() time.Time
	self      *self
	relay     *relay
	registry  *registry.Registry
	auth      auth
	hide      func(*sip.Response) // topology hiding toward the phone, if on
	events    func(audit.Event)   // what it refused, and the core's refusals and challenges
	meter     Meter
	waker     *waker                      // phones woken by push (nil: no push)
	flowSince func(nat.FlowKey) time.Time // when the flow table first saw a flow (zero: unknown)
}

// regPolicy is what [registration] says a REGISTER may ask for.
type regPolicy struct {
	cfg     RegistrationConfig
	domains map[string]bool // empty: any
}

func newRegPolicy(cfg RegistrationConfig) *regPolicy {
	p := &regPolicy{cfg: cfg, domains: make(map[string]bool)}
	for _, dom := range cfg.Domains {
		p.domains[strings.ToLower(dom)] = true
	}
	return p
}

// sentContact pairs a contact the endpoint sent with the URI the core saw.
type sentContact struct {
	reg     regContact
	core    sip.Uri
	coreURI string // core as written
	grant   int    // offload: the seconds the phone is granted (0: as the core said)
}

// handle forwards a REGISTER, and records the edge's refusals of it.
func (g *registrar) handle(ctx context.Context, r *Request) error {
	if finish := r.finish; finish != nil {
		r.finish = func(err error) { g.refused(r, err); finish(err) }
	}
	err := g.register(ctx, r)
	if err != errLater {
		g.refused(r, err)
	}
	return err
}

// refused records the edge's refusal of REGISTER r, if err is one.
func (g *registrar) refused(r *Request, err error) {
	if err == nil {
		return
	}
	if code, why := codeOf(err); code != 0 {
		e := g.audit(r, audit.Rejected, "")
		e.Code, e.Reason = code, why
		g.events(e)
	}
}

// audit is an event about REGISTER r, with what it says of itself.
func (g *registrar) audit(r *Request, kind audit.Kind, tenant string) audit.Event {
	e := audit.Event{Kind: kind, Tenant: tenant, Source: r.Flow.Remote, Transport: r.Flow.Transport.String(), Auth: "none"}
	if r.credentials() {
		e.Auth = "offered"
	}
	if reg := r.Register; reg != nil {
		e.AOR, e.UserAgent = reg.AOR, reg.UserAgent
		for _, c := range reg.Contacts {
			e.Contacts = append(e.Contacts, audit.Redact(c.URI))
			if e.Instance == "" {
				e.Instance = c.Instance
			}
		}
	}
	return e
}

// answered records what the core said to a REGISTER other than 2xx.
func (g *registrar) answered(r *Request, t *tenant, res *sip.Response) {
	var e audit.Event
	switch code := res.StatusCode; {
	case (code == 401 || code == 407) && r.credentials() && !staleChallenge(res):
		// Most cores answer a wrong password with a new challenge.
		e = g.audit(r, audit.AuthFailure, t.name)
		e.Auth, e.Severity, e.Reason = "failed", slog.LevelWarn, "credentials refused, challenged again"
	case code == 401 || code == 407:
		e = g.audit(r, audit.Challenged, t.name)
		if e.Auth == "offered" {
			e.Reason = "the nonce went stale"
		}
		e.Auth = "challenged"
	case code == 403 && r.credentials():
		e = g.audit(r, audit.AuthFailure, t.name)
		e.Auth, e.Severity = "failed", slog.LevelWarn
	case code >= 300:
		e = g.audit(r, audit.Rejected, t.name)
		e.Detail = "by the core"
	default:
		return
	}
	e.Code = res.StatusCode
	if e.Reason == "" {
		e.Reason = res.Reason
	}
	g.events(e)
}

// staleChallenge reports whether a 401/407 says only that the nonce the
// credentials used went stale (RFC 2617 stale=true), not that they were
// wrong.
func staleChallenge(res *sip.Response) bool {
	for _, name := range []string{"WWW-Authenticate", "Proxy-Authenticate"} {
		for h := range eachHeader(res, name) {
			if strings.Contains(strings.ToLower(strings.ReplaceAll(h.Value(), " ", "")), "stale=true") {
				return true
			}
		}
	}
	return false
}

// codeOf is the status an error from a stage becomes (0: none, a drop).
func codeOf(err error) (int, string) {
	var se *Error
	var down *upstream.Unreachable
	switch {
	case errors.As(err, &se):
		return se.Code, se.Reason
	case errors.Is(err, errDrop):
		return 0, ""
	case errors.Is(err, upstream.ErrNoCore):
		return 503, "no core is up"
	case errors.As(err, &down):
		return 503, "no core took it"
	case errors.Is(err, errOverLimit), errors.Is(err, upstream.ErrBusy):
		return 503, "over a limit"
	case errors.Is(err, errFlowFailed):
		return 430, "Flow Failed"
	}
	return 500, "Server Internal Error"
}

func (g *registrar) register(ctx context.Context, r *Request) error {
	if r.RegisterErr != nil {
		return r.RegisterErr
	}
	reg := r.Register
	t := g.tenants.forDomain(reg.Domain)
	if t == nil {
		return reject(403, "Domain Not Served")
	}
	pol := t.policy.Load()
	if len(pol.domains) > 0 && !pol.domains[reg.Domain] {
		return reject(403, "Domain Not Served")
	}
	if len(reg.Contacts) > pol.cfg.MaxContacts {
		return reject(403, "Too Many Contacts")
	}
	if g.waker != nil {
		// A push proxy that cannot use the phone's service says so (RFC
		// 8599 §5.3.1): a 200 would leave a binding nothing can wake.
		for _, c := range reg.Contacts {
			if c.Push.Wakes() && !g.waker.pusher.Supports(c.Push.Provider) {
				return reject(555, "Push Notification Service Not Supported")
			}
		}
	}
	minE := int(pol.cfg.MinExpires / time.Second)
	for _, c := range reg.Contacts {
		if e := reg.effectiveExpires(c, defaultExpires); e != 0 && e < minE {
			return reject(423, "Interval Too Brief", sip.NewHeader("Min-Expires", strconv.Itoa(minE)))
		}
	}

	cfg := pol.cfg
	// Whether the cache could answer: asked only where it may (offload,
	// or survival once no core is up): it costs a registry lookup.
	var mine []registry.Binding
	v := toCore
	if cfg.Offload {
		if mine, v = g.classify(r, reg, t, cfg); v == cached {
			g.absorb(r, reg, t, cacheGrant(cfg, mine, g.now()), mine)
			return nil
		}
	}
	to, err := t.leg(reg.AOR)
	if err != nil {
		// No core up. A branch in survival keeps the phones it knows.
		if t.watch.surviving() {
			if !cfg.Offload {
				mine, v = g.classify(r, reg, t, cfg)
			}
			if v != toCore {
				g.absorb(r, reg, t, phoneGrant(cfg.PhoneExpires), mine)
				return nil
			}
		}
		return err // 503 at once
	}
	// On the access read loop (r.detach set), what follows goes on there
	// only if nothing in it waits: a turn at the core (core_rate) does,
	// and so does a core that cannot answer on the read loop.
	if r.detach != nil && (cfg.CoreRate > 0 || !canLater(to, r.Request)) {
		return r.detach(func() error { return g.forwardRegister(ctx, r, reg, t, pol, to, mine, v) })
	}
	return g.forwardRegister(ctx, r, reg, t, pol, to, mine, v)
}

// forwardRegister is the rest of register once a core was picked: the
// turn at it, the REGISTER adapted for it, forwarded, and its answer
// handled. mine and v are what the cache holds of it (classify).
func (g *registrar) forwardRegister(ctx context.Context, r *Request, reg *registerRequest, t *tenant, pol *regPolicy,
	to leg, mine []registry.Binding, v verdict) error {
	cfg := pol.cfg
	maxE := int(cfg.MaxExpires / time.Second)
	// Near the in-flight cap refreshes go first: past three quarters of it only
	// a source already holding the AOR gets a slot. The registry is asked
	// only then, not for every REGISTER.
	to.admit = func() (func(), error) {
		lim := g.auth.limiter
		take := lim.Inflight
		if lim.InflightCrowded() && !g.registry.HasAORFrom(reg.AOR, r.Flow.Remote.Addr()) {
			take = lim.InflightNew
		}
		release, ok := take()
		if !ok {
			return release, upstream.ErrBusy
		}
		return release, nil
	}
	// The cache answers what the core need not hear now: a binding the
	// core lost waits for its turn at repopulate_rate, and over core_rate
	// a repeat goes no further while the core still holds it.
	fromCache := func() bool {
		grant := cacheGrant(cfg, mine, g.now())
		if v != stale || !cfg.Offload || grant <= 0 {
			return false
		}
		g.absorb(r, reg, t, grant, mine)
		return true
	}
	// A binding let through stays let through for a while: the restarted
	// core challenges, and the phone's answer (a repeat too) follows.
	repop := false
	if v == stale && cfg.Offload && anyLost(mine) {
		if repop = t.watch.repopulate(reg.AOR+"\x00"+r.Flow.String(), cfg.RepopulateRate); !repop && fromCache() {
			return nil
		}
	}
	if cfg.CoreRate > 0 && !t.watch.gate(to.Dest.String(), cfg.CoreRate).Take(ctx, r.Flow.Remote.Addr().String()) {
		if fromCache() {
			return nil
		}
		return reject(503, "Core Busy", retryAfter(spread(t.retryAfter)))
	}

	fwd := forwardCopy(r.Request)
	// The edge is the first hop: a Path from a phone could only point the
	// core at someone else's flow, and the next hop is the edge's choice.
	dropHeaders(fwd, "Path")
	dropHeaders(fwd, "Route")
	token := g.self.token(r.Flow, t.name)
	sent := make([]sentContact, 0, len(reg.Contacts))
	for fc := range eachContact(fwd) { // reg.Contacts, one for one
		if len(sent) == len(reg.Contacts) {
			break
		}
		c := reg.Contacts[len(sent)]
		switch e := reg.effectiveExpires(c, defaultExpires); {
		case pol.cfg.Offload && e != 0:
			// The core keeps it long; the edge answers the phone's refreshes.
			fc.Params.Add("expires", strconv.Itoa(int(pol.cfg.CoreExpires/time.Second)))
		case e > maxE:
			fc.Params.Add("expires", strconv.Itoa(maxE))
		}
		coreURI := c.URI
		if t.mode == upstream.ModeRewrite {
			fc.Address = g.coreContact(r, reg, c, token, to.Transport)
			coreURI = sipwire.URI(&fc.Address)
		}
		sent = append(sent, sentContact{reg: c, core: fc.Address, coreURI: coreURI})
	}
	if t.mode == upstream.ModePath {
		// Ours is the topmost Path: right after the Vias.
		fwd.AppendHeaderAfter(sip.NewHeader("Path", g.self.path(token, to.Transport)), "Via")
		if !reg.supports("path") {
			// Repeated Supported headers equal one comma list (RFC 3261 §7.3.1).
			after := "Contact"
			for h := range eachHeader(fwd, "Supported") {
				after = h.Name()
			}
			fwd.AppendHeaderAfter(sip.NewHeader("Supported", "path"), after)
		}
	}

	sentAt := g.now()
	// A phone woken by push gets the requests held for it only after the
	// 200 to its REGISTER: before, an INVITE could overtake it.
	var accepted []registry.Binding
	woken := func() {
		for _, b := range accepted {
			b.AOR, b.Flow = reg.AOR, r.Flow
			g.waker.registered(b)
		}
	}
	onResponse := func(res *sip.Response) {
		if g.hide != nil {
			g.hide(res)
		}
		if res.StatusCode < 200 {
			return
		}
		g.meter.CoreRTT(t.name, g.now().Sub(sentAt))
		if repop && (res.StatusCode == 401 || res.StatusCode == 407) {
			// A core that restarted knows none of the nonces the phones
			// hold: its challenge says nothing about their passwords.
			e := g.audit(r, audit.Challenged, t.name)
			e.Auth, e.Code, e.Reason = "challenged", res.StatusCode, "re-populating a core that lost it"
			g.events(e)
		} else {
			g.auth.answered(r, res, reg.AOR)
			g.answered(r, t, res)
		}
		if res.IsSuccess() {
			u := g.update(r, reg, t, sent, res, r.NAT)
			g.registry.Apply(u)
			accepted = u.Put
			g.featureCaps(reg, res)
			if cfg.Offload {
				g.noteMissing(r, reg, t, res)
			}
			g.restoreReply(reg, t.mode, token, sent, res)
			grantPhone(sent, res)
			g.outbound(reg, r.Flow, res)
		}
	}
	if finish := r.finish; finish != nil && canLater(to, fwd) {
		// Over UDP both ways: the core's answer is relayed from the core
		// side's read loop, and nobody waits for it here.
		if err := g.relay.forwardLater(r, fwd, to, onResponse, func(err error) { woken(); finish(err) }); err != nil {
			return err
		}
		return errLater
	}
	defer woken()
	return g.relay.forward(ctx, r, fwd, to, onResponse)
}

// forwardCopy is a REGISTER to forward: its own copies of the headers
// the registrar and the relay change (the top Via, Max-Forwards, the
// Contacts) and of the header list, the other headers and the body
// shared with req, which nothing writes after parsing. A whole clone
// was a tenth of what a REGISTER allocated.
func forwardCopy(req *sip.Request) *sip.Request {
	out := sip.NewRequest(req.Method, *req.Recipient.Clone())
	out.SipVersion = req.SipVersion
	topVia := true
	for _, h := range req.Headers() {
		switch v := h.(type) {
		case *sip.ViaHeader:
			if topVia {
				h, topVia = v.Clone(), false
			}
		case *sip.MaxForwardsHeader:
			mf := sip.MaxForwardsHeader(v.Val()) // sipgo's clone of it is the same pointer
			h = &mf
		case *sip.ContactHeader:
			h = v.Clone()
		}
		out.AppendHeader(h)
	}
	out.SetBody(req.Body())
	out.SetTransport(req.Transport())
	out.SetSource(req.Source())
	out.SetDestination(req.MessageData.Destination()) // as set; sipgo would work one out from the Route
	out.Laddr = req.Laddr
	return out
}

// noteMissing marks the AOR's other bindings that the core's 200 left
// out, though the edge answers their refreshes as the core's: the core
// lost them (it restarted empty), so their next refreshes go to it.
func (g *registrar) noteMissing(r *Request, reg *registerRequest, t *tenant, res *sip.Response) {
	if reg.Star {
		return
	}
	granted := contactsOf(res)
	var ids []string
	for _, b := range g.registry.Lookup(reg.AOR) {
		if b.Tenant != t.name || b.CoreLost() || b.Flow == r.Flow {
			continue
		}
		var u sip.Uri
		if sip.ParseUri(b.CoreContact, &u) != nil {
			continue
		}
		if !slices.ContainsFunc(granted, func(c *sip.ContactHeader) bool { return sameURI(c.Address, u) }) {
			ids = append(ids, b.ID())
		}
	}
	if len(ids) > 0 {
		t.watch.lost(g.registry.ForgetAtCore(t.name, reg.AOR, ids...), "a 200 left out bindings the edge holds")
	}
}

// coreContact is the Contact the core stores for c in rewrite mode: the
// one it already holds for this contact on this flow, so a refresh never
// leaves the core a second contact for the same phone, else a new one.
func (g *registrar) coreContact(r *Request, reg *registerRequest, c regContact, token, transport string) sip.Uri {
	phone := c.URI
	for _, b := range g.registry.Lookup(reg.AOR) {
		var u sip.Uri
		// Only while it carries today's token: after a key rotation or a
		// move to another tenant the core must learn the new one.
		if b.Flow == r.Flow && b.Contact == phone && b.Instance == c.Instance && b.RegID == c.RegID &&
			sip.ParseUri(b.CoreContact, &u) == nil && u.User == token {
			return u
		}
	}
	return g.self.coreContact(token, transport, phone)
}

// update is what the core's 2xx granted for the contacts this REGISTER
// carried. Contacts the core did not list are gone.
func (g *registrar) update(r *Request, reg *registerRequest, t *tenant, sent []sentContact, res *sip.Response, ev nat.Evidence) registry.Update {
	u := registry.Update{AOR: reg.AOR, Flow: r.Flow, Star: reg.Star, Auth: "none"}
	if r.credentials() {
		u.Auth = "accepted"
	}
	if reg.Star {
		return u
	}
	resExpires := noExpires
	if h := headerNamed(res, "Expires"); h != nil {
		if v, ok := parseSeconds(h.Value()); ok {
			resExpires = v
		}
	}
	now := g.now()
	for i, sc := range sent {
		e := 0
		for gr := range eachContact(res) {
			if sameURI(gr.Address, sc.core) {
				e = resExpires
				if v, ok := gr.Params.Get("expires"); ok {
					e, _ = parseSeconds(v)
				}
				if e == noExpires { // the core said nothing: what was asked, as the edge lowered it
					e = min(reg.effectiveExpires(sc.reg, defaultExpires), int(t.policy.Load().cfg.MaxExpires/time.Second))
				}
				break
			}
		}
		if e <= 0 {
			u.Remove = append(u.Remove, registry.ID(sc.coreURI, sc.reg.Instance, sc.reg.RegID))
			continue
		}
		coreEnd, phoneEnd := now.Add(time.Duration(e)*time.Second), now.Add(time.Duration(e)*time.Second)
		if cfg := t.policy.Load().cfg; cfg.Offload {
			grant := min(phoneGrant(cfg.PhoneExpires), time.Duration(e)*time.Second)
			sent[i].grant, phoneEnd = int(grant/time.Second), now.Add(grant)
		}
		u.Put = append(u.Put, registry.Binding{
			Tenant:      t.name,
			Contact:     sc.reg.URI,
			CoreContact: sc.coreURI,
			Expires:     phoneEnd,
			CoreExpires: coreEnd,
			CallID:      reg.CallID,
			CSeq:        reg.CSeq,
			UserAgent:   reg.UserAgent,
			Instance:    sc.reg.Instance,
			RegID:       sc.reg.RegID,
			NAT:         ev,
			Push:        sc.reg.Push,
		})
	}
	return u
}

// restoreReply makes the 2xx look as if the endpoint had talked to the
// core directly: its own Contacts back (rewrite mode) and the edge's
// core-side Path removed (topology hiding).
func (g *registrar) restoreReply(reg *registerRequest, mode upstream.Mode, token string, sent []sentContact, res *sip.Response) {
	// Found and removed one at a time: a slice of them was an allocation
	// per registration. RemoveHeader takes a name, and ours is the first
	// Path (the core keeps their order).
	for range len(res.Headers()) {
		ours := ""
		for h := range eachHeader(res, "Path") {
			if strings.Contains(h.Value(), token) {
				ours = h.Name()
				break
			}
		}
		if ours == "" {
			break
		}
		res.RemoveHeader(ours)
	}
	if mode != upstream.ModeRewrite {
		return
	}
next:
	for gr := range eachContact(res) {
		for _, sc := range sent {
			if sameURI(gr.Address, sc.core) {
				gr.Address = *sc.reg.Header.Address.Clone()
				continue next
			}
		}
		if b, ok := g.registry.ByCoreContact(reg.AOR, gr.Address.String()); ok {
			var u sip.Uri
			if sip.ParseUri(b.Contact, &u) == nil {
				gr.Address = u
			}
		}
	}
}

// featureCaps tells a phone registering with RFC 8599 push parameters
// that the edge will push it (RFC 8599 §5.2: +sip.pns in the 2xx's
// Feature-Caps, RFC 6809), for each provider it can push through.
func (g *registrar) featureCaps(reg *registerRequest, res *sip.Response) {
	if g.waker == nil {
		return
	}
	var said []string
	for _, c := range reg.Contacts {
		p := c.Push.Provider
		if !c.Push.Wakes() || slices.Contains(said, p) || !g.waker.pusher.Supports(p) {
			continue
		}
		said = append(said, p)
		// The PURR names the registration for mid-dialog pushes (§5.6):
		// the edge routes those by flow token, so any stable name does.
		purr := strconv.FormatUint(fnv64(reg.AOR+"\x00"+c.Instance+"\x00"+c.Push.PRID), 36)
		res.AppendHeader(sip.NewHeader("Feature-Caps", `*;+sip.pns="`+p+`";+sip.pnspurr="`+purr+`"`))
	}
}

func fnv64(s string) uint64 {
	h := fnv1a(fnvOffset)
	h.WriteString(s)
	return uint64(h)
}

// outbound adds what an RFC 5626 client needs in its 2xx: Require:
// outbound tells it the edge takes part, and Flow-Timer how often to send
// its own keepalives (§4.4.1, §5.4).
func (g *registrar) outbound(reg *registerRequest, flow nat.FlowKey, res *sip.Response) {
	if !reg.supports("outbound") {
		return
	}
	ob := false
	for _, c := range reg.Contacts {
		ob = ob || (c.Instance != "" && c.RegID > 0)
	}
	if !ob {
		return
	}
	ft := g.flowTime.udp
	if flow.Transport.Reliable() {
		ft = g.flowTime.stream
	}
	required := false
	for h := range eachHeader(res, "Require") {
		required = required || strings.Contains(strings.ToLower(h.Value()), "outbound")
	}
	if !required {
		res.AppendHeader(sip.NewHeader("Require", "outbound"))
	}
	if headerNamed(res, "Flow-Timer") == nil {
		res.AppendHeader(sip.NewHeader("Flow-Timer", strconv.Itoa(int(ft.Seconds()))))
	}
}

func contactsOf(m headered) []*sip.ContactHeader {
	var out []*sip.ContactHeader
	for _, h := range m.Headers() {
		if c, ok := h.(*sip.ContactHeader); ok && !c.Address.Wildcard {
			out = append(out, c)
		}
	}
	return out
}

// sameURI compares the parts of two SIP URIs that identify a contact
// (RFC 3261 §19.1.4, without the rarely used ones).
func sameURI(a, b sip.Uri) bool {
	if a.Scheme != b.Scheme || a.User != b.User || !strings.EqualFold(a.Host, b.Host) || a.Port != b.Port {
		return false
	}
	for _, k := range []string{"transport", "ct"} {
		av, _ := a.UriParams.Get(k)
		bv, _ := b.UriParams.Get(k)
		if !strings.EqualFold(av, bv) {
			return false
		}
	}
	return true
}

// dropHeaders removes every header called name, in any letter case
// (sipgo's RemoveHeader matches one exact spelling at a time).
func dropHeaders(m interface {
	headered
	RemoveHeader(string) bool
}, name string) {
	for _, h := range headersNamed(m, name) {
		m.RemoveHeader(h.Name())
	}
}

// grantPhone gives the phone, in the core's 2xx, the interval the edge
// granted each contact it sent (offload), not the core's.
func grantPhone(sent []sentContact, res *sip.Response) {
	offload := false
	for gr := range eachContact(res) {
		for _, sc := range sent {
			if sc.grant > 0 && sameURI(gr.Address, sc.reg.Header.Address) {
				gr.Params.Add("expires", strconv.Itoa(sc.grant))
				offload = true
			}
		}
	}
	if offload {
		res.RemoveHeader("Expires") // each contact says its own
	}
}
