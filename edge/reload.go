package edge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/sipedge/sipedge/nat"
)

// Reload applies what of cfg the running edge can take without dropping
// flows, bindings or calls: [registration] (domains, expiry bounds,
// contacts), [access] listeners (added ones open, removed ones close
// with their connections, and the flows on them die), [access] trusted
// and [drain]. New listeners are bound before anything changes, so a
// reload that cannot bind one changes nothing. It returns the keys that
// differ but only apply at a restart. The other sections' parts (the
// pool, the limiter, the keepalivers) are reloaded by whoever made them.
func (s *Server) Reload(cfg Config) (restart []string, err error) {
	if err := errors.Join(cfg.Access.Validate(), cfg.Registration.Validate(), cfg.Core.Validate(), cfg.NAT.Validate(), cfg.Drain.Validate(),
		ValidateTenants(cfg.Tenants, cfg.Core, cfg.Registration)); err != nil {
		return nil, err
	}
	s.lmu.Lock()
	defer s.lmu.Unlock()
	old := s.current
	restart = restartKeys(old, cfg)
	added := AccessConfig{TLSCert: cfg.Access.TLSCert, TLSKey: cfg.Access.TLSKey,
		UDP: missing(cfg.Access.UDP, old.Access.UDP), TCP: missing(cfg.Access.TCP, old.Access.TCP),
		TLS: missing(cfg.Access.TLS, old.Access.TLS), WS: missing(cfg.Access.WS, old.Access.WS),
		WSS: missing(cfg.Access.WSS, old.Access.WSS)}
	socks, err := listenAccess(added)
	if err != nil {
		return nil, err
	}
	s.noteBound(added, socks)
	s.serveAccess(socks)
	for _, a := range missing(old.Access.UDP, cfg.Access.UDP) {
		s.closeUDP(s.bound["udp "+a])
	}
	for _, gone := range []struct {
		tp    nat.Transport
		addrs []string
	}{
		{nat.TCP, missing(old.Access.TCP, cfg.Access.TCP)}, {nat.TLS, missing(old.Access.TLS, cfg.Access.TLS)},
		{nat.WS, missing(old.Access.WS, cfg.Access.WS)}, {nat.WSS, missing(old.Access.WSS, cfg.Access.WSS)},
	} {
		for _, a := range gone.addrs {
			s.closeStream(gone.tp, s.bound[strings.ToLower(gone.tp.String())+" "+a])
		}
	}
	s.self.setAccess(s.socks.addrs())
	sameTenants := tenantShape(old) == tenantShape(cfg)
	for _, t := range s.tenants.all {
		if t.name == "" {
			t.policy.Store(newRegPolicy(cfg.Registration))
		} else if i := slices.IndexFunc(cfg.Tenants, func(tc TenantConfig) bool { return tc.Name == t.name }); i >= 0 && sameTenants {
			t.policy.Store(newRegPolicy(cfg.Tenants[i].Registration(cfg.Registration)))
		}
	}
	s.proxy.setPeers(cfg.Access.Trusted)
	s.drain.setConfig(cfg.Drain)
	// Only what was applied: keys that wait for a restart keep being
	// named until then.
	a := &s.current.Access
	a.UDP, a.TCP, a.TLS, a.WS, a.WSS, a.Trusted = cfg.Access.UDP, cfg.Access.TCP, cfg.Access.TLS, cfg.Access.WS, cfg.Access.WSS, cfg.Access.Trusted
	s.current.Registration = cfg.Registration
	if sameTenants {
		s.current.Tenants = cfg.Tenants
	}
	s.current.Drain = cfg.Drain
	return restart, nil
}

// noteBound records the address each configured one of access was bound
// to (":0" takes a port of the kernel's choice), to find the socket when
// a reload removes it. s.lmu must be held.
func (s *Server) noteBound(access AccessConfig, socks *Sockets) {
	if s.bound == nil {
		s.bound = make(map[string]netip.AddrPort)
	}
	for i, a := range access.UDP {
		if i < len(socks.UDP) { // a caller's own sockets may not match the config
			s.bound["udp "+a] = addrPortOf(socks.UDP[i].LocalAddr())
		}
	}
	for _, st := range []struct {
		kind  string
		addrs []string
		ls    []net.Listener
	}{{"tcp", access.TCP, socks.TCP}, {"tls", access.TLS, socks.TLS}, {"ws", access.WS, socks.WS}, {"wss", access.WSS, socks.WSS}} {
		for i, a := range st.addrs {
			if i < len(st.ls) {
				s.bound[st.kind+" "+a] = addrPortOf(st.ls[i].Addr())
			}
		}
	}
}

// missing returns the addresses of a not in b.
func missing(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// restartKeys names what differs between old and cfg that Reload does
// not apply.
func restartKeys(old, cfg Config) []string {
	var out []string
	diff := func(key string, changed bool) {
		if changed {
			out = append(out, key)
		}
	}
	a, b := old.Access, cfg.Access
	diff("access.tls_cert", a.TLSCert != b.TLSCert || a.TLSKey != b.TLSKey)
	diff("access.advertise", a.Advertise != b.Advertise)
	diff("access.max_dialogs", a.MaxDialogs != b.MaxDialogs)
	diff("access.hide_topology", a.HideTopology != b.HideTopology)
	diff("access.server", a.Server != b.Server)
	diff("core.listen", old.Core.Listen != cfg.Core.Listen)
	diff("core.mode", old.Core.Mode != cfg.Core.Mode)
	diff("core.timeout", old.Core.Timeout != cfg.Core.Timeout)
	diff("core.retry_after", old.Core.RetryAfter != cfg.Core.RetryAfter)
	diff("core.try_timeout", old.Core.TryTimeout != cfg.Core.TryTimeout)
	diff("core.key_file", old.Core.KeyFile != cfg.Core.KeyFile || old.Core.KeyGrace != cfg.Core.KeyGrace)
	diff("nat.flow_timer", old.NAT.FlowTimerUDP != cfg.NAT.FlowTimerUDP || old.NAT.FlowTimerStream != cfg.NAT.FlowTimerStream)
	diff("nat.max_flows", old.NAT.MaxFlows != cfg.NAT.MaxFlows)
	diff("nat stream limits", old.NAT.StreamLimits != cfg.NAT.StreamLimits)
	diff("survival.grace", old.Survival.Grace != cfg.Survival.Grace)
	diff("tenant (names, domains, modes; or core.upstreams emptied or set)", tenantShape(old) != tenantShape(cfg))
	return out
}

// tenantShape is what of the tenants a reload cannot change: which exist,
// with which domains and mode. Their limits, cores and trusted sources
// it can.
func tenantShape(c Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "default=%v;", len(c.Core.Upstreams) > 0)
	for _, t := range c.Tenants {
		fmt.Fprintf(&b, "%s %q %s;", t.Name, t.Domains, t.Mode)
	}
	return b.String()
}

// listenAccess binds the access sockets of access only.
func listenAccess(access AccessConfig) (*Sockets, error) {
	s := &Sockets{}
	if err := s.bindAccess(access); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// closeUDP stops serving the access UDP socket at a; the flows on it die.
// s.lmu must be held.
func (s *Server) closeUDP(a netip.AddrPort) {
	i := slices.IndexFunc(s.udp, func(u *udpSocket) bool { return u.local == a })
	if i < 0 {
		return
	}
	u := s.udp[i]
	s.udp = slices.Delete(s.udp, i, i+1)
	udp := make(map[netip.AddrPort]*nat.PacketConn)
	for k, v := range *s.pinger.udp.Load() {
		if k != a {
			udp[k] = v
		}
	}
	s.pinger.udp.Store(&udp)
	s.socks.UDP = slices.DeleteFunc(s.socks.UDP, func(c net.PacketConn) bool { return addrPortOf(c.LocalAddr()) == a })
	u.stopping.Store(true)
	_ = u.Close()
	for _, f := range s.d.Flows.Snapshot() {
		if f.Key.Transport == nat.UDP && f.Key.Local == a {
			s.d.Registry.FlowDead(f.Key, "listener removed")
		}
	}
	s.log.Info("listener closed", "transport", "UDP", "addr", a)
}

// closeStream closes the access stream listener of transport tp at a and
// its connections (their flows die as they close). s.lmu must be held.
func (s *Server) closeStream(tp nat.Transport, a netip.AddrPort) {
	i := slices.IndexFunc(s.streams, func(l *nat.Listener) bool {
		return l.Transport() == tp && addrPortOf(l.Addr()) == a
	})
	if i < 0 {
		return
	}
	l := s.streams[i]
	s.streams = slices.Delete(s.streams, i, i+1)
	for _, ls := range []*[]net.Listener{&s.socks.TCP, &s.socks.TLS, &s.socks.WS, &s.socks.WSS} {
		*ls = slices.DeleteFunc(*ls, func(x net.Listener) bool { return addrPortOf(x.Addr()) == a })
	}
	_ = l.Close()
	for _, c := range l.Open() {
		_ = c.Close()
	}
	s.log.Info("listener closed", "transport", tp.String(), "addr", fmt.Sprint(a))
}
