package push_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/push"
	"github.com/sipedge/sipedge/edge/push/pushtest"
)

func gatewayConfig(g *pushtest.Gateway) push.Config {
	cfg := push.DefaultConfig()
	cfg.GatewayURL, cfg.GatewayTokenFile = g.URL+"/push", g.TokenFile
	return cfg
}

func TestGatewaySendsJSON(t *testing.T) {
	g := pushtest.NewGateway(t)
	s := newSenders(t, gatewayConfig(g))
	p := push.Push{Provider: "webpush", PRID: "https://push.example.net/v1/abc", Param: "vapid", Method: "INVITE",
		CallID: "c1@example.com", From: "<sip:carol@example.com>;tag=9", ID: "id-1"}
	if err := send(t, s, p); err != nil {
		t.Fatal(err)
	}
	got := g.Next(t)
	want := map[string]string{"id": "id-1", "provider": "webpush", "prid": p.PRID, "param": "vapid",
		"method": "INVITE", "call_id": "c1@example.com", "from": p.From}
	for k, v := range want {
		if got.Body[k] != v {
			t.Errorf("%s = %v, want %q", k, got.Body[k], v)
		}
	}
	if len(got.Body) != len(want) {
		t.Errorf("body %v has other fields than %v", got.Body, want)
	}
	if got.Header.Get("Authorization") != "Bearer "+g.Token {
		t.Error("no bearer token")
	}
}

func TestGatewayFailures(t *testing.T) {
	g := pushtest.NewGateway(t)
	s := newSenders(t, gatewayConfig(g))
	for _, tc := range []struct {
		status int
		reason string
		class  push.Class
	}{
		{http.StatusGone, "Unregistered", push.Gone},
		{http.StatusServiceUnavailable, "Busy", push.Retry},
		{http.StatusTooManyRequests, "SlowDown", push.Retry},
		{http.StatusBadRequest, "BadParam", push.Refused},
		{http.StatusNotFound, "", push.Refused},
	} {
		g.Fail("tok", tc.status, tc.reason)
		reason := tc.reason
		if reason == "" {
			reason = "NotFound"
		}
		err := send(t, s, push.Push{Provider: "x", PRID: "tok"})
		rej := wantRejected(t, err, tc.class, reason)
		if rej.Status != tc.status || rej.Provider != "gateway" {
			t.Errorf("%+v", rej)
		}
	}
}

func TestGatewayWithoutTokenIsRefused(t *testing.T) {
	g := pushtest.NewGateway(t)
	cfg := gatewayConfig(g)
	cfg.GatewayTokenFile = ""
	s := newSenders(t, cfg)
	wantRejected(t, send(t, s, push.Push{Provider: "x", PRID: "tok"}), push.Refused, "Unauthorized")
}

func TestGatewayTimeoutHidesTheURL(t *testing.T) {
	g := pushtest.NewGateway(t)
	cfg := gatewayConfig(g)
	cfg.GatewayURL = g.URL + "/push?key=s3cr3t-in-query"
	s := newSenders(t, cfg)
	g.Stall("device-secret-token")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := s.Send(ctx, push.Push{Provider: "x", PRID: "device-secret-token"})
	if push.FailureReason(err) != "timeout" || !errors.Is(err, push.ErrUnreachable) {
		t.Fatalf("err = %v, want a timeout", err)
	}
	noSecret(t, err, "s3cr3t-in-query", "device-secret-token", g.Token)
}

func TestGatewayUnreachable(t *testing.T) {
	g := pushtest.NewGateway(t)
	cfg := gatewayConfig(g)
	g.Close() // nothing listens there now
	s := newSenders(t, cfg)
	err := send(t, s, push.Push{Provider: "x", PRID: "tok"})
	if push.FailureReason(err) != "unreachable" {
		t.Fatalf("err = %v (%s), want unreachable", err, push.FailureReason(err))
	}
}
