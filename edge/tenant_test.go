package edge_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/upstream"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// tenantRig is an edge serving two tenants, acme and bolt, each with two
// cores of its own, and no default tenant.
type tenantRig struct {
	e     *edgetest.Edge
	cores map[string][]*upstreamtest.Registrar // by tenant
}

func startTenants(t *testing.T, mutate func(*edgetest.Config)) *tenantRig {
	t.Helper()
	g := &tenantRig{cores: map[string][]*upstreamtest.Registrar{}}
	var tenants []edge.TenantConfig
	for i, name := range []string{"acme", "bolt"} {
		// Cores are told apart by address: each tenant's on its own.
		host := fmt.Sprintf("127.0.0.%d", 11+i)
		a, b := upstreamtest.Start(t, upstreamtest.Options{Host: host}), upstreamtest.Start(t, upstreamtest.Options{Host: host})
		g.cores[name] = []*upstreamtest.Registrar{a, b}
		// Equal priority: each AOR sticks to one of the two by hashing.
		tenants = append(tenants, edge.TenantConfig{Name: name, Domains: []string{name + ".test"},
			Upstreams: []string{a.URI("udp") + ";priority=1", b.URI("udp") + ";priority=1"}})
	}
	g.e = edgetest.Start(t, g.cores["acme"][0].URI("udp"), func(c *edgetest.Config) {
		c.Core.Upstreams = nil
		c.Tenants = tenants
		if mutate != nil {
			mutate(c)
		}
	})
	return g
}

// registers counts the REGISTERs core got for each AOR.
func registers(core *upstreamtest.Registrar) map[string]int {
	n := map[string]int{}
	for _, req := range core.Requests() {
		if req.Method == sip.REGISTER {
			n[req.To().Address.User+"@"+req.To().Address.Host]++
		}
	}
	return n
}

// Each tenant's REGISTERs reach its own cores only, each AOR always the
// same one of them; a domain no tenant serves is refused.
func TestTenantsKeepToTheirCores(t *testing.T) {
	g := startTenants(t, nil)
	phone := edgetest.Dial(t, "udp", g.e.UDP)
	const users = 20
	for round := 1; round <= 2; round++ { // registration, then a refresh
		for _, tenant := range []string{"acme", "bolt"} {
			for i := range users {
				user := fmt.Sprintf("u%d", i)
				phone.Send(phone.Register(edgetest.Reg{User: user, Domain: tenant + ".test", CSeq: round, CallID: user + "@" + tenant}))
				if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
					t.Fatalf("REGISTER %s@%s.test got %d", user, tenant, res.StatusCode)
				}
			}
		}
	}
	for tenant, cores := range g.cores {
		used := 0
		for _, core := range cores {
			got := registers(core)
			for aor, n := range got {
				if !strings.HasSuffix(aor, "@"+tenant+".test") {
					t.Errorf("a core of %s got a REGISTER for %s", tenant, aor)
				}
				if n != 2 {
					t.Errorf("%s: %d REGISTERs at one core, want both (registration and refresh)", aor, n)
				}
			}
			if len(got) > 0 {
				used++
			}
		}
		if used != 2 {
			t.Errorf("%s: %d of its 2 cores used by %d AORs: hashing should spread them", tenant, used, users)
		}
	}
	phone.Send(phone.Register(edgetest.Reg{User: "u1", Domain: "nobody.test", CallID: "u1@nobody"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Errorf("REGISTER for a domain no tenant serves got %d, want 403", res.StatusCode)
	}
	for _, bs := range g.e.Bindings().All() {
		if want := strings.TrimSuffix(strings.SplitN(bs.AOR, "@", 2)[1], ".test"); bs.Tenant != want {
			t.Errorf("binding of %s has tenant %q", bs.AOR, bs.Tenant)
		}
	}
}

// A token names its tenant: a request from another tenant's core that
// carries it is refused, the tenant's own core reaches the phone.
func TestTenantTokenRefusedByOtherTenantsCore(t *testing.T) {
	g := startTenants(t, nil)
	phone := edgetest.Dial(t, "udp", g.e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "ann", Domain: "acme.test"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER got %d", res.StatusCode)
	}
	var path string
	var home *upstreamtest.Registrar
	for _, core := range g.cores["acme"] {
		if bs := core.Bindings("sip:ann@acme.test"); len(bs) == 1 && len(bs[0].Path) == 1 {
			path, home = bs[0].Path[0], core
		}
	}
	if path == "" {
		t.Fatal("no acme core holds ann's binding with a Path")
	}
	message := func(from *upstreamtest.Registrar) (*sip.Response, error) {
		var route sip.Uri
		if err := sip.ParseUri(strings.Trim(path, "<>"), &route); err != nil {
			t.Fatal(err)
		}
		req := sip.NewRequest(sip.MESSAGE, sip.Uri{Scheme: "sip", User: "ann", Host: "acme.test"})
		req.AppendHeader(&sip.RouteHeader{Address: route})
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		return from.Send(ctx, req)
	}
	for _, intruder := range g.cores["bolt"] {
		res, err := message(intruder)
		if err != nil || res.StatusCode != 403 {
			t.Fatalf("bolt's core sending with acme's token: %v %v, want 403", res, err)
		}
	}
	done := make(chan *sip.Response, 1)
	go func() { res, _ := message(home); done <- res }()
	req := phone.MustRecvRequest("MESSAGE", wait)
	phone.Respond(req, 200, "OK", "ann1")
	if res := <-done; res == nil || res.StatusCode != 200 {
		t.Fatalf("acme's own core got %v, want the phone's 200", res)
	}
}

// A phone registered with one tenant cannot send out of dialog into
// another tenant's cores by naming its domain.
func TestPhoneCannotCrossIntoAnotherTenant(t *testing.T) {
	g := startTenants(t, nil)
	phone := edgetest.Dial(t, "udp", g.e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "ann", Domain: "acme.test"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER got %d", res.StatusCode)
	}
	msg := func(domain, callID string) string {
		return "MESSAGE sip:carol@" + domain + " SIP/2.0\n" +
			"Via: SIP/2.0/UDP " + phone.Local.String() + ";branch=z9hG4bK-" + callID + ";rport\n" +
			"Max-Forwards: 70\nFrom: <sip:ann@" + domain + ">;tag=m1\nTo: <sip:carol@" + domain + ">\n" +
			"Call-ID: " + callID + "\nCSeq: 1 MESSAGE\nContent-Length: 0\n\n"
	}
	phone.Send(msg("bolt.test", "cross-1"))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Errorf("MESSAGE as bolt.test from an acme flow got %d, want 403", res.StatusCode)
	}
	phone.Send(msg("acme.test", "own-1"))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Errorf("MESSAGE within its own tenant got %d, want 200", res.StatusCode)
	}
	for _, core := range g.cores["bolt"] {
		for _, req := range core.Requests() {
			if req.Method == sip.MESSAGE {
				t.Errorf("bolt's core got %s", req.CallID().Value())
			}
		}
	}
}

// [core] stays the default tenant beside [[tenant]] blocks: it takes the
// domains no block claims, and a tenant's limits override its own.
func TestDefaultTenantBesideOthers(t *testing.T) {
	dflt := upstreamtest.Start(t, upstreamtest.Options{})
	acme := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, dflt.URI("udp"), func(c *edgetest.Config) {
		c.Tenants = []edge.TenantConfig{{Name: "acme", Domains: []string{"acme.test"}, Upstreams: []string{acme.URI("udp")},
			MaxContacts: 1, Mode: upstream.ModeRewrite}}
	})
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "dee", Domain: "other.test"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 || len(dflt.Bindings("sip:dee@other.test")) != 1 {
		t.Fatalf("REGISTER for another domain: %d, default core bindings %d", res.StatusCode, len(dflt.Bindings("sip:dee@other.test")))
	}
	two := "<sip:ann@" + phone.Local.String() + ">, <sip:ann2@" + phone.Local.String() + ">"
	phone.Send(phone.Register(edgetest.Reg{User: "ann", Domain: "acme.test", Contact: two}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Errorf("two contacts where acme allows one: %d, want 403", res.StatusCode)
	}
	phone.Send(phone.Register(edgetest.Reg{User: "ann", Domain: "acme.test", CSeq: 2}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER for acme got %d", res.StatusCode)
	}
	bs := acme.Bindings("sip:ann@acme.test")
	if len(bs) != 1 || len(bs[0].Path) != 0 || !strings.Contains(bs[0].Contact, e.CoreAddr().String()) {
		t.Errorf("acme's core holds %+v: want one rewritten Contact at the edge and no Path (acme's mode)", bs)
	}
	if n := len(registers(dflt)); n != 1 {
		t.Errorf("the default core got REGISTERs for %d AORs, want 1 (dee)", n)
	}
}

func TestValidateTenants(t *testing.T) {
	core, reg := upstream.DefaultConfig(), edge.DefaultRegistrationConfig()
	ok := edge.TenantConfig{Name: "acme", Domains: []string{"acme.test"}, Upstreams: []string{"sip:192.0.2.1:5060"}}
	if err := edge.ValidateTenants([]edge.TenantConfig{ok}, core, reg); err != nil {
		t.Fatalf("valid tenant: %v", err)
	}
	noCore := core
	noCore.Upstreams = nil
	if err := edge.ValidateTenants(nil, noCore, reg); err == nil {
		t.Error("no upstreams anywhere passed")
	}
	if err := edge.ValidateTenants([]edge.TenantConfig{ok}, noCore, reg); err != nil {
		t.Errorf("tenants without a default: %v", err)
	}
	for _, tc := range []struct {
		name string
		ts   []edge.TenantConfig
		want string
	}{
		{"bad name", []edge.TenantConfig{{Name: "Acme Corp", Domains: ok.Domains, Upstreams: ok.Upstreams}}, "name must be"},
		{"default", []edge.TenantConfig{{Name: "default", Domains: ok.Domains, Upstreams: ok.Upstreams}}, `"default" is the [core] tenant's`},
		{"twice", []edge.TenantConfig{ok, {Name: "acme", Domains: []string{"b.test"}, Upstreams: ok.Upstreams}}, "used twice"},
		{"shared domain", []edge.TenantConfig{ok, {Name: "bolt", Domains: []string{"ACME.test"}, Upstreams: ok.Upstreams}}, `"acme.test" is already`},
		{"no domains", []edge.TenantConfig{{Name: "acme", Upstreams: ok.Upstreams}}, "at least one"},
		{"no cores", []edge.TenantConfig{{Name: "acme", Domains: ok.Domains}}, "a tenant needs at least one core"},
		{"bad core", []edge.TenantConfig{{Name: "acme", Domains: ok.Domains, Upstreams: []string{"http://x"}}}, "core.upstreams"},
		{"bad limits", []edge.TenantConfig{{Name: "acme", Domains: ok.Domains, Upstreams: ok.Upstreams, MaxContacts: -1}}, "max_contacts"},
		{"bad mode", []edge.TenantConfig{{Name: "acme", Domains: ok.Domains, Upstreams: ok.Upstreams, Mode: "relay"}}, "core.mode"},
	} {
		err := edge.ValidateTenants(tc.ts, core, reg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}
