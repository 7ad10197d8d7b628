package edge

import (
	"hash/fnv"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/nat"
)

// self is what the edge knows of its own addresses, and the one place
// that mints URIs with a flow token: Path entries, rewritten Contacts and
// Record-Route entries.
type self struct {
	signer    *nat.Signer
	flows     *nat.FlowTable
	now       func() time.Time
	core      netip.AddrPort // the core-side socket
	advertise netip.Addr     // public address of the access side, if set
	access    atomic.Pointer[accessAddrs]
}

// accessAddrs are the access sockets' addresses, replaced whole when a
// reload adds or removes a listener.
type accessAddrs struct {
	own   map[netip.AddrPort]bool // every access socket address
	ports map[uint16]bool         // their ports, for advertise matching
}

func newSelf(signer *nat.Signer, flows *nat.FlowTable, now func() time.Time, core netip.AddrPort, advertise netip.Addr, access []netip.AddrPort) *self {
	s := &self{signer: signer, flows: flows, now: now, core: core, advertise: advertise}
	s.setAccess(access)
	return s
}

// setAccess records the access sockets' addresses.
func (s *self) setAccess(access []netip.AddrPort) {
	a := &accessAddrs{own: make(map[netip.AddrPort]bool), ports: make(map[uint16]bool)}
	for _, ap := range access {
		a.own[ap], a.ports[ap.Port()] = true, true
	}
	s.access.Store(a)
}

// accessAddr is the address phones use to reach the edge on flow f.
func (s *self) accessAddr(f nat.FlowKey) netip.AddrPort {
	if s.advertise.IsValid() {
		return netip.AddrPortFrom(s.advertise, f.Local.Port())
	}
	return f.Local
}

// isOurs reports whether u names this edge (either side).
func (s *self) isOurs(u sip.Uri) bool {
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
	acc := s.access.Load()
	if ap == s.core || acc.own[ap] {
		return true
	}
	return s.advertise.IsValid() && ip.Unmap() == s.advertise && acc.ports[port]
}

// uri is sip:[token@]host:port with ;transport= for anything but UDP.
func uri(token string, at netip.AddrPort, transport string) sip.Uri {
	u := sip.Uri{Scheme: "sip", User: token, Host: at.Addr().String(), Port: int(at.Port()), UriParams: sip.NewParams()}
	if transport != "UDP" {
		u.UriParams.Add("transport", strings.ToLower(transport))
	}
	return u
}

// token is flow f's token for tenant, the user part of every URI below.
// It is minted at the flow's creation, or now for a flow the core has
// not accepted yet: the same for the flow's whole life, and never valid
// for a later flow that reuses its addresses (see proxy.current). Sealed
// for the tenant, it opens only for the tenant's cores.
func (s *self) token(f nat.FlowKey, tenant string) string {
	minted := s.now()
	if fl, ok := s.flows.Get(f); ok {
		minted = fl.Created
	}
	return s.signer.EncodeFor(tenant, f, minted)
}

// open decodes tok as sealed for one of tenants, and says whose it is.
func (s *self) open(tok string, tenants []string) (t nat.Token, tenant string, err error) {
	err = nat.ErrBadToken
	for _, name := range tenants {
		if t, err = s.signer.DecodeFor(name, tok); err == nil {
			return t, name, nil
		}
	}
	return t, "", err
}

// coreContact is the Contact the core stores in rewrite mode: the edge's
// core side with a flow token, and a hash of the phone's own Contact
// (ct) that keeps several contacts on one flow apart, the same in every
// REGISTER.
func (s *self) coreContact(token, coreTransport, phoneContact string) sip.Uri {
	u := uri(token, s.core, coreTransport)
	h := fnv.New32a()
	h.Write([]byte(phoneContact))
	u.UriParams.Add("ct", strconv.FormatUint(uint64(h.Sum32()), 36))
	return u
}

// path is the edge's Path header value for a flow token (RFC 3327, with
// ob from RFC 5626): <sip:TOKEN@core-side;lr;ob>, as uri and sipgo's
// writer would put it, in one allocation (every REGISTER carries one).
func (s *self) path(token, coreTransport string) string {
	var buf [192]byte
	b := append(buf[:0], "<sip:"...)
	b = append(b, token...)
	b = append(b, '@')
	b = s.core.AppendTo(b)
	if coreTransport != "UDP" {
		b = append(b, ";transport="...)
		for i := 0; i < len(coreTransport); i++ {
			c := coreTransport[i]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			b = append(b, c)
		}
	}
	b = append(b, ";lr;ob>"...)
	return string(b)
}

// recordRoute adds the edge's two Record-Route entries (RFC 5658): the
// one facing the next hop on top, the one facing the previous hop below.
// The access-side entry carries the endpoint's flow token so in-dialog
// requests from the core come back onto the same flow.
func (s *self) recordRoute(fwd *sip.Request, flow nat.FlowKey, tenant, coreTransport string, towardCore bool) {
	access := uri(s.token(flow, tenant), s.accessAddr(flow), flow.Transport.String())
	access.UriParams.Add("lr", "")
	coreSide := uri("", s.core, coreTransport)
	coreSide.UriParams.Add("lr", "")
	first, second := access, coreSide // the second one ends up on top
	if !towardCore {
		first, second = coreSide, access
	}
	fwd.PrependHeader(&sip.RecordRouteHeader{Address: first})
	fwd.PrependHeader(&sip.RecordRouteHeader{Address: second})
}

// recordRouteFlow adds one access-side Record-Route entry for flow on
// top: a call the edge routes between two of its phones has one for each.
func (s *self) recordRouteFlow(fwd *sip.Request, flow nat.FlowKey, tenant string) {
	access := uri(s.token(flow, tenant), s.accessAddr(flow), flow.Transport.String())
	access.UriParams.Add("lr", "")
	fwd.PrependHeader(&sip.RecordRouteHeader{Address: access})
}

// popOwnRoutes removes the Route entries at the top of req that name this
// edge (loose routing, RFC 3261 §16.4) and returns the flow token they
// carried, if any. Two different tokens mean someone stacked a second
// flow into the route (a forged Path): ok is false.
func (s *self) popOwnRoutes(req *sip.Request) (token string, ok bool) {
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
