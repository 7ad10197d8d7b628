package edge_test

import (
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// What a REGISTER costs the edge, answered from cache (offload) or
// forwarded to the core and back, one at a time over real UDP sockets:
//
//	go test -run '^$' -bench Refresh -benchtime 5000x ./edge/
//
// The difference per refresh is what absorbing saves the edge; the core
// saves a whole REGISTER transaction besides.
func BenchmarkRefresh(b *testing.B) {
	for _, tc := range []struct {
		name    string
		offload bool
	}{{"absorbed", true}, {"forwarded", false}} {
		b.Run(tc.name, func(b *testing.B) {
			core := upstreamtest.Start(b, upstreamtest.Options{})
			e := edgetest.Start(b, core.URI("udp"), func(c *edgetest.Config) {
				c.Registration.Offload = tc.offload
				c.Registration.PhoneExpires, c.Registration.CoreExpires = time.Minute, time.Hour
				c.RateLimit.Allow = []string{"127.0.0.0/8"} // one source, many REGISTERs
			})
			phone := edgetest.Dial(b, "udp", e.UDP)
			cseq := 1
			refresh := func() {
				phone.Send(phone.Register(edgetest.Reg{User: "bench", CSeq: cseq, CallID: "bench-1"}))
				if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
					b.Fatalf("got %d", res.StatusCode)
				}
				cseq++
			}
			refresh()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				refresh()
			}
		})
	}
}
