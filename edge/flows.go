package edge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/binding"
	"github.com/sipedge/sipedge/nat"
)

// This file connects the NAT machinery to the edge: flows are created by
// a REGISTER the core accepted, refreshed by any traffic on them, pinged
// while bindings use them, and their death removes their bindings.

var crlfPing = []byte("\r\n\r\n")

// refresh notes inbound traffic on a known flow. Only a REGISTER the
// core accepted creates a flow, so a flood of unknown sources cannot fill
// the table, and traffic never revives a flow found dead.
func (s *Server) refresh(k nat.FlowKey) { s.flows.Touch(k) }

// flowDead removes the bindings of a flow that died.
func (s *Server) flowDead(k nat.FlowKey, why string) {
	s.keepalive.Unwatch(k)
	s.probe.Unwatch(k)
	s.flows.Remove(k)
	gone := s.bindings.RemoveFlow(k)
	aors := make([]string, len(gone))
	for i, b := range gone {
		aors[i] = b.AOR
	}
	s.log.Info("flow dead, bindings removed", "flow", k, "why", why, "bindings", len(gone), "aor", aors)
	if s.events.OnFlowDead != nil {
		s.events.OnFlowDead(k, why, gone)
	}
}

// bindingEvents keeps flows and keepalives in step with the bindings.
func (s *Server) bindingEvents() binding.Events {
	// A flow no binding uses is forgotten: the core's requests carrying
	// its (still validly signed) token then get 430, whoever holds that
	// NAT address now.
	unused := func(b binding.Binding) {
		if !s.bindings.HasFlow(b.Flow) {
			s.keepalive.Unwatch(b.Flow)
			s.probe.Unwatch(b.Flow)
			s.flows.Remove(b.Flow)
		}
		s.updateSourceBindings(b.Flow.Remote.Addr())
	}
	return binding.Events{
		OnBind: func(b binding.Binding) {
			s.flows.Seen(b.Flow)
			s.updateSourceBindings(b.Flow.Remote.Addr())
			if !s.bindings.HasFlow(b.Flow) {
				return // removed again meanwhile: nothing to keep open
			}
			if b.Flow.Transport == nat.UDP {
				s.keepalive.Watch(b.Flow)
			} else {
				s.probe.Watch(b.Flow)
			}
		},
		OnRemove: unused,
		OnExpire: func(b binding.Binding) {
			s.log.Info("binding expired", "aor", b.AOR, "flow", b.Flow)
			unused(b)
		},
	}
}

// Ping sends one keepalive on a flow (nat.Pinger): a CRLF datagram from
// the listening socket, or an OPTIONS transaction over the flow.
func (s *Server) Ping(ctx context.Context, k nat.FlowKey, mode nat.KeepaliveMode) error {
	switch mode {
	case nat.KeepaliveCRLF:
		if k.Transport != nat.UDP {
			return errors.New("crlf pings are for UDP flows")
		}
		c, ok := s.udpByLocal[k.Local]
		if !ok {
			return fmt.Errorf("no socket %s", k.Local)
		}
		_, err := c.WriteTo(crlfPing, net.UDPAddrFromAddrPort(k.Remote))
		return err
	case nat.KeepaliveOptions:
		return s.pingOptions(ctx, k)
	}
	return nil
}

func (s *Server) pingOptions(ctx context.Context, k nat.FlowKey) error {
	h := s.flowHop(k)
	uri := sip.Uri{Scheme: "sip", Host: k.Remote.Addr().String(), Port: int(k.Remote.Port())}
	req := sip.NewRequest(sip.OPTIONS, uri)
	from := sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: "sipedge", Host: h.sentBy.Addr().String(), Port: int(h.sentBy.Port())}, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(16))
	req.AppendHeader(&from)
	req.AppendHeader(&sip.ToHeader{Address: uri, Params: sip.NewParams()})
	cid := sip.CallIDHeader("ka-" + sip.GenerateTagN(16))
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.OPTIONS})
	mf := sip.MaxForwardsHeader(1)
	req.AppendHeader(&mf)
	req.SetBody(nil)
	if err := h.prepare(req, sip.GenerateBranch()); err != nil {
		return err
	}
	return h.ask(ctx, req) // any answer proves the endpoint is there
}

// outbound adds what an RFC 5626 client needs in its 2xx: Require:
// outbound tells it the edge takes part, and Flow-Timer how often to send
// its own keepalives (§4.4.1, §5.4).
func (s *Server) outbound(reg *registerRequest, flow nat.FlowKey, res *sip.Response) {
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
	ft := s.cfg.NAT.FlowTimerUDP
	if flow.Transport.Reliable() {
		ft = s.cfg.NAT.FlowTimerStream
	}
	required := false
	for _, h := range res.GetHeaders("Require") {
		required = required || strings.Contains(strings.ToLower(h.Value()), "outbound")
	}
	if !required {
		res.AppendHeader(sip.NewHeader("Require", "outbound"))
	}
	if res.GetHeader("Flow-Timer") == nil {
		res.AppendHeader(sip.NewHeader("Flow-Timer", strconv.Itoa(int(ft.Seconds()))))
	}
}
