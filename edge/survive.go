package edge

import (
	"context"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/dialog"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
)

// Survival ([survival] grace): while every core of a tenant is down, the
// registrar answers its known phones' refreshes from cache, and the
// proxy routes calls and messages between phones registered at this
// edge straight over their flows. The edge stays in both phones' route
// sets (one access-side Record-Route for each), so the rest of the call
// goes through it too, and the dialog table knows each phone's peer.

// survive routes a phone's INVITE or MESSAGE while the tenant's cores
// are down: to the freshest binding at this edge of the AOR it is
// addressed to. Anything else gets noCore, the answer when no core is up.
func (p *proxy) survive(ctx context.Context, r *Request, fwd *sip.Request, t *tenant, noCore error) error {
	if r.Method != sip.INVITE && r.Method != sip.MESSAGE {
		return noCore
	}
	b, ok := p.localBinding(aorOf(fwd.Recipient), t.name)
	var contact sip.Uri
	if !ok || sip.ParseUri(b.Contact, &contact) != nil {
		return noCore
	}
	caller, callee := r.Flow, b.Flow
	p.log.Debug("survival: routed between phones", "method", r.Method, "to", b.AOR, "call", callID(fwd))
	fwd.Recipient = contact
	if dialogCreating(fwd) {
		// Each phone's own entry is the first of its route set: the
		// callee's on top, as the callee reads them.
		p.self.recordRouteFlow(fwd, caller, t.name)
		p.self.recordRouteFlow(fwd, callee, t.name)
	}
	return p.toFlow(ctx, r, fwd, callee, t.name, func(res *sip.Response) {
		p.trackLocal(fwd, res, caller, callee)
		if p.hide {
			hideRecordRoute(p.self, res, caller, t.name)
		}
	})
}

// localBinding is aor's most recently refreshed binding of tenant whose
// flow can carry a request now.
func (p *proxy) localBinding(aor, tenant string) (registry.Binding, bool) {
	var best registry.Binding
	found := false
	for _, b := range p.registry.Lookup(aor) {
		if b.Tenant == tenant && p.usable(b.Flow) && (!found || b.Updated.After(best.Updated)) {
			best, found = b, true
		}
	}
	return best, found
}

// trackLocal remembers a dialog the edge routed alone between two phones:
// each may send in-dialog requests, which go to the other.
func (p *proxy) trackLocal(fwd *sip.Request, res *sip.Response, caller, callee nat.FlowKey) {
	if !dialogCreating(fwd) || res.StatusCode < 101 {
		return
	}
	id, ok := dialogID(res)
	if !ok {
		return
	}
	if res.StatusCode >= 300 {
		p.dialogs.End(id)
		return
	}
	confirmed := res.StatusCode >= 200
	for _, d := range []dialog.Dialog{{Flow: caller, Peer: callee, Confirmed: confirmed}, {Flow: callee, Peer: caller, Confirmed: confirmed}} {
		if !p.dialogs.Establish(id, d) {
			p.tableFull.note(p.log, "dialog table full: in-dialog requests of these dialogs are refused", "max_dialogs")
		}
	}
}
