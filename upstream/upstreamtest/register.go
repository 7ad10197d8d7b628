package upstreamtest

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Binding is one contact registered for an address-of-record.
type Binding struct {
	Contact  string        // full Contact URI string, URI parameters included
	Path     []string      // Path header values as received, in order
	Expires  time.Duration // lifetime granted at the last registration
	CallID   string
	CSeq     uint32
	Received string // source address of the REGISTER, ip:port
}

var (
	errBadRequest = errors.New("bad request")
	errOutOfOrder = errors.New("request out of order") // RFC 3261 §10.3 step 7
)

// registerRequest is a REGISTER parsed once; nothing after parseRegister
// reads header strings.
type registerRequest struct {
	aor      string
	wildcard bool // Contact: * with Expires: 0
	contacts []contactUpdate
	path     []string
	callID   string
	cseq     uint32
	source   string
}

type contactUpdate struct {
	key     string             // Contact URI string, the binding key
	header  *sip.ContactHeader // as received, without its expires param
	expires time.Duration
}

func parseRegister(req *sip.Request, defaultExpires int) (registerRequest, error) {
	to, callID, cseq := req.To(), req.CallID(), req.CSeq()
	if to == nil || callID == nil || cseq == nil {
		return registerRequest{}, fmt.Errorf("%w: missing To, Call-ID or CSeq", errBadRequest)
	}
	rr := registerRequest{
		aor:    aorKey(to.Address),
		callID: callID.Value(),
		cseq:   cseq.SeqNo,
		source: req.Source(),
	}
	for _, h := range req.GetHeaders("Path") {
		rr.path = append(rr.path, splitList(h.Value())...)
	}

	headerExpires := -1
	if h := req.GetHeader("Expires"); h != nil {
		n, err := parseSeconds(h.Value())
		if err != nil {
			return registerRequest{}, fmt.Errorf("%w: Expires: %w", errBadRequest, err)
		}
		headerExpires = n
	}

	contacts := req.GetHeaders("Contact")
	for _, h := range contacts {
		c, ok := h.(*sip.ContactHeader)
		if !ok {
			return registerRequest{}, fmt.Errorf("%w: unparsed Contact", errBadRequest)
		}
		if c.Address.Wildcard {
			if len(contacts) != 1 || headerExpires != 0 {
				return registerRequest{}, fmt.Errorf("%w: Contact * needs Expires: 0 and no other Contact", errBadRequest)
			}
			rr.wildcard = true
			return rr, nil
		}
		c = c.Clone()
		expires := headerExpires
		if k, v, ok := paramFold(c.Params, "expires"); ok {
			n, err := parseSeconds(v)
			if err != nil {
				return registerRequest{}, fmt.Errorf("%w: Contact expires: %w", errBadRequest, err)
			}
			expires = n
			c.Params.Remove(k)
		}
		if expires < 0 {
			expires = defaultExpires
		}
		rr.contacts = append(rr.contacts, contactUpdate{
			key:     c.Address.String(),
			header:  c,
			expires: time.Duration(expires) * time.Second,
		})
	}
	return rr, nil
}

// aorKey is the address-of-record of a To URI: scheme:user@host, without
// port or parameters, with scheme and host lower-cased.
func aorKey(u sip.Uri) string {
	scheme := strings.ToLower(u.Scheme)
	if scheme == "" {
		scheme = "sip"
	}
	host := strings.ToLower(u.Host)
	if u.User == "" {
		return scheme + ":" + host
	}
	return scheme + ":" + u.User + "@" + host
}

func parseSeconds(s string) (int, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil {
		return 0, err
	}
	return int(min(n, math.MaxInt32)), nil
}

// paramFold finds a parameter by case-insensitive name; sipgo's params are
// case-sensitive.
func paramFold(p sip.HeaderParams, name string) (key, value string, ok bool) {
	for _, kv := range p {
		if strings.EqualFold(kv.K, name) {
			return kv.K, kv.V, true
		}
	}
	return "", "", false
}

// splitList splits a header value at top-level commas (outside <> and
// quotes) and trims each element.
func splitList(v string) []string {
	var out []string
	depth, quoted, start := 0, false, 0
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case quoted:
		case c == '<':
			depth++
		case c == '>' && depth > 0:
			depth--
		case c == ',' && depth == 0:
			if s := strings.TrimSpace(v[start:i]); s != "" {
				out = append(out, s)
			}
			start = i + 1
		}
	}
	if s := strings.TrimSpace(v[start:]); s != "" {
		out = append(out, s)
	}
	return out
}

// hasOptionTag reports whether any of the named headers (Supported, Require,
// ...) lists tag.
func hasOptionTag(req *sip.Request, tag string, names ...string) bool {
	for _, name := range names {
		for _, h := range req.GetHeaders(name) {
			for _, t := range strings.Split(h.Value(), ",") {
				if strings.EqualFold(strings.TrimSpace(t), tag) {
					return true
				}
			}
		}
	}
	return false
}

// binding is a stored Binding with what the 200 OK needs.
type binding struct {
	Binding
	header    *sip.ContactHeader // as registered, without expires param
	expiresAt time.Time
}

// bindingTable holds the bindings of every AOR, in registration order.
type bindingTable struct {
	mu   sync.Mutex
	aors map[string][]*binding
}

// apply runs RFC 3261 §10.3 steps 6-8 for one REGISTER under one lock and
// returns the AOR's bindings afterwards. On error nothing changes.
func (t *bindingTable) apply(rr registerRequest, now time.Time) ([]binding, error) {
	t.mu.Lock()
	defer t.mu.Unlock()

	cur := live(t.aors[rr.aor], now)

	// Check every affected binding before changing any.
	for _, b := range cur {
		affected := rr.wildcard
		for _, c := range rr.contacts {
			affected = affected || c.key == b.Contact
		}
		if affected && b.CallID == rr.callID && rr.cseq <= b.CSeq {
			return nil, errOutOfOrder
		}
	}

	if rr.wildcard {
		cur = nil
	}
	for _, c := range rr.contacts {
		i := index(cur, c.key)
		if c.expires == 0 {
			if i >= 0 {
				cur = append(cur[:i], cur[i+1:]...)
			}
			continue
		}
		b := &binding{
			Binding: Binding{
				Contact:  c.key,
				Path:     rr.path,
				Expires:  c.expires,
				CallID:   rr.callID,
				CSeq:     rr.cseq,
				Received: rr.source,
			},
			header:    c.header,
			expiresAt: now.Add(c.expires),
		}
		if i >= 0 {
			cur[i] = b
		} else {
			cur = append(cur, b)
		}
	}

	if len(cur) == 0 {
		delete(t.aors, rr.aor)
	} else {
		t.aors[rr.aor] = cur
	}
	return snapshot(cur), nil
}

func (t *bindingTable) list(aor string, now time.Time) []Binding {
	t.mu.Lock()
	defer t.mu.Unlock()
	cur := live(t.aors[aor], now)
	out := make([]Binding, len(cur))
	for i, b := range cur {
		out[i] = b.Binding
		out[i].Path = append([]string(nil), b.Path...)
	}
	return out
}

// live returns a fresh slice of the bindings not yet expired.
func live(bs []*binding, now time.Time) []*binding {
	out := make([]*binding, 0, len(bs))
	for _, b := range bs {
		if now.Before(b.expiresAt) {
			out = append(out, b)
		}
	}
	return out
}

func index(bs []*binding, contact string) int {
	for i, b := range bs {
		if b.Contact == contact {
			return i
		}
	}
	return -1
}

func snapshot(bs []*binding) []binding {
	out := make([]binding, len(bs))
	for i, b := range bs {
		out[i] = *b
	}
	return out
}

// register answers one REGISTER.
func (r *Registrar) register(req *sip.Request) *sip.Response {
	if r.opts.RequirePath && req.GetHeader("Path") != nil && !hasOptionTag(req, "path", "Supported", "k") {
		res := sip.NewResponseFromRequest(req, sip.StatusBadExtension, "Bad Extension", nil)
		res.AppendHeader(sip.NewHeader("Unsupported", "path"))
		return res
	}
	if len(r.opts.Users) > 0 {
		if res := r.authenticate(req); res != nil {
			return res
		}
	}

	now := r.opts.Now()
	rr, err := parseRegister(req, r.opts.DefaultExpires)
	var current []binding
	if err == nil {
		current, err = r.table.apply(rr, now)
	}
	switch {
	case errors.Is(err, errBadRequest):
		return sip.NewResponseFromRequest(req, sip.StatusBadRequest, "Bad Request", nil)
	case errors.Is(err, errOutOfOrder):
		return sip.NewResponseFromRequest(req, sip.StatusInternalServerError, "Server Internal Error", nil)
	case err != nil:
		return sip.NewResponseFromRequest(req, sip.StatusInternalServerError, "Server Internal Error", nil)
	}

	res := sip.NewResponseFromRequest(req, sip.StatusOK, "OK", nil)
	for _, b := range current {
		c := b.header.Clone()
		remaining := (b.expiresAt.Sub(now) + time.Second - 1) / time.Second
		c.Params.Add("expires", strconv.FormatInt(int64(remaining), 10))
		res.AppendHeader(c)
	}
	// RFC 3327 §5.3: the registrar copies the Path of the REGISTER into the 200.
	for _, h := range req.GetHeaders("Path") {
		res.AppendHeader(sip.NewHeader("Path", h.Value()))
	}
	if len(rr.path) > 0 {
		res.AppendHeader(sip.NewHeader("Supported", "path"))
	}
	return res
}
