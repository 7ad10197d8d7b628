package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Defaults of the [core] dns_* keys, used where the key is 0 or empty.
const (
	DefaultDNSRefreshMin = 5 * time.Second
	DefaultDNSGrace      = 5 * time.Minute
	// dnsTimeout is how long one query to one server may take.
	dnsTimeout = 2 * time.Second
	resolvConf = "/etc/resolv.conf"
)

// Resolved is one address a core's name resolved to (RFC 3263).
type Resolved struct {
	Transport string         // "UDP", "TCP" or "TLS"
	Addr      netip.AddrPort // where to send
	Priority  int            // the SRV record's priority; 0 without SRV
	Weight    int            // the SRV record's weight clamped to 1..1000; the name's ;weight= without SRV
}

// Answer is what a name resolved to, and for how long it holds.
type Answer struct {
	Targets []Resolved // by priority, then as the records came
	TTL     time.Duration
}

// Resolver resolves cores' SIP URIs by RFC 3263 (NAPTR, SRV, then A and
// AAAA) against the configured DNS servers, asking each in turn until
// one answers.
type Resolver struct {
	servers []string // "ip:port"
	timeout time.Duration
}

// NewResolver asks servers ("ip:port" or "ip", port 53); none means
// those of /etc/resolv.conf, or 127.0.0.1:53 without one.
func NewResolver(servers []string) (*Resolver, error) {
	r := &Resolver{timeout: dnsTimeout}
	for _, s := range servers {
		ap, err := parseDNSServer(s)
		if err != nil {
			return nil, fmt.Errorf("core.dns_servers: %q is not IP:port", s)
		}
		r.servers = append(r.servers, ap.String())
	}
	if len(r.servers) == 0 {
		if cc, err := dns.ClientConfigFromFile(resolvConf); err == nil {
			for _, s := range cc.Servers {
				r.servers = append(r.servers, net.JoinHostPort(s, cc.Port))
			}
		}
	}
	if len(r.servers) == 0 {
		r.servers = []string{"127.0.0.1:53"}
	}
	return r, nil
}

func parseDNSServer(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a.Unmap(), 53), nil
}

// Resolve resolves one core.upstreams entry naming a host, as a Pool
// does: the answer's TTL is its records' least, not yet floored.
func (r *Resolver) Resolve(ctx context.Context, upstream string) (Answer, error) {
	e, err := parseUpstream(upstream, 0)
	if err != nil {
		return Answer{}, err
	}
	if e.name == nil {
		return Answer{}, fmt.Errorf("upstream %q: host is an address, nothing to resolve", upstream)
	}
	return r.resolve(ctx, e.name)
}

// errNoRecords is a name with nothing usable: no SRV target with an
// address, no address.
var errNoRecords = errors.New("no usable records")

// services maps NAPTR services (RFC 3263 §4.1) to transports.
var services = map[string]string{"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}

// srvPrefix is the SRV owner prefix of a transport.
var srvPrefix = map[string]string{"UDP": "_sip._udp.", "TCP": "_sip._tcp.", "TLS": "_sips._tcp."}

// resolve is RFC 3263 §4 for one name: with an explicit port, its
// addresses only; else the most preferred usable NAPTR record's SRV,
// else the first transport with SRV records, else the addresses on the
// default port. One transport per name: the same core is not counted
// twice, once per transport.
func (r *Resolver) resolve(ctx context.Context, n *nameSpec) (Answer, error) {
	fqdn := dns.Fqdn(n.host)
	allowed := []string{"UDP", "TCP", "TLS"}
	switch {
	case n.transport != "":
		allowed = []string{n.transport}
	case n.sips:
		allowed = []string{"TLS"}
	}
	if n.port == 0 {
		ans, err := r.naptr(ctx, fqdn, allowed)
		if err != nil || len(ans.Targets) > 0 {
			return ans, err
		}
		for _, tp := range allowed {
			ans, err := r.srv(ctx, srvPrefix[tp]+fqdn, tp, 0)
			if err != nil || len(ans.Targets) > 0 {
				return ans, err
			}
		}
	}
	tp := allowed[0]
	port := n.port
	if port == 0 {
		port = 5060
		if tp == "TLS" {
			port = 5061
		}
	}
	addrs, ttl, err := r.addrs(ctx, fqdn)
	if err != nil {
		return Answer{}, err
	}
	if len(addrs) == 0 {
		return Answer{}, errNoRecords
	}
	ans := Answer{TTL: ttl}
	for _, a := range addrs {
		ans.Targets = append(ans.Targets, Resolved{Transport: tp, Addr: netip.AddrPortFrom(a, uint16(port)), Weight: n.weight})
	}
	return ans, nil
}

// naptr follows the most preferred NAPTR record of an allowed service
// whose SRV has targets; an empty Answer when there is none.
func (r *Resolver) naptr(ctx context.Context, fqdn string, allowed []string) (Answer, error) {
	m, err := r.query(ctx, fqdn, dns.TypeNAPTR)
	if err != nil {
		return Answer{}, err
	}
	var recs []*dns.NAPTR
	for _, rr := range m.Answer {
		rec, ok := rr.(*dns.NAPTR)
		if !ok || !strings.EqualFold(rec.Flags, "s") || rec.Replacement == "." || rec.Replacement == "" {
			continue
		}
		if tp, ok := services[strings.ToUpper(rec.Service)]; ok && slices.Contains(allowed, tp) {
			recs = append(recs, rec)
		}
	}
	slices.SortStableFunc(recs, func(a, b *dns.NAPTR) int {
		if a.Order != b.Order {
			return int(a.Order) - int(b.Order)
		}
		return int(a.Preference) - int(b.Preference)
	})
	for _, rec := range recs {
		ans, err := r.srv(ctx, rec.Replacement, services[strings.ToUpper(rec.Service)], rec.Hdr.Ttl)
		if err != nil || len(ans.Targets) > 0 {
			return ans, err
		}
	}
	return Answer{}, nil
}

// srv resolves the SRV records at owner and their targets' addresses;
// ttl, when not 0, is the TTL of the record that led here.
func (r *Resolver) srv(ctx context.Context, owner, tp string, ttl uint32) (Answer, error) {
	m, err := r.query(ctx, owner, dns.TypeSRV)
	if err != nil {
		return Answer{}, err
	}
	var recs []*dns.SRV
	for _, rr := range m.Answer {
		if rec, ok := rr.(*dns.SRV); ok && rec.Target != "." {
			recs = append(recs, rec)
		}
	}
	slices.SortStableFunc(recs, func(a, b *dns.SRV) int { return int(a.Priority) - int(b.Priority) })
	least := time.Duration(ttl) * time.Second
	use := func(t uint32) {
		if d := time.Duration(t) * time.Second; least == 0 || d < least {
			least = d
		}
	}
	var ans Answer
	seen := map[netip.AddrPort]bool{}
	for _, rec := range recs {
		addrs, attl, err := r.addrs(ctx, rec.Target)
		if err != nil {
			return Answer{}, err
		}
		if len(addrs) == 0 {
			continue
		}
		use(rec.Hdr.Ttl)
		if attl > 0 && (least == 0 || attl < least) {
			least = attl
		}
		w := min(max(int(rec.Weight), 1), maxWeight)
		for _, a := range addrs {
			ap := netip.AddrPortFrom(a, rec.Port)
			if seen[ap] {
				continue
			}
			seen[ap] = true
			ans.Targets = append(ans.Targets, Resolved{Transport: tp, Addr: ap, Priority: int(rec.Priority), Weight: w})
		}
	}
	ans.TTL = least
	return ans, nil
}

// addrs is name's A and AAAA addresses and their least TTL.
func (r *Resolver) addrs(ctx context.Context, name string) ([]netip.Addr, time.Duration, error) {
	var out []netip.Addr
	var least time.Duration
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		m, err := r.query(ctx, name, qt)
		if err != nil {
			return nil, 0, err
		}
		for _, rr := range m.Answer {
			var a netip.Addr
			switch rec := rr.(type) {
			case *dns.A:
				a, _ = netip.AddrFromSlice(rec.A.To4())
			case *dns.AAAA:
				a, _ = netip.AddrFromSlice(rec.AAAA.To16())
			default:
				continue
			}
			if !a.IsValid() || slices.Contains(out, a.Unmap()) {
				continue
			}
			out = append(out, a.Unmap())
			if d := time.Duration(rr.Header().Ttl) * time.Second; least == 0 || d < least {
				least = d
			}
		}
	}
	return out, least, nil
}

// query asks the servers in turn for name's qtype records. A name that
// does not exist, or has none of that type, is an empty answer; no
// server answering, or every one failing, is an error.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	q.SetEdns0(4096, false)
	var errs []error
	for _, srv := range r.servers {
		c := &dns.Client{Net: "udp", Timeout: r.timeout}
		m, _, err := c.ExchangeContext(ctx, q, srv)
		if err == nil && m.Truncated {
			c.Net = "tcp"
			m, _, err = c.ExchangeContext(ctx, q, srv)
		}
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", srv, err))
		case m.Rcode == dns.RcodeSuccess || m.Rcode == dns.RcodeNameError:
			return m, nil
		default:
			errs = append(errs, fmt.Errorf("%s: %s %s: %s", srv, dns.TypeToString[qtype], name, dns.RcodeToString[m.Rcode]))
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// resolveTimeout bounds one name's whole resolution.
const resolveTimeout = 10 * time.Second

// answer is a name's current expansion in a pool set. Never changed
// once in a stored set.
type answer struct {
	targets []Resolved
	expires time.Time // when to ask again
	// staleAt is when the last good answer expired; failing since then,
	// it is kept until staleAt + dns_grace.
	staleAt time.Time
	failing bool // the last resolution failed (and that was logged)
	dropped bool // failed past the grace: no targets
}

func newAnswer(a Answer, now time.Time, floor time.Duration) *answer {
	exp := now.Add(max(a.TTL, floor))
	return &answer{targets: a.Targets, expires: exp, staleAt: exp}
}

// Refresh re-resolves each name whose answer's TTL (floored by
// core.dns_refresh_min) has run out, checking every dns_refresh_min,
// until ctx is done. A new answer replaces the name's targets at once:
// a target gone from DNS takes no new requests, one that stays keeps its
// health. A name that stops resolving keeps its last good answer for
// core.dns_grace, then loses its targets, each logged once. Ticks come
// from WithTicker's source, or the system clock; a pool without names
// waits for a reload that adds one.
func (p *Pool) Refresh(ctx context.Context) {
	period := func(s *poolSet) time.Duration {
		if s.resolver == nil {
			return 0
		}
		return s.refresh
	}
	p.every(ctx, period, func() {
		p.RefreshOnce(ctx)
		if p.afterRefresh != nil {
			p.afterRefresh()
		}
	})
}

// RefreshOnce re-resolves the names whose answers have expired and
// swaps in a set with the new answers.
func (p *Pool) RefreshOnce(ctx context.Context) {
	s := p.set.Load()
	now := p.now()
	type result struct {
		ans Answer
		err error
	}
	results := map[string]result{}
	for _, e := range s.entries {
		if e.name == nil || s.answers[e.name.key] == nil || now.Before(s.answers[e.name.key].expires) {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		ans, err := s.resolver.resolve(rctx, e.name)
		cancel()
		if ctx.Err() != nil {
			return // leaving: a cut-short query says nothing of DNS
		}
		results[e.name.key] = result{ans, err}
	}
	if len(results) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	cur := p.set.Load() // a Reload may have come meanwhile
	answers := make(map[string]*answer, len(cur.answers))
	for k, a := range cur.answers {
		answers[k] = a
	}
	for _, e := range cur.entries {
		if e.name == nil {
			continue
		}
		r, ok := results[e.name.key]
		if !ok || answers[e.name.key] == nil {
			continue
		}
		answers[e.name.key] = p.next(e.name.key, answers[e.name.key], r.ans, r.err, now, cur)
	}
	next := &poolSet{
		upAfter: cur.upAfter, downAfter: cur.downAfter,
		interval: cur.interval, timeout: cur.timeout, retryAfter: cur.retryAfter,
		entries: cur.entries, extra: cur.extra, resolver: cur.resolver,
		refresh: cur.refresh, grace: cur.grace, replaced: make(chan struct{}),
	}
	next.expand(answers, cur)
	p.set.Store(next)
	close(cur.replaced)
}

// next is a name's answer after a resolution at now that gave ans or
// failed with err, prev being its answer until then.
func (p *Pool) next(name string, prev *answer, ans Answer, err error, now time.Time, s *poolSet) *answer {
	if err == nil {
		a := newAnswer(ans, now, s.refresh)
		switch {
		case prev.failing || prev.dropped:
			p.log.Info("upstream: name resolves again", "name", name, "targets", len(ans.Targets))
		case !sameTargets(prev.targets, ans.Targets):
			p.log.Info("upstream: DNS answer changed", "name", name, "targets", len(ans.Targets), "was", len(prev.targets))
		}
		return a
	}
	a := *prev
	a.expires = now.Add(s.refresh) // try again soon
	if prev.dropped {
		return &a
	}
	until := prev.staleAt.Add(s.grace)
	if !now.Before(until) {
		p.log.Error("upstream: name still does not resolve; dns_grace is over, its targets are dropped",
			"name", name, "targets", len(prev.targets), "err", err)
		a.targets, a.dropped, a.failing = nil, true, true
		return &a
	}
	if !prev.failing {
		p.log.Warn("upstream: name does not resolve; keeping its last answer until dns_grace ends",
			"name", name, "until", until, "err", err)
	}
	a.failing = true
	return &a
}

func sameTargets(a, b []Resolved) bool { return slices.Equal(a, b) }
