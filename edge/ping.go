package edge

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream"
	"github.com/sipedge/sipedge/upstream/hop"
)

// pinger sends keepalives for the keepalivers (nat.Pinger): a CRLF
// datagram from the listening UDP socket, or an OPTIONS transaction over
// the flow.
type pinger struct {
	udp     atomic.Pointer[map[netip.AddrPort]*nat.PacketConn] // access UDP sockets by address, replaced whole
	flowLeg func(nat.FlowKey) leg
}

func (p *pinger) Ping(ctx context.Context, k nat.FlowKey, mode nat.KeepaliveMode) error {
	switch mode {
	case nat.KeepaliveCRLF:
		if k.Transport != nat.UDP {
			return errors.New("crlf pings are for UDP flows")
		}
		c, ok := (*p.udp.Load())[k.Local]
		if !ok {
			return fmt.Errorf("no socket %s", k.Local)
		}
		return c.Ping(k.Remote)
	case nat.KeepaliveOptions:
		return p.options(ctx, k)
	}
	return nil
}

func (p *pinger) options(ctx context.Context, k nat.FlowKey) error {
	h := p.flowLeg(k).Hop
	return h.Ask(ctx, optionsTo(h, k.Remote))
}

// coreProbe asks a core OPTIONS through fwd (health checks).
func coreProbe(fwd *upstream.Forwarder) upstream.ProbeFunc {
	return func(ctx context.Context, t upstream.Target) (int, error) {
		h := fwd.HopTo(t)
		return h.AskStatus(ctx, optionsTo(h, t.Addr))
	}
}

// optionsTo is an OPTIONS from the edge to dst over h, for the far end
// itself (a keepalive or a health probe).
func optionsTo(h hop.Hop, dst netip.AddrPort) *sip.Request {
	uri := sip.Uri{Scheme: "sip", Host: dst.Addr().String(), Port: int(dst.Port())}
	req := sip.NewRequest(sip.OPTIONS, uri)
	from := sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: "sipedge", Host: h.SentBy.Addr().String(), Port: int(h.SentBy.Port())}, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(16))
	req.AppendHeader(&from)
	req.AppendHeader(&sip.ToHeader{Address: uri, Params: sip.NewParams()})
	cid := sip.CallIDHeader("ka-" + sip.GenerateTagN(16))
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.OPTIONS})
	// Max-Forwards 0: for the endpoint itself, never passed on (RFC 3261
	// §16.3 item 2 lets the target answer an OPTIONS that says 0).
	mf := sip.MaxForwardsHeader(0)
	req.AppendHeader(&mf)
	req.SetBody(nil)
	h.Prepare(req, sip.GenerateBranch())
	return req
}
