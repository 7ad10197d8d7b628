package push_test

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/push"
	"github.com/sipedge/sipedge/edge/push/pushtest"
)

// TestNoSecretInErrors drives every sender into every kind of failure and
// checks that no error text holds a device token, a provider or access
// token, the gateway's token or key material.
func TestNoSecretInErrors(t *testing.T) {
	a, f, g := pushtest.NewAPNs(t), pushtest.NewFCM(t), pushtest.NewGateway(t)
	cfg := push.DefaultConfig()
	cfg.APNsKeyFile, cfg.APNsKeyID, cfg.APNsTeamID = a.KeyFile, a.KeyID, a.TeamID
	cfg.FCMServiceAccountFile = f.File
	cfg.GatewayURL, cfg.GatewayTokenFile = g.URL+"/push?key=query-s3cr3t", g.TokenFile
	s := newSenders(t, cfg, push.WithTLSConfig(pushtest.ClientTLS(a.Server, f.Server)),
		push.WithAPNsURL(a.URL, a.URL), push.WithFCMURL(f.URL))

	const gwPRID = "gateway-device-s3cr3t"
	ok := []push.Push{
		{Provider: "apns", PRID: apnsToken, Param: a.Param()},
		{Provider: "fcm", PRID: fcmToken, Param: f.Project},
		{Provider: "webpush", PRID: gwPRID},
	}
	for _, p := range ok {
		if err := send(t, s, p); err != nil {
			t.Fatal(err)
		}
	}
	secrets := []string{apnsToken, apnsToken2, fcmToken, gwPRID, g.Token, "query-s3cr3t",
		strings.TrimPrefix(a.Next(t).Header.Get("Authorization"), "bearer "),
		strings.TrimPrefix(f.Next(t).Header.Get("Authorization"), "Bearer "),
	}
	for _, file := range []string{a.KeyFile, f.File} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(strings.ReplaceAll(string(data), `\n`, "\n"), "\n") {
			if len(line) >= 40 && !strings.Contains(line, "PRIVATE KEY") {
				secrets = append(secrets, line[:40])
			}
		}
	}

	var errs []error
	try := func(ctx context.Context, p push.Push) {
		if err := s.Send(ctx, p); err != nil {
			errs = append(errs, err)
		} else {
			t.Errorf("push to %s/%s succeeded", p.Provider, push.Redact(p.PRID))
		}
	}
	for _, st := range []int{http.StatusGone, http.StatusTooManyRequests, http.StatusForbidden, http.StatusInternalServerError} {
		a.Fail(apnsToken, st, "Unregistered")
		f.Fail(fcmToken, st, "UNREGISTERED")
		g.Fail(gwPRID, st, "Gone")
		for _, p := range ok {
			try(context.Background(), p)
		}
	}
	a.Stall(apnsToken)
	f.Stall(fcmToken)
	g.Stall(gwPRID)
	for _, p := range ok {
		ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
		try(ctx, p)
		cancel()
	}
	f.Revoke()
	bad := []push.Push{
		{Provider: "apns", PRID: apnsToken2 + "zz", Param: a.Param()},
		{Provider: "apns", PRID: apnsToken2, Param: "OTHERTEAM1.x.voip"},
		{Provider: "fcm", PRID: fcmToken + " x", Param: f.Project},
		{Provider: "fcm", PRID: fcmToken, Param: "not-ours"},
		{Provider: "apns", PRID: ""},
	}
	for _, p := range bad {
		try(context.Background(), p)
	}
	s.Close()
	a.Close() // nothing listens any more
	f.Close()
	g.Close()
	for _, p := range ok {
		try(context.Background(), p)
	}

	if len(errs) < 20 {
		t.Fatalf("only %d errors", len(errs))
	}
	for _, err := range errs {
		noSecret(t, err, secrets...)
		if push.FailureReason(err) == "other" {
			t.Errorf("unclassified: %v", err)
		}
	}
}
