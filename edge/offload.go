package edge

import (
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/registry"
)

// Refresh absorption ([registration] offload): phones are granted short
// registrations that suit their NATs, the core a long one, and the
// refreshes in between that change nothing are answered here. An
// absorbed refresh proves nothing new (the core never sees its
// credentials), so it may only repeat exactly what the core accepted, on
// the flow the core's last 200 went to.

// offloadMargin is how long the core's registration must still run for a
// refresh to be absorbed: two phone intervals and half a minute, so the
// phone's next refresh after this one still finds it valid, and the one
// after that goes to the core in time.
func offloadMargin(c RegistrationConfig) time.Duration { return 2*c.PhoneExpires + 30*time.Second }

// verdict is what a REGISTER may get from the edge's cache.
type verdict uint8

const (
	// toCore: it changes something, or the edge knows nothing of it.
	toCore verdict = iota
	// cached: it repeats what the core accepted, which the core holds for
	// a while yet: the edge answers it (offload).
	cached
	// stale: it repeats what the core accepted, but the core's
	// registration nears its end or the core may have lost it: the core
	// should hear it, and the cache may answer when the core cannot (over
	// core_rate or repopulate_rate, every core down).
	stale
)

// classify says whether a REGISTER repeats what the core accepted, and
// returns the bindings it would renew: every contact it carries is one
// the core accepted for this AOR and tenant on this very flow, with this
// Call-ID and a lower CSeq, no binding of the AOR on this flow is left
// out, and none is being removed. cached when the core's registration
// runs past the margin too.
func (g *registrar) classify(r *Request, reg *registerRequest, t *tenant, cfg RegistrationConfig) ([]registry.Binding, verdict) {
	if reg.Star || len(reg.Contacts) == 0 {
		return nil, toCore
	}
	now := g.now()
	var mine []registry.Binding
	for _, b := range g.registry.Lookup(reg.AOR) {
		if b.Flow == r.Flow {
			mine = append(mine, b)
		}
	}
	if len(mine) != len(reg.Contacts) {
		return nil, toCore
	}
	v := cached
	for _, c := range reg.Contacts {
		if reg.effectiveExpires(c, defaultExpires) == 0 {
			return nil, toCore
		}
		contact, found := c.URI, false
		for _, b := range mine {
			if b.Contact != contact || b.Instance != c.Instance || b.RegID != c.RegID {
				continue
			}
			if b.Tenant != t.name || b.CallID != reg.CallID || reg.CSeq <= b.CSeq {
				return nil, toCore
			}
			if since := g.flowSince(r.Flow); !since.IsZero() && !since.Equal(b.FlowSince) {
				// The flow died and came back (a phone woken by push on its
				// old NAT mapping): the core's token for it is stale.
				return nil, toCore
			}
			if b.CoreLost() || b.CoreExpires.Sub(now) <= offloadMargin(cfg) {
				v = stale
			}
			found = true
			break
		}
		if !found {
			return nil, toCore
		}
	}
	return mine, v
}

// cacheGrant is how long a refresh answered from cache is granted: a
// jittered phone interval, within what the core still holds unless the
// core may have lost it (then the phone's own registration stands while
// the core is told again). 0: the cache cannot answer.
func cacheGrant(cfg RegistrationConfig, mine []registry.Binding, now time.Time) time.Duration {
	grant := phoneGrant(cfg.PhoneExpires)
	for _, b := range mine {
		if !b.CoreLost() {
			grant = min(grant, b.CoreExpires.Sub(now).Truncate(time.Second))
		}
	}
	return max(0, grant)
}

// absorb answers a refresh from the edge: 200 with the AOR's contacts
// the core accepted, the refreshed ones renewed for grant.
func (g *registrar) absorb(r *Request, reg *registerRequest, t *tenant, grant time.Duration, mine []registry.Binding) {
	now := g.now()
	u := registry.Update{AOR: reg.AOR, Flow: r.Flow, Auth: "cached"}
	for _, b := range mine {
		b.Expires, b.CSeq, b.UserAgent, b.NAT = now.Add(grant), reg.CSeq, reg.UserAgent, r.NAT
		u.Put = append(u.Put, b)
	}
	g.registry.Apply(u)
	res := sip.NewResponseFromRequest(r.Request, 200, "OK", nil)
	for _, b := range g.registry.Lookup(reg.AOR) {
		var uri sip.Uri
		if sip.ParseUri(b.Contact, &uri) != nil {
			continue
		}
		c := &sip.ContactHeader{Address: uri, Params: sip.NewParams()}
		c.Params.Add("expires", strconv.Itoa(max(1, int(b.Expires.Sub(now).Round(time.Second)/time.Second))))
		if b.Instance != "" {
			c.Params.Add("+sip.instance", b.Instance)
			c.Params.Add("reg-id", strconv.Itoa(b.RegID))
		}
		res.AppendHeader(c)
	}
	g.outbound(reg, r.Flow, res)
	g.featureCaps(reg, res)
	g.meter.Absorbed(t.name)
	send(g.relay.log, r, res)
	for _, b := range u.Put { // after the 200: see register
		g.waker.registered(b)
	}
}

// anyLost reports whether the core may have lost one of bs.
func anyLost(bs []registry.Binding) bool {
	for _, b := range bs {
		if b.CoreLost() {
			return true
		}
	}
	return false
}

// spread is d ±50%, whole seconds: refused phones come back spread out.
func spread(d time.Duration) time.Duration {
	return max(time.Second, time.Duration(float64(d)*(0.5+rand.Float64())).Truncate(time.Second))
}

// phoneGrant is the phone interval jittered by ±10%, so phones that
// registered together spread their refreshes out.
func phoneGrant(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64())).Round(time.Second)
}
