package edge

import (
	"context"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/nat"
)

// parse fills in the request view once (User-Agent, a REGISTER's AOR and
// fields), so no later stage reads those headers again.
func parse(next Handler) Handler {
	return func(ctx context.Context, r *Request) error {
		if h := headerNamed(r.Request, "User-Agent"); h != nil {
			r.UserAgent = h.Value()
		}
		if r.Method == sip.REGISTER {
			r.Register, r.RegisterErr = parseRegister(r.Request, r.UserAgent)
			if r.Register != nil {
				r.AOR = r.Register.AOR
			} else {
				r.AOR = aorOf(r.To().Address) // sanity guarantees a To
			}
		}
		return next(ctx, r)
	}
}

// observe records what the path tells about NAT: for a REGISTER, its
// top Via and Contacts against the real source (behind a NAT, a SIP
// ALG). The Via itself is stamped with received and rport on every copy
// that leaves (the server transaction's own request is sipgo's).
func observe(next Handler) Handler {
	return func(ctx context.Context, r *Request) error {
		if reg := r.Register; reg != nil {
			via := r.Via()
			contacts := make([]nat.HostPort, len(reg.Contacts))
			for i, c := range reg.Contacts {
				contacts[i] = nat.HostPort{Host: c.Header.Address.Host, Port: c.Header.Address.Port}
			}
			r.NAT = nat.Detect(r.Flow.Remote, r.Flow.Transport, nat.HostPort{Host: via.Host, Port: via.Port}, contacts, reg.CallID)
		}
		return next(ctx, r)
	}
}

// trust lets only the cores (and the sources trusted with them) ask the
// edge to reach a phone; which phones, the token's tenant says.
type trust struct{ tenants *tenants }

func (t trust) wrap(next Handler) Handler {
	return func(ctx context.Context, r *Request) error {
		if !t.tenants.trusts(r.Flow.Remote.Addr()) {
			return reject(403, "Forbidden")
		}
		return next(ctx, r)
	}
}
