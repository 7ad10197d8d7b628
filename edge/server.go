// Package edge is sipedge's SIP side: it serves the access and core
// sockets, runs each request through a chain of small stages, registers
// endpoints with the core and keeps the binding table.
package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/binding"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream"
)

// flowIdle is how long a flow without bindings may stay in the table.
const flowIdle = 10 * time.Minute

// Deps are what the server is built from besides its config.
type Deps struct {
	Log       *slog.Logger     // required
	Signer    *nat.Signer      // required: signs flow tokens
	Upstreams *upstream.Pool   // required: the core registrars
	Now       func() time.Time // defaults to time.Now
	Grace     time.Duration    // drain time on shutdown; default 3s
	Events    Events           // optional hooks
}

// Events are optional callbacks for metrics, audit logs and tests.
type Events struct {
	// OnFlowDead reports a flow found dead and the bindings it took along.
	OnFlowDead func(k nat.FlowKey, why string, removed []binding.Binding)
	// RateLimit observes the limiter's decisions and bans.
	RateLimit ratelimit.Events
}

// Server is a running edge.
type Server struct {
	cfg        Config
	log        *slog.Logger
	now        func() time.Time
	grace      time.Duration
	signer     *nat.Signer
	upstreams  *upstream.Pool
	bindings   *binding.Table
	flows      *nat.FlowTable
	keepalive  *nat.Keepaliver // UDP flows: CRLF or OPTIONS every keepalive_interval
	probe      *nat.Keepaliver // stream flows: OPTIONS when silent for flow_timer_stream
	events     Events
	limiter    *ratelimit.Limiter
	conns      connLimits
	udpByLocal map[netip.AddrPort]net.PacketConn // raw access UDP sockets, for pings
	domains    map[string]bool
	socks      *Sockets
	coreAddr   netip.AddrPort
	advertise  netip.Addr              // public address of the access side, if set
	ownAddrs   map[netip.AddrPort]bool // every access socket address
	ownPorts   map[uint16]bool         // their ports, for advertise matching
	trusted    []netip.Prefix          // who may send requests to the core side

	accessUA     *sipgo.UserAgent
	coreUA       *sipgo.UserAgent
	coreClient   *sipgo.Client
	accessClient *sipgo.Client
	access       Handler

	ready chan struct{} // closed once every socket is in service

	bg       sync.WaitGroup // CANCELs and hang-ups sent after their request ended
	mu       sync.RWMutex   // guards draining against inflight.Add
	draining bool
	inflight sync.WaitGroup
}

// New builds a server on sockets the caller bound.
func New(cfg Config, socks *Sockets, d Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Log == nil || d.Signer == nil || d.Upstreams == nil {
		return nil, errors.New("edge: Log, Signer and Upstreams are required")
	}
	s := &Server{
		cfg: cfg, log: d.Log, now: d.Now, grace: d.Grace,
		signer: d.Signer, upstreams: d.Upstreams, socks: socks,
		domains: make(map[string]bool), ready: make(chan struct{}), events: d.Events,
		udpByLocal: make(map[netip.AddrPort]net.PacketConn),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.grace == 0 {
		s.grace = 3 * time.Second
	}
	for _, dom := range cfg.Registration.Domains {
		s.domains[strings.ToLower(dom)] = true
	}
	ca, err := netip.ParseAddrPort(socks.CoreUDP.LocalAddr().String())
	if err != nil {
		return nil, fmt.Errorf("core socket: %w", err)
	}
	s.coreAddr = unmap(ca)
	s.ownAddrs, s.ownPorts = make(map[netip.AddrPort]bool), make(map[uint16]bool)
	for _, a := range socks.addrs() {
		s.ownAddrs[a], s.ownPorts[a.Port()] = true, true
	}
	for _, t := range d.Upstreams.Targets() {
		s.trusted = append(s.trusted, netip.PrefixFrom(t.Addr.Addr(), t.Addr.Addr().BitLen()))
	}
	for _, c := range cfg.Core.Trusted {
		p, _ := parsePrefix(c) // validated
		s.trusted = append(s.trusted, p)
	}
	if cfg.Access.Advertise != "" {
		if s.advertise, err = netip.ParseAddr(cfg.Access.Advertise); err != nil {
			return nil, fmt.Errorf("access.advertise: %w", err)
		}
	}
	for _, c := range socks.UDP {
		if a, err := netip.ParseAddrPort(c.LocalAddr().String()); err == nil {
			s.udpByLocal[unmap(a)] = c
		}
	}
	if s.limiter, err = ratelimit.New(cfg.RateLimit, s.now, d.Events.RateLimit); err != nil {
		return nil, err
	}
	s.flows = nat.NewFlowTable(cfg.NAT.MaxFlows, s.now, nat.FlowEvents{OnDead: s.flowDead})
	s.keepalive = nat.NewKeepaliver(cfg.NAT.KeepaliveConfig, s.flows, s, s.now, nil)
	// A stream flow's close is seen at once, but a connection a NAT or a
	// dead phone dropped silently is not: one silent for the stream flow
	// timer gets an OPTIONS over it (phones' own CRLF or SIP traffic
	// postpones it), and keepalive_failures unanswered ones kill it.
	probeCfg := cfg.NAT.KeepaliveConfig
	if probeCfg.Mode != nat.KeepaliveOff {
		probeCfg.Mode = nat.KeepaliveOptions
	}
	probeCfg.Interval = cfg.NAT.FlowTimerStream
	if err := probeCfg.Validate(); err != nil {
		return nil, fmt.Errorf("nat.flow_timer_stream: %w", err)
	}
	s.probe = nat.NewKeepaliver(probeCfg, s.flows, s, s.now, nil)
	s.bindings = binding.New(s.now, s.bindingEvents())

	siplog := slog.New(quietSipgo{s.log.Handler()})
	uaOpts := func(name string) []sipgo.UserAgentOption {
		return []sipgo.UserAgentOption{
			sipgo.WithUserAgent(name),
			sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(siplog)),
			sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(siplog)),
		}
	}
	accessOpts := append(uaOpts("sipedge"), sipgo.WithUserAgentTransportLayerOptions(
		sip.WithTransportLayerTransports(neverDial())))
	if s.accessUA, err = sipgo.NewUA(accessOpts...); err != nil {
		return nil, err
	}
	if s.coreUA, err = sipgo.NewUA(uaOpts("sipedge")...); err != nil {
		return nil, err
	}
	if s.coreClient, err = sipgo.NewClient(s.coreUA, sipgo.WithClientLogger(siplog),
		sipgo.WithClientHostname(s.coreAddr.Addr().String())); err != nil {
		return nil, err
	}
	if s.accessClient, err = sipgo.NewClient(s.accessUA, sipgo.WithClientLogger(siplog)); err != nil {
		return nil, err
	}
	s.access = chain(s.route, s.sanity, s.limit)
	return s, nil
}

// Ready is closed once the server can take and send requests.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Limiter is the rate limiter and ban list (for the admin API).
func (s *Server) Limiter() *ratelimit.Limiter { return s.limiter }

// Bindings is the table of registrations the core accepted.
func (s *Server) Bindings() *binding.Table { return s.bindings }

// CoreAddr is the edge's core-side address (where Path points).
func (s *Server) CoreAddr() netip.AddrPort { return s.coreAddr }

// route picks the handler for an access-side request.
func (s *Server) route(ctx context.Context, r *Request) error {
	switch r.Method {
	case sip.REGISTER:
		return s.handleRegister(ctx, r)
	case sip.CANCEL:
		return reject(481, "Call/Transaction Does Not Exist") // a matching one never gets here
	}
	return s.proxyToCore(ctx, r)
}

// routeCore picks the handler for a request from the core side.
func (s *Server) routeCore(ctx context.Context, r *Request) error {
	switch r.Method {
	case sip.REGISTER:
		return reject(403, "Forbidden")
	case sip.CANCEL:
		return reject(481, "Call/Transaction Does Not Exist")
	}
	return s.proxyToEndpoint(ctx, r)
}

// sipHandler adapts a Handler to sipgo: flow key, drain check, panic
// recovery, and the one place errors become responses.
func (s *Server) sipHandler(h Handler, fromCore bool) sipgo.RequestHandler {
	return func(req *sip.Request, tx sip.ServerTransaction) {
		if fromCore && !s.fromTrusted(req) {
			// Only the core may ask the edge to reach a phone.
			if tx != nil && !req.IsAck() {
				r := &Request{Request: req, Tx: tx}
				r.Flow, _ = flowOf(req, tx)
				respondError(s.log, r, reject(403, "Forbidden"))
			}
			return
		}
		if req.IsAck() {
			// An ACK that reaches a handler matched no INVITE transaction:
			// it acknowledges a 2xx and travels statelessly (sipgo may
			// still hand it a transaction of its own). Never answered, so
			// anything wrong with it is dropped.
			if s.ackAcceptable(req, fromCore) {
				s.relayAck(req, fromCore)
			}
			return
		}
		if tx == nil {
			return
		}
		s.mu.RLock()
		draining := s.draining
		if !draining {
			s.inflight.Add(1)
		}
		s.mu.RUnlock()
		flow, err := flowOf(req, tx)
		r := &Request{Request: req, Tx: tx, Flow: flow}
		if err != nil {
			s.log.Debug("request without usable flow", "err", err)
		}
		if draining {
			respondError(s.log, r, coreDown(s.cfg.Core.RetryAfter))
			return
		}
		defer s.inflight.Done()
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("panic in handler", "method", req.Method, "panic", p, "stack", string(debug.Stack()))
				respondError(s.log, r, reject(500, "Server Internal Error"))
			}
		}()
		if err := h(context.Background(), r); err != nil && !errors.Is(err, errDrop) {
			respondError(s.log, r, err)
		}
	}
}

// ackAcceptable applies the sanity checks and, from phones, the limits
// to an ACK, which gets no answer either way.
func (s *Server) ackAcceptable(req *sip.Request, fromCore bool) bool {
	if checkSanity(req) != nil {
		return false
	}
	if fromCore {
		return true
	}
	src, err := netip.ParseAddrPort(req.Source())
	if err != nil {
		return false
	}
	d, _ := s.limiter.Request(src.Addr().Unmap(), string(sip.ACK), "", "")
	return d == ratelimit.Allow
}

// background runs f in a goroutine that Serve waits for on shutdown.
func (s *Server) background(f func()) { s.bg.Go(f) }

// fromTrusted reports whether a request on the core side came from a core.
func (s *Server) fromTrusted(req *sip.Request) bool {
	src, err := netip.ParseAddrPort(req.Source())
	if err != nil {
		return false
	}
	a := src.Addr().Unmap()
	for _, p := range s.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Serve serves until ctx ends, then drains: stop accepting, answer new
// requests 503, let transactions finish within the grace period, close.
func (s *Server) Serve(ctx context.Context) error {
	accessSrv, err := sipgo.NewServer(s.accessUA)
	if err != nil {
		return err
	}
	coreSrv, err := sipgo.NewServer(s.coreUA)
	if err != nil {
		return err
	}
	accessSrv.OnNoRoute(s.sipHandler(s.access, false))
	coreSrv.OnNoRoute(s.sipHandler(chain(s.routeCore, s.sanity), true))

	var wg sync.WaitGroup
	serve := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && !errors.Is(err, net.ErrClosed) {
				s.log.Error("listener stopped", "err", err) // it will not come back
			}
		}()
	}
	var udpReady []chan struct{}
	var udpSocks []*udpSocket
	serveUDPOn := func(srv *sipgo.Server, u *udpSocket) {
		rc := newReadyConn(u)
		udpReady = append(udpReady, rc.ready)
		udpSocks = append(udpSocks, u)
		serve(func() error { return serveUDP(srv, u, rc) })
	}
	for local, c := range s.udpByLocal {
		// STUN and CRLF keepalives, limits and garbage are handled below
		// sipgo, before it parses anything.
		serveUDPOn(accessSrv, s.newUDPSocket(c, local))
	}
	// Stream listeners are wrapped so every connection is a flow: CRLF
	// pings answered, close noticed at once.
	wrap := func(l net.Listener, tp nat.Transport) net.Listener { return nat.NewListener(l, tp, s.streamHooks()) }
	for _, l := range s.socks.TCP {
		serve(func() error { return accessSrv.ServeTCP(wrap(l, nat.TCP)) })
	}
	for _, l := range s.socks.TLS {
		serve(func() error { return accessSrv.ServeTLS(wrap(l, nat.TLS)) })
	}
	for _, l := range s.socks.WS {
		serve(func() error { return accessSrv.ServeWS(wrap(l, nat.WS)) })
	}
	for _, l := range s.socks.WSS {
		serve(func() error { return accessSrv.ServeWSS(wrap(l, nat.WSS)) })
	}
	serveUDPOn(coreSrv, &udpSocket{PacketConn: s.socks.CoreUDP, raw: s.socks.CoreUDP})
	serve(func() error { return coreSrv.ServeTCP(s.socks.CoreTCP) })

	sweepCtx, stopSweep := context.WithCancel(context.Background())
	ticker := time.NewTicker(time.Second)
	kaTicker := time.NewTicker(time.Second)
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.bindings.RunSweeper(sweepCtx, ticker.C)
	}()
	go func() {
		defer wg.Done()
		s.keepalive.Run(sweepCtx, kaTicker.C)
	}()
	probeTicker := time.NewTicker(time.Second)
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.probe.Run(sweepCtx, probeTicker.C)
	}()
	limTicker := time.NewTicker(5 * time.Second)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 1; ; n++ {
			select {
			case <-sweepCtx.Done():
				return
			case <-limTicker.C:
				s.limiter.Sweep()
				if n%12 == 0 { // every minute: flows no binding holds (a backstop)
					s.flows.Sweep(flowIdle, s.bindings.HasFlow)
				}
			}
		}
	}()
	for _, r := range udpReady {
		select {
		case <-r:
		case <-ctx.Done():
		}
	}
	close(s.ready)
	s.log.Info("sipedge serving", "core", s.coreAddr, "mode", s.cfg.Core.Mode, "upstream", s.upstreams.Pick())

	<-ctx.Done()
	s.log.Info("draining", "grace", s.grace)
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	for _, l := range s.socks.listeners() {
		_ = l.Close() // stop accepting; open connections finish their transactions
	}
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.grace):
		s.log.Warn("grace period over with transactions in flight")
	}
	stopSweep()
	ticker.Stop()
	kaTicker.Stop()
	probeTicker.Stop()
	limTicker.Stop()
	for _, u := range udpSocks {
		u.stopping.Store(true)
	}
	_ = s.accessUA.Close()
	_ = s.coreUA.Close()
	_ = s.socks.Close()
	wg.Wait()
	bgDone := make(chan struct{})
	go func() { <-done; s.bg.Wait(); close(bgDone) }()
	select {
	case <-bgDone: // handlers and their follow-ups return once the UAs are closed
	case <-time.After(time.Second):
		s.log.Warn("handlers still running after close")
	}
	return nil
}
