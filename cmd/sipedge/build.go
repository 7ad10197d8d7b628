package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/sipedge/sipedge/edge"
	"github.com/sipedge/sipedge/edge/admin"
	"github.com/sipedge/sipedge/edge/alert"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/edge/metrics"
	"github.com/sipedge/sipedge/edge/push"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/edge/state"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream"
)

// auditQueue is how many audit events may wait for the disk.
const auditQueue = 8192

// app is a built sipedge: the server, and the writer that keeps its
// state (nil: memory only).
type app struct {
	srv     *edge.Server
	admin   *adminServer   // nil: [admin] off
	webhook *alert.Webhook // nil: none
	audit   *audit.Log     // closed (its queue written) once the server stopped
	log     *slog.Logger
	writer  *state.Writer
	follow  func(context.Context) // shared state: other edges' changes, applied here (nil: none)
	pusher  *pusher               // nil: no push
	reload  *reloader             // path, log and level set by the caller
}

// serve runs the server until ctx ends, writing state in batches
// meanwhile, and flushes it once the server has drained.
func (a *app) serve(ctx context.Context) error {
	wctx, stop := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	if a.admin != nil {
		bg.Go(func() { a.admin.run(wctx, a.log) })
	}
	if a.writer != nil {
		bg.Go(func() { a.writer.Run(wctx) })
	}
	if a.webhook != nil {
		bg.Go(func() { a.webhook.Run(wctx) })
	}
	if a.follow != nil {
		bg.Go(func() { a.follow(wctx) })
	}
	err := a.srv.Serve(ctx)
	stop()
	bg.Wait()
	a.audit.Close()
	a.pusher.close()
	return err
}

// pusher adapts the push senders to the edge and the registry (nil: no
// push service configured).
type pusher struct{ s *push.Senders }

func newPusher(cfg push.Config, now func() time.Time) (*pusher, error) {
	if !cfg.APNs() && !cfg.FCM() && !cfg.Gateway() {
		return nil, nil
	}
	s, err := push.New(cfg, push.WithNow(now))
	if err != nil {
		return nil, err
	}
	return &pusher{s}, nil
}

// wakes is the registry's Wakes: a binding a push can wake.
func (p *pusher) wakes(b registry.Binding) bool {
	return p != nil && b.Push.Wakes() && p.s.Supports(b.Push.Provider)
}

// edge is p as the edge's Pusher (a nil interface without push).
func (p *pusher) edge() edge.Pusher {
	if p == nil {
		return nil
	}
	return p
}

func (p *pusher) Supports(provider string) bool { return p.s.Supports(provider) }

func (p *pusher) Push(ctx context.Context, to registry.Push, method, callID, from string) error {
	return p.s.Send(ctx, push.Push{Provider: to.Provider, PRID: to.PRID, Param: to.Param, Method: method, CallID: callID, From: from})
}

func (p *pusher) close() {
	if p != nil {
		p.s.Close()
	}
}

// build makes every part from the config and hands each to the next:
// this is the one place that knows how sipedge is put together. store
// (nil: memory only) keeps state across restarts; snap is what it held.
func build(cfg fileConfig, socks *edge.Sockets, log *slog.Logger, signer *nat.Signer, clk clock.Clock, store state.Store, snap state.Snapshot, auditOut io.Writer) (_ *app, err error) {
	// Every event reaches the audit log, and the metrics once they exist.
	// The log is written by a goroutine of its own: SIP never waits for it.
	obs := &observer{audit: audit.New(auditOut, node(cfg.Audit), clk.Now).Async(auditQueue), feed: admin.NewFeed(clk.Now)}
	defer func() {
		if err != nil {
			obs.audit.Close()
		}
	}()
	obs.alerts = alert.New(cfg.Alerts, clk.Now, obs.emit)
	if cfg.Alerts.Webhook != "" {
		obs.webhook = alert.NewWebhook(cfg.Alerts.Webhook, node(cfg.Audit), cfg.Alerts.WebhookQueue, log)
	}
	pools, err := edge.NewPools(cfg.edge(), func(tenant string) []upstream.Option {
		log := log
		if tenant != "" {
			log = log.With("tenant", tenant)
		}
		return []upstream.Option{upstream.WithLogger(log), upstream.WithOnChange(func(t upstream.Target, st upstream.State) {
			log.Info("core "+st.String(), "core", t) // up, overloaded (5xx: weight down) or down
			obs.emit(coreEvent(tenant, t, st))
		})}
	})
	if err != nil {
		return nil, err
	}
	// The writer is made last, from the limiter and registry it saves.
	var w *state.Writer
	bansChanged := func() {
		if w != nil {
			w.BansChanged()
		}
	}
	limiter, err := ratelimit.New(cfg.RateLimit, clk.Now, ratelimit.Events{
		// Every ban and unban reaches the log with its evidence.
		OnBan: func(b ratelimit.Ban) {
			log.Info("source banned", "ban", b)
			obs.emit(audit.FromBan(b, false))
			bansChanged()
		},
		OnUnban: func(b ratelimit.Ban) {
			log.Info("source unbanned", "ban", b)
			obs.emit(audit.FromBan(b, true))
			bansChanged()
		},
	})
	if err != nil {
		return nil, err
	}
	// Flow deaths go to the registry, which is made from the flow table.
	var reg *registry.Registry
	flows, err := nat.NewFlowTable(cfg.NAT.MaxFlows, clk.Now, nat.FlowEvents{
		OnDead: func(k nat.FlowKey, why string) { reg.FlowDead(k, why) },
	})
	if err != nil {
		return nil, fmt.Errorf("nat.max_flows: %w", err)
	}
	keepalive, err := keepaliver(cfg.NAT.KeepaliveConfig, flows, clk)
	if err != nil {
		return nil, err
	}
	probe, err := keepaliver(cfg.NAT.StreamProbe(), flows, clk)
	if err != nil {
		return nil, fmt.Errorf("nat.flow_timer_stream: %w", err)
	}
	conns := edge.NewConns()
	logged := logEvent(log)
	learn := learnNATs(nat.NewForgetting(keepalive, clk.Now, cfg.Registration.MaxExpires), obs.emit)
	onEvent := func(e registry.Event) { logged(e); obs.emit(audit.FromRegistry(e)); learn(e) }
	if store != nil {
		logged := onEvent
		onEvent = func(e registry.Event) { logged(e); w.Observe(e) }
	}
	pusher, err := newPusher(cfg.Push.Config, clk.Now)
	if err != nil {
		return nil, err
	}
	reg, err = registry.New(registry.Deps{Now: clk.Now, Flows: flows, UDP: keepalive, Stream: probe,
		Sources: limiter, StreamOpen: conns.Open, OnEvent: onEvent, RecoverHold: cfg.Registration.MaxExpires,
		Wakes: pusher.wakes})
	if err != nil {
		return nil, err
	}
	if store != nil {
		restore(log, store, snap, reg, limiter, cfg.NAT.Interval)
		w = state.NewWriter(store, cfg.State.FlushInterval, clk, log, limiter.BanHistory)
	}
	var srv *edge.Server // the metrics read its cores once it serves
	coreTLS, err := cfg.Core.ClientTLS()
	if err != nil {
		return nil, err
	}
	src := metrics.Sources{Registry: reg, Flows: flows, Limiter: limiter, Cores: func() []metrics.Core {
		var out []metrics.Core
		for _, c := range srv.Cores() {
			out = append(out, metrics.Core{Tenant: c.Tenant, Target: c.Target, State: c.State})
		}
		return out
	}, Transactions: func() (int, int) { return srv.Transactions() },
		LeanFallbacks: func() uint64 { return srv.LeanFallbacks() }}
	if w != nil {
		src.StoreOK = w.OK
	}
	obs.metrics = metrics.New(src)
	srv, err = edge.New(cfg.edge(), socks, edge.Deps{Log: log, Clock: clk, Signer: signer, Pools: pools, CoreTLS: coreTLS,
		Limiter: limiter, Flows: flows, Keepalive: keepalive, Probe: probe, Registry: reg, Conns: conns,
		StateSaved: snap.Saved, Events: obs.emit, Meter: obs.metrics, Pusher: pusher.edge()})
	if err != nil {
		return nil, err
	}
	rl := &reloader{srv: srv, pools: pools, limiter: limiter, keepalive: keepalive, probe: probe, reg: reg, cur: cfg, emit: obs.emit}
	a := &app{srv: srv, writer: w, reload: rl, log: log, webhook: obs.webhook, audit: obs.audit, pusher: pusher}
	if pusher != nil {
		log.Info("push notifications on", "apns", cfg.Push.APNs(), "fcm", cfg.Push.FCM(), "gateway", cfg.Push.Gateway())
	}
	if cfg.Admin.Listen != "" {
		token, err := admin.LoadOrCreateToken(cfg.Admin.TokenFile)
		if err != nil {
			return nil, err
		}
		h := admin.Handler(admin.Deps{Token: token, Log: log, Registry: reg, Flows: flows, Limiter: limiter,
			Cores: cores(srv), Metrics: obs.metrics.Handler(), Config: func() any { return rl.current().redacted() },
			Reload: rl.reloadErr, Ready: srv.Serving, Dashboard: obs.feed})
		if a.admin, err = listenAdmin(cfg.Admin, h); err != nil {
			return nil, fmt.Errorf("admin.listen: %w", err)
		}
		log.Info("admin API listening", "addr", a.admin.ln.Addr(), "token_file", cfg.Admin.TokenFile)
	}
	if r, ok := store.(*state.Redis); ok {
		// Other edges' bindings and bans, as they write them.
		a.follow = func(ctx context.Context) {
			r.Follow(ctx, func(b state.Batch) {
				// Only flows on this edge's own addresses: a pair's standby
				// shares them; an edge on other addresses keeps its own.
				b.Put = slices.DeleteFunc(b.Put, func(x registry.Binding) bool { return !srv.Serves(x.Flow) })
				reg.Merge(b.Put, b.Delete)
				bans := 0
				if b.BansSet || b.Full {
					bans = limiter.RestoreBans(b.Bans)
				}
				log.Debug("state merged from the shared store", "put", len(b.Put), "delete", len(b.Delete), "bans", bans, "full", b.Full)
			})
		}
	}
	return a, nil
}

// restore loads what the store held: bindings still live, with their
// flows' keepalives due over the first keepalive interval (not all in
// the first second), and the ban history.
func restore(log *slog.Logger, store state.Store, snap state.Snapshot, reg *registry.Registry, limiter *ratelimit.Limiter, spread time.Duration) {
	restored, dropped := reg.Restore(snap.Bindings, spread)
	bans := limiter.RestoreBans(snap.Bans)
	if snap.Saved.IsZero() {
		log.Info("state loaded: none saved yet", "file", store.String())
		return
	}
	log.Info("state loaded", "file", store.String(), "saved", snap.Saved, "bindings", restored,
		"dropped", dropped, "bans", bans)
}

// keepaliver pings flows per cfg, at most keepalive_rate a second (a
// second's worth at once), on the limiter's model.
func keepaliver(cfg nat.KeepaliveConfig, flows *nat.FlowTable, clk clock.Clock) (*nat.Keepaliver, error) {
	pingCap, err := ratelimit.NewRate(float64(cfg.MaxPerSecond), cfg.MaxPerSecond)
	if err != nil {
		return nil, fmt.Errorf("nat.keepalive_rate: %w", err)
	}
	return nat.NewKeepaliver(cfg, nat.KeepaliverDeps{Flows: flows, Now: clk.Now, Cap: pingCap})
}

// logEvent writes what the operator wants to know of the registry's
// events: a flow's death and an expiry at info, the rest at debug.
func logEvent(log *slog.Logger) func(registry.Event) {
	return func(e registry.Event) {
		switch e.Kind {
		case registry.FlowDead:
			aors := make([]string, len(e.Removed))
			for i, b := range e.Removed {
				aors[i] = b.AOR
			}
			log.Info("flow dead, bindings removed", "flow", e.Flow, "why", e.Why, "bindings", len(e.Removed), "aor", aors)
		case registry.Expired:
			log.Info("binding expired", "aor", e.Binding.AOR, "flow", e.Binding.Flow)
		case registry.Recovered:
			log.Info("flow recovered from its token", "flow", e.Flow)
		default:
			// Checked first: every registration passes here, and building
			// the record (even to drop it) cost allocations and a stack.
			if log.Enabled(context.Background(), slog.LevelDebug) {
				log.Debug("binding "+e.Kind.String(), "aor", e.Binding.AOR, "flow", e.Binding.Flow)
			}
		}
	}
}

// coreEvent is the audit event of a core's change of health.
func coreEvent(tenant string, t upstream.Target, st upstream.State) audit.Event {
	e := audit.Event{Kind: audit.CoreUp, Tenant: tenant, Core: t.String()}
	switch st {
	case upstream.StateDown:
		e.Kind, e.Severity = audit.CoreDown, slog.LevelWarn
	case upstream.StateOverloaded:
		e.Kind, e.Severity = audit.CoreOverload, slog.LevelWarn
	}
	return e
}

// learnNATs feeds the registry's events to f: flows that died of
// unanswered keepalives, and the registrations that show their phones
// were still there (their NAT forgot). Each NAT found out is an event.
func learnNATs(f *nat.Forgetting, emit func(audit.Event)) func(registry.Event) {
	return func(e registry.Event) {
		switch e.Kind {
		case registry.FlowDead:
			if e.Why == "keepalive" {
				ids := make([]string, len(e.Removed))
				for i, b := range e.Removed {
					ids[i] = deviceID(b)
				}
				f.Died(e.Flow, ids)
			}
		case registry.Registered, registry.Moved:
			b := e.Binding
			if d := f.Registered(b.Flow, deviceID(b)); d > 0 {
				emit(audit.Event{Kind: audit.KeepaliveAdapted, Severity: slog.LevelWarn, AOR: b.AOR, Tenant: b.Tenant,
					Source: b.Flow.Remote, Transport: b.Flow.Transport.String(), Reason: "the NAT forgot a mapping between keepalives",
					Detail: fmt.Sprintf("keepalives to %s every %s from now on", b.Flow.Remote.Addr(), d)})
			}
		}
	}
}

// deviceID names a phone across its flows for learnNATs: its AOR and its
// Call-ID, which a phone keeps while it runs and changes when it
// reboots, so a phone that was switched off teaches nothing.
func deviceID(b registry.Binding) string { return b.AOR + "\x00" + b.CallID }
