package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/sipedge/sipedge/edge"
	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/edge/state"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream"
)

// app is a built sipedge: the server, and the writer that keeps its
// state (nil: memory only).
type app struct {
	srv    *edge.Server
	writer *state.Writer
	follow func(context.Context) // shared state: other edges' changes, applied here (nil: none)
	reload *reloader             // path, log and level set by the caller
}

// serve runs the server until ctx ends, writing state in batches
// meanwhile, and flushes it once the server has drained.
func (a *app) serve(ctx context.Context) error {
	if a.writer == nil {
		return a.srv.Serve(ctx)
	}
	wctx, stop := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	bg.Go(func() { a.writer.Run(wctx) })
	if a.follow != nil {
		bg.Go(func() { a.follow(wctx) })
	}
	err := a.srv.Serve(ctx)
	stop()
	bg.Wait()
	return err
}

// build makes every part from the config and hands each to the next:
// this is the one place that knows how sipedge is put together. store
// (nil: memory only) keeps state across restarts; snap is what it held.
func build(cfg fileConfig, socks *edge.Sockets, log *slog.Logger, signer *nat.Signer, clk clock.Clock, store state.Store, snap state.Snapshot) (*app, error) {
	pools, err := edge.NewPools(cfg.edge(), func(tenant string) []upstream.Option {
		log := log
		if tenant != "" {
			log = log.With("tenant", tenant)
		}
		return []upstream.Option{upstream.WithLogger(log), upstream.WithOnChange(func(t upstream.Target, st upstream.State) {
			log.Info("core "+st.String(), "core", t) // up, overloaded (5xx: weight down) or down
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
		OnBan:   func(b ratelimit.Ban) { log.Info("source banned", "ban", b); bansChanged() },
		OnUnban: func(b ratelimit.Ban) { log.Info("source unbanned", "ban", b); bansChanged() },
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
	onEvent := logEvent(log)
	if store != nil {
		logged := onEvent
		onEvent = func(e registry.Event) { logged(e); w.Observe(e) }
	}
	reg, err = registry.New(registry.Deps{Now: clk.Now, Flows: flows, UDP: keepalive, Stream: probe,
		Sources: limiter, StreamOpen: conns.Open, OnEvent: onEvent, RecoverHold: cfg.Registration.MaxExpires})
	if err != nil {
		return nil, err
	}
	if store != nil {
		restore(log, store, snap, reg, limiter, cfg.NAT.Interval)
		w = state.NewWriter(store, cfg.State.FlushInterval, clk, log, limiter.BanHistory)
	}
	coreTLS, err := cfg.Core.ClientTLS()
	if err != nil {
		return nil, err
	}
	srv, err := edge.New(cfg.edge(), socks, edge.Deps{Log: log, Clock: clk, Signer: signer, Pools: pools, CoreTLS: coreTLS,
		Limiter: limiter, Flows: flows, Keepalive: keepalive, Probe: probe, Registry: reg, Conns: conns,
		StateSaved: snap.Saved})
	if err != nil {
		return nil, err
	}
	a := &app{srv: srv, writer: w, reload: &reloader{srv: srv, pools: pools, limiter: limiter,
		keepalive: keepalive, probe: probe, reg: reg, cur: cfg}}
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
			log.Debug("binding "+e.Kind.String(), "aor", e.Binding.AOR, "flow", e.Binding.Flow)
		}
	}
}
