package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/sipedge/sipedge/edge"
	"github.com/sipedge/sipedge/edge/admin"
	"github.com/sipedge/sipedge/edge/alert"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/metrics"
)

// observer takes every audit event to the audit log, the metrics, the
// alert watcher (whose alerts come back here) and the webhook.
type observer struct {
	audit   *audit.Log
	metrics *metrics.Metrics
	alerts  *alert.Watcher
	webhook *alert.Webhook // nil: none
	feed    *admin.Feed    // the dashboard's (nil-safe)
}

func (o *observer) emit(e audit.Event) {
	o.audit.Emit(e)
	o.feed.Emit(e)
	if o.metrics != nil { // made once the parts it reads exist
		o.metrics.Event(e)
	}
	if e.Kind == audit.Alert {
		if o.webhook != nil {
			o.webhook.Send(e)
		}
		return
	}
	o.alerts.Observe(e)
}

// node is this edge's name in the audit log.
func node(c audit.Config) string {
	if c.Node != "" {
		return c.Node
	}
	h, _ := os.Hostname()
	return h
}

// adminServer serves the admin handler on cfg.Listen until ctx ends.
type adminServer struct {
	ln  net.Listener
	srv *http.Server
}

func listenAdmin(cfg admin.Config, h http.Handler) (*adminServer, error) {
	if cfg.Listen == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, err
	}
	return &adminServer{ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}}, nil
}

// run serves until ctx ends, then closes, giving requests a second;
// the dashboard's event streams end with ctx.
func (a *adminServer) run(ctx context.Context, log *slog.Logger) {
	if a == nil {
		return
	}
	a.srv.BaseContext = func(net.Listener) context.Context { return ctx }
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.srv.Serve(a.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin listener failed", "err", err)
		}
	}()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = a.srv.Shutdown(sctx)
	<-done
}

// cores is the API's view of the edge's cores.
func cores(srv *edge.Server) func() []admin.Core {
	return func() []admin.Core {
		var out []admin.Core
		for _, c := range srv.Cores() {
			out = append(out, admin.Core{Tenant: c.Tenant, Target: c.Target, State: c.State})
		}
		return out
	}
}
