package edge

import (
	"context"

	"github.com/emiago/sipgo/sip"
)

// parse fills in the request view once (User-Agent, a REGISTER's AOR and
// fields), so no later stage reads those headers again.
func parse(next Handler) Handler {
	return func(ctx context.Context, r *Request) error {
		if h := r.GetHeader("User-Agent"); h != nil {
			r.UserAgent = h.Value()
		}
		if r.Method == sip.REGISTER {
			r.AOR = aorOf(r.To().Address) // sanity guarantees a To
			r.Register, r.RegisterErr = parseRegister(r.Request, r.UserAgent)
		}
		return next(ctx, r)
	}
}
