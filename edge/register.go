package edge

import (
	"context"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/binding"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream"
)

// defaultExpires is what a registrar grants when the REGISTER names none
// (RFC 3261 §10.2.1.1 leaves it to the registrar; 3600 is the usual value).
const defaultExpires = 3600

// sentContact pairs a contact the endpoint sent with the URI the core saw.
type sentContact struct {
	reg  regContact
	core sip.Uri
}

// handleRegister checks a REGISTER, tells the core how to reach the
// endpoint back through this flow, forwards it and records what the core
// accepts.
func (s *Server) handleRegister(ctx context.Context, r *Request) error {
	reg, rerr := parseRegister(r.Request)
	if rerr != nil {
		return rerr
	}
	if !s.domainAllowed(reg.Domain) {
		return reject(403, "Domain Not Served")
	}
	if len(reg.Contacts) > s.cfg.Registration.MaxContacts {
		return reject(403, "Too Many Contacts")
	}
	minE := int(s.cfg.Registration.MinExpires / time.Second)
	maxE := int(s.cfg.Registration.MaxExpires / time.Second)
	for _, c := range reg.Contacts {
		if e := reg.effectiveExpires(c, defaultExpires); e != 0 && e < minE {
			return reject(423, "Interval Too Brief", sip.NewHeader("Min-Expires", strconv.Itoa(minE)))
		}
	}

	evidence := s.natEvidence(r, reg)
	fwd := r.Clone()
	// The edge is the first hop: a Path from a phone could only point the
	// core at someone else's flow, and the next hop is the edge's choice.
	dropHeaders(fwd, "Path")
	dropHeaders(fwd, "Route")
	target := s.upstreams.Pick()
	token := s.signer.Encode(r.Flow)
	fwdContacts := contactsOf(fwd)
	sent := make([]sentContact, len(reg.Contacts))
	for i, c := range reg.Contacts {
		fc := fwdContacts[i]
		if reg.effectiveExpires(c, defaultExpires) > maxE {
			fc.Params.Add("expires", strconv.Itoa(maxE))
		}
		if s.cfg.Core.Mode == ModeRewrite {
			fc.Address = s.coreURI(token, target, c.Header.Address.String())
		}
		sent[i] = sentContact{reg: c, core: fc.Address}
	}
	if s.cfg.Core.Mode == ModePath {
		// Ours is the topmost Path: right after the Vias.
		fwd.AppendHeaderAfter(sip.NewHeader("Path", "<"+s.pathURI(token, target)+">"), "Via")
		if !reg.supports("path") {
			// Repeated Supported headers equal one comma list (RFC 3261 §7.3.1).
			after := "Contact"
			if hs := fwd.GetHeaders("Supported"); len(hs) > 0 {
				after = hs[len(hs)-1].Name()
			}
			fwd.AppendHeaderAfter(sip.NewHeader("Supported", "path"), after)
		}
	}

	return s.forward(ctx, r, fwd, s.coreHop(target), func(res *sip.Response) {
		switch code := res.StatusCode; {
		case code == 401 || code == 403 || code == 407:
			if hadCredentials(r.Request) {
				s.limiter.AuthFailure(r.Flow.Remote.Addr(), reg.AOR)
			}
		case res.IsSuccess():
			s.recordBindings(r, reg, sent, res, evidence)
			s.restoreReply(reg, token, sent, res)
			s.outbound(reg, r.Flow, res)
		}
	})
}

// natEvidence classifies the path the REGISTER took (behind a NAT, a SIP
// ALG) from its top Via and Contacts against the real source.
func (s *Server) natEvidence(r *Request, reg *registerRequest) nat.Evidence {
	via := r.Via()
	contacts := make([]nat.HostPort, len(reg.Contacts))
	for i, c := range reg.Contacts {
		contacts[i] = nat.HostPort{Host: c.Header.Address.Host, Port: c.Header.Address.Port}
	}
	return nat.Detect(r.Flow.Remote, r.Flow.Transport, nat.HostPort{Host: via.Host, Port: via.Port}, contacts)
}

func (s *Server) domainAllowed(d string) bool {
	return len(s.domains) == 0 || s.domains[d]
}

// coreURI is the edge's address on the core side with the flow token as
// user part: the Path entry, and in rewrite mode the Contact the core
// sees. In rewrite mode ct (a hash of the phone's own Contact) keeps
// several contacts on one flow apart, the same in every REGISTER.
func (s *Server) coreURI(token string, t upstream.Target, phoneContact string) sip.Uri {
	u := sip.Uri{Scheme: "sip", User: token, Host: s.coreAddr.Addr().String(), Port: int(s.coreAddr.Port()), UriParams: sip.NewParams()}
	if t.Transport.String() != "UDP" {
		u.UriParams.Add("transport", strings.ToLower(t.Transport.String()))
	}
	if phoneContact != "" {
		h := fnv.New32a()
		h.Write([]byte(phoneContact))
		u.UriParams.Add("ct", strconv.FormatUint(uint64(h.Sum32()), 36))
	}
	return u
}

// pathURI is the edge's Path entry (RFC 3327, with ob from RFC 5626).
func (s *Server) pathURI(token string, t upstream.Target) string {
	u := s.coreURI(token, t, "")
	u.UriParams.Add("lr", "")
	u.UriParams.Add("ob", "")
	return u.String()
}

// recordBindings stores what the core's 2xx granted for the contacts this
// REGISTER carried. Contacts the core did not list are gone.
func (s *Server) recordBindings(r *Request, reg *registerRequest, sent []sentContact, res *sip.Response, ev nat.Evidence) {
	if reg.Star {
		s.bindings.RemoveAOR(reg.AOR)
		return
	}
	granted := contactsOf(res)
	resExpires := noExpires
	if h := res.GetHeader("Expires"); h != nil {
		if v, ok := parseSeconds(h.Value()); ok {
			resExpires = v
		}
	}
	now := s.now()
	for _, sc := range sent {
		contact := sc.reg.Header.Address.String()
		e := 0
		for _, g := range granted {
			if sameURI(g.Address, sc.core) {
				e = resExpires
				if v, ok := g.Params.Get("expires"); ok {
					e, _ = parseSeconds(v)
				}
				if e == noExpires { // the core said nothing: what was asked, as the edge lowered it
					e = min(reg.effectiveExpires(sc.reg, defaultExpires), int(s.cfg.Registration.MaxExpires/time.Second))
				}
				break
			}
		}
		if e <= 0 {
			s.bindings.Remove(reg.AOR, binding.ID(sc.core.String(), sc.reg.Instance, sc.reg.RegID))
			continue
		}
		s.bindings.Put(binding.Binding{
			AOR:         reg.AOR,
			Contact:     contact,
			CoreContact: sc.core.String(),
			Flow:        r.Flow,
			Expires:     now.Add(time.Duration(e) * time.Second),
			CallID:      reg.CallID,
			CSeq:        reg.CSeq,
			UserAgent:   reg.UserAgent,
			Instance:    sc.reg.Instance,
			RegID:       sc.reg.RegID,
			NAT:         ev,
		})
	}
}

// restoreReply makes the 2xx look as if the endpoint had talked to the
// core directly: its own Contacts back (rewrite mode) and the edge's
// core-side Path removed (topology hiding).
func (s *Server) restoreReply(reg *registerRequest, token string, sent []sentContact, res *sip.Response) {
	for _, h := range res.GetHeaders("Path") {
		if strings.Contains(h.Value(), token) {
			res.RemoveHeader(h.Name())
		}
	}
	if s.cfg.Core.Mode != ModeRewrite {
		return
	}
next:
	for _, g := range contactsOf(res) {
		for _, sc := range sent {
			if sameURI(g.Address, sc.core) {
				g.Address = *sc.reg.Header.Address.Clone()
				continue next
			}
		}
		if b, ok := s.bindings.ByCoreContact(reg.AOR, g.Address.String()); ok {
			var u sip.Uri
			if sip.ParseUri(b.Contact, &u) == nil {
				g.Address = u
			}
		}
	}
}

func contactsOf(m sip.Message) []*sip.ContactHeader {
	var out []*sip.ContactHeader
	for _, h := range m.GetHeaders("Contact") {
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
	GetHeaders(string) []sip.Header
	RemoveHeader(string) bool
}, name string) {
	for _, h := range m.GetHeaders(name) {
		m.RemoveHeader(h.Name())
	}
}
