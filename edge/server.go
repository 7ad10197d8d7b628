// Package edge is sipedge's SIP side: it serves the access and core
// sockets and runs each request through a chain of small stages (sanity,
// parse, limit, then the registrar or the proxy), forwarding through one
// relay unit. Registration state lives in edge/registry, the core side in
// upstream, flow mechanics in nat, limits in ratelimit: the server is
// handed all of them.
package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/edge/dialog"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/edge/udptx"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream"
	"github.com/sipedge/sipedge/upstream/hop"
)

// Maintenance runs every maintainEvery: bindings expire, keepalives go
// out; the limiter is swept every limiterSweep and flows no binding
// holds every flowSweep (a backstop), idle for flowIdle.
const (
	maintainEvery = time.Second
	limiterSweep  = 5 * time.Second
	flowSweep     = time.Minute
	flowIdle      = 10 * time.Minute
	// dialogIdle is how long a dialog is remembered without an in-dialog
	// request: longer than any call without a session timer should last.
	dialogIdle = 24 * time.Hour
	// maxProofs is how many challenge nonces sent to UDP sources are
	// remembered (about 24 B each).
	maxProofs = 1 << 16
	// workerIdle is how long a handler goroutine waits for the next
	// request before it ends.
	workerIdle = 10 * time.Second
)

// Config is what the server reads: its own sections, and the keys of
// other sections it acts on.
type Config struct {
	Access       AccessConfig
	Registration RegistrationConfig
	Core         upstream.Config // mode and timeout
	NAT          nat.Config      // Flow-Timer values granted to outbound clients
	Drain        DrainConfig
	Survival     SurvivalConfig
	Wake         WakeConfig // [push]: holding requests for sleeping phones
	Tenants      []TenantConfig
}

// Deps are the parts the server is built from, made by the caller.
type Deps struct {
	Log    *slog.Logger // required
	Clock  clock.Clock  // nil: the system clock
	Signer *nat.Signer  // required: signs flow tokens
	// Pools are the cores, of the default tenant ([core] upstreams)
	// and of each [[tenant]]: see NewPools.
	Pools     Pools
	Limiter   *ratelimit.Limiter // required
	Flows     *nat.FlowTable     // required
	Keepalive *nat.Keepaliver    // required: keeps UDP flows open
	Probe     *nat.Keepaliver    // required: probes silent stream flows
	Registry  *registry.Registry // required
	Conns     *Conns             // required: open stream connections (the registry asks it too)
	// StateSaved is when the state the registry was restored from was
	// last written (zero: none loaded). Tokens minted from then until
	// the server starts may name UDP flows it has no record of, which it
	// then recovers (see proxy.recover).
	StateSaved time.Time
	// Events receives the audit events the edge makes itself (nil:
	// none): REGISTERs it or the core refused or challenged, and changes
	// of mode. The registry's, the limiter's and the pools' are their own.
	Events func(audit.Event)
	// Meter counts requests and answers (nil: nothing counted).
	Meter Meter
	// CoreTLS is how the edge talks TLS to the cores (nil: Go's defaults,
	// the system's CAs).
	CoreTLS *tls.Config
	// Pusher wakes sleeping phones (RFC 8599); nil: no push. The
	// registry's Wakes must agree with it.
	Pusher Pusher
}

// wakeValid checks [push]'s holding, which is zero (unused) without a
// Pusher.
func (c Config) wakeValid() error {
	if c.Wake == (WakeConfig{}) {
		return nil
	}
	return c.Wake.Validate()
}

// Meter counts what passes through the edge (edge/metrics has one).
// Its methods are called on the hot path: they must be cheap.
type Meter interface {
	// Received counts a request, by side ("access" or "core").
	Received(side string, method sip.RequestMethod)
	// Answered counts the final status a request got from the edge,
	// its own or relayed (0: none, a drop).
	Answered(side string, method sip.RequestMethod, status int)
	// CoreRTT is how long a REGISTER took through the core, of tenant.
	CoreRTT(tenant string, d time.Duration)
	// Absorbed counts a refresh the edge answered itself (offload).
	Absorbed(tenant string)
	// Pushed counts a push's fate (sent, answered, unanswered, failed);
	// took is from the push to the phone's registration, or to giving up.
	Pushed(result string, took time.Duration)
}

type noMeter struct{}

func (noMeter) Received(string, sip.RequestMethod)      {}
func (noMeter) Answered(string, sip.RequestMethod, int) {}
func (noMeter) CoreRTT(string, time.Duration)           {}
func (noMeter) Absorbed(string)                         {}
func (noMeter) Pushed(string, time.Duration)            {}

// Server is a running edge.
type Server struct {
	cfg   Config
	d     Deps
	log   *slog.Logger
	socks *Sockets
	rs    responder

	accessUA, coreUA   *sipgo.UserAgent
	accessSrv, coreSrv *sipgo.Server
	coreUDP            *udpSocket
	coreTx             *udptx.Client   // non-INVITE transactions toward UDP cores (nil: sipgo's)
	accessTx           []*udptx.Server // non-INVITE transactions on the UDP access sockets (guarded by lmu)
	leanFallbacks      atomic.Uint64   // requests accessTx would take but left to sipgo
	accessHandler      Handler         // the access side's chain, for sipgo's requests and the edge's own
	pinger             *pinger
	self               *self
	hooks              nat.StreamHooks // of every access stream listener

	tenants   *tenants
	proxy     *proxy
	registrar *registrar
	limit     limit
	relay     *relay
	dialogs   *dialog.Table
	proofs    *proofs
	workers   *workers // run the handlers

	ready   chan struct{}
	serving sync.WaitGroup // listeners and the maintenance loop
	stop    context.CancelFunc
	drain   *drain

	lmu     sync.Mutex   // guards the access sockets below, and socks, which a reload changes
	udp     []*udpSocket // access UDP sockets being served
	streams []*nat.Listener
	bound   map[string]netip.AddrPort // "udp 127.0.0.1:0" -> the address it was bound to
	current Config                    // as reloaded (cfg stays as started)

	holding, roleLogged atomic.Bool // the access addresses are on this host (holdsAccess)
}

// New builds a server on sockets the caller bound.
func New(cfg Config, socks *Sockets, d Deps) (*Server, error) {
	if d.Log == nil || d.Signer == nil || d.Limiter == nil || d.Flows == nil ||
		d.Keepalive == nil || d.Probe == nil || d.Registry == nil || d.Conns == nil {
		return nil, errors.New("edge: Log, Signer, Limiter, Flows, Keepalive, Probe, Registry and Conns are required")
	}
	if err := errors.Join(cfg.Access.Validate(), cfg.Registration.Validate(), cfg.Core.Validate(), cfg.NAT.Validate(), cfg.Drain.Validate(),
		cfg.Survival.Validate(), cfg.wakeValid(), ValidateTenants(cfg.Tenants, cfg.Core, cfg.Registration)); err != nil {
		return nil, err
	}
	if (d.Pools.Default == nil) != (len(cfg.Core.Upstreams) == 0) {
		return nil, errors.New("edge: Pools.Default is required when core.upstreams is set, and only then")
	}
	for _, t := range cfg.Tenants {
		if d.Pools.Tenants[t.Name] == nil {
			return nil, fmt.Errorf("edge: no pool for tenant %q", t.Name)
		}
	}
	if d.Clock == nil {
		d.Clock = clock.Real{}
	}
	if d.Events == nil {
		d.Events = func(audit.Event) {}
	}
	if d.Meter == nil {
		d.Meter = noMeter{}
	}
	var advertise netip.Addr
	if cfg.Access.Advertise != "" {
		advertise, _ = netip.ParseAddr(cfg.Access.Advertise) // validated
	}
	s := &Server{cfg: cfg, d: d, log: d.Log, socks: socks, ready: make(chan struct{}),
		rs:      responder{log: d.Log, retryAfter: d.Limiter.RetryAfter},
		dialogs: dialog.New(cfg.Access.MaxDialogs, dialogIdle, d.Clock.Now),
		proofs:  newProofs(maxProofs), drain: newDrain(cfg.Drain), workers: newWorkers(workerIdle)}
	coreAddr := addrPortOf(socks.CoreUDP.LocalAddr())
	self := newSelf(d.Signer, d.Flows, d.Clock.Now, coreAddr, advertise, socks.addrs())

	var err error
	if s.accessUA, s.coreUA, err = userAgents(d.Log, d.CoreTLS); err != nil {
		return nil, err
	}
	siplog := slog.New(quietSipgo{d.Log.Handler()})
	coreClient, err := sipgo.NewClient(s.coreUA, sipgo.WithClientLogger(siplog), sipgo.WithClientHostname(coreAddr.Addr().String()))
	if err != nil {
		return nil, err
	}
	accessClient, err := sipgo.NewClient(s.accessUA, sipgo.WithClientLogger(siplog))
	if err != nil {
		return nil, err
	}
	fwdDeps := upstream.ForwarderDeps{Client: coreClient, Local: coreAddr, Admit: d.Limiter.Inflight}
	s.coreUDP = newUDPSocket(socks.CoreUDP)
	if conn, ok := s.coreUDP.udpConn(); ok {
		s.coreTx = udptx.NewClient(conn, udptx.DefaultTimers())
		// The registrar reads no more of a REGISTER's answer (contacts,
		// expiry) and relays the rest as it came.
		s.coreTx.SetSparse(sip.REGISTER)
		fwdDeps.Lean = s.coreTx
	}
	if s.tenants, err = newTenants(cfg, d, fwdDeps); err != nil {
		return nil, err
	}
	if s.accessSrv, err = sipgo.NewServer(s.accessUA); err != nil {
		return nil, err
	}
	if s.coreSrv, err = sipgo.NewServer(s.coreUA); err != nil {
		return nil, err
	}
	flowLeg := func(f nat.FlowKey) leg {
		h := hop.Hop{Client: accessClient, Transport: f.Transport.String(), Dest: f.Remote, SentBy: self.accessAddr(f)}
		if f.Transport == nat.UDP {
			h.Local = f.Local // from the listening socket to the NAT's address
		}
		return leg{Hop: h, toward: "phone", unreachable: func(error) error { return errFlowFailed }}
	}
	s.pinger = &pinger{flowLeg: flowLeg}
	s.pinger.udp.Store(&map[netip.AddrPort]*nat.PacketConn{})
	s.coreUDP.guardCore(d.Limiter, s.tenants.trusts, s.coreTx)
	s.self = self
	s.hooks = streamHooks(s.log, d.Limiter, d.Flows, d.Conns, d.Registry.HasFlow, cfg.NAT.StreamLimits)

	s.noteBound(cfg.Access, socks)
	s.current = cfg
	s.chains(self, flowLeg)
	return s, nil
}

// chains builds the stage chain of each side: the registrar and the
// proxy behind sanity, parse, limit and observe for phones; trust and
// sanity for the core.
func (s *Server) chains(self *self, flowLeg func(nat.FlowKey) leg) {
	cfg, d := s.cfg, s.d
	s.relay = &relay{log: d.Log, timeout: cfg.Core.Timeout, self: self}
	s.limit = limit{log: d.Log, limiter: d.Limiter, registry: d.Registry, proven: s.proven}
	au := auth{limiter: d.Limiter, proofs: s.proofs, proven: s.proven}
	s.proxy = &proxy{log: d.Log, self: self, relay: s.relay, tenants: s.tenants, flowLeg: flowLeg,
		usable: s.flowUsable, registry: d.Registry, auth: au, dialogs: s.dialogs,
		flows: d.Flows, mintSlack: cfg.Core.Timeout + time.Second,
		// Tokens carry whole seconds: one minted in the second the state
		// was saved may be newer than the save.
		recoverFrom: d.StateSaved.Truncate(time.Second),
		hide:        cfg.Access.HideTopology, server: cfg.Access.Server}
	s.proxy.setPeers(cfg.Access.Trusted)
	var wk *waker
	if d.Pusher != nil {
		wk = newWaker(d.Pusher, cfg.Wake, d.Clock.Now, d.Events, d.Meter, d.Log)
	}
	s.proxy.waker = wk
	reg := &registrar{now: d.Clock.Now, self: self, relay: s.relay, tenants: s.tenants, registry: d.Registry, auth: au,
		events: d.Events, meter: d.Meter, waker: wk, flowSince: func(f nat.FlowKey) time.Time {
			fl, _ := d.Flows.Get(f)
			return fl.Created
		}}
	s.registrar = reg
	reg.flowTime.udp, reg.flowTime.stream = cfg.NAT.FlowTimerUDP, cfg.NAT.FlowTimerStream
	if cfg.Access.HideTopology {
		reg.hide = func(res *sip.Response) { s.proxy.hideHeaders(res) }
	}
	accessRoute := func(ctx context.Context, r *Request) error {
		switch r.Method {
		case sip.REGISTER:
			return reg.handle(ctx, r)
		case sip.CANCEL:
			return reject(481, "Call/Transaction Does Not Exist") // a matching one never gets here
		}
		return s.proxy.toCore(ctx, r)
	}
	coreRoute := func(ctx context.Context, r *Request) error {
		switch r.Method {
		case sip.REGISTER:
			return reject(403, "Forbidden")
		case sip.CANCEL:
			return reject(481, "Call/Transaction Does Not Exist")
		}
		return s.proxy.toPhone(ctx, r)
	}
	s.accessHandler = chain(accessRoute, sanity{d.Limiter, s.proven}.wrap, parse, s.limit.wrap, observe)
	s.accessSrv.OnNoRoute(s.handler(s.accessHandler, false))
	s.coreSrv.OnNoRoute(s.handler(chain(coreRoute, trust{s.tenants}.wrap, sanity{nil, nil}.wrap), true))
}

// userAgents makes the two sipgo user agents, one per side. The access
// one never dials: phones' flows are theirs to open.
func userAgents(log *slog.Logger, coreTLS *tls.Config) (access, core *sipgo.UserAgent, err error) {
	siplog := slog.New(quietSipgo{log.Handler()})
	opts := []sipgo.UserAgentOption{
		sipgo.WithUserAgent("sipedge"),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(siplog)),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(siplog)),
	}
	accessOpts := append(opts[:len(opts):len(opts)],
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerTransports(neverDial())),
		// A request pending on a phone's connection fails (430) the moment
		// that connection closes, not when its timer runs out.
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerTerminateOnConnClose()))
	if access, err = sipgo.NewUA(accessOpts...); err != nil {
		return nil, nil, err
	}
	coreOpts := opts
	if coreTLS != nil {
		coreOpts = append(opts[:len(opts):len(opts)], sipgo.WithUserAgenTLSConfig(coreTLS))
	}
	if core, err = sipgo.NewUA(coreOpts...); err != nil {
		return nil, nil, err
	}
	return access, core, nil
}

// flowUsable reports whether f can carry a request now: it must be a
// live flow, and a stream flow needs its connection (sipgo would
// otherwise dial the NAT's address).
func (s *Server) flowUsable(f nat.FlowKey) bool {
	if !s.d.Flows.Alive(f) {
		return false // dead, or never registered
	}
	if !f.Transport.Reliable() {
		return true
	}
	c, err := s.accessUA.TransportLayer().GetConnection(f.Transport.String(), f.Remote.String())
	return err == nil && c != nil
}

// handler adapts a Handler to sipgo: the core side's trust check, ACKs,
// the drain gate, panic recovery, and the one place errors become
// responses.
func (s *Server) handler(h Handler, fromCore bool) sipgo.RequestHandler {
	side := "access"
	if fromCore {
		side = "core"
	}
	return func(req *sip.Request, tx sip.ServerTransaction) {
		flow, err := flowOf(req, tx)
		if err != nil {
			s.log.Debug("request without usable flow", "err", err)
			return
		}
		// A stranger on the core side (the trust stage answers its
		// requests 403) gets nothing else either.
		stranger := fromCore && !s.tenants.trusts(flow.Remote.Addr())
		if req.IsAck() {
			// An ACK that reaches a handler matched no INVITE transaction:
			// it acknowledges a 2xx and travels statelessly (sipgo may
			// still hand it a transaction of its own). Never answered, so
			// anything wrong with it, or from a stranger, is dropped.
			if !stranger && checkSanity(req, false) == nil && (fromCore || s.limit.ackAllowed(flow)) {
				s.proxy.ack(req, flow, fromCore)
			}
			return
		}
		if tx == nil {
			return
		}
		s.dispatch(h, side, &Request{Request: req, Tx: tx, Flow: flow}, stranger, s.workers.do)
	}
}

// dispatch runs req through h by run (on a worker): the drain gate,
// panic recovery, the one place errors become responses, and the end of
// a UDP transaction toward an unproven source.
func (s *Server) dispatch(h Handler, side string, r *Request, stranger bool, run func(func())) {
	fromCore := side == "core"
	req, tx, flow := r.Request, r.Tx, r.Flow
	s.d.Meter.Received(side, req.Method)
	if !s.drain.enter(req) {
		// Draining: nothing new starts here; calls in progress go on.
		var err error = &upstream.Unreachable{RetryAfter: s.drain.retryAfter(), Err: errors.New("draining")}
		if stranger {
			err = reject(403, "Forbidden") // strangers learn nothing, draining or not
		}
		s.rs.respond(r, err)
		s.d.Meter.Answered(side, req.Method, int(r.status.Load()))
		if flow.Transport == nat.UDP {
			tx.Terminate()
		}
		return
	}
	finish := func(err error) {
		if err != nil {
			s.rs.respond(r, err)
		}
		s.d.Meter.Answered(side, req.Method, int(r.status.Load()))
		if flow.Transport == nat.UDP && (stranger || !fromCore && !s.proven(r)) {
			// Toward an address that may be spoofed: one request, one
			// answer. Ending the transaction now means no final response
			// retransmitted to a victim (reflection) and no transaction
			// state kept for Timer J or H (a spoofed flood's memory).
			tx.Terminate()
		} else if h, ok := tx.(interface{ Hold() }); ok {
			h.Hold() // the edge's own (udptx): the answer stays for copies
		}
		s.drain.leave()
	}
	if _, own := tx.(*udptx.ServerTx); own {
		r.finish = finish // a handler may end it later: see errLater
	}
	run(func() {
		if err := s.handle(h, r); err != errLater {
			finish(err)
		}
	})
}

// detach runs the rest of r's handling, f, on a worker, and ends r with
// what f returns (through r.finish as it is then): for handlers that
// run on a read loop and come to something that may wait.
func (s *Server) detach(r *Request) func(func() error) error {
	return func(f func() error) error {
		s.workers.submit(func() {
			if err := s.handle(func(context.Context, *Request) error { return f() }, r); err != errLater {
				r.finish(err)
			}
		})
		return errLater
	}
}

// handle runs h for r: a panic in it is answered 500, not the end of
// the edge.
func (s *Server) handle(h Handler, r *Request) (err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic in handler", "method", r.Method, "panic", p, "stack", string(debug.Stack()))
			err = reject(500, "Server Internal Error")
		}
	}()
	return h(context.Background(), r)
}

// Transactions is how many of the edge's own UDP transactions are open:
// on the access side (non-INVITE requests from phones, answered ones kept for
// Timer J) and toward the cores (non-INVITE requests: REGISTERs, health
// probes, BYEs..., answered ones kept for Timer K).
func (s *Server) Transactions() (access, core int) {
	s.lmu.Lock()
	for _, t := range s.accessTx {
		access += t.Len()
	}
	s.lmu.Unlock()
	if s.coreTx != nil {
		core = s.coreTx.Len()
	}
	return access, core
}

// LeanFallbacks counts the non-INVITE requests from phones over UDP
// that went to sipgo's transactions instead of the edge's own: without
// an RFC 3261 branch (RFC 2543 phones), or unparsable (sipgo answers or
// drops them). A steady rise means phones the lean path does not serve.
func (s *Server) LeanFallbacks() uint64 { return s.leanFallbacks.Load() }

// Ready is closed once the server can take and send requests.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Serving reports whether the edge takes new registrations: started, not
// draining, and holding its access address (a standby does not).
func (s *Server) Serving() bool {
	select {
	case <-s.ready:
	default:
		return false
	}
	return !s.drain.draining() && (s.holding.Load() || !s.roleLogged.Load())
}

// Cores lists every tenant's cores with their health.
func (s *Server) Cores() []CoreState {
	var out []CoreState
	for _, t := range s.tenants.all {
		for _, tg := range t.pool.Targets() {
			st, _ := t.pool.State(tg)
			out = append(out, CoreState{Tenant: t.name, Target: tg.String(), State: st.String()})
		}
	}
	return out
}

// CoreState is one core and what health says of it.
type CoreState struct{ Tenant, Target, State string }

// Start serves every socket and starts the maintenance loop; it returns
// once sipgo has taken every UDP socket into service (or ctx ends).
func (s *Server) Start(ctx context.Context) error {
	s.lmu.Lock()
	s.serveAccess(s.socks)
	s.lmu.Unlock()
	s.serve(func() error { return serveUDP(s.coreSrv, s.coreUDP) })
	s.serve(func() error { return s.coreSrv.ServeTCP(nat.NewListener(s.socks.CoreTCP, nat.TCP, nat.StreamHooks{})) })

	mctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	// The ticker exists before Start returns, so a test's fake clock
	// cannot move before the loop listens.
	t := s.d.Clock.NewTicker(maintainEvery)
	s.serving.Go(func() { s.maintain(mctx, t) })
	for _, t := range s.tenants.all {
		s.serving.Go(func() { t.pool.Probe(mctx, t.probe) })
		s.serving.Go(func() { t.pool.Refresh(mctx) }) // cores given by name: DNS answers kept current
	}
	if err := s.udpReady(ctx, append(s.accessUDP(), s.coreUDP)); err != nil {
		return err
	}
	close(s.ready)
	return nil
}

// maintain is the one loop that keeps state in time: expiry, keepalives,
// probes and sweeps, all on the injected clock.
func (s *Server) maintain(ctx context.Context, t clock.Ticker) {
	defer t.Stop()
	lastLimiter, lastFlows := s.d.Clock.Now(), s.d.Clock.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C():
			s.d.Registry.Expire()
			for _, t := range s.tenants.all {
				t.watch.tick()
			}
			for _, u := range append(s.accessUDP(), s.coreUDP) {
				u.recycleIfQuiet()
			}
			if s.holdsAccess() {
				s.d.Keepalive.Tick(ctx, s.pinger)
				s.d.Probe.Tick(ctx, s.pinger)
			}
			if now.Sub(lastLimiter) >= limiterSweep {
				s.d.Limiter.Sweep()
				s.dialogs.Sweep()
				lastLimiter = now
			}
			if now.Sub(lastFlows) >= flowSweep {
				s.d.Registry.SweepFlows(flowIdle)
				lastFlows = now
			}
		}
	}
}

// Serve starts, serves until ctx ends, then shuts down within the grace
// period.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		_ = s.Shutdown(context.Background())
		if ctx.Err() != nil {
			return nil // stopped before it was ready: not a failure
		}
		return err
	}
	a := s.cfg.Access
	s.log.Info("sipedge serving", "phones_udp", a.UDP, "phones_tcp", a.TCP, "phones_tls", a.TLS, "phones_ws", a.WS, "phones_wss", a.WSS,
		"core_side", addrPortOf(s.socks.CoreUDP.LocalAddr()))
	for _, t := range s.tenants.all {
		name := t.name
		if name == "" {
			name = "default"
		}
		s.log.Info("cores", "tenant", name, "targets", t.pool.Targets(), "mode", t.mode)
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), s.drain.config().Grace)
	defer cancel()
	go func() {
		select {
		case <-s.drain.hurryCh:
			cancel()
		case <-sctx.Done():
		}
	}()
	return s.Shutdown(sctx)
}

// Hurry cuts a drain short: what is still in flight is dropped and the
// remaining connections close at once (a second SIGTERM).
func (s *Server) Hurry() { s.drain.hurry() }

// Shutdown drains: stop accepting, answer new requests 503, let
// transactions finish until ctx ends, then close everything and wait for
// every goroutine the server started.
func (s *Server) Shutdown(ctx context.Context) error {
	var conns []*nat.Conn
	s.lmu.Lock()
	for _, l := range s.streams {
		conns = append(conns, l.Open()...)
	}
	s.lmu.Unlock()
	deadline, _ := ctx.Deadline()
	s.log.Info("draining: REGISTERs and new dialogs get 503, calls in progress go on", "until", deadline, "stream_connections", len(conns))
	s.d.Events(audit.Event{Kind: audit.ModeChange, Detail: "draining", Count: len(conns)})
	s.drain.close()
	s.proxy.waker.stop() // requests waiting for sleeping phones get 480 now
	s.lmu.Lock()
	for _, l := range s.socks.listeners() {
		_ = l.Close() // stop accepting; open connections finish their transactions
	}
	s.lmu.Unlock()
	closed := make(chan struct{})
	go func() { closeSpread(ctx, s.d.Clock, conns, time.Until(deadline)); close(closed) }()
	done := make(chan struct{})
	go func() { s.drain.wait(ctx); <-closed; close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("drain cut short (grace over, or a second signal) with transactions in flight")
	}
	if s.stop != nil {
		s.stop()
	}
	for _, u := range append(s.accessUDP(), s.coreUDP) {
		u.stopping.Store(true)
	}
	_ = s.accessUA.Close()
	_ = s.coreUA.Close()
	if s.coreTx != nil {
		s.coreTx.Close()
	}
	s.lmu.Lock()
	for _, t := range s.accessTx {
		t.Close()
	}
	_ = s.socks.Close()
	s.lmu.Unlock()
	s.serving.Wait()
	s.workers.close()
	followUps := make(chan struct{})
	go func() {
		s.drain.wait(context.Background())
		s.relay.followUp.Wait()
		s.workers.wait()
		close(followUps)
	}()
	select {
	case <-followUps: // handlers and their follow-ups return once the UAs are closed
	case <-time.After(time.Second):
		s.log.Warn("handlers still running after close")
	}
	// sipgo hands each request it read to a goroutine of its own, which
	// then looks up the connection to answer on. One that got there after
	// the UAs closed found the pool cleared and bound a socket of its own
	// (with a reader), which nothing would ever close: sweep again.
	for _, ua := range []*sipgo.UserAgent{s.accessUA, s.coreUA} {
		if p := ua.TransportLayer().Pool("udp"); p != nil {
			_ = p.Clear()
		}
	}
	return nil
}
