package edge

import (
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/edge/sipwire"
)

// noExpires marks an absent expires value.
const noExpires = -1

// registerRequest is a REGISTER parsed once; after this nothing reads its
// header strings again.
type registerRequest struct {
	AOR       string // sip:user@domain, host lowercased, no port or params
	Domain    string
	Star      bool // Contact: *
	Contacts  []regContact
	Expires   int // Expires header, noExpires if absent
	CallID    string
	CSeq      uint32
	Supported []string
	UserAgent string
}

type regContact struct {
	Header   *sip.ContactHeader // the request's own header (read only)
	URI      string             // its URI as written (once: audit, registry)
	Expires  int                // expires param, noExpires if absent
	Instance string             // +sip.instance, quotes kept
	RegID    int                // reg-id, 0 if absent
	Push     registry.Push      // RFC 8599 pn-* URI parameters, if any
}

// effectiveExpires is what the contact asks for, with the registrar's
// default when neither the param nor the header says.
func (r *registerRequest) effectiveExpires(c regContact, def int) int {
	if c.Expires != noExpires {
		return c.Expires
	}
	if r.Expires != noExpires {
		return r.Expires
	}
	return def
}

func (r *registerRequest) supports(tag string) bool {
	for _, s := range r.Supported {
		if strings.EqualFold(s, tag) {
			return true
		}
	}
	return false
}

// aorOf is the address-of-record a URI names: scheme:user@host, host
// lowercased, without port or parameters.
func aorOf(u sip.Uri) string {
	host := strings.ToLower(u.Host)
	if u.User == "" {
		return u.Scheme + ":" + host
	}
	return u.Scheme + ":" + u.User + "@" + host
}

// domainOf is the domain a URI names, lowercased: what picks a tenant.
func domainOf(u sip.Uri) string { return strings.ToLower(u.Host) }

// parseRegister reads what the registrar needs from a sane REGISTER.
func parseRegister(req *sip.Request, userAgent string) (*registerRequest, *Error) {
	to := req.To()
	if to == nil || req.CallID() == nil || req.CSeq() == nil {
		return nil, reject(400, "Missing Required Header")
	}
	if s := to.Address.Scheme; s != "sip" && s != "sips" {
		return nil, reject(416, "Unsupported URI Scheme")
	}
	if to.Address.Host == "" {
		return nil, reject(400, "Bad To Header")
	}
	r := &registerRequest{
		AOR:       aorOf(to.Address),
		Domain:    strings.ToLower(to.Address.Host),
		Expires:   noExpires,
		CallID:    req.CallID().Value(),
		CSeq:      req.CSeq().SeqNo,
		UserAgent: userAgent,
	}
	for h := range eachHeader(req, "Expires") {
		if r.Expires != noExpires {
			return nil, reject(400, "Multiple Expires")
		}
		v, ok := parseSeconds(h.Value())
		if !ok {
			return nil, reject(400, "Bad Expires")
		}
		r.Expires = v
	}
	for h := range eachHeader(req, "Supported") {
		for v, more := h.Value(), true; more; {
			var tok string
			tok, v, more = strings.Cut(v, ",")
			if tok = strings.TrimSpace(tok); tok != "" {
				r.Supported = append(r.Supported, tok)
			}
		}
	}
	for h := range eachHeader(req, "Contact") {
		ch, ok := h.(*sip.ContactHeader)
		if !ok {
			return nil, reject(400, "Bad Contact")
		}
		if ch.Address.Wildcard {
			r.Star = true
			continue
		}
		if ch.Address.Headers != nil && ch.Address.Headers.Length() > 0 {
			// Headers in a registered Contact would be copied into every
			// request the core sends to it: a Route injected into the
			// core's own traffic (RFC 4475 regbadct).
			return nil, reject(400, "Bad Contact")
		}
		c := regContact{Header: ch, URI: sipwire.URI(&ch.Address), Expires: noExpires}
		if v, ok := ch.Params.Get("expires"); ok {
			if c.Expires, ok = parseSeconds(v); !ok {
				return nil, reject(400, "Bad Contact Expires")
			}
		}
		c.Instance, _ = ch.Params.Get("+sip.instance")
		if v, ok := ch.Params.Get("reg-id"); ok {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return nil, reject(400, "Bad reg-id")
			}
			c.RegID = n
		}
		var err *Error
		if c.Push, err = pushParams(ch.Address); err != nil {
			return nil, err
		}
		r.Contacts = append(r.Contacts, c)
	}
	// RFC 3261 §10.3 step 6: "*" only alone and only with Expires: 0.
	if r.Star && (len(r.Contacts) > 0 || r.Expires != 0) {
		return nil, reject(400, "Invalid Wildcard Contact")
	}
	return r, nil
}

// maxPushParam bounds each RFC 8599 parameter: device tokens are a few
// hundred characters (FCM's the longest).
const maxPushParam = 1024

// pushParams reads the RFC 8599 parameters of a Contact URI: pn-provider
// and pn-prid make a push binding; pn-param is provider-specific.
func pushParams(u sip.Uri) (registry.Push, *Error) {
	var p registry.Push
	if u.UriParams == nil {
		return p, nil
	}
	p.Provider, _ = u.UriParams.Get("pn-provider")
	p.PRID, _ = u.UriParams.Get("pn-prid")
	p.Param, _ = u.UriParams.Get("pn-param")
	if p.Provider == "" && p.PRID == "" {
		return registry.Push{}, nil
	}
	if p.Provider == "" || p.PRID == "" || len(p.Provider) > 32 || len(p.PRID) > maxPushParam || len(p.Param) > maxPushParam {
		return p, reject(400, "Bad Push Parameters")
	}
	p.Provider = strings.ToLower(p.Provider)
	return p, nil
}

// parseSeconds parses a delta-seconds value, capped like RFC 3261 §20.19
// allows (values over 2^32-1 are taken as that; we cap far lower).
func parseSeconds(s string) (int, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 10 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, false
	}
	if n > 1<<31-1 {
		n = 1<<31 - 1
	}
	return int(n), true
}
