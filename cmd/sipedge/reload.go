package main

import (
	"fmt"
	"github.com/sipedge/sipedge/edge/audit"
	"log/slog"
	"reflect"
	"sync"

	"github.com/sipedge/sipedge/edge"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// reloader applies the config file again on SIGHUP: what each part can
// take live goes to it, what cannot is named in the log as waiting for a
// restart. A file that does not load, or a listener that cannot be
// bound, is refused with the reason, and the running config stays.
type reloader struct {
	path  string
	log   *slog.Logger
	level *slog.LevelVar

	srv              *edge.Server
	pools            edge.Pools
	limiter          *ratelimit.Limiter
	keepalive, probe *nat.Keepaliver
	reg              *registry.Registry

	emit func(audit.Event)

	mu  sync.Mutex // one reload at a time; guards cur
	cur fileConfig
}

// current is the config as last applied.
func (r *reloader) current() fileConfig {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// reload is SIGHUP's: reloadErr, its refusal logged there.
func (r *reloader) reload() { _ = r.reloadErr() }

// reloadErr reads the config file again and applies what can be
// applied live; a file in error changes nothing.
func (r *reloader) reloadErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg, err := loadConfig(r.path)
	if err != nil {
		r.log.Error("reload refused, the running config stays", "err", err)
		r.emit(audit.Event{Kind: audit.ConfigReload, Severity: slog.LevelError, Reason: "refused", Detail: err.Error()})
		return err
	}
	restart, err := r.srv.Reload(cfg.edge()) // binds new listeners first: may fail
	if err != nil {
		r.log.Error("reload refused, the running config stays", "file", r.path, "err", err)
		r.emit(audit.Event{Kind: audit.ConfigReload, Severity: slog.LevelError, Reason: "refused", Detail: err.Error()})
		return err
	}
	// loadConfig validated every section: these cannot fail.
	if err := r.pools.Reload(cfg.edge()); err != nil {
		r.log.Error("cores not reloaded", "err", err) // a new name that does not resolve
	}
	_ = r.limiter.Reload(cfg.RateLimit)
	wasOff := r.cur.NAT.Mode == nat.KeepaliveOff
	for _, k := range []struct {
		ka  *nat.Keepaliver
		cfg nat.KeepaliveConfig
	}{{r.keepalive, cfg.NAT.KeepaliveConfig}, {r.probe, cfg.NAT.StreamProbe()}} {
		pingCap, _ := ratelimit.NewRate(float64(k.cfg.MaxPerSecond), k.cfg.MaxPerSecond)
		_ = k.ka.SetConfig(k.cfg, pingCap)
	}
	if wasOff && cfg.NAT.Mode != nat.KeepaliveOff {
		r.reg.Rewatch()
	}
	_ = r.level.UnmarshalText([]byte(cfg.Log.Level))
	if r.cur.Log.Format != cfg.Log.Format {
		restart = append(restart, "log.format")
	}
	if !reflect.DeepEqual(r.cur.State, cfg.State) {
		restart = append(restart, "state")
	}
	// Built once at start: what the file says of them waits for a
	// restart, and the running values stay what the API shows.
	for _, sec := range []struct {
		name    string
		differ  bool
		keepOld func()
	}{
		{"admin", r.cur.Admin != cfg.Admin, func() { cfg.Admin = r.cur.Admin }},
		{"audit", r.cur.Audit != cfg.Audit, func() { cfg.Audit = r.cur.Audit }},
		{"alerts", r.cur.Alerts != cfg.Alerts, func() { cfg.Alerts = r.cur.Alerts }},
		{"push", !reflect.DeepEqual(r.cur.Push, cfg.Push), func() { cfg.Push = r.cur.Push }},
	} {
		if sec.differ {
			restart = append(restart, sec.name)
			sec.keepOld()
		}
	}
	changed := changedSections(r.cur, cfg)
	r.log.Info("config reloaded", "file", r.path, "changed", changed, "needs_restart", restart)
	r.emit(audit.Event{Kind: audit.ConfigReload, Reason: "applied",
		Detail: fmt.Sprintf("changed %v; waiting for a restart %v", changed, restart)})
	r.cur = cfg
	return nil
}

// changedSections names the sections whose values differ.
func changedSections(a, b fileConfig) []string {
	var out []string
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	for i := range va.NumField() {
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, va.Type().Field(i).Tag.Get("toml"))
		}
	}
	return out
}
